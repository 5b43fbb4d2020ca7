"""RLSD harness: RL post-training objectives for vision-language models, compared at matched compute.

The Python API (each name imported on first use, so `import rlsd_harness` stays light):

    from rlsd_harness import compose_config, read_config, train, compare, evaluate, load_runs

    cfg = compose_config(["algorithm=rlsd", "train.steps=20", "seed=1"])  # hydra overrides, validated
    typed = read_config(cfg)                                            # checked once, read typed
    run_dir = train(cfg)                                                # one run -> its folder
    out = compare("embedded")                                           # an experiment's matrix + report
    table = evaluate(run_dir, ["embedded"], cfg, out="results/eval/x")  # benchmark runner -> DataFrame
    df = load_runs(out / "runs")                                        # every metrics line, one DataFrame

docs/api.md documents them.
"""

from __future__ import annotations

from typing import Any

__all__ = ["compose_config", "read_config", "train", "compare", "evaluate", "load_runs"]

_WHERE = {
    "compose_config": ("rlsd_harness.config", "compose_config"),
    "read_config": ("rlsd_harness.training.preflight", "read_config"),
    "train": ("rlsd_harness.training.run", "run"),
    "compare": ("rlsd_harness.analysis.compare", "compare"),
    "evaluate": ("rlsd_harness.evaluation.runner", "run_benchmarks"),
    "load_runs": ("rlsd_harness.analysis.report", "load_runs"),
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'rlsd_harness' has no attribute {name!r}; the API is {', '.join(__all__)}")
    import importlib

    module, attr = _WHERE[name]
    return getattr(importlib.import_module(module), attr)
