"""The budget points a run reaches: eval.budget_points, fractions of its budget (train.budget, or train.steps
without one), plus the base policy as point 0.

They are decided like the evaluator's (training/evals.py) but also when no evaluation runs: they mark the
checkpoints retention keeps (train.keep_budget_points) and the steps whose policy goes to
<run>/budget_policies/<fraction>/ (train.save_budget_policies). The points reached are recorded in
<run>/budget_points.json; a resumed run keeps those up to its checkpoint's step. Rank 0 decides for every rank
(a seconds budget differs between ranks) and writes the record."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rlsd_harness import dist
from rlsd_harness.config.typed import RunConfig
from rlsd_harness.training import checkpoint
from rlsd_harness.training.evals import budget_fractions, budget_point_due, budget_progress


class BudgetPoints:
    def __init__(self, cfg: RunConfig, run_dir: Path, trainer: Any, processor: Any, init_path: Path, rank: int) -> None:
        self.cfg, self.run_dir, self.trainer, self.processor, self.rank = cfg, run_dir, trainer, processor, rank
        self.recipe = init_path / "recipe.json"
        self.fractions = budget_fractions(cfg.eval.budget_points)
        self.reached = [e for e in checkpoint.read_budget_record(run_dir) if e["step"] <= trainer.rollout_step] \
            if cfg.run.resume else []
        if rank == 0:
            checkpoint.write_budget_record(run_dir, self.reached)
        last = max((e["fraction"] for e in self.reached), default=None)
        self.done = {f for f in self.fractions if last is not None and f <= last + 1e-9}

    def reach(self, metrics: dict[str, Any], last: bool, base: bool = False) -> float | None:
        """The point reached by the step that produced `metrics` (the base policy's, 0, with `base`), or None.
        A point reached is recorded, and its policy written when train.save_budget_policies asks for it."""
        point = 0.0 if base else None
        if self.rank == 0 and not base:
            point = budget_point_due(budget_progress(self.cfg, metrics, self.trainer.rollout_step), self.fractions,
                                     self.done, last)
        point = dist.all_gather_object(point)[0]
        if point is None:
            return None
        if not base:
            self.done.update(f for f in self.fractions if f <= point + 1e-9)
        entry = {"fraction": point, "step": self.trainer.rollout_step,
                 "flops": float(metrics.get("ledger/cum/flops/total", 0.0))}
        self.reached.append(entry)
        if self.rank == 0:
            checkpoint.write_budget_record(self.run_dir, self.reached)
        if self.cfg.train.save_budget_policies:
            checkpoint.write_policy(self.run_dir, self.trainer.engine, self.processor, self.rank, point, entry["step"],
                                    entry["flops"], self.recipe if self.recipe.exists() else None)
        return point
