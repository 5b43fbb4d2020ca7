"""Where metrics go and what they are called: metrics.jsonl always, tensorboard when asked, and a glossary
entry for every key a run writes."""

from __future__ import annotations

import json

import pytest

from rlsd_harness.config import compose_config
from rlsd_harness.training.metrics import glossary_entry, glossary_markdown, namespaced, open_sinks

TINY = ["model.warmup=null", "data.verifier=parity", "rollout.max_new_tokens=8", "train.prompts_per_step=2",
        "train.group_size=4", "train.micro_batch_size=8", "eval.n=8", "eval.budget_n=8", "train.steps=2", "train.eval_every=1",
        "train.save_every=0", "train.progress=false"]


@pytest.mark.parametrize("algorithm", ["grpo", "rlsd"])
def test_a_run_logs_to_tensorboard_beside_metrics_jsonl(tmp_path, algorithm, tiny_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from rlsd_harness.training.run import run

    run(compose_config([f"algorithm={algorithm}", f"run.dir={tmp_path}", "run.name=r", "run.trackers=[tensorboard]", *TINY]))
    lines = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [ln["rollout_step"] for ln in lines] == [0, 1, 2]
    events = EventAccumulator(str(tmp_path / "r" / "tensorboard"))
    events.Reload()
    for key in ("rollout/reward", "actor/loss", "ledger/cum/flops/total"):
        logged = {e.step: e.value for e in events.Scalars(key)}
        assert logged == pytest.approx({ln["rollout_step"]: ln[key] for ln in lines if key in ln}, rel=1e-6)
    undocumented = sorted({k for ln in lines for k in ln if glossary_entry(k) is None})
    assert not undocumented, f"keys without a glossary entry: {undocumented}"


def test_names_land_in_one_namespace_each():
    flat = {"reward": 1.0, "loss": 2.0, "pg_clipfrac": 0.1, "teacher_kl": 0.3, "teacher_updates": 1.0,
            "cum/flops/total": 5.0, "step/time/rollout": 0.2, "step": 3.0, "eval/test/pass@1": 0.5}
    assert namespaced(flat) == {"rollout/reward": 1.0, "actor/loss": 2.0, "actor/pg_clipfrac": 0.1, "teacher/kl": 0.3,
                                "teacher/updates": 1.0, "ledger/cum/flops/total": 5.0,
                                "ledger/step/time/rollout": 0.2, "step": 3.0, "eval/test/pass@1": 0.5}
    assert glossary_entry("actor/not_a_metric") is None and glossary_entry("ledger/cum/flops/total")


def test_unknown_tracker_is_named(tmp_path):
    with pytest.raises(ValueError, match="unknown run.trackers entry 'tensorbored'; valid: tensorboard, wandb"):
        open_sinks(tmp_path, ["tensorbored"], {})


def test_docs_metrics_is_the_generated_glossary():
    from pathlib import Path

    doc = Path(__file__).resolve().parents[1] / "docs" / "metrics.md"
    assert doc.read_text() == glossary_markdown(), "regenerate: python -m rlsd_harness.training.metrics > docs/metrics.md"
