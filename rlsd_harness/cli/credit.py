"""`rlsd-credit run=<a finished RLSD run> | study=<a comparison folder> [out=credit.png]`: RLSD's token credit (the
clipped evidence weight w_t) on one correct and one wrong rollout, drawn as coloured tokens. run= draws it from
the run's final policy (its weights must be there); study= from the study's first RLSD run with weights, else
redrawn from the study's recorded credit_rlsd.json (the committed studies keep no weights). The picks go to
the png's name with .json."""

from __future__ import annotations

import json
from pathlib import Path

from rlsd_harness.cli import run_main, split_args
from rlsd_harness.config import ConfigError

OWN = {"run": "a finished RLSD run folder with its final/ weights (this or study=)",
       "study": "a comparison folder (runs/rlsd-s*/, credit_rlsd.json): works on a committed study (this or run=)",
       "out": "png path (default <run>/credit.png; with study=, required: the study's own credit_rlsd.png is "
              "rlsd-report's)"}


def main(argv: list[str] | None = None) -> None:
    from rlsd_harness.analysis.credit import draw, eps_w_of, run_picks, study_picks

    def body() -> None:
        own, _ = split_args(argv, "rlsd-credit", __doc__, OWN, takes_overrides=False)
        if ("run" in own) == ("study" in own):
            raise ConfigError("give exactly one of run=<a finished RLSD run folder> and study=<a comparison folder>; "
                              "see rlsd-credit --help")
        if "study" in own:
            if not own.get("out"):
                raise ConfigError(f"study={own['study']} needs out=<png path> (rlsd-report folder={own['study']} "
                                  f"rewrites the study's own credit_rlsd.png)")
            folder = Path(own["study"])
            if not (folder / "runs").is_dir():
                raise FileNotFoundError(f"study={folder} has no runs/ folder: not a comparison's output")
            picks, eps_w, source = study_picks(folder)
        else:
            run_dir = Path(own["run"])
            picks, eps_w, source = run_picks(run_dir), eps_w_of(run_dir), f"drawn from {run_dir}'s final policy"
        out = Path(own.get("out") or Path(own["run"]) / "credit.png")
        if not picks:
            raise ConfigError(f"no rollout of the probe batch had a non-zero advantage ({source}): nothing to draw")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(picks, indent=1))
        draw(picks, out, eps_w)
        print(f"{out}: {source}")

    run_main(body)


if __name__ == "__main__":
    main()
