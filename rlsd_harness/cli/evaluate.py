"""`rlsd-evaluate checkpoint=<model or run folder> [benchmarks=[...]] ...`: score a checkpoint on the five
benchmarks (and the embedded task) as their official code does; results, per-item records and a table go to
`out` (default results/eval/<run>-<folder>-<decoding>). A rerun continues where an interrupted one stopped.
Every problem with the arguments, the checkpoint and each benchmark's data is reported at once, one line
each with its fix, before anything is loaded or written. Started by torchrun, the `deepspeed` launcher or
srun (RANK/WORLD_SIZE set, or inside an srun step), the ranks share each benchmark's items (item i on rank
i % world, each rank appending to `<key>.rank<r>.jsonl`) and rank 0 merges them into the same files, byte for
byte, as one process writes. With `rollout=vllm` and vLLM installed, vLLM generates (not testable on CPU)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rlsd_harness.cli import flag, run_main, split_args
from rlsd_harness.config import ConfigError

OWN = {
    "checkpoint": "model folder, run folder (its final/) or a Hugging Face model folder (this or study=)",
    "study": "a study folder (runs/<method>-s<seed>/) or one run folder: evaluates every budget-point policy "
             "(budget_policies/<fraction>/, from train.save_budget_policies=true) into the run's "
             "benchmarks/<fraction>/, which `rlsd-report folder=<study> table=paper` reads",
    "benchmarks": "list, e.g. [mmmu,mathvista,mathvision,zerobench,wemath,embedded] or name:variant "
                  "(default: embedded, embedded:hint, embedded:blank)",
    "limit": "evaluate the first N items of each benchmark; where the metrics span several rows, N whole units "
             "(We-Math: N composite problems with all their rows; ZeroBench-Sub: the subquestions of N main "
             "questions), so a limited run is scored over complete problems only",
    "out": "output folder",
    "overwrite": "true: discard results of a different config in out",
    "allow_missing_images": "true, or a list like [mathvista]: rows whose image file is missing are prompted "
                            "without it (recorded in config.json) instead of stopping the run",
    "compare_with": "another rlsd-evaluate out folder: compares out (after evaluating checkpoint= into it, or alone "
                    "without checkpoint=) with it item by item per shared benchmark (exact McNemar at k = 1, paired "
                    "bootstrap over items for mean@k) into out/compare.md and compare.csv; a comparison there "
                    "with another folder is replaced only with overwrite=true",
}


def keys_help() -> str:
    """The config keys a real evaluation sets, with each benchmark's splits and prompt variants."""
    from rlsd_harness.benchmarks import EVAL_BENCHMARK_NAMES, get_benchmark
    from rlsd_harness.evaluation.heldout import DECODINGS

    lines = ["config keys a real evaluation sets (all of them: docs/config.md, section eval):",
             "  eval.sources.<name>=<folder>    each benchmark's local copy (parquet/arrow/jsonl; a hub id when online)",
             "  eval.splits.<name>=<split>      the split to evaluate; eval.variants.<name>=<variant>: the prompt"]
    for name in EVAL_BENCHMARK_NAMES:
        module = get_benchmark(name)
        lines.append(f"      {name}: splits {' | '.join(module.SPLITS)}; variants {' | '.join(module.VARIANTS)}")
    lines += [f"  eval.decoding={'|'.join(DECODINGS)}   greedy: one response; paper: the paper's sampling, k per item;"
              " sample: eval.sampling.{temperature,top_p,top_k}",
              "  eval.k=N                        samples per item (null: the decoding's default)",
              "  eval.benchmark_max_new_tokens=N the generation budget of the five benchmarks (eval.max_new_tokens: "
              "the embedded task's)",
              "  eval.batch=N                    prompts per generate call (results are appended after each)",
              "  eval.mathvista_judge=null|self  MathVista's answer extraction: rules, or the evaluated model",
              "  +eval.score_options.<name>.<option>=..., +eval.metric_options.<name>.<option>=...  passed to the "
              "benchmark's score() / metrics()",
              "  seed=N                          the per-item sampling seeds derive from it",
              "  rollout=vllm                    generate with vLLM (GPU, when installed; else the HF engine)"]
    return "\n".join(lines)


def _list_arg(value: str) -> list[str]:
    """`[a, b]`, `a,b` or `a` -> ["a", "b"]."""
    return [v.strip().strip("'\"") for v in value.strip().strip("[]").split(",") if v.strip()]


