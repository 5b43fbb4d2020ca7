"""Command lines. Every command takes `key=value` arguments only: its own keys (listed by `--help`) and hydra
overrides of the training config (`algorithm=rlsd train.steps=50 ...`). A user error prints one line naming
the value and the valid ones and exits with status 2; `HARNESS_DEBUG=1` shows the traceback as well."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

from omegaconf import OmegaConf

from rlsd_harness.config import CONFIG_DIR, ConfigError, group_choices, unknown_message

# What a user can get wrong; anything else is a bug and keeps its traceback. (Errors about data files and
# model weights are ConfigErrors; `user_errors` adds the data layer's own class if it has one of another base.)
USER_ERRORS = (ConfigError, FileExistsError, FileNotFoundError)


def user_errors() -> tuple[type[BaseException], ...]:
    from rlsd_harness import data

    extra = getattr(data, "DataError", None)
    return USER_ERRORS + ((extra,) if isinstance(extra, type) and not issubclass(extra, USER_ERRORS) else ())


# Each command's examples, shown at the end of its --help, as (command line, what it does, cost). All of them run
# in tests/test_help_examples.py from a scratch folder holding a copy of results/embedded: the "fast" ones in the
# default suite, the "slow" ones (they train, warm up or evaluate a model) with `make test-slow`, in this order
# (rlsd-credit's second example reads the run rlsd-train's first one trains).
EXAMPLES: dict[str, list[tuple[str, str, str]]] = {
    "rlsd-train": [("rlsd-train algorithm=rlsd train.steps=2 run.name=try-rlsd",
                    "two RLSD steps from the shipped base policy, into results/runs/try-rlsd/", "slow")],
    "rlsd-compare": [("rlsd-compare experiment=embedded dry_run=true",
                      "check every run of `make demo`'s comparison and print its plan; trains nothing", "fast"),
                     ("rlsd-compare experiment=smoke out=try-smoke",
                      "the smoke comparison (GRPO and RLSD, 2 seeds, 3 steps): tables and plots in try-smoke/", "slow")],
    "rlsd-evaluate": [("rlsd-evaluate checkpoint=rlsd_harness/bases/qwen2_5_vl_tiny_warmup200_level1 "
                       "benchmarks=[embedded] limit=8",
                       "score the studies' shipped base policy on 8 embedded test items", "slow")],
    "rlsd-report": [("rlsd-report folder=results/embedded",
                     "rebuild the committed demo study's tables, plots, README and RLSD credit picture", "fast")],
    "rlsd-warmup": [("rlsd-warmup", "the default config's shipped base policy and its held-out pass@1", "slow")],
    "rlsd-filter": [("rlsd-filter checkpoint=rlsd_harness/bases/qwen2_5_vl_tiny_warmup200_level1 data=embedded limit=8 "
                     "k=4 out=try-filter",
                     "sample the shipped base 4 times on 8 embedded items; those it fails 4 of 4 go to "
                     "try-filter/embedded.jsonl", "fast")],
    "rlsd-credit": [("rlsd-credit study=results/embedded out=credit.png",
                     "redraw the committed demo study's credit picture (its runs keep no weights)", "fast"),
                    ("rlsd-credit run=results/runs/try-rlsd",
                     "draw it from a run trained here (rlsd-train's example), into that run's credit.png", "slow")],
}


def help_text(prog: str, summary: str, own: dict[str, str], takes_overrides: bool = True) -> str:
    lines = [f"usage: {prog} {' '.join(f'[{k}=...]' for k in own)}{' [config overrides ...]' if takes_overrides else ''}",
             "", summary.strip(), ""]
    if own:
        lines.append("arguments:")
        lines += [f"  {k}=  {v}" for k, v in own.items()]
        lines.append("")
    if takes_overrides:
        lines.append("config overrides (hydra syntax, key=value; groups and their choices):")
        groups = sorted(p.name for p in CONFIG_DIR.iterdir() if p.is_dir() and not p.name.startswith("_"))
        lines += [f"  {g}={{{','.join(group_choices(g))}}}" for g in groups]
        lines.append("  and any key of the composed config, e.g. train.steps=50 seed=1 (see docs/config.md)")
    if EXAMPLES.get(prog):
        lines += [*([""] if lines[-1] else []), "examples (from the repository root):"]
        for command, what, _ in EXAMPLES[prog]:
            lines += [f"  {command}", f"      {what}"]
    return "\n".join(lines)


def _joined(args: list[str]) -> list[str]:
    """Arguments with a list the shell split at its spaces (`seeds=[0, 1]` -> `seeds=[0,` `1]`) joined again. A
    list that no later argument closes (`eval.budget_points=[0.5,1 train.steps=3`) is left alone, so its error
    quotes it as typed rather than glued to the arguments after it."""
    out: list[str] = []
    i = 0
    while i < len(args):
        group, j = args[i], i + 1
        while group.count("[") > group.count("]") and j < len(args):
            group, j = group + args[j], j + 1
        if group.count("[") > group.count("]"):  # never closed: a typo, not the shell's split
            out.append(args[i])
            i += 1
        else:
            out.append(group)
            i = j
    return out


def top_level_keys() -> list[str]:
    """The keys a training-config override may start with: the root config's own and its groups."""
    root = OmegaConf.load(CONFIG_DIR / "train.yaml")
    groups = [p.name for p in CONFIG_DIR.iterdir() if p.is_dir() and not p.name.startswith("_")]
    return sorted({*(str(k) for k in root.keys() if k != "defaults"), *groups} - {"experiment"})


