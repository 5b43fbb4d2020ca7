"""train.eval_every=0 turns every held-out evaluation off, budget points included (a run that trains without
evaluating costs nothing extra). A comparison, whose tables read the budget-point records, refuses such runs
before any compute, in one line (an ablation with eval_every=0 once trained 8 runs, then had no table)."""

from __future__ import annotations

import pytest

from rlsd_harness.config import ConfigError
from rlsd_harness.data import build_data
from rlsd_harness.training.evals import RunEvaluator
from rlsd_harness.verifier import build_verifier
from tests.conftest import typed_config


def evaluator(*overrides: str) -> RunEvaluator:
    cfg = typed_config("model.warmup=null", "eval.n=4", "eval.budget_n=6", "train.steps=4", *overrides)
    return RunEvaluator(cfg, build_data(cfg.data, cfg.seed), build_verifier(cfg.data.verifier))


def test_eval_every_zero_evaluates_nothing():
    ev = evaluator("train.eval_every=0", "eval.budget_points=[0.5,1.0]")
    assert not ev.enabled and ev.targets(0) == [] and ev.targets(4, progress=1.0, last=True) == []


def test_routine_evaluations_follow_eval_every_and_budget_points_come_with_them():
    ev = evaluator("train.eval_every=2", "eval.budget_points=[]")
    assert [(t.name, t.n) for t in ev.targets(0)] == [("validation", 4)]
    assert ev.targets(1) == [] and [(t.name, t.n) for t in ev.targets(2)] == [("validation", 4)]
    ev = evaluator("train.eval_every=100", "eval.budget_points=[0.5,1.0]")
    assert [(t.name, t.budget_point) for t in ev.targets(2, progress=0.5)] == [("test", 0.5)]


def test_a_comparison_refuses_runs_that_would_write_no_table_before_any_compute(tmp_path, monkeypatch):
    from rlsd_harness.analysis import compare

    trained = []
    monkeypatch.setattr(compare, "_train_all", lambda *a, **k: trained.append(a) or True)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"train.eval_every=0 turns every held-out evaluation off"):
        compare.compare("embedded", overrides=["train.eval_every=0"])
    assert trained == [] and not (tmp_path / "results").exists()
