"""`rlsd-evaluate checkpoint=<model or run folder> [benchmarks=[...]] ...`: score a checkpoint on the five
benchmarks (and the embedded task) as their official code does; results, per-item records and a table go to
`out` (default results/eval/<run>-<folder>-<decoding>). A rerun continues where an interrupted one stopped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rlsd_harness.cli import flag, run_main, split_args
from rlsd_harness.config import ConfigError

OWN = {
    "checkpoint": "model folder, run folder (its final/) or a Hugging Face model folder (required)",
    "benchmarks": "list, e.g. [mmmu,mathvista,mathvision,zerobench,wemath,embedded] or name:variant "
                  "(default: embedded, embedded:hint, embedded:blank)",
    "limit": "evaluate the first N items of each benchmark; where the metrics span several rows, N whole units "
             "(We-Math: N composite problems with all their rows; ZeroBench-Sub: the subquestions of N main "
             "questions), so a limited run is scored over complete problems only",
    "out": "output folder",
    "overwrite": "true: discard results of a different config in out",
}


def _list_arg(value: str) -> list[str]:
    """`[a, b]`, `a,b` or `a` -> ["a", "b"]."""
    return [v.strip().strip("'\"") for v in value.strip().strip("[]").split(",") if v.strip()]


def parse_args(argv: list[str] | None) -> tuple[dict[str, Any], list[str]]:
    """The runner's own arguments, typed, and the config overrides."""
    from rlsd_harness.evaluation.runner import DEFAULT_BENCHMARKS

    own, overrides = split_args(argv, "rlsd-evaluate", __doc__, OWN)
    args: dict[str, Any] = {"checkpoint": own.get("checkpoint"), "out": own.get("out"),
                            "benchmarks": _list_arg(own["benchmarks"]) if "benchmarks" in own else list(DEFAULT_BENCHMARKS),
                            "overwrite": flag(own.get("overwrite"), "overwrite"), "limit": None}
    if own.get("limit", "null").lower() not in ("null", "none", ""):
        try:
            args["limit"] = int(own["limit"])
        except ValueError:
            raise ConfigError(f"limit must be a positive integer, got {own['limit']!r}") from None
        if args["limit"] < 1:
            raise ConfigError(f"limit must be a positive integer, got {own['limit']!r}")
    if args["checkpoint"] is None:
        raise ConfigError("checkpoint=<model or run folder> is required; see rlsd-evaluate --help")
    return args, overrides


def default_out(checkpoint: Path, decoding: str) -> Path:
    """results/eval/<run>-<folder>-<decoding>: a run's final/ folder is named after its run."""
    name = checkpoint.name if checkpoint.name not in ("final", "policy") else f"{checkpoint.parent.name}-{checkpoint.name}"
    return Path("results") / "eval" / f"{name}-{decoding}"


def main(argv: list[str] | None = None) -> None:
    from rlsd_harness.config import compose_config
    from rlsd_harness.evaluation.runner import markdown, resolve_checkpoint, run_benchmarks
    from rlsd_harness.training.preflight import check_evaluation

    def body() -> None:
        args, overrides = parse_args(argv)
        cfg = compose_config(overrides)
        check_evaluation(cfg)
        checkpoint = Path(args["checkpoint"])
        out = Path(args["out"]) if args["out"] else default_out(resolve_checkpoint(checkpoint), cfg.eval.decoding)
        try:
            table = run_benchmarks(checkpoint, args["benchmarks"], cfg, out, args["limit"], args["overwrite"])
        except (ValueError, KeyError) as e:  # bad sources, variants or names; str(KeyError) quotes its message
            raise ConfigError(e.args[0] if e.args else str(e)) from e
        print(markdown(table), end="")
        print(f"results in {out}")

    run_main(body)


if __name__ == "__main__":
    main()
