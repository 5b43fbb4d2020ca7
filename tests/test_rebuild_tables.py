"""bench/rebuild_tables.py: a committed study's tables rebuild byte-identical from its records (issue #27), and the
check itself notices a file that changes."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("rebuild_tables", ROOT / "bench" / "rebuild_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_changed_table_is_reported(tmp_path, monkeypatch):
    bench = _bench()
    real_run = subprocess.run

    def fake_report(command, **kw):  # the "report" rewrites one table differently, leaves the rest
        if command[:3] == [sys.executable, "-m", "rlsd_harness.cli.report"]:
            folder = Path(command[3].split("=", 1)[1])
            (folder / "table.md").write_text((folder / "table.md").read_text() + "one more line\n")
            return subprocess.CompletedProcess(command, 0, "", "")
        return real_run(command, **kw)

    monkeypatch.setattr(bench.subprocess, "run", fake_report)
    assert bench.rebuild("slurm-study/local", tmp_path) == ["results/slurm-study/local/table.md: differs"]
    with pytest.raises(ValueError, match="unknown study 'nope'"):
        bench.rebuild("nope", tmp_path)


@pytest.mark.slow
def test_the_slurm_study_rebuilds_byte_identical(tmp_path):
    """rlsd-report on a copy of results/slurm-study/local (2 methods x 2 seeds)."""
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "rebuild_tables.py"), "slurm-study/local", "--work",
                           str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0 and "slurm-study/local: identical" in proc.stdout, proc.stdout + proc.stderr
