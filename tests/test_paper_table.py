"""The paper's main table (`rlsd-report folder=<study> table=paper`): from the per-item records that
`rlsd-evaluate` writes for each run's budget-point policies, methods x benchmarks with intervals, every cell equal
to the benchmark's own headline metric (mean@k) averaged over seeds. Records are produced by the real runner and
the real scorers, on the real MathVision and We-Math testmini files where present and on fixture rows for the
others; only the model's responses are stand-ins (a seeded pick among plausible answers)."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from rlsd_harness.analysis import paper_table
from rlsd_harness.benchmarks import metadata
from rlsd_harness.config import compose_config
from rlsd_harness.evaluation.runner import run_benchmarks
from rlsd_harness.rollout.hf import HFRolloutEngine
from tests import benchmark_fixtures as fixtures

REAL = Path(__file__).resolve().parents[2] / "shared" / "real-benchmarks"
ANSWERS = ["A", "B", "C", "D", "E", "1", "2", "3", "4", "5", "12", "60"]


def _fake_generate(skill: float):
    """Responses drawn from the per-response seeds: a boxed answer and a We-Math style "Answer: X" line."""

    def generate(self, prompts, params, seeds):
        texts = []
        for s in seeds:
            rng = random.Random(s * 7919 + int(skill * 1000))
            a = ANSWERS[0] if rng.random() < skill else rng.choice(ANSWERS)
            texts.append(f"The answer is \\boxed{{{a}}}.\n<Answer>: {a}")
        return SimpleNamespace(texts=texts)  # the runner reads only the texts

    return generate


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    out = fixtures.write_all(tmp_path_factory.mktemp("paper-fixtures"))
    if (REAL / "mathvision" / "data" / "testmini.jsonl").exists():
        out["mathvision"] = REAL / "mathvision"
    if (REAL / "wemath" / "testmini.json").exists():
        out["wemath"] = REAL / "wemath"
    return out


def _evaluate(study: Path, tiny, tiny_dir, sources, monkeypatch, method: str, seed: int, frac: str, skill: float):
    monkeypatch.setattr(HFRolloutEngine, "generate", _fake_generate(skill))
    cfg = compose_config([*(f"eval.sources.{n}={p}" for n, p in sources.items()), "eval.decoding=paper", "eval.k=2",
                          "eval.progress=false", "eval.batch=64", f"seed={seed}",
                          *(["eval.splits.mathvision=testmini"] if "shared" in str(sources["mathvision"]) else [])])
    model, processor = tiny
    out = study / "runs" / f"{method}-s{seed}" / "benchmarks" / frac
    run_benchmarks(tiny_dir, ["mmmu", "mathvista", "mathvision", "zerobench", "wemath"], cfg, out, limit=16,
                   model=model, processor=processor, log=lambda msg: None)
    return out


def test_every_cell_is_the_benchmarks_headline_averaged_over_seeds(tiny, tiny_dir, sources, tmp_path, monkeypatch):
    study = tmp_path / "study"
    skills = {"grpo": 0.2, "rlsd": 0.5}
    for method, skill in skills.items():
        for seed in (0, 1):
            for frac in ("0.00", "1.00"):
                _evaluate(study, tiny, tiny_dir, sources, monkeypatch, method, seed, frac,
                          0.1 if frac == "0.00" else skill)
    table = paper_table.build(study, n_resamples=200, run_config=lambda run: {})
    assert table.benchmarks == ["mmmu", "mathvista", "mathvision", "zerobench", "wemath"]
    s = table.summary
    for method in skills:
        for name in table.benchmarks:
            headline = [json.loads((study / "runs" / f"{method}-s{seed}" / "benchmarks" / "1.00" /
                                    f"{name}.metrics.json").read_text())["mean@k"] for seed in (0, 1)]
            row = s[(s.fraction == "1.00") & (s.method == method) & (s.column == name)].iloc[0]
            assert row["mean"] == pytest.approx(100 * np.mean(headline), abs=1e-9), (method, name)
            assert row["low"] <= row["mean"] <= row["high"]
        five = s[(s.fraction == "1.00") & (s.method == method) & s.column.isin(table.benchmarks)]["mean"]
        avg = s[(s.fraction == "1.00") & (s.method == method) & (s.column == "average")].iloc[0]
        assert avg["mean"] == pytest.approx(five.mean(), abs=1e-9)
    d = table.differences
    assert set(d["method"]) == {"rlsd"} and set(d["fraction"]) == {"1.00"}
    assert set(d["column"]) == {*table.benchmarks, "average"}
    rlsd_avg = d[d.column == "average"].iloc[0]
    grpo = s[(s.fraction == "1.00") & (s.column == "average")].set_index("method")["mean"]
    assert rlsd_avg["diff"] == pytest.approx(grpo["rlsd"] - grpo["grpo"], abs=1e-9)
    assert rlsd_avg["low"] <= rlsd_avg["diff"] <= rlsd_avg["high"]
    text = paper_table.markdown(table)
    assert "## the base policy (step 0, every method)" in text and "## budget point 1.00" in text
    assert re.search(r"\| rlsd - grpo \| \| ", text)
    assert "| rlsd | 67.22 | 78.10 | 52.73 | 24.85 | 58.00 | 56.18 |" in text  # Table 2, for reference
    assert "Not comparable" in text  # an empty config differs from the paper's setting


def test_wemath_units_are_composite_problems_whose_mean_is_the_strict_score():
    """Score (Strict) = (N - 0.5 IG - RM - IK) / N per sample, and each problem's share of it averaged over k."""
    from rlsd_harness.benchmarks import wemath

    rows, flags = [], []
    rng = random.Random(3)
    for pid in range(1, 13):
        steps = 2 if pid % 3 else 3
        for part in [*map(str, range(1, steps + 1)), "multi"]:
            rows.append({"ID": str(pid), "key": f"{steps}steps_{part}", "answer": "A"})
            flags.append([rng.random() < 0.5 for _ in range(3)])
    ids = [metadata("wemath").row_id(r) for r in rows]
    units = metadata("wemath").unit_scores(ids, flags)
    assert len(units) == 12 and set(units.values()) <= {0, 0.5, 1, 1 / 3, 2 / 3, 1 / 6, 5 / 6}
    per_sample = [wemath.metrics(rows, [{"correct": f[j]} for f in flags])["Score (Strict)"] for j in range(3)]
    assert np.mean(list(units.values())) == pytest.approx(np.mean(per_sample), abs=1e-12)
    # a problem missing a piece is no unit (it cannot be scored)
    assert len(metadata("wemath").unit_scores(ids[1:], flags[1:])) == 11


def test_a_study_without_evaluations_names_the_command(tmp_path):
    (tmp_path / "runs" / "grpo-s0").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"rlsd-evaluate study="):
        paper_table.build(tmp_path)


def test_the_paper_setting_is_checked_key_by_key():
    diffs = paper_table.setting_differences({"model": {"arch": "qwen2_5_vl", "size": "tiny"},
                                             "train": {"prompts_per_step": 256, "group_size": 8},
                                             "rollout": {"max_new_tokens": 4096, "temperature": 1.0},
                                             "eval": {"k": 4}})
    assert diffs == ["model.arch: 'qwen2_5_vl' (paper: 'qwen3_vl')", "model.size: 'tiny' (paper: None)"]
