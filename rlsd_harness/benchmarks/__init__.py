"""Evaluation benchmarks. Each module (mmmu, mathvista, mathvision, zerobench, wemath) has the same
face: NAME, load(source, split, revision=None), prompt(row, variant="official"),
score(response, row, **options) and metrics(rows, results). Modules are imported on first use so
that importing this package stays cheap."""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from types import ModuleType

EVAL_BENCHMARK_NAMES = ("mmmu", "mathvista", "mathvision", "zerobench", "wemath")


def get_benchmark(name: str) -> ModuleType:
    """The benchmark module for `name`; an unknown name raises listing the valid ones."""
    if name not in EVAL_BENCHMARK_NAMES:
        raise KeyError(f"unknown benchmark {name!r}; valid: {', '.join(EVAL_BENCHMARK_NAMES)}")
    return importlib.import_module(f"rlsd_harness.benchmarks.{name}")


class _LazyRegistry(Mapping):
    """{"mmmu": module, ...}, importing each module when it is first looked up."""

    def __getitem__(self, name: str) -> ModuleType:
        return get_benchmark(name)

    def __iter__(self) -> Iterator[str]:
        return iter(EVAL_BENCHMARK_NAMES)

    def __len__(self) -> int:
        return len(EVAL_BENCHMARK_NAMES)


EVAL_BENCHMARKS: Mapping[str, ModuleType] = _LazyRegistry()