def parse_args(argv: list[str] | None) -> tuple[dict[str, Any], list[str]]:
    """The runner's own arguments, typed, and the config overrides."""
    from rlsd_harness.evaluation.runner import DEFAULT_BENCHMARKS

    own, overrides = split_args(argv, "rlsd-evaluate", f"{__doc__}\n\n{keys_help()}", OWN)
    args: dict[str, Any] = {"checkpoint": own.get("checkpoint"), "study": own.get("study"), "out": own.get("out"),
                            "benchmarks": _list_arg(own["benchmarks"]) if "benchmarks" in own else list(DEFAULT_BENCHMARKS),
                            "overwrite": flag(own.get("overwrite"), "overwrite"), "limit": None,
                            "allow_missing_images": False, "compare_with": own.get("compare_with")}
    if own.get("limit", "null").lower() not in ("null", "none", ""):
        try:
            args["limit"] = int(own["limit"])
        except ValueError:
            raise ConfigError(f"limit must be a positive integer, got {own['limit']!r}") from None
        if args["limit"] < 1:
            raise ConfigError(f"limit must be a positive integer, got {own['limit']!r}")
    allow = own.get("allow_missing_images")
    if allow is not None:
        # true/false, or the benchmarks it applies to (the runner checks the names with everything else)
        args["allow_missing_images"] = (flag(allow, "allow_missing_images") if allow.lower() in ("true", "false")
                                        else _list_arg(allow))
    if args["compare_with"] is not None and args["study"] is not None:
        raise ConfigError("compare_with= compares two rlsd-evaluate out folders; it does not take study=")
    if args["compare_with"] is not None and args["checkpoint"] is None and args["out"] is None:
        raise ConfigError("compare_with= needs out=<the folder to compare> (or checkpoint= to evaluate into it first)")
    compare_only = args["compare_with"] is not None and args["checkpoint"] is None
    if (args["checkpoint"] is None) == (args["study"] is None) and not compare_only:
        raise ConfigError("give exactly one of checkpoint=<model or run folder> and study=<study folder>; "
                          "see rlsd-evaluate --help")
    if args["study"] is not None and args["out"] is not None:
        raise ConfigError("out= is for checkpoint=; with study= each policy's results go to its run's "
                          "benchmarks/<fraction>/")
    return args, overrides


def default_out(checkpoint: Path, decoding: str) -> Path:
    """results/eval/<run>-<folder>-<decoding>: a run's final/ folder is named after its run."""
    name = checkpoint.name if checkpoint.name not in ("final", "policy") else f"{checkpoint.parent.name}-{checkpoint.name}"
    return Path("results") / "eval" / f"{name}-{decoding}"


def _compare(paired: Any, out: Path, other: Path, overwrite: bool) -> None:
    """Write and print out/compare.md; a pair that cannot be compared is a one-line user error."""
    try:
        table = paired.write(out, other, overwrite=overwrite)
    except paired.PairingError as e:
        raise ConfigError(str(e)) from e
    print(paired.markdown(table, out, other), end="")
    print(f"comparison in {out / 'compare.md'}")


def main(argv: list[str] | None = None) -> None:
    from rlsd_harness.config import compose_config
    from rlsd_harness.evaluation.runner import markdown, resolve_checkpoint, run_benchmarks
    from rlsd_harness.training.preflight import check_evaluation

    def body() -> None:
        from rlsd_harness.analysis import paired

        args, overrides = parse_args(argv)
        if args["compare_with"] is not None and args["checkpoint"] is None:
            if overrides:
                raise ConfigError(f"compare_with= without checkpoint= evaluates nothing; drop the overrides {overrides}")
            _compare(paired, Path(args["out"]), Path(args["compare_with"]), args["overwrite"])
            return
        cfg = compose_config(overrides)
        check_evaluation(cfg)
        if args["study"] is not None:
            from rlsd_harness.evaluation.study import evaluate_study

            try:
                done = evaluate_study(args["study"], args["benchmarks"], cfg, args["limit"], args["overwrite"],
                                      allow_missing_images=args["allow_missing_images"])
            except (ValueError, KeyError) as e:
                raise ConfigError(e.args[0] if e.args else str(e)) from e
            print(f"evaluated {len(done)} budget-point policies of {args['study']}; the table: "
                  f"rlsd-report folder={args['study']} table=paper")
            return
        checkpoint = Path(args["checkpoint"])
        try:
            model_dir = resolve_checkpoint(checkpoint)
        except FileNotFoundError:  # reported by the runner with every other problem
            model_dir = checkpoint
        out = Path(args["out"]) if args["out"] else default_out(model_dir, cfg.eval.decoding)
        if args["compare_with"] is not None:  # checked before the evaluation, so a bad folder costs nothing
            paired.complete_benchmarks(Path(args["compare_with"]))
            paired.check_output(out, Path(args["compare_with"]), args["overwrite"])
        try:
            table = run_benchmarks(checkpoint, args["benchmarks"], cfg, out, args["limit"], args["overwrite"],
                                   allow_missing_images=args["allow_missing_images"])
        except (ValueError, KeyError) as e:  # bad sources, variants or names; str(KeyError) quotes its message
            raise ConfigError(e.args[0] if e.args else str(e)) from e
        if table is not None:  # None on ranks other than 0 of a sharded run: rank 0 prints the table
            print(markdown(table), end="")
            print(f"results in {out}")
            if args["compare_with"] is not None:
                _compare(paired, out, Path(args["compare_with"]), args["overwrite"])

    run_main(body)


if __name__ == "__main__":
    main()
