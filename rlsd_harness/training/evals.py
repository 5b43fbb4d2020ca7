"""Held-out evaluations of a training run: which to run at a step, and their records in the run folder.

Two kinds, both with the decoding of `eval` (k samples, optionally a greedy response; evaluation/heldout.py):

- routine: every `train.eval_every` rollout steps and at the last, `eval.n` items of `eval.split`
  (validation by default: it is what hyperparameters are chosen on);
- budget points: `eval.budget_n` items of `eval.budget_split` (test by default: what the tables report) at
  the first step at or past each fraction in `eval.budget_points` of `train.budget.value` (of `train.steps`
  when the budget kind is null), and at the last step. When several fractions are first reached at one step
  the evaluation is recorded under the largest; a last step that reaches no new fraction records the
  fraction it spent (below 1 when `train.steps` ends the run before the budget does).

The step-0 line evaluates the base policy at both sizes. Each of `train.eval_benchmarks` (the benchmark
runner's suites, with their own prompts, scorers, `eval.sources` and `eval.benchmark_max_new_tokens`) is
evaluated beside the held-out split, `eval.n` items at routine steps and `eval.budget_n` at budget points.
`train.eval_every: 0` turns all held-out evaluation off.

Each evaluation writes evals/<name>-step<rollout_step:06d>.jsonl (one line per item: id, correct = k 0/1
verdicts, greedy = 0/1 or null) and adds eval/<name>/{mean@k, pass@1, pass@<k>, n, k, file, budget_point}
to that step's metrics line, <name> being the split or the benchmark key; eval/seconds is the time of all
evaluations of the step. A routine and a budget-point evaluation of the same split at one step are one
evaluation of the larger size (a smaller set is a prefix of a larger one).

With `eval.cache_base: true` a single-process run reads its step-0 evaluations of the held-out splits
from the cache (HARNESS_CACHE/evals/) when an earlier run evaluated the same weights on the same items with
the same decoding: every run of a study starts from one base, and its step-0 evaluation is deterministic
(the samples are seeded by item, not by run). The key hashes the parameters' bytes, the item ids, the
decoding, the token limit and the data config (which fixes the verifier).

Items are sharded over the ranks (under ZeRO-3 each forward needs all of them); a set that does not split
evenly loses its last few items, so that every rank runs the same generate calls. Scoring happens on each
rank's shard: a stateful scorer (MMMU's random fallback for unparseable answers) draws per shard.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rlsd_harness import dist
from rlsd_harness.config import BUDGET_KEYS, ConfigError
from rlsd_harness.config.schema import require_typed
from rlsd_harness.config.typed import RunConfig
from rlsd_harness.evaluation import heldout
from rlsd_harness.models import cache_root

DATA_BATCH = 128  # held-out prompts per generate call (the embedded task's prompts and answers are short)


@dataclass(frozen=True)
class Target:
    """One evaluation at one step: `name` (a split or a benchmark key) on its first `n` items."""

    name: str
    n: int
    budget_point: float | None = None


@dataclass
class _Source:
    """Items of one split or benchmark and how to prompt and score them."""

    items: list
    ids: list[str]
    new_scorer: Callable[[], heldout.Scorer]
    prompt: Callable[[Any], Any] | None
    max_new_tokens: int
    batch: int
    seed_uid: Callable[[str], str] | None


def budget_progress(cfg: RunConfig, metrics: dict[str, float], rollout_step: int) -> float:
    """The fraction of the run's budget spent: train.budget.value of its kind, or train.steps without one."""
    budget = cfg.train.budget
    if budget.kind is None:
        return rollout_step / cfg.train.steps
    return float(metrics[BUDGET_KEYS[budget.kind]]) / float(budget.value)


def budget_point_due(progress: float, fractions: Sequence[float], done: set[float], last: bool) -> float | None:
    """The budget point to evaluate at a step that has spent `progress`, or None: the largest fraction first
    reached now; at the last step, when no fraction is new, the spent fraction (rounded to 1e-4)."""
    if not fractions:
        return None
    new = [f for f in fractions if f not in done and progress >= f - 1e-9]
    if new:
        return max(new)
    return round(progress, 4) if last else None


