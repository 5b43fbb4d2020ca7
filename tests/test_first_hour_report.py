"""The comparison's report phase survives a kill: the tables and RLSD's credit picture are written first and
meta.json is marked finished last, so a study killed at the declared "report" kill point is completed by a plain
rerun (it used to be marked finished before its tables, and the rerun then refused the folder). rlsd-report
rebuilds the credit picture too: from the runs' weights where they exist, else redrawn from the recorded
credit_rlsd.json, else one line saying what it needs. Training is replaced by synthetic run folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from rlsd_harness.analysis import compare, credit
from rlsd_harness.cli import report as report_cli
from tests.study_fixtures import write_run

EXPERIMENT = """
methods: [grpo, rlsd]
seeds: [0, 1]
budget_kind: flops
budget_points: [0.5, 1.0]
baseline: grpo
overrides: [model.warmup=null, train.steps=4, train.budget.kind=flops, train.budget.value=1e12]
"""
PICKS = [{"correct": True, "advantage": 1.0, "question": "How many?", "tokens": ["The", " answer", " is", " 3"],
          "weights": [1.0, 1.1, 0.9, 1.2]},
         {"correct": False, "advantage": -1.0, "question": "How many?", "tokens": ["It", " is", " 4"],
          "weights": [0.8, 1.0, 1.05]}]


class Killed(BaseException):
    """What HARNESS_KILL_AT's SIGKILL leaves: nothing after the kill point runs, no handler either."""


def fake_run(cfg, log=None, **_):
    """A finished run folder with held-out records, its config and (stand-in) final weights."""
    run_dir = Path(cfg.run.dir) / cfg.run.name
    rng = np.random.default_rng(cfg.seed)
    write_run(run_dir, {p: {"test": (rng.random((20, 4)) < 0.5).astype(int)} for p in (0.0, 0.5, 1.0)})
    OmegaConf.save(cfg, run_dir / "config.yaml")
    (run_dir / "final" / "model.safetensors").write_bytes(b"weights")
    (run_dir / "finished.json").write_text("{}")
    return run_dir


@pytest.fixture
def offline(monkeypatch, tmp_path, tiny_dir):
    monkeypatch.setattr(compare, "run", fake_run)
    drawn_from: list[Path] = []
    monkeypatch.setattr(credit, "token_weights", lambda run_dir: drawn_from.append(run_dir) or PICKS)
    monkeypatch.setattr(compare, "REPO", tmp_path)
    path = tmp_path / "study.yaml"
    path.write_text(EXPERIMENT)
    return str(path), drawn_from


def test_a_kill_at_the_report_point_leaves_a_study_the_rerun_completes(offline, tmp_path, monkeypatch):
    exp_file, _ = offline
    out = tmp_path / "study"
    reached = []

    def kill_point(name, before=None):
        reached.append(name)
        if name == "report":
            raise Killed

    monkeypatch.setattr(compare, "kill_point", kill_point)
    with pytest.raises(Killed):
        compare.compare(exp_file, out)
    assert "report" in reached
    assert not (out / "meta.json").exists() and not compare.finished_study(out)  # not marked: the rerun may write
    assert (out / "table.md").exists() and (out / "credit_rlsd.png").exists()
    table = (out / "table.md").read_text()
    monkeypatch.setattr(compare, "kill_point", lambda name, before=None: None)
    assert compare.compare(exp_file, out) == out  # the same folder, not refused, not a rerun folder
    assert compare.finished_study(out) and "finished" in json.loads((out / "meta.json").read_text())
    assert (out / "table.md").read_text() == table
    assert "credit_rlsd.png" in (out / "README.md").read_text()


def test_rlsd_report_rebuilds_the_credit_picture_or_says_what_it_needs(offline, tmp_path, capsys):
    exp_file, drawn_from = offline
    out = compare.compare(exp_file, tmp_path / "study")
    capsys.readouterr()
    picture = out / "credit_rlsd.png"
    picture.unlink()
    report_cli.main([f"folder={out}"])  # the weights are there: drawn from the first RLSD run's policy
    assert picture.stat().st_size > 0 and drawn_from[-1] == out / "runs" / "rlsd-s0"
    assert "drawn from rlsd-s0's final policy" in capsys.readouterr().out
    assert json.loads((out / "credit_rlsd.json").read_text()) == PICKS

    for run in (out / "runs").glob("rlsd-s*"):  # as a committed (packed) study: no weights
        (run / "final" / "model.safetensors").unlink()
    picture.unlink()
    report_cli.main([f"folder={out}"])
    assert picture.stat().st_size > 0 and "redrawn from the recorded credit_rlsd.json" in capsys.readouterr().out

    (out / "credit_rlsd.json").unlink()
    report_cli.main([f"folder={out}"])
    said = capsys.readouterr().out
    assert "no credit picture: no RLSD run" in said and "final/*.safetensors" in said, said
