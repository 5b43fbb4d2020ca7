"""Trackers: a missing package is found before the run folder exists (so the retry needs no run.overwrite),
and wandb runs in the mode the user set up (WANDB_MODE or wandb's own settings), not forced offline."""

from __future__ import annotations

import importlib.util
import sys
import types

import pytest

from rlsd_harness.cli import train as train_cli
from rlsd_harness.training.metrics import WandbSink

BASE = ["model.warmup=null", "train.steps=1", "train.prompts_per_step=2", "train.group_size=2",
        "train.micro_batch_size=4", "train.eval_every=0", "eval.budget_points=[]", "train.save_every=0",
        "train.progress=false", "rollout.max_new_tokens=4"]


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed here")
def test_missing_tracker_package_is_refused_before_the_run_folder(tmp_path, capsys, monkeypatch):

    runs = tmp_path / "runs"
    with pytest.raises(SystemExit) as exit_info:
        train_cli.main([*BASE, f"run.dir={runs}", "run.trackers=[wandb]"])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2, err
    assert err == ("error: run.trackers=[wandb] needs the wandb package, which is not installed: pip install wandb "
                   "(or drop wandb from run.trackers)"), err
    assert not runs.exists(), sorted(p.name for p in runs.rglob("*"))


def test_wandb_mode_is_the_users(tmp_path, monkeypatch):
    calls = []
    fake = types.SimpleNamespace(init=lambda **kw: calls.append(kw) or types.SimpleNamespace())
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.setenv("WANDB_MODE", "online")
    WandbSink(tmp_path, "run", {"seed": 0})
    assert calls and "mode" not in calls[0], calls  # wandb reads WANDB_MODE (and `wandb offline`) itself
    assert calls[0]["dir"] == str(tmp_path) and calls[0]["name"] == "run"
