"""`rlsd-credit run=results/embedded/runs/rlsd-s0 [out=credit.png]`: RLSD's token credit (the clipped evidence
weight w_t) on one correct and one wrong rollout of a finished run, drawn as coloured tokens."""

from __future__ import annotations

import json
from pathlib import Path

from rlsd_harness.cli import run_main, split_args
from rlsd_harness.config import ConfigError


def main(argv: list[str] | None = None) -> None:
    from omegaconf import OmegaConf

    from rlsd_harness.analysis.credit import draw, token_weights

    def body() -> None:
        own, _ = split_args(argv, "rlsd-credit", __doc__, {"run": "a finished RLSD run folder (required)",
                                                           "out": "png path (default <run>/credit.png)"},
                            takes_overrides=False)
        if "run" not in own:
            raise ConfigError("run=<a finished RLSD run folder> is required; see rlsd-credit --help")
        run_dir = Path(own["run"])
        if not (run_dir / "config.yaml").exists():
            raise FileNotFoundError(f"{run_dir} is not a run folder (no config.yaml)")
        out = Path(own.get("out") or run_dir / "credit.png")
        picks = token_weights(run_dir)
        out.with_suffix(".json").write_text(json.dumps(picks, indent=1))
        draw(picks, out, float(OmegaConf.load(run_dir / "config.yaml").algorithm.params.eps_w))
        print(out)

    run_main(body)


if __name__ == "__main__":
    main()