def budget_fractions(values: Any) -> list[float]:
    """eval.budget_points in increasing order (fractions in (0, 1]: the schema checks them)."""
    return sorted(float(v) for v in values)


class RunEvaluator:
    """The held-out evaluations of one run (built on every rank; rank 0 writes the records)."""

    def __init__(self, cfg: RunConfig, data: Any, verifier: Callable[[str, Any], Any]) -> None:
        require_typed(cfg, "RunEvaluator")
        self.cfg, self.run_dir, self.rank, self.world = cfg, Path("."), 0, 1
        ecfg = cfg.eval
        self.every = cfg.train.eval_every
        self.decoding = heldout.decoding_from_config(ecfg)
        self.fractions = budget_fractions(ecfg.budget_points)
        self.n, self.budget_n = ecfg.n, ecfg.budget_n
        self.split, self.budget_split = ecfg.split, ecfg.budget_split
        self.benchmarks = list(cfg.train.eval_benchmarks)
        self.done: set[float] = set()
        self.cache_base = ecfg.cache_base
        self.sources: dict[str, _Source] = {}
        if not self.enabled:
            return
        asked = [(self.split, self.n, "eval.split")]
        if self.fractions:
            asked.append((self.budget_split, self.budget_n, "eval.budget_split"))
        sizes: dict[str, tuple[int, str]] = {}
        for split, n, key in asked:
            if split is None:
                continue
            sizes[split] = (max(n, sizes.get(split, (0, key))[0]), key)
        for split, (n, key) in sizes.items():
            items = heldout.heldout_items(data, split, n, key)
            self.sources[split] = _Source(items, [str(it.id) for it in items], heldout.verifier_scorer(verifier),
                                          None, int(ecfg.max_new_tokens), DATA_BATCH, None)
        self._add_benchmarks()
        if not self.sources:
            raise ConfigError("train.eval_every > 0 but nothing to evaluate: eval.split and eval.budget_split are null "
                              "and train.eval_benchmarks is empty (set train.eval_every=0 to evaluate nothing)")

    def place(self, run_dir: Path, rank: int, world: int) -> None:
        """Where records go and which shard this process evaluates."""
        self.run_dir, self.rank, self.world = Path(run_dir), rank, world

    @property
    def enabled(self) -> bool:
        return self.every > 0

    def _add_benchmarks(self) -> None:
        if not self.benchmarks:
            return
        from rlsd_harness.evaluation.runner import _seed_uid, build_suite

        limit = max(self.n, self.budget_n if self.fractions else 0)
        for spec in dict.fromkeys(self.benchmarks):
            suite = build_suite(spec, self.cfg, limit)  # MathVista with its rule-based extractor
            if suite.key in heldout.SPLITS:
                raise ConfigError(f"train.eval_benchmarks: {spec!r} collides with a split name")
            self.sources[suite.key] = _Source(
                suite.items, suite.ids, suite.new_scorer, suite.prompt, suite.max_new_tokens,
                int(self.cfg.eval.batch), lambda i, s=suite: _seed_uid(s, i))

    # ------------------------------------------------------------------ scheduling

    def resume(self, metrics_lines: Sequence[dict]) -> None:
        """Budget points already evaluated in the lines a resumed run keeps."""
        for line in metrics_lines:
            if line.get("rollout_step", 0) > 0:
                self.done.update(v for k, v in line.items() if k.startswith("eval/") and k.endswith("/budget_point"))

    def targets(self, rollout_step: int, progress: float = 0.0, last: bool = False) -> list[Target]:
        """What to evaluate at `rollout_step` (0 = the base, at every size). Every rank must call it with
        the same arguments (see `step_targets`)."""
        if not self.enabled:
            return []
        routine = rollout_step == 0 or rollout_step % self.every == 0 or last
        point = 0.0 if rollout_step == 0 and self.fractions else budget_point_due(progress, self.fractions, self.done, last)
        if rollout_step > 0 and point is not None:
            self.done.update(f for f in self.fractions if progress >= f - 1e-9)
        wanted: dict[str, Target] = {}

        def add(t: Target) -> None:
            old = wanted.get(t.name)
            if old is None or t.n > old.n or (t.n == old.n and t.budget_point is not None):
                wanted[t.name] = t

        for name, source in self.sources.items():
            is_split = name in heldout.SPLITS
            if routine and (name == self.split or not is_split):
                add(Target(name, min(self.n, len(source.items))))
            if point is not None and (name == self.budget_split or not is_split):
                add(Target(name, min(self.budget_n, len(source.items)), point))
        return list(wanted.values())

    def step_targets(self, rollout_step: int, metrics: dict[str, float], last: bool) -> list[Target]:
        """`targets` as rank 0 decides them: a seconds budget differs between ranks, and only rank 0 reads
        the budget points a resumed run already evaluated."""
        if not self.enabled:
            return []
        progress = budget_progress(self.cfg, metrics, rollout_step) if self.fractions else 0.0
        targets = self.targets(rollout_step, progress, last)
        if self.world > 1 and self.fractions:
            targets = dist.all_gather_object(targets)[0]
        return targets

    # ------------------------------------------------------------------ running

    def run(self, model: Any, processor: Any, targets: Sequence[Target], rollout_step: int,
            synced: bool = False) -> dict[str, Any]:
        """Evaluate `targets` with `model`; returns the metrics entries (the same on every rank)."""
        if not targets:
            return {}
        t0 = time.perf_counter()
        out: dict[str, Any] = {}
        for t in targets:
            source = self.sources[t.name]
            keep = t.n - t.n % self.world
            if keep == 0:
                raise ConfigError(f"{t.name}: {t.n} held-out items cannot be shared by {self.world} ranks")
            cached = None
            if self.cache_base and rollout_step == 0 and self.world == 1 and t.name in heldout.SPLITS:
                cached = self._cache_file(model, source, keep)
            if cached is not None and cached.exists():
                records = heldout.read_records(cached)
            else:
                shard = slice(self.rank, keep, self.world)
                items = source.items[shard]
                bar = self._progress(t, len(items), rollout_step)
                mine = heldout.evaluate_model(
                    model, processor, items, source.ids[shard], self.decoding, source.max_new_tokens,
                    source.new_scorer, source.prompt, batch=source.batch, synced=synced, seed_uid=source.seed_uid,
                    progress=bar.update if bar is not None else None)
                if bar is not None:
                    bar.close()
                gathered = dist.all_gather_object(mine)
                # rank r holds items r, r + world, ...: interleave back into item order
                records = [gathered[i % self.world][i // self.world] for i in range(keep)]
                if cached is not None:
                    heldout.write_records(cached, records)
            rel = f"evals/{t.name}-step{rollout_step:06d}.jsonl"
            if self.rank == 0:
                heldout.write_records(self.run_dir / rel, records)
            out.update(heldout.metric_entries(t.name, heldout.summarise(records), rel, t.budget_point))
        out["eval/seconds"] = time.perf_counter() - t0
        return out

    def _progress(self, target: Target, items: int, rollout_step: int) -> Any:
        """Rank 0's display of an evaluation, item by item (eval.progress): a bar on a terminal, a line every
        10 s with its ETA in a log. A run's step-0 evaluation of 1,200 test items once ran ten minutes silent."""
        from rlsd_harness.training.warmup import Progress

        if self.rank != 0 or not self.cfg.eval.progress:
            return None
        what = f"budget point {target.budget_point:g}, " if target.budget_point is not None else ""
        return Progress(items, f"step {rollout_step}: evaluating {target.name} ({what}{target.n} items)",
                        log=lambda msg: print(msg, file=sys.stderr), unit="item")

    def _cache_file(self, model: Any, source: _Source, n: int) -> Path:
        digest = hashlib.sha256()
        for name, tensor in sorted(model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        digest.update(json.dumps({"ids": source.ids[:n], "decoding": repr(self.decoding),
                                  "max_new_tokens": source.max_new_tokens,
                                  "data": repr(self.cfg.data), "model": repr(self.cfg.model)}, sort_keys=True).encode())
        return cache_root() / "evals" / f"{digest.hexdigest()[:20]}.jsonl"


