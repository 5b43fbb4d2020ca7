"""Objectives: one module per method, each registering itself. Every module in this package is imported
here, so a new objective is one new file (plus a config and a test) and no change anywhere else."""

import importlib
import pkgutil

from rlsd_harness.algorithms.registry import (
    build_objective,
    get_objective_class,
    objective_names,
    register_objective,
)

for _m in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["build_objective", "get_objective_class", "objective_names", "register_objective"]
