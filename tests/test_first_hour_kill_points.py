"""Every kill point durable.py declares is called somewhere and is one bench/kill_fuzz.py aims at; and a run of
the fuzzer's own training config reaches each of its run points (the "report" point used to be declared and
never called, so the fuzzer could not reach the report phase's window)."""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path

import pytest

from rlsd_harness.training import durable

ROOT = Path(__file__).resolve().parents[1]


def called_points() -> set[str]:
    """The names passed to kill_point(...) in the package's code."""
    calls = set()
    for path in (ROOT / "rlsd_harness").rglob("*.py"):
        calls |= set(re.findall(r"\bkill_point\(\s*[\"'](\w+)[\"']", path.read_text()))
    return calls


def test_every_declared_point_is_called_and_aimed_at_by_the_fuzzer():
    sys.path.insert(0, str(ROOT))
    from bench import kill_fuzz

    declared = set(durable.KILL_POINTS)
    assert called_points() == declared, {"declared, never called": declared - called_points(),
                                         "called, not declared": called_points() - declared}
    aimed = set(kill_fuzz.RUN_POINTS) | set(kill_fuzz.MATRIX_POINTS)
    assert aimed == declared, {"declared, never aimed at": declared - aimed}
    assert set(kill_fuzz.MATRIX_POINTS) == declared  # the matrix passes through every point


@pytest.mark.slow
def test_the_fuzzers_run_config_reaches_each_of_its_run_points(tmp_path, tiny_dir, monkeypatch):
    """The fuzzer's RLSD config, trained in this process with every kill point recording instead of killing."""
    sys.path.insert(0, str(ROOT))
    from bench import kill_fuzz
    from rlsd_harness.config import compose_config
    from rlsd_harness.training.run import run

    reached: Counter[str] = Counter()

    def record(name, before=None):
        reached[name] += 1

    import rlsd_harness.training.checkpoint
    import rlsd_harness.training.metrics  # noqa: F401  (imported by run() lazily: patched here first)

    original = durable.kill_point
    for module in list(sys.modules.values()):
        if getattr(module, "__name__", "").startswith("rlsd_harness") and getattr(module, "kill_point", None) is original:
            monkeypatch.setattr(module, "kill_point", record)
    run(compose_config([*kill_fuzz.TINY, *kill_fuzz.OBJECTIVES["rlsd"], f"run.dir={tmp_path}", "run.name=r"]),
        log=lambda m: None)
    missing = [p for p in kill_fuzz.RUN_POINTS if not reached[p]]
    assert not missing, f"the fuzzer's run config never reaches {missing}; reached {dict(reached)}"
