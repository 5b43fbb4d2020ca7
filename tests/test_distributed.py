"""Two ranks under the `deepspeed` launcher (gloo on CPU) follow one rank's loss trajectory: ZeRO-2 with the RLSD
teacher as a replica, ZeRO-3 with partitioned teachers (RLSD's synced at step 2, SDPO's EMA every step), rows
balanced between ranks by tokens (with two mini-batches and token budgets for SDPO), checkpoints included
(slow: ~30 s per case)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import small_overrides

REPO = Path(__file__).resolve().parent.parent


def _run(tmp_path: Path, name: str, ranks: int, stage: int, algorithm: str, extra: list[str], env: dict) -> list[dict]:
    # lr 1e-4: at 1e-3, Adam's first updates (m / sqrt(v) ~ sign(g)) turn the float-order differences of a
    # two-rank gradient sum on near-zero gradients into visible parameter differences within three steps.
    args = small_overrides(tmp_path, f"run.name={name}", f"deepspeed=zero{stage}", "train.steps=4", f"algorithm={algorithm}",
                           "train.micro_batch_size=8", "train.save_every=2", "optim.lr=1e-4",
                           "train.eval_every=2", "eval.n=8", "eval.budget_n=8", "eval.budget_points=[0.5,1.0]",
                           *(["algorithm.teacher.sync_every=2"] if algorithm == "rlsd" else []), *extra)
    args.append("--stop-early")  # responses end at different steps on different ranks
    if ranks == 1:
        cmd = [sys.executable, "tests/ds_worker.py", *args]
    else:
        launcher = shutil.which("deepspeed", path=str(Path(sys.executable).parent))
        cmd = [launcher, "--num_gpus", str(ranks), "--master_port", str(29533 + stage), "tests/ds_worker.py", *args]
    subprocess.run(cmd, cwd=REPO, env=env, check=True, timeout=300)  # a rank mismatch hangs rather than fails
    return [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()][1:]


@pytest.mark.slow
@pytest.mark.parametrize(("stage", "algorithm", "extra"), [
    (2, "rlsd", ["train.balance_ranks=false"]),
    (3, "rlsd", []),
    # The teacher reads an image the student does not (data.privileged=image_hint): rows that change rank keep
    # their teacher's images (RolloutBatch.teacher_vision), and two ranks still follow one.
    (3, "rlsd", ["data.privileged=image_hint"]),
    # Every tiny parameter is under DeepSpeed's 1e5 persistence default, so after the first forward ZeRO-3 keeps
    # them all gathered (the RLSD case: the teacher's updates must reach those full copies). With a threshold
    # of 0 (the SDPO case) every forward gathers across the ranks, as for an 8B model, and generation must
    # keep the ranks in step.
    (3, "sdpo", ["train.mini_batches=2", "train.token_budget=160", "train.forward_token_budget=320",
                 "deepspeed.param_persistence_threshold=0"]),
])
def test_two_ranks_follow_one_rank(tmp_path, tiny_dir, stage, algorithm, extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    one = _run(tmp_path, "one", 1, stage, algorithm, extra, env)
    two = _run(tmp_path, "two", 2, stage, algorithm, extra, env)
    assert len(one) == len(two) == 4
    # checkpoints (consolidated weights under ZeRO-3) and the final export exist for both
    for name in ("one", "two"):
        assert (tmp_path / name / "checkpoints" / "step-000002" / "model.safetensors").exists()
        assert (tmp_path / name / "final" / "model.safetensors").exists()
    for a, b in zip(one, two):
        assert a["rollout/reward"] == b["rollout/reward"]
        assert a["ledger/cum/tokens/generated"] == b["ledger/cum/tokens/generated"]
        assert a["actor/loss"] == pytest.approx(b["actor/loss"], abs=1e-5)
        assert a["teacher/kl"] == pytest.approx(b["teacher/kl"], rel=1e-4, abs=1e-6)
        for key in ("eval/validation/mean@k", "eval/validation/pass@1", "eval/test/mean@k", "eval/test/pass@1"):
            assert a.get(key) == b.get(key)  # held-out evaluation, sharded over the ranks
    assert "eval/validation/mean@k" in one[1] and "eval/validation/mean@k" in one[3]
    assert one[1]["eval/test/budget_point"] == 0.5 and one[3]["eval/test/budget_point"] == 1.0
    for name in ("one", "two"):  # the per-item records, gathered from the ranks in item order
        records = [json.loads(x) for x in (tmp_path / name / "evals" / "test-step000004.jsonl").read_text().splitlines()]
        assert len(records) == 8 and all(len(r["correct"]) == 4 for r in records)
    assert (tmp_path / "one" / "evals" / "test-step000004.jsonl").read_text() == \
        (tmp_path / "two" / "evals" / "test-step000004.jsonl").read_text()
    updates = {"rlsd": 2, "sdpo": 4 * 2}[algorithm]  # RLSD syncs at step 2; SDPO's EMA after each optimizer step
    assert one[-1]["teacher/updates"] == two[-1]["teacher/updates"] == updates
    if "train.balance_ranks=false" not in extra:  # rows moved between ranks: token loads evened out
        assert all(b["actor/rank_imbalance_after"] <= b["actor/rank_imbalance_before"] for b in two)
        assert any(b["actor/rank_imbalance_after"] < b["actor/rank_imbalance_before"] for b in two)
