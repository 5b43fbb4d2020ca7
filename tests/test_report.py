"""The comparison report on synthetic run folders: its numbers are analysis/stats.py's on the same records,
a planted difference is found and a null is not, the primary comparison stands alone and Holm covers the rest
of the study, failed runs and runs without records are counted and said, older runs' flat metric names are
refused until their study is migrated, a rerun is compared with the original."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf
from statsmodels.stats.multitest import multipletests

from rlsd_harness.analysis import stats
from rlsd_harness.analysis.report import compare_studies, load_runs, write_report
from tests.study_fixtures import fabricate_study, records_from, write_run

SEEDS = list(range(8))
ROOT = Path(__file__).resolve().parents[1]


def experiment(methods, **extra):
    return OmegaConf.create({"methods": methods, "seeds": SEEDS, "overrides": [], "budget_kind": "flops",
                             "budget_points": [0.5, 1.0], **extra})


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """grpo, rlsd planted 0.8 logits better at the full budget (about +13 points), opsd no difference."""
    out = tmp_path_factory.mktemp("planted")
    written = fabricate_study(out, {"grpo": 0.0, "rlsd": 0.8, "opsd": 0.0}, SEEDS)
    exp = experiment(["grpo", "opsd", "rlsd"], pairs=[["rlsd", "opsd"]])
    write_report(out, exp, {"experiment": "planted"}, plots=False)
    return out, written, exp


def test_table_numbers_equal_stats_on_the_same_records(planted):
    out, written, _ = planted
    table = pd.read_csv(out / "table.csv")
    records = records_from(written)  # built from the arrays, not by the report's reader
    at_full = records[records["budget"] == 1.0]
    want = stats.comparison_table(at_full, budget=1.0, baseline="grpo", extra_pairs=[("rlsd", "opsd")])
    got = table[table["table"] == "budget=1"].dropna(subset=["baseline"])
    cols = ["diff", "diff_low", "diff_high", "p_value", "p_improvement", "min_detectable_points"]  # p_holm: the study's
    for _, w in want.iterrows():
        g = got[(got["method"] == w["method"]) & (got["baseline"] == w["baseline"])]
        assert len(g) == 1
        np.testing.assert_allclose(g[cols].to_numpy(float)[0], w[cols].to_numpy(float), rtol=1e-12)
        assert bool(g["paired"].iloc[0])
    summ = stats.summary_table(at_full, budget=1.0, methods=["grpo", "opsd", "rlsd"])
    for _, w in summ.iterrows():
        g = got[got["method"] == w["method"]].iloc[0] if w["method"] != "grpo" else \
            table[(table["table"] == "budget=1") & (table["method"] == "grpo")].iloc[0]
        np.testing.assert_allclose([g["mean"], g["ci_low"], g["ci_high"]], [w["mean"], w["ci_low"], w["ci_high"]],
                                   rtol=1e-12)
    auc = stats.comparison_table(records, curve="auc", baseline="grpo", extra_pairs=[("rlsd", "opsd")])
    got_auc = table[(table["table"] == "auc") & (table["method"] == "rlsd") & (table["baseline"] == "grpo")]
    np.testing.assert_allclose(got_auc["diff"].iloc[0], auc[auc["method"] == "rlsd"]["diff"].iloc[0], rtol=1e-12)
    last = stats.summary_table(records, curve="last", last_k=2, methods=["grpo"])
    got_last = table[(table["table"] == "last2") & (table["method"] == "grpo")]
    np.testing.assert_allclose(got_last["mean"].iloc[0], last["mean"].iloc[0], rtol=1e-12)


def test_planted_difference_is_significant_and_the_null_is_not(planted):
    out, _, _ = planted
    table = pd.read_csv(out / "table.csv")
    full = table[(table["table"] == "budget=1") & (table["baseline"] == "grpo")].set_index("method")
    assert full.loc["rlsd", "significant"] and full.loc["rlsd", "diff"] > 0.08
    assert not full.loc["opsd", "significant"]
    md = (out / "table.md").read_text()
    rlsd_row = next(ln for ln in md.split("at 1 x budget")[1].splitlines() if ln.startswith("| rlsd |"))
    opsd_row = next(ln for ln in md.split("at 1 x budget")[1].splitlines() if ln.startswith("| opsd |"))
    assert "**yes**" in rlsd_row and "**yes**" not in opsd_row
    readme = (out / "README.md").read_text()
    assert "## What this study cannot resolve" in readme and "opsd vs grpo" in readme.split("cannot resolve")[1]


def test_the_primary_comparison_stands_alone_and_the_rest_is_one_holm_family(planted):
    out, _, _ = planted
    table = pd.read_csv(out / "table.csv").dropna(subset=["baseline"])
    assert sorted(table["table"].unique()) == ["auc", "budget=0.5", "budget=1", "last2"]
    primary = table[table["family"] == "primary"]
    assert primary[["table", "method", "baseline"]].values.tolist() == [["budget=1", "rlsd", "grpo"]]
    assert primary["p_holm"].iloc[0] == primary["p_value"].iloc[0]  # not corrected
    rest = table[table["family"] == "holm"]
    assert len(rest) == 11  # 3 comparisons x 4 tables, less the primary: one family across the tables
    np.testing.assert_allclose(rest["p_holm"], multipletests(rest["p_value"], method="holm")[1], rtol=1e-12)
    assert (rest["significant"] == (rest["p_holm"] < 0.05)).all()
    md = (out / "table.md").read_text()
    assert "The primary comparison, fixed before the runs, is rlsd - grpo at the last budget point (1 x" in md
    assert "one Holm family of 11" in md


def test_power_line_per_comparison_and_per_seed_table(planted):
    out, _, _ = planted
    table = pd.read_csv(out / "table.csv")
    full = table[(table["table"] == "budget=1")].dropna(subset=["baseline"])
    md = (out / "table.md").read_text().split("at 1 x budget")[1].split("**test")[0]
    line = next(ln for ln in md.splitlines() if ln.startswith("Power: one figure per comparison"))
    for _, r in full.iterrows():  # each comparison its own figures, with the chi-square range
        assert (f"{r['method']} - {r['baseline']} resolves >= {r['min_detectable_points']:.1f} points "
                f"[{r['min_detectable_low']:.1f}, {r['min_detectable_high']:.1f}] with 8 seeds, delta=3 needs "
                f"{int(r['runs_needed'])} [{int(r['runs_needed_low'])}, {int(r['runs_needed_high'])}] (7 df)") in line
    rlsd_row = next(ln for ln in md.splitlines() if ln.startswith("| rlsd |"))
    r = full[(full["method"] == "rlsd") & (full["baseline"] == "grpo")].iloc[0]
    assert f"{100 * r['loso_min']:+.1f} to {100 * r['loso_max']:+.1f} ({int(r['loso_excluding_zero'])}/8 exclude 0)" in rlsd_row
    per_seed = pd.read_csv(out / "per_seed.csv")
    assert len(per_seed) == 24 and set(per_seed["status"]) == {"finished"}
    row = per_seed[(per_seed["method"] == "rlsd") & (per_seed["seed"] == 3)].iloc[0]
    want = np.mean([json.loads(x)["correct"] for x in (out / "runs/rlsd-s3/evals/test-step000010.jsonl")
                    .read_text().splitlines()])
    assert row["at 1"] == pytest.approx(want, abs=1e-12)
    assert (out / "per_seed.md").exists()


def test_plots_have_a_band_per_method(tmp_path):
    fabricate_study(tmp_path, {"grpo": 0.0, "rlsd": 0.5}, SEEDS[:3], items=20)
    said = []
    write_report(tmp_path, experiment(["grpo", "rlsd"]), {"experiment": "plots"}, n_resamples=999, log=said.append)
    # the report says what it is doing, phase by phase, with the seconds since it began
    assert [line.split(":")[1].split()[0] for line in said] == ["reading", "tables", "learning", "plots", "done"]
    assert all(line.startswith("report: ") and line.endswith(" s)") for line in said)
    import matplotlib.image

    for name in ("accuracy_vs_compute.png", "dynamics.png"):
        img = matplotlib.image.imread(tmp_path / name)
        assert img.shape[0] > 100 and img[..., :3].std() > 0.05  # drawn, not blank
    assert "![accuracy](accuracy_vs_compute.png)" in (tmp_path / "README.md").read_text()


def test_failed_unfinished_and_recordless_runs_are_counted_not_dropped(tmp_path):
    fabricate_study(tmp_path, {"grpo": 0.0, "rlsd": 0.5}, SEEDS[:6], items=40)
    (tmp_path / "runs/rlsd-s6").mkdir()
    (tmp_path / "runs/rlsd-s6/failed.json").write_text(json.dumps({"error": "RuntimeError: diverged"}))
    write_run(tmp_path / "runs/rlsd-s7", {0.0: {"test": np.ones((40, 4))}}, finished=False)
    # a finished run that lacks the 1.0 point (stopped by train.steps short of the budget)
    write_run(tmp_path / "runs/grpo-s6", {0.0: {"test": np.ones((40, 4))}, 0.5: {"test": np.ones((40, 4))}})
    write_report(tmp_path, experiment(["grpo", "rlsd"]), {"experiment": "counted"}, n_resamples=999, plots=False)
    md = (tmp_path / "table.md").read_text()
    full = md.split("at 1 x budget")[1]
    rlsd_row = next(ln for ln in full.splitlines() if ln.startswith("| rlsd |"))
    grpo_row = next(ln for ln in full.splitlines() if ln.startswith("| grpo (baseline) |"))
    assert "rlsd-s6 failed" in rlsd_row and "rlsd-s7 unfinished" in rlsd_row and "| 6 |" in rlsd_row
    assert "grpo-s6 lacks this budget point" in grpo_row
    half = md.split("at 0.5 x budget")[1].split("at 1 x budget")[0]
    assert "| 7 |" in next(ln for ln in half.splitlines() if ln.startswith("| grpo (baseline) |"))
    readme = (tmp_path / "README.md").read_text()
    assert "rlsd-s6: failed: RuntimeError: diverged" in readme and "rlsd-s7: unfinished" in readme
    assert "Runs: 13 finished, 1 failed, 1 unfinished" in readme
    df = load_runs(tmp_path / "runs")
    assert isinstance(df, pd.DataFrame) and set(df[df["run"] == "rlsd-s6"]["status"]) == {"failed"}


def test_flat_names_of_older_runs_are_refused_until_the_study_is_migrated(tmp_path):
    """No second reading path for the flat metric names of older runs: the report names the file and the
    migration, and after bench/migrate_studies.py the study's tables are those of the same runs written with
    today's names."""
    exp = experiment(["grpo", "rlsd"])
    for name in ("today", "older"):
        fabricate_study(tmp_path / name, {"grpo": 0.0, "rlsd": 0.5}, SEEDS[:3], items=30)
    flat = {"rollout/reward": "reward", "actor/entropy": "entropy", "ledger/cum/flops/total": "cum/flops/total",
            "ledger/cum/time/step": "cum/time/step"}  # what the trainer wrote before it namespaced
    for path in (tmp_path / "older" / "runs").glob("*/metrics.jsonl"):
        lines = [json.loads(x) for x in path.read_text().splitlines()]
        path.write_text("".join(json.dumps({flat.get(k, k): v for k, v in x.items()}) + "\n" for x in lines))
    with pytest.raises(ValueError, match=r"grpo-s0/metrics.jsonl: flat metric names \['cum/flops/total'"):
        write_report(tmp_path / "older", exp, {"experiment": "old"}, n_resamples=99, plots=False)
    migrate = [sys.executable, str(ROOT / "bench" / "migrate_studies.py"), str(tmp_path / "older")]
    said = subprocess.run(migrate, capture_output=True, text=True, check=True).stdout
    assert said.count("metrics.jsonl: 10 line(s) with flat metric names -> namespaced") == 6, said  # steps 1-10
    for name in ("today", "older"):
        write_report(tmp_path / name, exp, {"experiment": "x"}, n_resamples=99, plots=False)
    for f in ("table.md", "table.csv", "per_seed.csv", "claims.csv"):
        assert (tmp_path / "older" / f).read_bytes() == (tmp_path / "today" / f).read_bytes(), f


