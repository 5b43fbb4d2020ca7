"""Evaluation benchmarks. Each module (mmmu, mathvista, mathvision, zerobench, wemath) has the same
face: NAME, load(source, split, revision=None), prompt(row, variant="official"),
score(response, row, **options), metrics(rows, results) and METADATA, the `Metadata` the benchmark runner
reads instead of knowing benchmarks by name (the embedded task's module declares one too). Modules are
imported on first use so that importing this package stays cheap."""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

EVAL_BENCHMARK_NAMES = ("mmmu", "mathvista", "mathvision", "zerobench", "wemath")
# Every name the benchmark runner accepts: the paper's five and the embedded task's test split.
ALL_BENCHMARK_NAMES = (*EVAL_BENCHMARK_NAMES, "embedded")

Scorer = Callable[[str, Any], dict]  # (response, row) -> the score record: "parsed", "correct", extras
Judge = Callable[[str], str]  # an extraction prompt -> the judge model's reply


def item_scores(ids: list[str], flags: list[list[bool]]) -> dict[str, float]:
    """Each item's fraction of its k samples scored correct. For a headline that is a mean over items of a
    per-sample 0/1 verdict (accuracy, pass@1), the mean of these over the items is the headline's mean@k."""
    return {i: sum(map(bool, f)) / len(f) for i, f in zip(ids, flags)}


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k = 1 - C(n-c, k) / C(n, k) from n samples of which c are correct (Chen et al. 2021,
    "Evaluating Large Language Models Trained on Code"), as 1 - prod_{j=n-c+1}^{n} (1 - k/j), which never
    forms the large binomials. The package's one pass@k: ZeroBench's metrics, held-out evaluation and the
    statistics module all use it."""
    if not (n >= 1 and 0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass_at_k needs n >= 1, 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / j for j in range(n - c + 1, n + 1))


@dataclass(frozen=True)
class Metadata:
    """What the benchmark runner needs to know about one benchmark besides load/prompt/score/metrics."""

    row_id: Callable[[Any], str]  # the id that keys an item's results; unique within a split
    headline: str  # the key of the module's metrics that the paper's table reports
    # (score options, judge or None) -> a fresh scorer; the runner makes one per sample index
    new_scorer: Callable[[Mapping[str, Any], Judge | None], Scorer]
    # (metrics key, label) pairs shown beside the headline in the table; "{k}" in a label is the sample count
    secondary: tuple[tuple[str, str], ...] = ()
    # The scorer carries state across items (MMMU's random fallback draws from one generator in dataset
    # order): a resumed run replays the done items through it so that it draws as an uninterrupted run.
    stateful_scoring: bool = False
    # The metrics take the k samples of an item together (ZeroBench's pass@k and k/k reliability) rather
    # than being computed per sample and averaged.
    samples_together: bool = False
    # The scorer can use an extraction judge; the results then say which extractor produced them.
    judged: bool = False
    # The training task's held-out split: items come from the run's data config (not eval.sources), and
    # samples draw the seeds that training-time evaluation draws for the same item.
    training_task: bool = False
    # (item ids, each item's k correct flags) -> {unit: score in [0, 1]} whose unweighted mean over the units is
    # the headline's mean@k; the paper table's item term counts these units (We-Math: a composite
    # problem, since its score is defined per problem).
    unit_scores: Callable[[list[str], list[list[bool]]], dict[str, float]] = item_scores
    # The unit the metrics are computed over when it spans several rows (We-Math's composite problem: the rows
    # sharing an `ID`), as a row -> unit key function; None: every row is its own unit. The runner's `limit=N`
    # keeps the first N units whole (every row of each, wherever it sits in the file), so that a limited run
    # is scored over complete problems only and never counts a problem whose pieces were not evaluated.
    unit: Callable[[Any], str] | None = None


def options_scorer(score: Callable[..., dict]) -> Callable[[Mapping[str, Any], Judge | None], Scorer]:
    """`new_scorer` for a stateless `score(response, row, **options)` that takes no judge."""

    def new_scorer(options: Mapping[str, Any], judge: Judge | None = None) -> Scorer:
        return lambda response, row: score(response, row, **options)

    return new_scorer


def get_benchmark(name: str) -> ModuleType:
    """The benchmark module for `name`; an unknown name raises listing the valid ones."""
    if name not in EVAL_BENCHMARK_NAMES:
        raise KeyError(f"unknown benchmark {name!r}; valid: {', '.join(EVAL_BENCHMARK_NAMES)}")
    return importlib.import_module(f"rlsd_harness.benchmarks.{name}")


def benchmark_module(name: str) -> ModuleType:
    """The module of any benchmark the runner accepts (ALL_BENCHMARK_NAMES, the embedded task included)."""
    if name not in ALL_BENCHMARK_NAMES:
        raise KeyError(f"unknown benchmark {name!r}; valid: {', '.join(ALL_BENCHMARK_NAMES)}")
    return importlib.import_module(f"rlsd_harness.benchmarks.{name}")


def metadata(name: str) -> Metadata:
    """The `Metadata` of benchmark `name` (one of ALL_BENCHMARK_NAMES); an unknown name lists the valid ones."""
    return benchmark_module(name).METADATA


class _LazyRegistry(Mapping):
    """{"mmmu": module, ...}, importing each module when it is first looked up."""

    def __getitem__(self, name: str) -> ModuleType:
        return get_benchmark(name)

    def __iter__(self) -> Iterator[str]:
        return iter(EVAL_BENCHMARK_NAMES)

    def __len__(self) -> int:
        return len(EVAL_BENCHMARK_NAMES)


EVAL_BENCHMARKS: Mapping[str, ModuleType] = _LazyRegistry()
