"""LoRA end to end on the tiny VLM: every registered objective trains 5 steps with adapters (slow), one objective
fast; the base weights stay bit-identical while the adapters move; final/ is a plain model folder with the
adapters merged; a kill and resume is bit-identical, teacher adapter and the adapters' optimizer state included;
ZeRO-2 and ZeRO-3 on two ranks follow one rank."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlsd_harness.algorithms import objective_names
from rlsd_harness.config import compose_config
from rlsd_harness.models import load_model
from rlsd_harness.training.run import run
from tests.conftest import small_overrides
from tests.resume_helpers import differences, metric_lines

LORA = ["model.lora.enabled=true", "model.lora.rank=4", "model.lora.alpha=8"]
# RLSD-style teachers sync at every step here, so that a 2-5 step run exercises the teacher adapter's update
SYNC = {"rlsd": ["algorithm.teacher.sync_every=1"], "rlsd_shuffled": ["algorithm.teacher.sync_every=1"]}


def train(tmp_path: Path, name: str, algorithm: str, *extra: str) -> Path:
    args = small_overrides(tmp_path, f"run.name={name}", f"algorithm={algorithm}", *LORA, *SYNC.get(algorithm, []),
                           *extra)
    return run(compose_config(args), log=lambda m: None)


def check_lora_run(run_dir: Path, base_dir: Path, steps: int) -> None:
    """The run trained `steps` steps with finite losses; in its last checkpoint every base weight equals the
    initial model's bit for bit and the student's adapters moved; final/ loads as a plain model whose weights
    are base + merged adapters."""
    lines = metric_lines(run_dir)[1:]
    assert [m["rollout_step"] for m in lines] == list(range(1, steps + 1))
    assert all(torch.isfinite(torch.tensor(m["actor/loss"])) for m in lines)
    base = load_model(base_dir).state_dict()
    ckpt = load_file(sorted((run_dir / "checkpoints").glob("step-*"))[-1] / "model.safetensors")
    frozen = {k: v for k, v in ckpt.items() if ".lora_" not in k}
    assert frozen, "no base weight in the checkpoint"
    for name, tensor in frozen.items():
        assert torch.equal(tensor, base[name.replace(".base_layer.", ".")]), f"base weight {name} changed"
    trained_b = [v for k, v in ckpt.items() if ".lora_B.default." in k]
    assert trained_b and all(v.abs().sum() > 0 for v in trained_b), "a student adapter did not train (B still 0)"
    # final/ is written like the base model's folder (the same tensor names on disk), adapters merged in
    assert set(load_file(run_dir / "final" / "model.safetensors")) == set(load_file(base_dir / "model.safetensors"))
    final = load_model(run_dir / "final").state_dict()  # refuses missing or unexpected weights
    changed = {k for k in final if not torch.equal(final[k], base[k])}
    assert changed and all(k.endswith("_proj.weight") and ".language_model." in k for k in changed), sorted(changed)[:4]


def test_one_objective_trains_adapters_only_fast(tmp_path, tiny_dir):
    """RLSD with its teacher adapter synced every step, 2 steps (~40 s on 2 cores)."""
    run_dir = train(tmp_path, "rlsd", "rlsd", "train.steps=2", "train.save_every=2", "train.prompts_per_step=2",
                    "train.micro_batch_size=8", "rollout.max_new_tokens=8")
    check_lora_run(run_dir, tiny_dir, 2)
    lines = metric_lines(run_dir)[1:]
    assert [m["teacher/updates"] for m in lines] == [1.0, 2.0]
    # the ledger charges frozen weights' backward at 1x their forward, the frozen vision tower's at 0: under the
    # full-parameter 2x (the exact charge: test_lora.py)
    for m in lines:
        assert 0 < m["ledger/step/flops/policy_bwd"] < 2 * m["ledger/step/flops/policy_fwd"]


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", objective_names())
def test_every_objective_runs_five_steps_with_lora(tmp_path, tiny_dir, algorithm):
    run_dir = train(tmp_path, algorithm, algorithm, "train.steps=5", "train.save_every=5")
    check_lora_run(run_dir, tiny_dir, 5)
    last = metric_lines(run_dir)[-1]
    print(f"{algorithm}: 5 LoRA steps, loss {last['actor/loss']:.4f}, reward {last['rollout/reward']:.3f}, "
          f"teacher updates {last.get('teacher/updates', 0):.0f}, cum FLOPs {last['ledger/cum/flops/total']:.3e}")


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["rlsd", "sdpo"])
def test_lora_resume_is_bit_identical(tmp_path, tiny_dir, algorithm):
    """Killed after step 2 (its checkpoint), resumed to 3: the same metrics, final weights and last checkpoint
    (base, student and teacher adapters, the adapters' optimizer state, RNG) as a straight 3-step run."""
    common = ["train.save_every=1", "train.prompts_per_step=2", "train.micro_batch_size=8", "rollout.max_new_tokens=8"]
    straight = train(tmp_path, "straight", algorithm, "train.steps=3", *common)
    split = train(tmp_path, "split", algorithm, "train.steps=2", *common)
    train(tmp_path, "split", algorithm, "train.steps=3", "run.resume=true", *common)
    assert differences(straight, split) == []
    opt = load_file(split / "checkpoints" / "step-000003" / "optimizer-rank0.safetensors")
    n_adapter = sum(v.numel() for k, v in load_file(split / "checkpoints" / "step-000003" / "model.safetensors").items()
                    if ".lora_" in k and ".default." in k)
    # Adam's two moments over the student's adapters and nothing else
    assert sum(v.numel() for k, v in opt.items() if k.endswith((".exp_avg", ".exp_avg_sq"))) == 2 * n_adapter


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(tmp_path: Path, name: str, ranks: int, stage: int, algorithm: str, extra: list[str]) -> list[dict]:
    """tests/test_distributed.py's one- and two-rank runs, without held-out evaluations (minutes on a loaded
    2-core machine) and on a free port (test_distributed's fixed ones may be taken by a run beside this one)."""
    repo = Path(__file__).resolve().parent.parent
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo)}
    args = small_overrides(tmp_path, f"run.name={name}", f"deepspeed=zero{stage}", "train.steps=4", f"algorithm={algorithm}",
                           "train.micro_batch_size=8", "train.save_every=2", "optim.lr=1e-4",
                           *(["algorithm.teacher.sync_every=2"] if algorithm == "rlsd" else []), *extra, "--stop-early")
    if ranks == 1:
        cmd = [sys.executable, "tests/ds_worker.py", *args]
    else:
        launcher = shutil.which("deepspeed", path=str(Path(sys.executable).parent))
        cmd = [launcher, "--num_gpus", str(ranks), "--master_port", str(free_port()), "tests/ds_worker.py", *args]
    subprocess.run(cmd, cwd=repo, env=env, check=True, timeout=900)  # a rank mismatch hangs rather than fails
    return metric_lines(tmp_path / name)[1:]


