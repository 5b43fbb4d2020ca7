"""A held-out evaluation shows its progress item by item (issue #28: a fresh clone's first run evaluated 1,200
test items at step 0 for 15 minutes with no output): sample_records reports each batch's items, and a run's
evaluation logs a line with its ETA (every 10 s, and at the end) unless eval.progress=false."""

from __future__ import annotations

from types import SimpleNamespace

from rlsd_harness.config import compose_config
from rlsd_harness.data import EmbeddedData
from rlsd_harness.evaluation import heldout
from rlsd_harness.training.evals import RunEvaluator, Target
from rlsd_harness.verifier import ExactVerifier
from tests.conftest import typed_config


class Echo:
    """An engine whose every response is the item's answer."""

    def generate(self, prompts, params, seeds):
        return SimpleNamespace(texts=[f"\\boxed{{{p.answer}}}" for p in prompts for _ in range(params.n)])


def test_sample_records_reports_the_items_done_after_each_batch():
    items = EmbeddedData(level=1).heldout_set("validation", 5)
    done: list[int] = []
    decoding = heldout.decoding_from_config(compose_config(["eval.decoding=greedy", "eval.k=1"]).eval)
    records = heldout.sample_records(Echo(), items, [it.id for it in items], decoding, 8,
                                     heldout.verifier_scorer(ExactVerifier()), batch=2, progress=done.append)
    assert done == [2, 4, 5] and len(records) == 5


def run_evaluation(monkeypatch, tmp_path, capsys, *overrides: str) -> str:
    def fake_evaluate_model(model, processor, items, ids, *args, progress=None, **kwargs):
        for n in range(1, len(items) + 1):  # one item at a time, as batches of one would
            if progress is not None:
                progress(n)
        return [{"id": str(i), "correct": [1], "greedy": 1} for i in ids]

    monkeypatch.setattr(heldout, "evaluate_model", fake_evaluate_model)
    cfg = typed_config("model.warmup=null", "eval.n=4", "eval.budget_n=6", "train.steps=4", *overrides)
    ev = RunEvaluator(cfg, EmbeddedData(level=1), ExactVerifier())
    ev.place(tmp_path, 0, 1)
    capsys.readouterr()
    out = ev.run(None, None, [Target("test", 6, 0.0)], rollout_step=0)
    assert out["eval/test/n"] == 6
    return capsys.readouterr().err


def test_a_runs_evaluation_logs_its_progress(monkeypatch, tmp_path, capsys):
    err = run_evaluation(monkeypatch, tmp_path, capsys)
    lines = err.strip().splitlines()
    assert lines and lines[-1].startswith("step 0: evaluating test (budget point 0, 6 items) item 6/6, "), err
    assert "ETA" in lines[-1], err


def test_eval_progress_false_is_silent(monkeypatch, tmp_path, capsys):
    assert run_evaluation(monkeypatch, tmp_path, capsys, "eval.progress=false").strip() == ""
