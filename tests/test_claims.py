"""The learning-signal and paper-claim tables: intervals against the t formula, planted effects found, and
no verdict where the data cannot tell."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from rlsd_harness.analysis import claims


def test_t_interval_is_the_student_t_interval():
    x = [0.1, 0.4, 0.35, 0.2, 0.5]
    mean, low, high, n = claims.t_interval(x)
    half = sps.t.ppf(0.975, 4) * np.std(x, ddof=1) / math.sqrt(5)
    assert (mean, n) == (pytest.approx(np.mean(x)), 5)
    assert (low, high) == (pytest.approx(np.mean(x) - half), pytest.approx(np.mean(x) + half))
    assert math.isnan(claims.t_interval([0.3])[1]) and claims.t_interval([])[3] == 0


def _runs(seed_count: int, rng: np.random.Generator, *, rlsd_edge: float, opsd_fall: float, leak_rise: float,
          grpo_entropy_drop: float, w_clip: float, steps: int = 40) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Metrics lines and per-item test records of grpo/rlsd/opsd runs with the given planted effects."""
    lines, records = [], []
    items = [f"i{j}" for j in range(200)]
    for seed in range(seed_count):
        base = rng.uniform(0.35, 0.45)  # one base per seed, shared by the methods
        for method in ("grpo", "rlsd", "opsd"):
            drop = grpo_entropy_drop if method == "grpo" else 0.02
            for t in range(1, steps + 1):
                frac = t / steps
                lines.append({"method": method, "seed": seed, "status": "finished", "step": float(t),
                              "rollout/reward": base + 0.2 * frac + rng.normal(0, 0.01),
                              "actor/entropy": 0.3 - drop * frac + rng.normal(0, 0.002),
                              "rollout/leakage": (leak_rise * frac if method == "opsd" else 0.0) + rng.normal(0, 0.002),
                              "actor/w_clip_frac": (w_clip + rng.normal(0, 0.002)) if method == "rlsd" else np.nan})
            final = base + 0.15 + (rlsd_edge if method == "rlsd" else 0.0) + rng.normal(0, 0.005)
            middle = final + (opsd_fall if method == "opsd" else 0.0) * -1
            for budget, p in ((0.0, base), (0.5, middle), (1.0, final)):
                for it in items:
                    records.append({"method": method, "seed": seed, "budget": budget, "item": it,
                                    "score": float(rng.random() < p)})
    return pd.DataFrame(lines), pd.DataFrame(records)


def test_planted_effects_are_found_with_the_right_verdicts():
    df, records = _runs(8, np.random.default_rng(0), rlsd_edge=0.05, opsd_fall=-0.06, leak_rise=0.05,
                        grpo_entropy_drop=0.15, w_clip=0.03)
    q = claims.run_quantities(df, records)
    assert len(q) == 24 and set(q["method"]) == {"grpo", "rlsd", "opsd"}
    learning = claims.learning_rows(q, ["grpo", "rlsd", "opsd"]).set_index(["method", "measure"])
    grpo = learning.loc["grpo"]
    assert grpo.iloc[0]["gain"] == pytest.approx(100 * 0.2 * (30 / 40), abs=1.5)  # last 10 minus first 10 steps
    test = grpo.iloc[1]  # planted: the last budget point is the base + 15 points
    assert test["gain"] == pytest.approx(15, abs=3) and test["ci_low"] < test["gain"] < test["ci_high"]
    verdicts = claims.claim_rows(q).set_index("claim")["verdict"]
    assert verdicts["rlsd >= grpo at matched compute"] == "held"
    assert verdicts["opsd peaks early, then falls while its leakage rises"] == "held"
    assert verdicts["grpo's entropy falls faster than rlsd's"] == "held"
    assert verdicts["rlsd's w-clip fraction is a few percent"] == "held"
    md = claims.markdown(claims.learning_rows(q, ["grpo"]), claims.claim_rows(q))
    assert "**held**" in md and "95 % CI" in md
    rows = claims.claim_rows(q).astype({"n": float})  # the report's claim rows hold NaN counts: a float column
    md = claims.markdown(claims.learning_rows(q, ["grpo"]), rows)
    assert "| 8 |" in md and "| 8.0 |" not in md, "seed counts print as integers"


def test_opposite_effects_do_not_hold_and_noise_cannot_tell():
    df, records = _runs(8, np.random.default_rng(1), rlsd_edge=-0.08, opsd_fall=0.15, leak_rise=0.0,
                        grpo_entropy_drop=-0.10, w_clip=0.30)
    verdicts = claims.claim_rows(claims.run_quantities(df, records)).set_index("claim")["verdict"]
    assert verdicts["rlsd >= grpo at matched compute"] == "did not hold"
    assert verdicts["opsd peaks early, then falls while its leakage rises"] == "did not hold"
    assert verdicts["grpo's entropy falls faster than rlsd's"] == "did not hold"
    assert verdicts["rlsd's w-clip fraction is a few percent"] == "did not hold"
    df, records = _runs(2, np.random.default_rng(2), rlsd_edge=0.01, opsd_fall=0.0, leak_rise=0.0,
                        grpo_entropy_drop=0.02, w_clip=0.01)
    verdicts = claims.claim_rows(claims.run_quantities(df, records)).set_index("claim")["verdict"]
    assert verdicts["rlsd >= grpo at matched compute"] == "cannot tell"
    assert verdicts["grpo's entropy falls faster than rlsd's"] == "cannot tell"


def test_the_rlsd_claim_reads_the_comparison_tables_last_budget_point_and_its_significance():
    df, records = _runs(4, np.random.default_rng(3), rlsd_edge=0.05, opsd_fall=0.0, leak_rise=0.0,
                        grpo_entropy_drop=0.02, w_clip=0.03)
    q = claims.run_quantities(df, records)
    table = pd.DataFrame([
        {"table": "budget=0.5", "method": "rlsd", "baseline": "grpo", "diff": 0.09, "diff_low": 0.01,
         "diff_high": 0.2, "p_holm": 0.01, "cmp_n_runs": 4, "significant": True},
        {"table": "budget=1", "method": "rlsd", "baseline": "grpo", "diff": -0.04, "diff_low": -0.06,
         "diff_high": -0.02, "p_holm": 0.2, "cmp_n_runs": 4, "significant": False},
        {"table": "auc", "method": "rlsd", "baseline": "grpo", "diff": 0.5, "diff_low": 0.4, "diff_high": 0.6,
         "p_holm": 0.001, "cmp_n_runs": 4, "significant": True}])
    row = claims.claim_rows(q, table=table).set_index("claim").loc["rlsd >= grpo at matched compute"]
    assert (row["mean"], row["ci_low"], row["ci_high"], row["p"]) == (pytest.approx(-4), pytest.approx(-6),
                                                                      pytest.approx(-2), 0.2)
    assert row["verdict"] == "cannot tell"  # not significant after correction, whatever the interval says
    table.loc[1, "significant"] = True
    row = claims.claim_rows(q, table=table).set_index("claim").loc["rlsd >= grpo at matched compute"]
    assert row["verdict"] == "did not hold"