@pytest.mark.slow
@pytest.mark.parametrize(("stage", "algorithm"), [(2, "rlsd"), (3, "rlsd"), (3, "sdpo")])
def test_lora_two_ranks_follow_one_rank(tmp_path, tiny_dir, stage, algorithm):
    """ZeRO-2 (adapters and their optimizer state partitioned) and ZeRO-3 (the base too, and the teacher's
    adapter set, updated shard by shard); RLSD's teacher adapter synced at step 2, SDPO's blended every step.
    Several minutes per case on 2 cores."""
    extra = [*LORA, "train.balance_ranks=false"] if stage == 2 else [*LORA]
    one = run_ranks(tmp_path, "one", 1, stage, algorithm, extra)
    two = run_ranks(tmp_path, "two", 2, stage, algorithm, extra)
    assert len(one) == len(two) == 4
    for a, b in zip(one, two):
        assert a["rollout/reward"] == b["rollout/reward"]
        assert a["actor/loss"] == pytest.approx(b["actor/loss"], abs=1e-5)
        assert a["teacher/kl"] == pytest.approx(b["teacher/kl"], rel=1e-4, abs=1e-6)
        if stage == 2:  # rows stay on their rank: the same forwards. (Balanced rows split a shared prompt over the
            # ranks, and each rank then runs it: the two-rank run really computes, and is charged, more.)
            assert a["ledger/cum/flops/total"] == pytest.approx(b["ledger/cum/flops/total"], rel=1e-9)
    updates = {"rlsd": 2, "sdpo": 4}[algorithm]
    assert one[-1]["teacher/updates"] == two[-1]["teacher/updates"] == updates
    for name in ("one", "two"):
        check_lora_run(tmp_path / name, tiny_dir, 4)
    ckpt = {n: load_file(tmp_path / n / "checkpoints" / "step-000004" / "model.safetensors") for n in ("one", "two")}
    for k in ckpt["one"]:  # the adapters (student's and teacher's) agree across the two runs
        assert torch.allclose(ckpt["one"][k], ckpt["two"][k], atol=1e-5), k
    assert json.loads((tmp_path / "two" / "finished.json").read_text())["rollout_step"] == 4
