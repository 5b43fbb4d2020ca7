"""`rlsd-compare experiment=embedded`: every method x seed of an experiment, trained from the same base policy to
the same compute budget, then compared at matched budget points (tables, plots, README in `out`, default
results/<experiment>/). Finished runs are not rerun and interrupted ones resume, so a rerun continues the
matrix. `dry_run=true` validates every run's configuration and prints the plan (runs, compute, memory)."""

from __future__ import annotations

from rlsd_harness.analysis.launch import KEYS as LAUNCHER_KEYS
from rlsd_harness.analysis.launch import parse_options
from rlsd_harness.cli import flag, run_main, split_args

OWN = {"experiment": "an experiment of config/experiment/ (default embedded)",
       "out": "output folder (default results/<experiment>)",
       "dry_run": "true: validate and print the plan, train nothing",
       "workers": "runs trained at once, each in its own process (default 1; 2 on a 2-core machine is ~1.4x faster)",
       "tuning_from": "a tuned study (folder with picks.json) of the same base and tuning section: its picks, no tuning runs",
       "tuning_only": "true: run the tuning phase only (its runs, tuning.csv, tuning.md, picks.json), no test runs",
       "reproduce": "a committed study folder: retrain its runs of seeds=[..] methods=[..] (default all) here, into "
                    "out=, and report the difference with TOST at +-1.5 points (analysis/reproduce.py)",
       **LAUNCHER_KEYS}


def _workers(value: str) -> int:
    from rlsd_harness.config import ConfigError

    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"workers must be an integer (runs trained at once); got {value!r}") from None


def _refuse_experiment_keys(argv: list[str] | None) -> None:
    """`seeds=[0,1]`, `methods=[grpo,rlsd]`: keys of an experiment file, which this command runs as written (its
    report and a later rlsd-report read the same file). Named with the way to change them, in one line."""
    import sys

    from rlsd_harness.config import EXPERIMENT_KEYS, ConfigError, experiment_path

    args = list(sys.argv[1:] if argv is None else argv)
    given = [a.partition("=")[0] for a in args if a.partition("=")[0] in EXPERIMENT_KEYS and a.partition("=")[0] not in OWN]
    if any(a.startswith("reproduce=") for a in args):  # seeds= and methods= choose the runs to reproduce
        given = [g for g in given if g not in REPRODUCE_KEYS]
    if given:
        name = next((a.partition("=")[2] for a in reversed(args) if a.startswith("experiment=")), "embedded")
        raise ConfigError(f"{given[0]} is a key of the experiment file ({experiment_path(name)}), not an argument of "
                          f"rlsd-compare: copy that file, set {given[0]} in the copy and run "
                          f"rlsd-compare experiment=<the copy's .yaml path>")


REPRODUCE_KEYS = ("seeds", "methods")


def _reproduce(own: dict[str, str], overrides: list[str]) -> str:
    """rlsd-compare reproduce=<study> [seeds=[..]] [methods=[..]] out=<folder>."""
    import sys

    from omegaconf import OmegaConf
    from tqdm.auto import tqdm

    from rlsd_harness import dist
    from rlsd_harness.analysis.compare import _train_all
    from rlsd_harness.analysis.reproduce import reproduce
    from rlsd_harness.config import ConfigError

    chosen = dict(o.split("=", 1) for o in overrides if o.split("=", 1)[0] in REPRODUCE_KEYS)
    rest = [o for o in overrides if o.split("=", 1)[0] not in REPRODUCE_KEYS]
    others = sorted(set(own) - {"reproduce", "out"})
    if rest or others:
        raise ConfigError(f"reproduce= retrains committed runs from their own config.yaml; it takes seeds=[..], "
                          f"methods=[..] and out=, not {(rest or others)[0]}")
    if not own.get("out"):
        raise ConfigError("reproduce= needs out=<a new folder> for the reruns and the report")
    lists = {k: OmegaConf.create(f"v: {v}").v for k, v in chosen.items()}  # YAML: [0,1] or 0
    lists = {k: list(v) if OmegaConf.is_list(v) else [v] for k, v in lists.items()}
    log = lambda msg: tqdm.write(msg, file=sys.stderr)  # noqa: E731
    command = " ".join(["rlsd-compare", f"reproduce={own['reproduce']}", f"out={own['out']}",
                        *(f"{k}={v}" for k, v in chosen.items())])

    def train(jobs: list, workers: int) -> None:
        bar = tqdm(total=len(jobs), desc="reproduce", unit="run", dynamic_ncols=True)
        _train_all(jobs, workers, log, command, bar)
        bar.close()

    reproduce(own["reproduce"], own["out"], [int(s) for s in lists["seeds"]] if "seeds" in lists else None,
              [str(m) for m in lists["methods"]] if "methods" in lists else None, train, log)
    dist.shutdown()
    return f"{own['out']}/reproduce.md"


def main(argv: list[str] | None = None) -> None:
    import sys

    from rlsd_harness.analysis.compare import compare
    from rlsd_harness.training.run import Interrupted

    def body() -> None:
        _refuse_experiment_keys(argv)
        reproducing = any(a.startswith("reproduce=") for a in (sys.argv[1:] if argv is None else argv))
        own, overrides = split_args(argv, "rlsd-compare", __doc__, OWN, passes=REPRODUCE_KEYS if reproducing else ())
        if own.get("reproduce"):
            print(f"report in {_reproduce(own, overrides)}")
            return
        launcher, slurm = parse_options({k: v for k, v in own.items() if k.startswith("launcher")})
        try:
            result = compare(own.get("experiment", "embedded"), own.get("out"), overrides,
                             dry=flag(own.get("dry_run"), "dry_run"), workers=_workers(own.get("workers", "1")),
                             tuning_from=own.get("tuning_from"),
                             tuning_only=flag(own.get("tuning_only"), "tuning_only"), launcher=launcher, slurm=slurm)
        except Interrupted as e:  # the run's checkpoint and the command that continues were printed
            raise SystemExit(e.exit_code) from None
        print(result if isinstance(result, str) else f"results in {result}")

    run_main(body)


if __name__ == "__main__":
    main()
