"""The newcomer catalogue (bench/newcomer_slips.py) and the slips it found: each slip names a command that
exists, and (slow) one slip run the catalogue's way is clean; an unclosed list on the command line is quoted as
typed, not glued to the arguments after it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from rlsd_harness.cli import split_args
from rlsd_harness.cli import train as train_cli

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import newcomer_slips  # noqa: E402


def test_the_catalogue_names_real_commands_and_unique_slips():
    scripts = (ROOT / "pyproject.toml").read_text()
    names = [s.name for s in newcomer_slips.SLIPS]
    assert len(names) == len(set(names))
    for slip in newcomer_slips.SLIPS:
        assert f'{slip.argv.split()[0]} = "' in scripts, slip.argv
    assert newcomer_slips.LISTING.match("error: 2 config errors:").group(1) == "2"


def test_an_unclosed_list_is_quoted_as_typed(capsys, tmp_path):
    """It was glued to the next argument: "cannot parse the override 'eval.budget_points=[0.5,1run.dir=...'"."""
    _, overrides = split_args(["eval.budget_points=[0.5,1", "train.steps=3"], "rlsd-train", "", {})
    assert overrides == ["eval.budget_points=[0.5,1", "train.steps=3"]
    # a list the shell split is still joined, also after an unclosed one
    _, overrides = split_args(["eval.budget_points=[0.5,1", "seed=[0,", "1]"], "rlsd-train", "", {})
    assert overrides == ["eval.budget_points=[0.5,1", "seed=[0,1]"]
    with pytest.raises(SystemExit) as exit_info:
        train_cli.main(["eval.budget_points=[0.5,1", f"run.dir={tmp_path / 'runs'}"])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1, err
    assert "'eval.budget_points=[0.5,1'" in err and "run.dir" not in err, err
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_a_slip_run_the_catalogues_way_is_clean(tmp_path):
    """A subprocess in a fresh folder: non-zero exit, one stderr line, nothing written (about 15-40 s)."""
    out = tmp_path / "slips.md"
    assert newcomer_slips.main(["only=typo under train", f"out={out}"]) == 0
    assert "1 of 1 slips answered cleanly" in out.read_text()
