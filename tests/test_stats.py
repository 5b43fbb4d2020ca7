"""harness.stats: numbers against scipy / statsmodels on known data, and a planted difference found."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.special import comb
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestIndPower, TTestPower

from rlsd_harness.analysis import stats as S


def synthetic_records(gains: dict[str, float], *, seeds=range(8), items=500, k=4, budgets=(1.0, 2.0, 3.0),
                      rng_seed=0) -> pd.DataFrame:
    """Runs paired by seed: every method of one seed shares the seed's offset and the item difficulties;
    a method's gain adds to every item's success probability. Scores are mean@k of Bernoulli samples."""
    rng = np.random.default_rng(rng_seed)
    base_p = rng.uniform(0.1, 0.8, items)
    rows = []
    for seed in seeds:
        offset = rng.normal(0.0, 0.02)
        for b in budgets:
            for method, gain in gains.items():
                p = np.clip(base_p + offset + gain + 0.01 * b, 0.0, 1.0)
                scores = rng.binomial(k, p) / k
                rows += [(method, seed, b, f"q{i}", s) for i, s in enumerate(scores)]
    return pd.DataFrame(rows, columns=list(S.RECORD_COLUMNS))


# ------------------------------------------------------------ pass@k, mean@k, sizing


@pytest.mark.parametrize(("n", "c", "k", "want"), [(4, 1, 1, 0.25), (4, 1, 4, 1.0), (5, 2, 2, 0.7), (4, 0, 2, 0.0)])
def test_pass_at_k_hand_values(n, c, k, want):
    assert S.pass_at_k(n, c, k) == pytest.approx(want, abs=1e-12)


def test_pass_at_k_matches_binomial_formula_and_stays_finite_for_large_n():
    for n in range(1, 12):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert S.pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k, exact=True) / comb(n, k, exact=True))
    # C(1000, 500) overflows a float; the product form does not
    exact = 1 - math.comb(997, 500) / math.comb(1000, 500)
    assert S.pass_at_k(1000, 3, 500) == pytest.approx(exact, rel=1e-12)


def test_pass_at_k_rejects_impossible_counts():
    with pytest.raises(ValueError, match="k=5"):
        S.pass_at_k(4, 1, 5)
    with pytest.raises(ValueError, match="c=6"):
        S.pass_at_k(4, 6, 1)


def test_mean_at_k_binomial_se_and_items_for_se():
    np.testing.assert_allclose(S.mean_at_k(np.array([[1, 0, 0, 1], [1, 1, 1, 1], [0, 0, 0, 0]])), [0.5, 1.0, 0.0])
    assert S.binomial_se(0.35, 256) == pytest.approx(math.sqrt(0.35 * 0.65 / 256))
    n = S.items_for_se(0.5, 0.015)  # the evaluation size that keeps binomial noise at 1.5 points
    assert n == 1112 and S.binomial_se(0.5, n) <= 0.015 < S.binomial_se(0.5, n - 1)


# ------------------------------------------------------------ curve summaries


def test_area_under_curve_and_last_k_hand_values():
    budgets = [0.0, 1.0, 3.0]
    x = np.array([[0.2, 0.4, 0.4], [0.0, 0.0, 0.6]])
    # trapezoids: (0.3 * 1 + 0.4 * 2) / 3 and (0 + 0.3 * 2) / 3
    np.testing.assert_allclose(S.area_under_curve(x, budgets), [1.1 / 3, 0.2])
    np.testing.assert_allclose(S.last_k_mean(x, 2), [0.4, 0.3])
    with pytest.raises(ValueError, match="increasing"):
        S.area_under_curve(x, [0.0, 2.0, 1.0])
    with pytest.raises(ValueError, match="last_k"):
        S.last_k_mean(x, 4)


# ------------------------------------------------------------ intervals


def test_interval_over_per_run_scalars_is_scipys_percentile_bootstrap():
    per_run = np.array([0.41, 0.38, 0.45, 0.40, 0.36, 0.43])
    iv = S.mean_interval(per_run, n_resamples=2000, bootstrap_seed=3)
    ref = stats.bootstrap((per_run,), np.mean, n_resamples=2000, method="percentile",
                          rng=np.random.default_rng(3)).confidence_interval
    assert iv.estimate == pytest.approx(per_run.mean())
    assert (iv.low, iv.high) == pytest.approx((ref.low, ref.high))
    assert iv.reliable and iv.n_runs == 6 and "2000 resamples" in iv.method


def test_one_run_interval_is_the_classic_item_standard_error():
    scores = np.random.default_rng(1).binomial(4, 0.4, 300) / 4
    iv = S.mean_interval(scores[None, :])
    half = stats.norm.ppf(0.975) * stats.sem(scores)
    assert (iv.low, iv.high) == pytest.approx((scores.mean() - half, scores.mean() + half))
    assert not iv.reliable and "unreliable" in iv.method


def test_fewer_than_five_runs_are_flagged_unreliable():
    x = np.random.default_rng(2).uniform(size=(4, 50))
    assert not S.mean_interval(x).reliable
    assert S.mean_interval(np.vstack([x, x[:1]])).reliable


def test_item_term_gives_coverage_that_a_run_only_bootstrap_misses():
    """Crossed model x = mu + run + item + noise with a large item effect: the run-only bootstrap ignores
    the sampling of the shared items and under-covers; the two-level interval covers about 95 %."""
    rng = np.random.default_rng(0)
    mu, runs, items, reps = 0.4, 8, 300, 300
    hit_two_level = hit_runs_only = 0
    for rep in range(reps):
        x = (mu + rng.normal(0, 0.01, (runs, 1)) + rng.normal(0, 0.25, (1, items))
             + rng.normal(0, 0.2, (runs, items)))
        iv = S.mean_interval(x, n_resamples=999, bootstrap_seed=rep)
        ro = S.mean_interval(x.mean(axis=1), n_resamples=999, bootstrap_seed=rep)
        hit_two_level += iv.low <= mu <= iv.high
        hit_runs_only += ro.low <= mu <= ro.high
    assert 0.88 <= hit_two_level / reps <= 0.99
    assert hit_runs_only / reps < 0.7


# ------------------------------------------------------------ tests of a difference


def test_paired_and_welch_p_values_are_scipys():
    rng = np.random.default_rng(4)
    x_b = rng.uniform(0, 1, (6, 40))
    x_m = x_b + rng.normal(0.03, 0.05, (6, 40))
    paired = S.compare_runs(x_m, x_b, paired=True, n_resamples=999)
    assert paired.p_value == pytest.approx(stats.ttest_rel(x_m.mean(1), x_b.mean(1)).pvalue)
    assert paired.difference.estimate == pytest.approx((x_m - x_b).mean())
    unpaired = S.compare_runs(x_m[:5], x_b, paired=False, n_resamples=999)
    assert unpaired.p_value == pytest.approx(stats.ttest_ind(x_m[:5].mean(1), x_b.mean(1), equal_var=False).pvalue)
    assert "Welch" in unpaired.test and not unpaired.paired


def test_ttest_rel_on_a_fixed_array():
    a = np.array([0.42, 0.47, 0.39, 0.51, 0.44])
    b = np.array([0.40, 0.41, 0.38, 0.45, 0.43])
    c = S.compare_runs(a, b, paired=True, n_resamples=999)
    d = a - b
    t = d.mean() / (d.std(ddof=1) / math.sqrt(d.size))
    assert c.p_value == pytest.approx(2 * stats.t.sf(abs(t), df=d.size - 1))
    assert c.p_value == pytest.approx(stats.ttest_rel(a, b).pvalue)


def test_probability_of_improvement_paired_and_mann_whitney():
    a = np.array([0.5, 0.6, 0.7, 0.4])
    b = np.array([0.4, 0.6, 0.8, 0.3])
    assert S.probability_of_improvement(a, b, paired=True, n_resamples=999).estimate == pytest.approx(0.625)
    u = np.array([0.52, 0.61, 0.47, 0.58, 0.66])
    v = np.array([0.50, 0.45, 0.49, 0.55, 0.44, 0.47])
    iv = S.probability_of_improvement(u, v, paired=False, n_resamples=999)
    assert iv.estimate == pytest.approx(stats.mannwhitneyu(u, v).statistic / (u.size * v.size))
    assert 0.0 <= iv.low <= iv.estimate <= iv.high <= 1.0


def test_holm_is_statsmodels_and_ignores_undefined_p_values():
    p = [0.01, 0.04, 0.03, 0.2]
    adjusted, reject = S.holm(p)
    ref_reject, ref_adjusted = multipletests(p, alpha=0.05, method="holm")[:2]
    np.testing.assert_allclose(adjusted, ref_adjusted)
    np.testing.assert_array_equal(reject, ref_reject)
    adjusted, reject = S.holm([0.01, float("nan"), 0.04])
    np.testing.assert_allclose(adjusted, [0.02, np.nan, 0.04])
    assert reject.tolist() == [True, False, True]


# ------------------------------------------------------------ power


def test_power_sentence_numbers_are_statsmodels():
    rng = np.random.default_rng(5)
    b = rng.normal(0.40, 0.05, 8)
    a = b + rng.normal(0.01, 0.03, 8)
    pw = S.power_analysis(a, b, paired=True, delta_points=3.0)
    sd = np.std(a - b, ddof=1)
    assert pw.sd == pytest.approx(sd)
    mdd = TTestPower().solve_power(nobs=8, alpha=0.05, power=0.8) * sd * 100
    assert pw.min_detectable_points == pytest.approx(mdd)
    assert pw.runs_needed == math.ceil(TTestPower().solve_power(effect_size=0.03 / sd, alpha=0.05, power=0.8))
    assert f"with 8 seeds this comparison resolves differences >= {mdd:.1f} points" in pw.sentence
    assert f"3 points needs {pw.runs_needed} seeds" in pw.sentence
    # the number is the smallest that reaches 80 %
    assert TTestPower().power(0.03 / sd, pw.runs_needed, 0.05) >= 0.8 > TTestPower().power(0.03 / sd, pw.runs_needed - 1, 0.05)


def test_unpaired_power_uses_pooled_sd_and_ttestindpower():
    a = np.array([0.40, 0.46, 0.38, 0.50, 0.43, 0.41])
    b = np.array([0.39, 0.35, 0.44, 0.37])
    pw = S.power_analysis(a, b, paired=False, delta_points=5.0)
    pooled = math.sqrt((5 * a.var(ddof=1) + 3 * b.var(ddof=1)) / 8)
    assert pw.sd == pytest.approx(pooled)
    assert pw.min_detectable_points == pytest.approx(
        TTestIndPower().solve_power(nobs1=6, ratio=4 / 6, alpha=0.05, power=0.8) * pooled * 100)
    assert pw.runs_needed == math.ceil(TTestIndPower().solve_power(effect_size=0.05 / pooled, alpha=0.05, power=0.8))
    assert "6 + 4 seeds" in pw.sentence and "seeds per method" in pw.sentence


def test_power_with_a_tiny_spread_needs_two_runs():
    # Per-seed differences with a spread of a fraction of a point against a 3-point delta (effect size
    # 20-80): statsmodels' noncentral t returns nan power at 2 runs for some of these, where the power is ~1.
    z = np.array([-1.5, -0.5, 0.5, 1.5])
    b = np.array([0.40, 0.41, 0.42, 0.43])
    for sd in np.linspace(0.03 / 20, 0.03 / 80, 61):
        a = b + 0.1 + sd * z / np.std(z, ddof=1)
        if math.isnan(TTestPower().power(0.03 / np.std(a - b, ddof=1), 2, 0.05)):
            break
    else:
        pytest.fail("no spread in the scanned range reproduces statsmodels' nan power")
    pw = S.power_analysis(a, b, paired=True, delta_points=3.0)
    assert pw.runs_needed == 2 and "3 points needs 2 seeds" in pw.sentence


def test_power_without_spread_says_it_cannot_tell():
    pw = S.power_analysis(np.array([0.5]), np.array([0.4]), paired=True)
    assert pw.runs_needed is None and "cannot be estimated" in pw.sentence


# ------------------------------------------------------------ tables: planted difference and null


def test_planted_five_points_is_significant_after_holm_and_the_null_is_not():
    records = synthetic_records({"grpo": 0.0, "rlsd": 0.05, "opsd": 0.0})
    for kw in ({"budget": 3.0}, {"curve": "auc"}, {"curve": "last", "last_k": 2}):
        table = S.comparison_table(records, baseline="grpo", n_resamples=1999, **kw).set_index("method")
        assert table["paired"].all() and table["n_runs"].eq(8).all()
        rlsd, opsd = table.loc["rlsd"], table.loc["opsd"]
        assert rlsd["significant"] and rlsd["p_holm"] < 0.05, kw
        assert rlsd["diff_low"] <= 0.05 + 0.005 and rlsd["diff_high"] >= 0.05 - 0.005, kw
        assert rlsd["p_improvement"] == 1.0
        assert not opsd["significant"] and opsd["diff_low"] < 0 < opsd["diff_high"], kw
        # Holm over the two rows of this table
        np.testing.assert_allclose(table["p_holm"], multipletests(table["p_value"], method="holm")[1])


def test_summary_table_rows_and_intervals():
    records = synthetic_records({"grpo": 0.0, "rlsd": 0.05}, seeds=range(3), items=200)
    table = S.summary_table(records, budget=3.0, n_resamples=999).set_index("method")
    at3 = records[records["budget"] == 3.0].groupby(["method", "seed"])["score"].mean()
    for m in ("grpo", "rlsd"):
        row = table.loc[m]
        assert row["mean"] == pytest.approx(at3[m].mean())
        assert row["iqm"] == pytest.approx(stats.trim_mean(at3[m].to_numpy(), 0.25))
        assert row["ci_low"] < row["mean"] < row["ci_high"]
        assert not row["reliable"] and "unreliable: 3 run(s)" in row["ci_method"]


def test_unshared_seeds_are_compared_unpaired():
    records = pd.concat([
        synthetic_records({"grpo": 0.0}, seeds=range(6), items=100, rng_seed=1),
        synthetic_records({"rlsd": 0.0}, seeds=range(10, 15), items=100, rng_seed=2),
    ])
    row = S.comparison_table(records, budget=1.0, n_resamples=999).iloc[0]
    assert not row["paired"] and "Welch" in row["test"]
    assert (row["n_runs"], row["n_runs_baseline"]) == (5, 6)


def test_curve_over_budgets_with_different_items_falls_back_to_per_run_accuracies():
    records = synthetic_records({"grpo": 0.0}, seeds=range(3), items=60)
    small_mid_eval = ~((records["budget"] == 2.0) & (records["item"].str[1:].astype(int) >= 30))
    records = records[small_mid_eval]
    scores = S.score_matrix(records, "grpo", curve="auc")
    acc = records.groupby(["seed", "budget"])["score"].mean().unstack().to_numpy()
    assert scores.items is None
    np.testing.assert_allclose(scores.x, S.area_under_curve(acc, [1.0, 2.0, 3.0]))


def test_bad_records_name_the_problem():
    records = synthetic_records({"grpo": 0.0}, seeds=range(2), items=10, budgets=(1.0,))
    with pytest.raises(ValueError, match=r"lack columns \['score'\]"):
        S.summary_table(records.drop(columns="score"), budget=1.0)
    with pytest.raises(ValueError, match="fractions in"):
        S.summary_table(records.assign(score=records["score"] * 100), budget=1.0)
    with pytest.raises(ValueError, match="seed 1 lacks items"):
        S.summary_table(records.drop(index=records.index[-1]), budget=1.0)
    with pytest.raises(ValueError, match="'rlsd'.*methods present: \\['grpo'\\]"):
        S.comparison_table(records, budget=1.0, baseline="rlsd")
    with pytest.raises(ValueError, match="lacks budget points"):
        S.summary_table(records, budget=2.0)


def test_item_term_does_not_count_run_by_item_noise_twice():
    """Pure noise (no item effect): the bootstrap over runs already carries the noise, so the two-level
    interval should be barely wider than the run-only one; counting the noise again would make it ~1.4x."""
    rng = np.random.default_rng(6)
    ratios = []
    for rep in range(40):
        x = 0.4 + rng.normal(0, 0.2, (8, 300))
        iv = S.mean_interval(x, n_resamples=999, bootstrap_seed=rep)
        ro = S.mean_interval(x.mean(axis=1), n_resamples=999, bootstrap_seed=rep)
        ratios.append((iv.high - iv.low) / (ro.high - ro.low))
    assert np.median(ratios) < 1.15
