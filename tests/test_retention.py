"""Checkpoint retention (train.keep_last, train.keep_budget_points) and the budget-point policies
(train.save_budget_policies) on short tiny runs: which step folders remain, that a kill between a save and the
prune (or inside the prune) never leaves the run without a good checkpoint, and that each budget point's policy
is a complete Hugging Face folder that the benchmark runner loads, written once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlsd_harness.config import compose_config
from rlsd_harness.training import checkpoint
from rlsd_harness.training.run import run
from tests.resume_helpers import differences, metric_lines

TINY = ["model.warmup=null", "data.verifier=parity", "train.prompts_per_step=2", "train.group_size=4",
        "train.micro_batch_size=8", "rollout.max_new_tokens=8", "train.eval_every=0", "train.progress=false",
        "optim.lr=1e-3"]


class Killed(BaseException):
    """Stands for a SIGKILL at a named kill point: nothing after it runs (not caught as an Exception)."""


def train(tmp_path: Path, name: str, *extra: str) -> Path:
    return run(compose_config([*TINY, f"run.dir={tmp_path}", f"run.name={name}", *extra]), log=lambda m: None)


def steps_on_disk(run_dir: Path) -> list[int]:
    return [checkpoint.step_of(f) for f in checkpoint._step_folders(run_dir)]


def kill_at(monkeypatch, point: str, nth: int) -> None:
    """Raise Killed the nth time checkpoint.py reaches kill point `point` (what HARNESS_KILL_AT does by SIGKILL)."""
    hits = {"n": 0}

    def fake(name: str, before=None) -> None:
        if name == point:
            hits["n"] += 1
            if hits["n"] == nth:
                raise Killed(point)

    monkeypatch.setattr(checkpoint, "kill_point", fake)


@pytest.mark.parametrize("save_every, keep_last, keep_points, want", [
    (1, 2, True, [3, 5, 6]),        # budget points 0.5 -> step 3 and 1.0 -> step 6, plus the newest two
    (1, 2, False, [5, 6]),
    (4, 1, True, [3, 6]),           # step 3 is saved off the save_every grid because it is a budget point
    (1, "null", False, [1, 2, 3, 4, 5, 6]),  # null keeps everything
])
def test_retention_keeps_the_newest_and_the_budget_points(tmp_path, tiny_dir, save_every, keep_last, keep_points, want):
    run_dir = train(tmp_path, "r", "train.steps=6", f"train.save_every={save_every}", f"train.keep_last={keep_last}",
                    f"train.keep_budget_points={str(keep_points).lower()}", "eval.budget_points=[0.5,1.0]")
    assert steps_on_disk(run_dir) == want
    assert [(e["fraction"], e["step"]) for e in checkpoint.read_budget_record(run_dir)] == [(0.0, 0), (0.5, 3), (1.0, 6)]
    assert all(checkpoint.verify(f) is None for f in checkpoint._step_folders(run_dir))
    assert not list((run_dir / "checkpoints").glob(".*"))  # no hidden leftovers of a delete


def test_kept_steps_validates_keep_last():
    assert checkpoint.kept_steps([1, 2, 3, 4], {2}, 1, True) == [2, 4]
    assert checkpoint.kept_steps([1, 2, 3, 4], {2}, 1, False) == [4]
    with pytest.raises(ValueError, match="train.keep_last=0; valid: an integer >= 1, or null"):
        checkpoint.kept_steps([1, 2], set(), 0, True)


def test_prune_deletes_nothing_before_the_new_checkpoint_verifies(tmp_path, tiny_dir):
    run_dir = train(tmp_path, "v", "train.steps=3", "train.save_every=1", "train.keep_last=null",
                    "eval.budget_points=[]")
    newest = run_dir / "checkpoints" / "step-000003"
    weights = newest / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # the newest is damaged: same size, other bytes
    weights.write_bytes(bytes(data))
    messages = []
    assert checkpoint.prune(run_dir, newest, 1, False, messages.append) == []
    assert steps_on_disk(run_dir) == [1, 2, 3]
    assert "does not verify" in messages[0] and "SHA-256" in messages[0]


@pytest.mark.parametrize("point, nth", [("checkpoint", 4), ("prune", 2)])
def test_a_kill_around_the_prune_leaves_a_good_checkpoint_and_resumes_exactly(tmp_path, tiny_dir, monkeypatch,
                                                                                point, nth):
    """keep_last=1 is the tightest setting: each save deletes the one before it. A kill inside the 4th save
    (weights written, manifest not) must leave step 3 good; a kill inside the 2nd delete (step 2 renamed aside,
    its files not yet removed) must leave step 3, and the resumed run must end where an uninterrupted one does."""
    common = ["train.steps=5", "train.save_every=1", "train.keep_last=1", "eval.budget_points=[]"]
    straight = train(tmp_path, "straight", *common)
    kill_at(monkeypatch, point, nth)
    with pytest.raises(Killed):
        train(tmp_path, "k", *common)
    monkeypatch.undo()
    run_dir = tmp_path / "k"
    good = [f for f in checkpoint._step_folders(run_dir) if checkpoint.verify(f) is None]
    assert good, f"no good checkpoint left after a kill at {point}:{nth}"
    assert checkpoint.latest_good(run_dir).name == "step-000003"
    train(tmp_path, "k", *common, "run.resume=true")
    assert steps_on_disk(run_dir) == [5]
    assert not list((run_dir / "checkpoints").glob(".*"))  # the cut delete's leftover is cleared
    assert differences(straight, run_dir) == []


@pytest.mark.slow
def test_a_real_sigkill_inside_the_prune_leaves_a_good_checkpoint(tmp_path, tiny_dir):
    """The same with a real SIGKILL of a `rlsd-train` process (HARNESS_KILL_AT), not a raised exception. (The
    process does not know the tests' parity verifier; the rewards do not matter to the prune.)"""
    tiny = [a if a != "data.verifier=parity" else "data.verifier=exact" for a in TINY]
    args = [*tiny, f"run.dir={tmp_path}", "run.name=k", "train.steps=4", "train.save_every=1", "train.keep_last=1",
            "eval.budget_points=[]"]
    env = {**os.environ, "HARNESS_KILL_AT": "prune:2"}
    proc = subprocess.run([sys.executable, "-m", "rlsd_harness.cli.train", *args], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == -9, proc.stderr[-2000:]
    run_dir = tmp_path / "k"
    assert checkpoint.latest_good(run_dir).name == "step-000003"
    assert list((run_dir / "checkpoints").glob(".step-000002*"))  # the delete was cut short
    env.pop("HARNESS_KILL_AT")
    proc = subprocess.run([sys.executable, "-m", "rlsd_harness.cli.train", *args, "run.resume=true"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert steps_on_disk(run_dir) == [4] and not list((run_dir / "checkpoints").glob(".*"))


def test_budget_policies_are_loadable_model_folders_written_once(tmp_path, tiny_dir, monkeypatch):
    from rlsd_harness.evaluation.runner import resolve_checkpoint
    from rlsd_harness.models import load_model, load_processor

    common = ["train.steps=4", "train.save_every=1", "train.save_budget_policies=true", "eval.budget_points=[0.5,1.0]"]
    # killed inside the write of the 0.50 policy (its 2nd write): a hidden temporary folder, no 0.50/
    kill_at(monkeypatch, "budget_policy", 2)
    with pytest.raises(Killed):
        train(tmp_path, "p", *common)
    monkeypatch.undo()
    policies = tmp_path / "p" / "budget_policies"
    assert sorted(p.name for p in policies.iterdir()) == [".0.50.tmp", "0.00"]
    base_stamp = (policies / "0.00" / "model.safetensors").stat().st_mtime_ns

    run_dir = train(tmp_path, "p", *common, "run.resume=true")
    assert sorted(p.name for p in policies.iterdir()) == ["0.00", "0.50", "1.00"]
    assert (policies / "0.00" / "model.safetensors").stat().st_mtime_ns == base_stamp  # not rewritten
    lines = {m["rollout_step"]: m for m in metric_lines(run_dir)}
    for name, fraction, step in (("0.00", 0.0, 0), ("0.50", 0.5, 2), ("1.00", 1.0, 4)):
        folder = policies / name
        budget = json.loads((folder / "budget.json").read_text())
        assert budget == {"fraction": fraction, "step": step, "flops": lines[step]["ledger/cum/flops/total"]}
        assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
        assert resolve_checkpoint(folder) == folder  # what rlsd-evaluate checkpoint=<folder> loads
        load_model(folder), load_processor(folder)
    final, last = load_file(run_dir / "final" / "model.safetensors"), load_file(policies / "1.00" / "model.safetensors")
    assert final.keys() == last.keys() and all(torch.equal(final[k], last[k]) for k in final)
    base = load_file(policies / "0.00" / "model.safetensors")
    assert any(not torch.equal(base[k], final[k]) for k in final)  # the base is the untrained policy
    # retention (keep_last=2) never touches them; the budget points' checkpoints stay too
    assert steps_on_disk(run_dir) == [2, 3, 4]
