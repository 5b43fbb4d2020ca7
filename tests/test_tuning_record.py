"""tuning_from reads an earlier study from its machine-readable record (picks.json + tuning.csv), never from the
prose of tuning.md (issue #27 item 4), and the committed tuned studies stay readable after their one migration
(bench/migrate_studies.py added the tuning seeds and overrides to their picks.json)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rlsd_harness.analysis.tuning import earlier_picks, tuning_grid
from rlsd_harness.config import ConfigError, load_experiment

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "results" / "reference"


def reference_inputs():
    exp = load_experiment("reference")
    return exp, tuning_grid(exp, "reference"), json.loads((REFERENCE / "picks.json").read_text())


def test_the_committed_reference_study_gives_its_picks():
    exp, grid, recorded = reference_inputs()
    assert earlier_picks(REFERENCE, exp, grid, recorded["base"]) == recorded["picks"]
    with pytest.raises(ConfigError, match="tuned from base policy"):
        earlier_picks(REFERENCE, exp, grid, ["0" * 64])


def test_tuning_md_is_not_read_back(tmp_path):
    exp, grid, recorded = reference_inputs()
    copy = tmp_path / "reference"
    for name in ("tuning.csv", "picks.json"):
        (copy / name).parent.mkdir(exist_ok=True)
        shutil.copy(REFERENCE / name, copy / name)
    (copy / "tuning.md").write_text("Tuning: reworded for people; seeds and overrides are in picks.json.\n")
    assert earlier_picks(copy, exp, grid, recorded["base"]) == recorded["picks"]
    (copy / "picks.json").write_text(json.dumps({**recorded, "overrides": ["train.budget.value=1e11"]}))
    with pytest.raises(ConfigError, match="it was tuned with seeds \\[100, 101\\], overrides `train.budget.value=1e11`"):
        earlier_picks(copy, exp, grid, recorded["base"])


def test_an_unmigrated_study_is_refused_then_migrated_once(tmp_path):
    exp, grid, recorded = reference_inputs()
    copy = tmp_path / "reference"
    copy.mkdir()
    for name in ("tuning.csv", "tuning.md"):
        shutil.copy(REFERENCE / name, copy / name)
    older = {k: v for k, v in recorded.items() if k not in ("seeds", "overrides")}  # as committed before
    (copy / "picks.json").write_text(json.dumps(older, indent=1) + "\n")
    with pytest.raises(ConfigError, match="records no tuning seeds or overrides.*migrate_studies.py"):
        earlier_picks(copy, exp, grid, recorded["base"])
    migrate = [sys.executable, str(ROOT / "bench" / "migrate_studies.py"), str(copy)]
    assert "picks.json: + seeds [100, 101]" in subprocess.run(migrate, capture_output=True, text=True,
                                                              check=True).stdout
    assert (copy / "picks.json").read_bytes() == (REFERENCE / "picks.json").read_bytes()  # as committed now
    assert subprocess.run([*migrate, "--check"], capture_output=True, text=True, check=True).stdout.strip() \
        == "nothing to migrate"
    assert earlier_picks(copy, exp, grid, recorded["base"]) == recorded["picks"]
