"""`limit=N` in the benchmark runner: metrics are computed over the items evaluated only. A benchmark whose
metrics span several rows (We-Math's composite problems, ZeroBench's subquestions of one main question)
declares that unit, and a limit keeps whole units; so under any limit all-wrong responses score 0 and
all-right responses score 100 on every benchmark."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlsd_harness.benchmarks import EVAL_BENCHMARK_NAMES, metadata
from rlsd_harness.evaluation.heldout import decoding_from_config
from rlsd_harness.evaluation.runner import Suite, build_suite, summarise
from tests import benchmark_fixtures as fixtures
from tests.conftest import typed_config

REAL_WEMATH = Path(__file__).resolve().parents[2] / "shared" / "real-benchmarks" / "wemath"


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    return fixtures.write_all(tmp_path_factory.mktemp("limit-fixtures"))


def config(sources: dict[str, Path], *extra: str):
    return typed_config(*(f"eval.sources.{n}={p}" for n, p in sources.items()), "eval.progress=false", *extra)


def uniform_records(suite: Suite, k: int, correct: bool) -> dict[str, list[dict]]:
    """Every sample of every item scored `correct` (what the metrics read of a score record)."""
    return {i: [{"id": i, "sample": j, "parsed": None, "correct": correct} for j in range(k)] for i in suite.ids}


def scores(summary: dict) -> dict[str, float]:
    """The headline (mean@k over samples, and in the merged metrics) and the table's secondary scores."""
    meta = metadata(summary["benchmark"])
    out = {"mean@k": summary["mean@k"], meta.headline: summary["metrics"][meta.headline]}
    out.update({name: summary["metrics"][name] for name, _ in meta.secondary})
    if "by_main_question" in summary["metrics"]:
        out["by_main_question pass@1"] = summary["metrics"]["by_main_question"]["pass@1"]
    return out


@pytest.mark.parametrize("decoding", ["greedy", "paper"])
@pytest.mark.parametrize("name", EVAL_BENCHMARK_NAMES)
def test_under_every_limit_all_wrong_scores_0_and_all_right_100(name, decoding, sources):
    cfg = config(sources, f"eval.decoding={decoding}", "+eval.metric_options.zerobench.group_subquestions=true")
    dec = decoding_from_config(cfg.eval)
    full = build_suite(name, cfg)
    for limit in range(1, len(full.items) + 1):
        suite = build_suite(name, cfg, limit)
        assert 0 < len(suite.items) <= len(full.items)
        for correct, expected in ((False, 0.0), (True, 1.0)):
            got = scores(summarise(suite, uniform_records(suite, dec.k, correct), dec))
            assert got == {key: pytest.approx(expected) for key in got}, (name, limit, correct, got)


def test_wemath_limit_keeps_whole_composite_problems(sources):
    cfg = config(sources)
    rows = build_suite("wemath", cfg, 2).items
    # the first two problems, every piece of each: 2steps_1 (2 steps + multi) and 3steps_1 (3 steps + multi)
    assert [(r["ID"], r["key"]) for r in rows] == [
        ("2steps_1", "2steps_1"), ("2steps_1", "2steps_2"), ("2steps_1", "2steps_multi"),
        ("3steps_1", "3steps_1"), ("3steps_1", "3steps_2"), ("3steps_1", "3steps_3"), ("3steps_1", "3steps_multi"),
    ]
    assert len(build_suite("wemath", cfg, 3).items) == len(fixtures.WEMATH_ROWS)  # the whole file is 3 problems


@pytest.mark.skipif(not REAL_WEMATH.is_dir(), reason="the official We-Math testmini.json is not at "
                    f"{REAL_WEMATH} (a checkout without the shared benchmark files)")
def test_real_wemath_limit_5_all_wrong_scores_0():
    """The reported case: the official file lists every problem's `{n}steps_1` row first, so its first 5 rows
    were five first steps with no composite question, and 0 of 5 right read as Score (Strict) 100."""
    cfg = typed_config(f"eval.sources.wemath={REAL_WEMATH}", "eval.decoding=greedy")
    dec = decoding_from_config(cfg.eval)
    suite = build_suite("wemath", cfg, 5)
    assert len({r["ID"] for r in suite.items}) == 5
    # every problem complete: its n steps and its composite question
    for pid in {r["ID"] for r in suite.items}:
        keys = sorted(r["key"] for r in suite.items if r["ID"] == pid)
        steps = int(keys[0][0])
        assert keys == sorted([f"{steps}steps_{i}" for i in range(1, steps + 1)] + [f"{steps}steps_multi"])
    summary = summarise(suite, uniform_records(suite, dec.k, False), dec)
    assert summary["metrics"]["N"] == 5 and summary["metrics"]["counts"]["IK"] == 5
    assert summary["mean@k"] == 0.0 and summary["metrics"]["Score (Loose)"] == 0.0
    summary = summarise(suite, uniform_records(suite, dec.k, True), dec)
    assert summary["mean@k"] == 1.0 and summary["metrics"]["counts"]["CM_strict"] == 5