def test_runs_without_per_item_records_are_counted_not_read_another_way(tmp_path):
    """A finished run with only aggregate accuracies (no per-item records at the budget points) is left out
    of the tables and said; a study of only such runs has no tables."""
    fabricate_study(tmp_path, {"grpo": 0.0, "rlsd": 0.5}, SEEDS[:3], items=30)
    run = tmp_path / "runs" / "rlsd-s2"
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    (run / "metrics.jsonl").write_text("".join(json.dumps({k: v for k, v in x.items() if not k.endswith(
        ("/file", "/budget_point"))}) + "\n" for x in lines))
    write_report(tmp_path, experiment(["grpo", "rlsd"]), {"experiment": "some"}, n_resamples=99, plots=False)
    assert "1 finished run(s) wrote no per-item test records at the budget points" in (tmp_path / "table.md").read_text()
    rlsd = next(ln for ln in (tmp_path / "table.md").read_text().splitlines() if ln.startswith("| rlsd |"))
    assert "rlsd-s2 has no records" in rlsd and "| 2 |" in rlsd
    only = tmp_path / "only"
    (only / "runs").mkdir(parents=True)
    (run).rename(only / "runs" / "rlsd-s2")
    assert write_report(only, experiment(["rlsd"]), {"experiment": "none"}, plots=False) == []
    assert "No finished runs with per-item held-out records" in (only / "README.md").read_text()


def test_compare_with_an_identical_rerun_and_a_changed_one(tmp_path):
    exp = experiment(["grpo", "rlsd"])
    fabricate_study(tmp_path / "a", {"grpo": 0.0, "rlsd": 0.5}, SEEDS[:3], items=30)
    fabricate_study(tmp_path / "b", {"grpo": 0.0, "rlsd": 0.5}, SEEDS[:3], items=30)
    same = compare_studies(tmp_path / "b", tmp_path / "a", exp)
    assert (same["runs_identical"] == 3).all() and (same["diff_points"] == 0).all()
    fabricate_study(tmp_path / "c", {"grpo": 0.0, "rlsd": 0.5}, SEEDS[:3], items=30, rng_seed=1)
    changed = compare_studies(tmp_path / "c", tmp_path / "a", exp)
    assert (changed["runs_both"] == 3).all() and (changed["runs_identical"] < 3).any()
    assert (changed["max_abs_item_diff"] > 0).any()
