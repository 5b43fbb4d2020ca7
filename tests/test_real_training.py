"""RLSD end to end on real rows: We-Math's testmini (questions, images, answers) as a local training set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "real-benchmarks"
WEMATH = REAL / "wemath" / "testmini.json"


@pytest.mark.real_data
@pytest.mark.skipif(not WEMATH.is_file(), reason=f"no real benchmark files: {WEMATH} does not exist")
def test_rlsd_trains_on_real_wemath_rows(tmp_path, tiny_dir):
    from rlsd_harness.config import compose_config
    from rlsd_harness.training.run import run
    from tests.conftest import small_overrides

    cfg = compose_config(small_overrides(
        tmp_path, "algorithm=rlsd", "data=local", f"data.path={WEMATH}", "data.schema=wemath",
        f"data.test_path={WEMATH}", "data.verifier=math", "run.name=wemath", "train.steps=2",
        "train.prompts_per_step=2", "train.group_size=4", "train.micro_batch_size=8", "train.eval_every=2", "eval.split=test", "eval.n=4",
        "eval.k=2", "eval.budget_points=[]"))
    run_dir = run(cfg, log=lambda m: None)
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["rollout_step"] for m in lines] == [0, 1, 2]
    steps = lines[1:]
    # the teacher read its privileged prompt (question + answer, the same images) and the update ran
    assert all("teacher/kl" in m and "actor/w_clip_low_frac" in m for m in steps)
    assert all(m["ledger/step/tokens/fwd_teacher"] > 0 for m in steps)
    records = [json.loads(x) for x in (run_dir / lines[-1]["eval/test/file"]).read_text().splitlines()]
    assert len(records) == 4 and all(len(r["correct"]) == 2 for r in records)
    assert (run_dir / "final" / "config.json").exists()
