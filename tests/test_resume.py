"""Resume is exact and safe: budgets hold on resume, every piece of state is checkpointed (the teacher's update
count among them), a damaged newest checkpoint falls back to the previous one, a cut metrics line is repaired,
a changed config is refused, an overwrite never loses the old run to a rejected config, and SIGINT / SIGTERM
save a checkpoint and print the command that resumes."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import yaml

from rlsd_harness.config import ConfigError, compose_config
from rlsd_harness.training import checkpoint
from rlsd_harness.training import run as run_module
from rlsd_harness.training.run import run
from rlsd_harness.training.trainer import Trainer
from tests.resume_helpers import differences, metric_lines

TINY = ["model.warmup=null", "data.verifier=parity", "train.prompts_per_step=2", "train.group_size=4",
        "train.micro_batch_size=8", "rollout.max_new_tokens=8", "train.eval_every=0", "train.save_every=1",
        "train.progress=false", "optim.lr=1e-3"]
TEACHERS = {"rlsd": ["algorithm=rlsd", "algorithm.teacher.sync_every=1"],  # a sync at every step
            "sdpo": ["algorithm=sdpo"], "grpo": ["algorithm=grpo"]}  # SDPO: an EMA teacher


def overrides(tmp_path, name, *extra):
    return [*TINY, f"run.dir={tmp_path}", f"run.name={name}", *extra]


def train(tmp_path, name, *extra, log=None):
    return run(compose_config(overrides(tmp_path, name, *extra)), log=log or (lambda m: None))


@pytest.fixture(scope="module")
def straight(tmp_path_factory, tiny_dir):
    """Uninterrupted 3-step runs, one per objective, made on first use."""
    root, made = tmp_path_factory.mktemp("straight"), {}

    def get(algorithm):
        if algorithm not in made:
            made[algorithm] = train(root, algorithm, *TEACHERS[algorithm], "train.steps=3")
        return made[algorithm]

    return get


def files_of(run_dir):
    return {p.relative_to(run_dir): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("kind, value, steps", [("steps", 2, 2), ("flops", 1, 1)])
def test_a_run_stopped_by_its_budget_trains_no_further_step_on_resume(tmp_path, tiny_dir, kind, value, steps):
    budget = ["train.steps=6", f"train.budget.kind={kind}", f"train.budget.value={value}"]
    run_dir = train(tmp_path, "b", *budget)
    before = files_of(run_dir)
    assert [m["rollout_step"] for m in metric_lines(run_dir)] == list(range(steps + 1))
    for _ in range(2):
        train(tmp_path, "b", *budget, "run.resume=true")
        assert [m["rollout_step"] for m in metric_lines(run_dir)] == list(range(steps + 1))
    after = files_of(run_dir)
    for name in ("metrics.jsonl", "final/model.safetensors", f"checkpoints/step-{steps:06d}/model.safetensors"):
        assert after[Path(name)] == before[Path(name)], name
    assert run_module.run_state(run_dir) == "finished"
    assert json.loads((run_dir / "finished.json").read_text())["stopped_by"] == "train.budget"


@pytest.mark.parametrize("algorithm", ["rlsd", "sdpo"])
def test_resume_is_bit_identical_teacher_update_count_included(tmp_path, straight, algorithm):
    run_dir = train(tmp_path, "split", *TEACHERS[algorithm], "train.steps=2")
    train(tmp_path, "split", *TEACHERS[algorithm], "train.steps=3", "run.resume=true")
    # RLSD syncs and SDPO blends once per optimizer step: the count goes on from the checkpoint's
    assert [m["teacher/updates"] for m in metric_lines(run_dir)[1:]] == [1.0, 2.0, 3.0]
    assert differences(straight(algorithm), run_dir) == []


def _flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, straight):
    run_dir = train(tmp_path, "d", *TEACHERS["grpo"], "train.steps=2")
    _flip_a_byte(run_dir / "checkpoints" / "step-000002" / "model.safetensors")  # same size, other bytes
    messages = []
    train(tmp_path, "d", *TEACHERS["grpo"], "train.steps=3", "run.resume=true", log=messages.append)
    warning = next(m for m in messages if m.startswith("warning: checkpoint"))
    assert "step-000002" in warning and "SHA-256" in warning and "step-000001" in warning
    assert any("at step 1 from step-000001" in m for m in messages)
    assert differences(straight("grpo"), run_dir) == []


def test_a_cut_last_metrics_line_is_dropped_and_rewritten(tmp_path, straight):
    run_dir = train(tmp_path, "m", *TEACHERS["grpo"], "train.steps=2")
    line = json.dumps(metric_lines(straight("grpo"))[3])
    with (run_dir / "metrics.jsonl").open("a") as f:  # what a kill in the middle of step 3's line leaves
        f.write(line[: len(line) // 2])
    messages = []
    train(tmp_path, "m", *TEACHERS["grpo"], "train.steps=3", "run.resume=true", log=messages.append)
    assert any("cut last line" in m for m in messages)
    assert differences(straight("grpo"), run_dir) == []


def test_resume_with_a_changed_config_is_refused_naming_each_key(tmp_path, tiny_dir):
    run_dir = train(tmp_path, "c", "train.steps=1")
    before = files_of(run_dir)
    with pytest.raises(ConfigError) as e:
        train(tmp_path, "c", "train.steps=1", "run.resume=true", "seed=1", "train.group_size=8", "algorithm=rlsd")
    for key in ("seed: 0 -> 1", "train.group_size: 4 -> 8", "algorithm.name: 'grpo' -> 'rlsd'", "run.resume_changed=true"):
        assert key in str(e.value)
    assert files_of(run_dir) == before  # nothing written

    # keys that set the run's length and cadences may change; config.yaml shows what is in use
    train(tmp_path, "c", "train.steps=2", "train.save_every=2", "run.resume=true")
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["steps"] == 2
    history = yaml.safe_load((run_dir / "config_history.yaml").read_text())
    assert history == [{"resumed_at_step": 1, "time": history[0]["time"], "forced": False,
                        "changed": {"train.save_every": {"old": 1, "new": 2}, "train.steps": {"old": 1, "new": 2}}}]
    # any other key only when asked for, and recorded as forced
    train(tmp_path, "c", "train.steps=3", "train.save_every=2", "optim.lr=5e-4", "run.resume=true",
          "run.resume_changed=true")
    history = yaml.safe_load((run_dir / "config_history.yaml").read_text())
    assert history[1]["forced"] is True and history[1]["changed"]["optim.lr"] == {"old": 1e-3, "new": 5e-4}
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["optim"]["lr"] == 5e-4


def test_overwrite_keeps_the_old_run_until_the_new_one_has_a_checkpoint(tmp_path, tiny_dir, monkeypatch):
    run_dir = train(tmp_path, "o", "train.steps=1")
    before = files_of(run_dir)
    # rejected by the trainer (8 rows per rank do not split into micro-batches of 3): the old run is intact
    with pytest.raises(ValueError, match="micro_batch_size=3"):
        train(tmp_path, "o", "train.steps=1", "train.micro_batch_size=3", "run.overwrite=true")
    assert files_of(run_dir) == before
    # failing before its first checkpoint: the old run is moved back
    original = Trainer.step

    def crash(self):
        assert (tmp_path / ".o.overwritten" / "final" / "model.safetensors").exists()  # aside, not deleted
        raise RuntimeError("crash in the first step")

    monkeypatch.setattr(Trainer, "step", crash)
    with pytest.raises(RuntimeError, match="first step"):
        train(tmp_path, "o", "train.steps=2", "run.overwrite=true")
    assert files_of(run_dir) == before and not (tmp_path / ".o.overwritten").exists()
    # a new run that gets to its first checkpoint replaces the old one
    monkeypatch.setattr(Trainer, "step", original)
    train(tmp_path, "o", "train.steps=2", "run.overwrite=true")
    assert not (tmp_path / ".o.overwritten").exists()
    assert [m["rollout_step"] for m in metric_lines(run_dir)] == [0, 1, 2]


def test_run_states_come_from_completion_markers(tmp_path):
    d = tmp_path / "r"
    assert run_module.run_state(d) == "none"
    (d / "checkpoints" / "step-000001.tmp").mkdir(parents=True)  # killed while writing its first checkpoint
    (d / "checkpoints" / "step-000001.tmp" / "model.safetensors").write_bytes(b"\0" * 8)
    assert run_module.run_state(d) == "none"
    (d / "checkpoints" / "step-000002").mkdir()  # renamed, but without a manifest
    assert run_module.run_state(d) == "none"
    (d / "checkpoints" / "step-000002" / "manifest.json").write_text(json.dumps({"files": {}}))
    assert run_module.run_state(d) == "partial"
    (d / "final").mkdir()  # final/ alone is not a finished run
    (d / "final" / "config.json").write_text("{}")
    assert run_module.run_state(d) == "partial"
    (d / "finished.json").write_text("{}")
    assert run_module.run_state(d) == "finished"


class SignalEscaped(Exception):
    pass


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_finishes_the_step_saves_and_prints_the_resume_command(tmp_path, straight, monkeypatch,
                                                                        capsys, sig):
    from rlsd_harness.cli.train import main

    def escaped(signum, frame):  # what arrives when run() does not handle the signal itself
        raise SignalEscaped(signal.Signals(signum).name)

    previous = signal.signal(sig, escaped)
    original = Trainer.step

    def signalled(self):
        if self.rollout_step == 1:  # arrives in the middle of step 2
            os.kill(os.getpid(), sig)
        return original(self)

    monkeypatch.setattr(Trainer, "step", signalled)
    # no periodic checkpoints: the one there is comes from the signal
    args = overrides(tmp_path, "sig", *TEACHERS["grpo"], "train.steps=3", "train.save_every=0")
    try:
        with pytest.raises(SystemExit) as exit_:
            main(args)
        assert signal.getsignal(sig) is escaped  # the handler is the caller's again
    finally:
        signal.signal(sig, previous)
    assert exit_.value.code == 128 + sig
    err = capsys.readouterr().err
    assert f"stopped by {sig.name} after step 2" in err
    command = err.split("Resume with:\n", 1)[1].splitlines()[0].split()
    assert command[-1] == "run.resume=true" and command[-len(args) - 1:-1] == args
    assert checkpoint.latest(tmp_path / "sig").name == "step-000002"
    monkeypatch.setattr(Trainer, "step", original)
    main(command[-len(args) - 1:])
    assert differences(straight("grpo"), tmp_path / "sig", checkpoints=False) == []


def test_the_manifest_names_the_cpu_and_the_isa_the_kernels_run_on(tmp_path):
    # the same config and seed give different floats on CPUs whose kernels differ (AVX2 vs AVX-512), so a
    # run records which one it ran on
    import torch

    cfg = compose_config([*TINY, f"run.dir={tmp_path}"])
    m = run_module.manifest(cfg, "cpu")
    assert m["cpu"].endswith(", " + torch.backends.cpu.get_cpu_capability()) and m["threads"] == torch.get_num_threads()