def split_args(argv: list[str] | None, prog: str, summary: str, own: dict[str, str],
               takes_overrides: bool = True, passes: tuple[str, ...] = ()) -> tuple[dict[str, str], list[str]]:
    """Own `key=value` arguments and the remaining overrides; `-h`/`--help` prints the help and exits. An
    argument that is neither an own key nor the start of a config key (`seeds=...` on a command without a
    `seeds` argument, `experimnt=...`) is refused naming the nearest valid one. `passes`: extra top-level keys
    that go to the overrides (rlsd-train's experiment=)."""
    args = _joined(list(sys.argv[1:] if argv is None else argv))
    # DeepSpeed's launcher appends `--local_rank=N` to every rank's arguments (unless --no_local_rank); the same
    # number is in the LOCAL_RANK variable it sets, which is what rlsd_harness.dist reads.
    args = [a for i, a in enumerate(args) if not a.startswith("--local_rank")
            and not (i and args[i - 1] == "--local_rank")]
    if any(a in ("-h", "--help", "help") for a in args):
        print(help_text(prog, summary, own, takes_overrides))
        raise SystemExit(0)
    mine, overrides = {}, []
    config_keys = top_level_keys() if takes_overrides else []
    for a in args:
        key, eq, value = a.partition("=")
        if a.startswith("-"):
            raise ConfigError(f"{prog} takes key=value arguments, not {a!r}; see {prog} --help")
        if not eq:
            raise ConfigError(f"argument {a!r} is not key=value; see {prog} --help")
        if key in own:
            mine[key] = value
        elif takes_overrides and (key.lstrip("+~").split(".", 1)[0] in config_keys or key in passes
                                  or key.startswith("+")):
            overrides.append(a)
        else:
            valid = [*own, *config_keys, *passes]
            raise ConfigError(unknown_message(f"argument of {prog}", key, valid)
                              + (" (config keys take their sections' keys, e.g. train.steps=50)" if config_keys else ""))
    return mine, overrides


def flag(value: str | None, key: str, default: bool = False) -> bool:
    if value is None:
        return default
    if value.lower() not in ("true", "false"):
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    return value.lower() == "true"


def run_main(body: Callable[[], Any]) -> Any:
    """Run a command's body: user errors become one line on stderr and exit status 2."""
    try:
        return body()
    except Exception as e:
        if not isinstance(e, user_errors()) or os.environ.get("HARNESS_DEBUG") == "1":
            raise
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
