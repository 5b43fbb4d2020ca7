"""train.eval_every=0 turns off the routine held-out evaluations only: the budget points still run, since a
study's tables read them (an ablation with eval_every=0 trained 8 runs, then had no table to write)."""

from __future__ import annotations

from rlsd_harness.config import compose_config
from rlsd_harness.data import build_data
from rlsd_harness.training.evals import RunEvaluator
from rlsd_harness.verifier import build_verifier


def evaluator(*overrides: str) -> RunEvaluator:
    cfg = compose_config(["model.warmup=null", "eval.n=4", "eval.budget_n=6", "train.steps=4", *overrides])
    return RunEvaluator(cfg, build_data(cfg.data, cfg.seed), build_verifier(cfg.data.verifier))


def test_eval_every_zero_keeps_the_budget_points():
    ev = evaluator("train.eval_every=0", "eval.budget_points=[0.5,1.0]")
    assert ev.enabled
    base = ev.targets(0)
    assert [(t.name, t.n, t.budget_point) for t in base] == [("test", 6, 0.0)]  # no routine validation
    assert ev.targets(1, progress=0.25) == []
    assert [(t.name, t.budget_point) for t in ev.targets(2, progress=0.5)] == [("test", 0.5)]
    assert [(t.name, t.budget_point) for t in ev.targets(4, progress=1.0, last=True)] == [("test", 1.0)]


def test_no_evaluation_at_all_needs_both_off():
    ev = evaluator("train.eval_every=0", "eval.budget_points=[]")
    assert not ev.enabled and ev.targets(0) == [] and ev.targets(4, progress=1.0, last=True) == []


def test_routine_evaluations_still_follow_eval_every():
    ev = evaluator("train.eval_every=2", "eval.budget_points=[]")
    assert [(t.name, t.n) for t in ev.targets(0)] == [("validation", 4)]
    assert ev.targets(1) == [] and [(t.name, t.n) for t in ev.targets(2)] == [("validation", 4)]
