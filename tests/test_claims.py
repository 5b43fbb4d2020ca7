"""The learning-signal and paper-claim tables: intervals against the t formula, planted effects found, claims as
tests against a stated margin, and no verdict where the data cannot tell."""

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


def _table(diff: float, low: float, high: float, *, significant: bool, se: float = 0.01, df: float = 7.0,
           family: str = "primary") -> pd.DataFrame:
    """A comparison table with an earlier budget point and a curve summary that the claim must not read."""
    return pd.DataFrame([
        {"table": "budget=0.5", "method": "rlsd", "baseline": "grpo", "diff": 0.09, "diff_low": 0.01,
         "diff_high": 0.2, "diff_se": 0.04, "diff_df": 7.0, "p_value": 0.01, "p_holm": 0.01, "cmp_n_runs": 8,
         "significant": True, "family": "holm"},
        {"table": "budget=1", "method": "rlsd", "baseline": "grpo", "diff": diff, "diff_low": low, "diff_high": high,
         "diff_se": se, "diff_df": df, "p_value": 0.2, "p_holm": 0.2, "cmp_n_runs": 8, "significant": significant,
         "family": family},
        {"table": "auc", "method": "rlsd", "baseline": "grpo", "diff": 0.5, "diff_low": 0.4, "diff_high": 0.6,
         "diff_se": 0.05, "diff_df": 7.0, "p_value": 0.001, "p_holm": 0.001, "cmp_n_runs": 8, "significant": True,
         "family": "holm"}])


def test_the_rlsd_claim_is_a_non_inferiority_test_on_the_tables_last_budget_point():
    df, records = _runs(4, np.random.default_rng(3), rlsd_edge=0.05, opsd_fall=0.0, leak_rise=0.0,
                        grpo_entropy_drop=0.02, w_clip=0.03)
    q = claims.run_quantities(df, records)

    def claim(table):
        return claims.claim_rows(q, table=table).set_index("claim").loc["rlsd >= grpo at matched compute"]

    row = claim(_table(-0.04, -0.06, -0.02, significant=False))
    assert (row["mean"], row["ci_low"], row["ci_high"]) == (pytest.approx(-4), pytest.approx(-6), pytest.approx(-2))
    # behind by more than the 1-point margin: did not hold, whatever the (corrected) significance says
    assert row["verdict"] == "did not hold" and "primary comparison" in row["quantity"]
    assert "behind (< 0): yes" in row["quantity"]
    # a significant deficit inside the margin is non-inferior: held (the old rule said "did not hold")
    row = claim(_table(-0.005, -0.009, -0.001, significant=True))
    assert row["verdict"] == "held" and "superior (> 0): no" in row["quantity"] and "equivalent (within +-1): yes" in row["quantity"]
    # an interval reaching below -1 point and above it cannot tell
    row = claim(_table(-0.0069, -0.0162, 0.0024, significant=False, se=0.0039, df=7.03))
    assert row["verdict"] == "cannot tell"
    # the p is the one-sided non-inferiority p of the interval's own t: below 0.025 exactly when it held
    assert row["p"] == pytest.approx(sps.t.sf((-0.0069 + 0.01) / 0.0039, 7.03))
    for diff in np.linspace(-0.03, 0.01, 41):
        se, dof = 0.004, 7.0
        half = sps.t.ppf(0.975, dof) * se
        r = claim(_table(diff, diff - half, diff + half, significant=False, se=se, df=dof))
        assert (r["p"] < 0.025) == (r["verdict"] == "held"), diff
    # the margin is a parameter: at 2 points the same interval [-1.62, +0.24] is non-inferior
    wide = claims.claim_rows(q, table=_table(-0.0069, -0.0162, 0.0024, significant=False), margin_points=2.0)
    assert wide.set_index("claim").loc["rlsd >= grpo at matched compute", "verdict"] == "held"


