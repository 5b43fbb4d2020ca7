"""rlsd-compare's tuning phase in tuning.mode optuna: the Optuna loop (analysis/tuning/search.py) trained on real
runs, rung by rung, and its record (tuning.csv, picks.json, and the report of analysis/tuning/protocols.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from rlsd_harness.analysis.files import write_csv, write_json
from rlsd_harness.analysis.loading import metrics_lines, run_records
from rlsd_harness.analysis.tuning.grid import TuningPoint, tuning_run_overrides
from rlsd_harness.analysis.tuning.protocols import protocol_from_optuna, write_tuning_report
from rlsd_harness.analysis.tuning.search import (
    OPTUNA_PICK_RULE,
    Trial,
    _format,
    _test_budget,
    open_studies,
    overrides_of,
    search_space,
    settings_of,
    trials_frame,
    tune,
)
from rlsd_harness.config import BUDGET_KEYS


def unfinished_runs(folders: Sequence[Path]) -> list[str]:
    """The run folders of a rung that neither finished it nor failed: a run interrupted (SIGINT / SIGTERM) or
    whose worker process died. Only a run that failed (failed.json) scores FAILED_SCORE."""
    from rlsd_harness.training.run import run_state

    return [Path(f).name for f in folders if run_state(Path(f)) not in ("finished", "failed")]


def run_tuning(target: Path, exp: DictConfig, name: str, extra: list[str], train: Callable[[list], bool],
               log: Callable[[str], None], base: list[str] | None, checked: Callable[[list[str]], DictConfig],
               check: Callable[[dict[str, dict]], None] = lambda _: None) -> dict[str, dict] | None:
    """rlsd-compare's tuning phase in tuning.mode optuna: trains the rungs with `train` (compare._train_all over
    (label, folder, config) jobs), writes tuning.csv, tuning.md, tuning.png and picks.json, returns the picks
    (None while Slurm jobs are queued). `check` sees the picks before anything is written."""
    s = settings_of(exp, name)
    runs_dir = target / "tuning" / "runs"
    kind = str(exp.get("budget_kind", "flops"))
    key = BUDGET_KEYS[kind]

    def overrides(trial: Trial, seed: int, k: int) -> list[str]:
        rungs = f"eval.budget_points=[{','.join(_format(float(r)) for r in s.rungs)}]"
        point = TuningPoint(trial.method, trial.label, float(trial.params.get("lr", 0.0)), {},
                            (*overrides_of(trial.params), rungs, f"train.budget.stop_at={_format(float(s.rungs[k]))}"))
        return tuning_run_overrides(exp, point, seed, runs_dir, extra)

    spaces = {m: search_space(checked(list(overrides(Trial(m, 0, {}), s.seeds[0], 0)))) for m in exp.methods}
    studies = open_studies(target / "tuning" / "optuna.journal", [str(m) for m in exp.methods], s)

    def run_rung(alive: dict[str, list[Trial]], k: int) -> dict[str, dict[int, tuple[float, float]]] | None:
        jobs = [(f"tuning/{t.label}-s{seed}", runs_dir / f"{t.label}-s{seed}", checked(overrides(t, seed, k)))
                for m in alive for t in alive[m] for seed in s.seeds]
        if not train(jobs):
            return None
        stopped = unfinished_runs([folder for _, folder, _ in jobs])
        if stopped:  # interrupted, or its worker died: scoring it as failed would prune its trial for good
            log(f"tuning stopped at rung {k}: {len(stopped)} run(s) neither finished nor failed ({', '.join(stopped[:3])}"
                f"{' ...' if len(stopped) > 3 else ''}); nothing of this rung is scored; rerun the same command to continue")
            return None
        out: dict[str, dict[int, tuple[float, float]]] = {}
        for m in alive:
            out[m] = {}
            for t in alive[m]:
                scores, flops = [], 0.0
                for seed in s.seeds:
                    folder = runs_dir / f"{t.label}-s{seed}"
                    rec = run_records(folder, "validation", list(s.rungs), key) if folder.is_dir() else None
                    at = rec[np.isclose(rec["budget"], s.rungs[k])] if rec is not None else None
                    scores.append(float(at["score"].mean()) if at is not None and len(at) else float("nan"))
                    lines = metrics_lines(folder) if folder.is_dir() else []
                    flops += float(lines[-1].get("ledger/cum/flops/total", 0.0)) if lines else 0.0
                out[m][t.number] = (float(np.mean(scores)), flops)
        return out

    picks = tune(studies, spaces, s, run_rung, log)
    if picks is None:
        return None
    check(picks)
    trials = trials_frame(studies, s)
    budget = _test_budget(exp)
    flops = trials.groupby("method")["flops"].sum().to_dict()
    write_csv(trials, target / "tuning.csv")
    for pick in picks.values():
        pick["n_runs"] = len(s.seeds)
    write_json({"rule": OPTUNA_PICK_RULE, "split": "validation", "budget_point": 1.0, "base": base, "mode": "optuna",
                "settings": {**s.__dict__, "rungs": list(s.rungs), "seeds": list(s.seeds)},
                "tuning_flops": {m: float(flops.get(m, 0.0)) for m in picks},
                "planned_flops_per_method": s.runs_per_method() * budget, "picks": picks}, target / "picks.json")
    write_tuning_report(target, protocol_from_optuna(trials, picks, s, budget, spaces, name))
    return picks
