"""The kill-and-resume fuzzer on a few kills (the full one: `python -m bench.kill_fuzz`): every killed run is
continued to its end and is bit-identical to the uninterrupted one, and the comparison matrix finishes after a
kill at each of its dangerous moments."""

import json

import pytest

from bench import kill_fuzz


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["grpo", "rlsd", "sdpo"])
def test_killed_runs_resume_bit_identical(tmp_path, objective):
    kill_fuzz.main(["kills=2", f"objectives={objective}", "matrix=false", f"out={tmp_path}"])
    trials = json.loads((tmp_path / "kill_fuzz.json").read_text())["objectives"][0]["trials"]
    assert sum(t["killed"] for t in trials) >= 1
    assert all(t["finished"] and t["identical"] for t in trials), trials


@pytest.mark.slow
def test_the_matrix_finishes_after_a_kill_at_each_dangerous_moment(tmp_path):
    kill_fuzz.main(["objectives=none", "matrix=true", f"out={tmp_path}"])
    kills = json.loads((tmp_path / "kill_fuzz.json").read_text())["matrix"]["kills"]
    assert {k["kill"].split(":")[0] for k in kills} == set(kill_fuzz.MATRIX_POINTS)
    assert all(k["killed"] and k["ok"] for k in kills), kills
