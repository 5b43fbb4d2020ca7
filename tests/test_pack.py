"""A packed study (analysis/pack.py): no weights, compressed records, and the same tables rebuilt from them."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from rlsd_harness.analysis.pack import pack_study
from rlsd_harness.analysis.report import load_study, write_report
from rlsd_harness.cli.report import main as report_main
from tests.study_fixtures import fabricate_study

EXPERIMENT = {"methods": ["grpo", "rlsd"], "seeds": [0, 1, 2, 3], "overrides": [], "budget_kind": "flops",
              "budget_points": [0.5, 1.0]}


@pytest.fixture
def study(tmp_path):
    """A finished study as compare leaves it: run folders with weights, a checkpoint, routine validation
    records beside the budget-point test records, and a current report."""
    src = tmp_path / "study"
    fabricate_study(src, {"grpo": 0.0, "rlsd": 0.5}, EXPERIMENT["seeds"], items=120)
    for run in (src / "runs").iterdir():
        (run / "config.yaml").write_text("train:\n  steps: 10\n  budget: {kind: flops, value: 1.0e12}\n")
        (run / "finished.json").write_text('{"step": 10}')
        (run / "final" / "model.safetensors").write_bytes(b"weights" * 100)
        (run / "checkpoints" / "step000005").mkdir(parents=True)
        (run / "checkpoints" / "step000005" / "model.pt").write_bytes(b"ckpt" * 100)
        (run / "evals" / "validation-step000003.jsonl").write_text('{"id": "v0", "correct": [1], "greedy": 1}\n')
    (tmp_path / "exp.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(EXPERIMENT)))
    meta = {"experiment": "exp", "experiment_file": str(tmp_path / "exp.yaml")}
    (src / "meta.json").write_text(json.dumps(meta))
    write_report(src, OmegaConf.create(EXPERIMENT), meta, plots=False)
    return src, meta


def test_a_packed_study_keeps_no_weights_and_rebuilds_the_same_tables(study, tmp_path, capsys):
    src, meta = study
    dest = tmp_path / "packed"
    report_main([f"folder={src}", f"pack={dest}"])
    assert "packed" in capsys.readouterr().out
    kept = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    run = [p for p in kept if p.startswith("runs/grpo-s0/")]
    assert run == ["runs/grpo-s0/config.yaml", "runs/grpo-s0/evals/test-step000000.jsonl.gz",
                   "runs/grpo-s0/evals/test-step000005.jsonl.gz", "runs/grpo-s0/evals/test-step000010.jsonl.gz",
                   "runs/grpo-s0/finished.json", "runs/grpo-s0/metrics.jsonl.gz"]
    assert {"table.csv", "table.md", "README.md", "meta.json"} <= set(kept)
    for name in ("table.csv", "per_seed.csv", "README.md"):
        assert (dest / name).read_bytes() == (src / name).read_bytes()
    exp = OmegaConf.create(EXPERIMENT)
    a, b = (load_study(f / "runs", [0.5, 1.0], "flops", "test") for f in (src, dest))
    assert a.records.equals(b.records) and (b.status["status"] == "finished").all()  # finished without weights
    write_report(dest, exp, meta, plots=False)  # what a fresh clone does with the committed copy
    assert (dest / "table.csv").read_bytes() == (src / "table.csv").read_bytes()
    # the same study packs to the same bytes; an existing folder is never written into
    again = tmp_path / "again"
    pack_study(src, again, exp, meta)
    assert all((again / p).read_bytes() == (dest / p).read_bytes() for p in run)
    with pytest.raises(FileExistsError, match="never overwritten"):
        pack_study(src, again, exp, meta)


def report_main_without_rebuild(src, dest, meta):
    """pack_study through the command line's error handling, without rebuilding the stale report first."""
    from rlsd_harness.cli import run_main

    run_main(lambda: pack_study(src, dest, OmegaConf.create(EXPERIMENT), meta))


def test_a_study_whose_tables_the_packed_records_do_not_rebuild_is_not_packed(study, tmp_path, capsys):
    src, meta = study
    table = (src / "table.csv").read_text()
    (src / "table.csv").write_text(table.replace("grpo", "grpo ", 1))  # a stale report
    with pytest.raises(SystemExit):  # a user error: one line, no traceback
        report_main_without_rebuild(src, tmp_path / "packed", meta)
    assert "rebuilds other table.csv" in capsys.readouterr().err
    assert not (tmp_path / "packed").exists() and not list(tmp_path.glob(".packed*"))
