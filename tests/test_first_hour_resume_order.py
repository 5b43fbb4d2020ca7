"""A run folder's refusals come before the warm-up: a resume whose model key changed (issue #28: "a changed model
key spends the warm-up before it is refused"), a resume without a checkpoint, and an existing run without
run.overwrite are each one line, and the base policy is never looked up (another model size has no shipped base,
so looking it up warms one up: minutes to an hour on a loaded 2-core machine)."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from rlsd_harness.cli import train as train_cli
from rlsd_harness.config import compose_config
from rlsd_harness.training import warmup

BASE = ["model.warmup=null", "train.steps=1", "train.prompts_per_step=2", "train.group_size=2",
        "train.micro_batch_size=4", "train.eval_every=0", "eval.budget_points=[]", "train.save_every=0",
        "train.progress=false", "rollout.max_new_tokens=4"]


@pytest.fixture
def no_warmup(monkeypatch):
    """The base policy's lookup (shipped base, cache, or a warm-up) fails the test when reached."""
    def reached(*args, **kwargs):
        raise AssertionError("the base policy was looked up (a warm-up for an unshipped recipe) before the refusal")

    monkeypatch.setattr(warmup, "policy_path", reached)


def earlier_run(runs: Path, checkpoint: bool) -> Path:
    """A run of the BASE config, as an earlier rlsd-train left it (a checkpoint's manifest marks it complete)."""
    run_dir = runs / "r"
    run_dir.mkdir(parents=True)
    cfg = compose_config([*BASE, f"run.dir={runs}", "run.name=r"])
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    if checkpoint:
        (run_dir / "checkpoints" / "step-000001").mkdir(parents=True)
        (run_dir / "checkpoints" / "step-000001" / "manifest.json").write_text("{}")
    return run_dir


def refused(capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        train_cli.main([*BASE, *args])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_a_resume_with_a_changed_model_key_is_refused_before_the_warm_up(tmp_path, capsys, no_warmup):
    run_dir = earlier_run(tmp_path / "runs", checkpoint=True)
    before = sorted(p.name for p in run_dir.rglob("*"))
    err = refused(capsys, f"run.dir={tmp_path / 'runs'}", "run.name=r", "run.resume=true", "model.size=small")
    assert "model.size: 'tiny' -> 'small'" in err and "run.resume_changed=true" in err, err
    assert sorted(p.name for p in run_dir.rglob("*")) == before


def test_a_resume_without_a_checkpoint_is_refused_before_the_warm_up(tmp_path, capsys, no_warmup):
    earlier_run(tmp_path / "runs", checkpoint=False)
    err = refused(capsys, f"run.dir={tmp_path / 'runs'}", "run.name=r", "run.resume=true", "model.size=small")
    assert "has no complete checkpoint" in err, err


def test_an_existing_run_is_refused_before_the_warm_up(tmp_path, capsys, no_warmup):
    earlier_run(tmp_path / "runs", checkpoint=True)
    err = refused(capsys, f"run.dir={tmp_path / 'runs'}", "run.name=r", "model.size=small")
    assert "exists; pass run.overwrite=true" in err, err