@pytest.mark.parametrize(("low", "high", "test", "direction", "want"), [
    (-0.5, 0.5, "non-inferiority", 1, "held"),        # above -1
    (-3.0, -1.5, "non-inferiority", 1, "did not hold"),  # below -1
    (-1.6, 0.2, "non-inferiority", 1, "cannot tell"),
    (0.2, 2.0, "superiority", 1, "held"),
    (-0.4, 0.8, "superiority", 1, "did not hold"),    # no effect of a margin or more
    (-0.4, 1.8, "superiority", 1, "cannot tell"),
    (-2.0, -0.2, "superiority", -1, "held"),          # claimed below 0
    (-0.8, 0.4, "superiority", -1, "did not hold"),
    (0.5, 3.0, "non-inferiority", -1, "cannot tell"),  # claimed small: [0.5, 3] straddles +1
])
def test_margin_verdict_hand_cases(low, high, test, direction, want):
    assert claims.margin_verdict(low, high, test, 1.0, direction) == want


def test_margin_verdict_and_equivalence_name_bad_input():
    with pytest.raises(ValueError, match="'non-inferiority' or 'superiority'; got 'equal'"):
        claims.margin_verdict(0.0, 1.0, "equal", 1.0)
    with pytest.raises(ValueError, match="margin must be >= 0; got -1"):
        claims.margin_verdict(0.0, 1.0, "superiority", -1.0)
    assert claims.equivalence_verdict(0.02, 0.05, (0.01, 0.1)) == "held"
    assert claims.equivalence_verdict(0.2, 0.3, (0.01, 0.1)) == "did not hold"
    assert claims.equivalence_verdict(0.05, 0.2, (0.01, 0.1)) == "cannot tell"
    assert claims.margin_verdict(float("nan"), 1.0, "superiority", 1.0) == "cannot tell"


def test_a_rise_smaller_than_the_margin_is_not_a_rise_and_the_docstring_states_the_margins():
    """OPSD falls clearly but its leakage does not move: the leakage interval excludes a 1-point rise, so
    the claim did not hold (the old rule said "cannot tell"); the module docstring names each margin."""
    df, records = _runs(8, np.random.default_rng(4), rlsd_edge=0.0, opsd_fall=-0.06, leak_rise=0.0,
                        grpo_entropy_drop=0.02, w_clip=0.03)
    row = claims.claim_rows(claims.run_quantities(df, records)).set_index("claim").loc[
        "opsd peaks early, then falls while its leakage rises"]
    assert row["verdict"] == "did not hold" and "fall: held" in row["quantity"] and "rise: did not hold" in row["quantity"]
    doc = claims.__doc__
    assert "non-inferiority test with margin ``MARGIN_POINTS`` (1 point)" in doc and claims.MARGIN_POINTS == 1.0
    assert "``ENTROPY_MARGIN``\n     (0.01 nats/token" in doc and claims.ENTROPY_MARGIN == 0.01
    assert "Holm" not in doc  # the verdict follows the interval, never a corrected p


def test_claims_whose_arms_are_absent_have_no_row():
    """A 2 x 2 RLSD ablation (arms rlsd-eps_w0.1-sync_every1, ...) printed four claim rows of +nan; a control
    study without opsd printed OPSD's claim as nan. Only the claims whose arms are present get a row."""
    df, records = _runs(3, np.random.default_rng(5), rlsd_edge=0.02, opsd_fall=0.0, leak_rise=0.0,
                        grpo_entropy_drop=0.02, w_clip=0.03)
    labels = {"grpo": "rlsd-eps_w0.1-sync_every1", "rlsd": "rlsd-eps_w0.4-sync_every1",
              "opsd": "rlsd-eps_w0.1-sync_every3"}
    ablation_q = claims.run_quantities(df.replace({"method": labels}), records.replace({"method": labels}))
    rows = claims.claim_rows(ablation_q, table=None)
    assert rows.empty, rows
    md = claims.markdown(claims.learning_rows(ablation_q, list(labels.values())), rows)
    assert "nan" not in md and "None applies" in md
    no_opsd = (df["method"] != "opsd"), (records["method"] != "opsd")
    q = claims.run_quantities(df[no_opsd[0]], records[no_opsd[1]])
    got = claims.claim_rows(q)
    assert not any("opsd" in c for c in got["claim"]) and len(got) >= 3
    assert np.isfinite(got[["mean", "ci_low", "ci_high"]].to_numpy(dtype=float)).all()
