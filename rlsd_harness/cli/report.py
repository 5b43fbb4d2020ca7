"""`rlsd-report folder=results/embedded`: rebuild a comparison's tables, plots and README from its run folders
(nothing is trained)."""

from __future__ import annotations

import json
from pathlib import Path

from rlsd_harness.cli import run_main, split_args
from rlsd_harness.config import ConfigError


def main(argv: list[str] | None = None) -> None:
    from rlsd_harness.analysis.report import write_report
    from rlsd_harness.config import load_experiment

    def body() -> None:
        own, _ = split_args(argv, "rlsd-report", __doc__, {"folder": "a comparison's output folder (required)"},
                            takes_overrides=False)
        if "folder" not in own:
            raise ConfigError("folder=<a comparison's output folder> is required; see rlsd-report --help")
        folder = Path(own["folder"])
        if not (folder / "runs").is_dir():
            raise FileNotFoundError(f"{folder} has no runs/ folder: not a comparison's output")
        meta_file = folder / "meta.json"
        meta = json.loads(meta_file.read_text()) if meta_file.exists() else {"experiment": folder.name}
        write_report(folder, load_experiment(meta["experiment"]), meta)
        print(f"report in {folder}")

    run_main(body)


if __name__ == "__main__":
    main()
