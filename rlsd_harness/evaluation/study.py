"""A study's budget-point policies, evaluated on the benchmarks as a job of their own (`rlsd-evaluate study=`).

Training with `train.save_budget_policies=true` leaves, in each run folder, the policy it had at step 0 and at
each of `eval.budget_points` as a model folder:

    <study>/runs/<method>-s<seed>/budget_policies/<fraction>/      e.g. 0.00 (the base), 0.50, 1.00

Evaluating them apart from training keeps the training GPUs for training; at the paper's size one evaluation
is ~7,000 items x k responses of up to 4 K tokens per checkpoint. Each policy's results go beside it:

    <study>/runs/<method>-s<seed>/benchmarks/<fraction>/           rlsd-evaluate's folder (config.json,
                                                                  <key>.jsonl, <key>.metrics.json, table.md)

which is what the paper table (`rlsd-report folder=<study> table=paper`) reads. Every folder continues where an
interrupted evaluation stopped (the runner skips the items already in its records), so the whole pass can be
killed and started again.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

POLICIES = "budget_policies"
RESULTS = "benchmarks"
RUN_LABEL = re.compile(r"^(?P<method>.+)-s(?P<seed>\d+)$")


@dataclass(frozen=True)
class BudgetPolicy:
    run: Path  # the run folder
    method: str  # the arm, from the run folder's name <method>-s<seed>
    seed: int
    fraction: str  # the folder name, e.g. "0.50"
    policy: Path  # the model folder

    @property
    def out(self) -> Path:
        return self.run / RESULTS / self.fraction


def study_runs(study: Path) -> list[Path]:
    """The run folders of a study (`runs/<method>-s<seed>/`), or the study itself when it is one run folder."""
    study = Path(study)
    if (study / POLICIES).is_dir():
        return [study]
    runs = study / "runs"
    if not runs.is_dir():
        raise FileNotFoundError(f"{study} is neither a study (no runs/ folder) nor a run folder (no {POLICIES}/)")
    return sorted(p for p in runs.iterdir() if p.is_dir() and RUN_LABEL.match(p.name))


def budget_policies(study: Path) -> list[BudgetPolicy]:
    """Every budget-point policy of a study, by run then fraction; an error names what is missing."""
    found = []
    runs = study_runs(study)
    for run in runs:
        m = RUN_LABEL.match(run.name)
        if m is None:
            raise FileNotFoundError(f"run folder {run} is not named <method>-s<seed>")
        folder = run / POLICIES
        for policy in sorted(folder.iterdir()) if folder.is_dir() else []:
            if (policy / "config.json").exists():
                found.append(BudgetPolicy(run, m["method"], int(m["seed"]), policy.name, policy))
    if not found:
        raise FileNotFoundError(f"no budget-point policies under {study} ({len(runs)} run folders): train with "
                                f"train.save_budget_policies=true (experiment=paper_main_table sets it)")
    return found


def evaluate_study(study: str | Path, names: list[str], cfg: Any, limit: int | None = None,
                   overwrite: bool = False, allow_missing_images: bool | list[str] = False,
                   log: Callable[[str], None] | None = None) -> list[BudgetPolicy]:
    """Evaluate every budget-point policy of `study` on the benchmarks `names` into its results folder (under
    a launcher, every rank walks the same list and shares each policy's items)."""
    import sys

    from rlsd_harness.dist import shutdown
    from rlsd_harness.evaluation.runner import process_group, run_benchmarks

    policies = budget_policies(Path(study))
    # One process group for the whole pass: tearing it down and rebuilding it on the launcher's rendezvous after
    # every policy (what a single run_benchmarks call does) cost minutes per policy on CPU.
    rank, world = process_group()
    log = log or (lambda msg: print(msg, file=sys.stderr) if rank == 0 else None)  # one progress line per policy
    try:
        for n, bp in enumerate(policies, 1):
            log(f"[{n}/{len(policies)}] {bp.run.name} at budget {bp.fraction}: {bp.policy} -> {bp.out}")
            run_benchmarks(bp.policy, names, cfg, bp.out, limit, overwrite, allow_missing_images=allow_missing_images)
    finally:
        if world > 1:
            shutdown()
    return policies
