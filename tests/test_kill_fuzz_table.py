"""The kill fuzzer's per-point table: every declared kill point has a row (the report phase's included), only
kills that happened are counted, and a kill that did not resume bit-identical is listed as a failure."""

from __future__ import annotations

import sys
from pathlib import Path

from rlsd_harness.training import durable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import kill_fuzz  # noqa: E402


def trial(kill: str, killed: bool = True, identical: bool = True, again: int = 0) -> dict:
    return {"run": "k000", "kill": kill, "killed": killed, "kills_of_continuations": again, "finished": True,
            "identical": identical, "differences": [] if identical else ["final weights differ"]}


def matrix_kill(kill: str, killed: bool = True, ok: bool = True) -> dict:
    return {"kill": kill, "killed": killed, "ok": ok, "exit": 0 if ok else 1, "states": {}, "differences": {}}


def test_per_point_counts_real_kills_and_failures():
    report = {"objectives": [{"objective": "grpo", "trials": [
        trial("checkpoint:2"), trial("checkpoint:1", identical=False), trial("prune:1", killed=False),
        trial("random:3.0s", again=2), trial("random:99.0s", killed=False)]}],
        "matrix": {"kills": [matrix_kill("report:1"), matrix_kill("report:1", ok=False),
                             matrix_kill("matrix:1", killed=False)]}}
    rows = {r["point"]: r for r in kill_fuzz.per_point(report)}
    assert set(rows) == {*durable.KILL_POINTS, "random", "continuation"}
    assert (rows["checkpoint"]["kills"], rows["checkpoint"]["identical"]) == (2, 1)
    assert rows["checkpoint"]["failures"] and "k000 checkpoint:1" in rows["checkpoint"]["failures"][0]
    assert rows["prune"]["kills"] == 0  # aimed at, but nothing was killed
    assert (rows["random"]["kills"], rows["continuation"]["kills"], rows["continuation"]["identical"]) == (1, 2, 2)
    assert (rows["report"]["kills"], rows["report"]["in_matrix"], rows["report"]["identical"]) == (2, 2, 1)
    assert rows["matrix"]["kills"] == 0
    table = kill_fuzz.point_table(kill_fuzz.per_point(report))
    assert "| `report` |" in table and "2 (0 + 2) | 1/2 |" in table


def test_matrix_rounds_aim_within_the_matrix_arrivals():
    assert set(kill_fuzz.MATRIX_ARRIVALS) == set(kill_fuzz.MATRIX_POINTS)
    assert kill_fuzz.matrix_arrival("checkpoint", 0) == 2  # round 0 is the fuzzer's earlier choice
    assert kill_fuzz.matrix_arrival("final", 1) == 2 and kill_fuzz.matrix_arrival("report", 3) == 1
    assert all(1 <= kill_fuzz.matrix_arrival(p, r) <= kill_fuzz.MATRIX_ARRIVALS[p]
               for p in kill_fuzz.MATRIX_POINTS for r in range(5))


def test_passes_merge_into_one_per_point_table(tmp_path):
    import json

    runs = {"objectives": [{"objective": "rlsd", "trials": [trial("report:1", killed=False), trial("prune:1")]}]}
    matrix = {"objectives": [], "matrix": {"kills": [matrix_kill("report:1"), matrix_kill("prune:2")]}}
    (tmp_path / "a.json").write_text(json.dumps(runs))
    (tmp_path / "b.json").write_text(json.dumps(matrix))
    rows = {r["point"]: r for r in kill_fuzz.merge([tmp_path / "a.json", tmp_path / "b.json"])["per_point"]}
    assert (rows["prune"]["kills"], rows["prune"]["in_runs"], rows["prune"]["in_matrix"]) == (2, 1, 1)
    assert (rows["report"]["kills"], rows["report"]["identical"]) == (1, 1)


def test_unknown_points_are_refused_before_the_output_folder_is_cleared(tmp_path):
    import pytest

    out = tmp_path / "fuzz"
    out.mkdir()
    (out / "keep.json").write_text("{}")
    for arg in ("points=final,nope", "later_rounds_at=reprot"):
        with pytest.raises(SystemExit, match="valid: checkpoint, final"):
            kill_fuzz.main([arg, f"out={out}"])
    assert (out / "keep.json").exists()
