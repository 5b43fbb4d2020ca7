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


def test_interval_over_per_run_scalars_is_the_student_t_interval():
    per_run = np.array([0.41, 0.38, 0.45, 0.40, 0.36, 0.43])
    iv = S.mean_interval(per_run)
    ref = stats.t.interval(0.95, per_run.size - 1, loc=per_run.mean(), scale=stats.sem(per_run))
    assert iv.estimate == pytest.approx(per_run.mean())
    assert (iv.low, iv.high) == pytest.approx(ref, rel=1e-12)
    assert iv.df == pytest.approx(5) and iv.se == pytest.approx(stats.sem(per_run))
    assert iv.reliable and iv.n_runs == 6 and "Student t over 6 runs" in iv.method


def test_one_run_interval_is_the_classic_item_standard_error():
    scores = np.random.default_rng(1).binomial(4, 0.4, 300) / 4
    iv = S.mean_interval(scores[None, :])
    half = stats.t.ppf(0.975, 299) * stats.sem(scores)
    assert (iv.low, iv.high) == pytest.approx((scores.mean() - half, scores.mean() + half))
    assert not iv.reliable and "unreliable" in iv.method


def test_crossed_variance_is_the_two_way_anova_of_statsmodels():
    """SE^2 = (MS_runs + MS_items - MS_resid) / (R n) and the Satterthwaite df of that sum, with the mean
    squares from statsmodels' two-way ANOVA (run + item, no interaction) on a small matrix."""
    import statsmodels.formula.api as smf
    from statsmodels.stats.anova import anova_lm

    rng = np.random.default_rng(11)
    r, n = 5, 12
    x = rng.normal(0, 0.05, (r, 1)) + rng.normal(0, 0.2, (1, n)) + rng.normal(0, 0.1, (r, n))
    long = pd.DataFrame({"y": x.ravel(), "run": np.repeat(np.arange(r), n), "item": np.tile(np.arange(n), r)})
    ms = anova_lm(smf.ols("y ~ C(run) + C(item)", long).fit())["mean_sq"]
    ms_r, ms_i, ms_e = ms["C(run)"], ms["C(item)"], ms["Residual"]
    assert ms_i > ms_e  # the item term is kept (not truncated)
    est, var, df = S.crossed_mean([x])
    assert var == pytest.approx((ms_r + ms_i - ms_e) / (r * n), rel=1e-10)
    terms = [(ms_r, r - 1), (ms_i, n - 1), (-ms_e, (r - 1) * (n - 1))]
    want_df = sum(t for t, _ in terms) ** 2 / sum(t**2 / d for t, d in terms)
    assert df == pytest.approx(want_df, rel=1e-10)
    iv = S.mean_interval(x)
    half = stats.t.ppf(0.975, want_df) * math.sqrt((ms_r + ms_i - ms_e) / (r * n))
    assert (iv.low, iv.high) == pytest.approx((x.mean() - half, x.mean() + half), rel=1e-10)


def _simulated(rng, reps, runs, items, sd_run, sd_item, sd_noise):
    return (0.4 + rng.normal(0, sd_run, (reps, runs, 1)) + rng.normal(0, sd_item, (reps, 1, items))
            + rng.normal(0, sd_noise, (reps, runs, items)))


@pytest.mark.parametrize("runs", [3, 5, 8, 16])
@pytest.mark.parametrize(("sd_run", "sd_item", "sd_noise"), [(0.02, 0.0, 0.1), (0.01, 0.25, 0.2), (0.005, 0.1, 0.3)],
                         ids=["seeds-dominate", "items-dominate", "balanced"])
def test_interval_covers_95_percent_at_3_5_8_and_16_seeds(runs, sd_run, sd_item, sd_noise):
    """The audit's check: on simulated normal data from the crossed model the two-level interval covers
    >= 94 % (the percentile bootstrap over runs covered 75 % at 3 seeds and 88.9 % at 8). Vectorised over
    4,000 replicates; the Monte Carlo SE of a 95 % coverage is 0.34 points."""
    rng = np.random.default_rng(1000 + runs)
    x = _simulated(rng, 4000, runs, 60, sd_run, sd_item, sd_noise)
    low, high = S.t_bounds(*S.crossed_mean([x]))
    coverage = np.mean((low <= 0.4) & (0.4 <= high))
    assert 0.94 <= coverage <= 0.965, coverage
    one = S.mean_interval(x[0])  # the table's function is the vectorised one, replicate by replicate
    assert (one.low, one.high) == pytest.approx((low[0], high[0]), rel=1e-12)


def test_paired_difference_covers_95_percent_at_8_seeds():
    """A paired difference with a seed effect shared by both methods (pairing removes it) and per-method
    item effects that do not cancel; compare_runs gives the vectorised interval, replicate by replicate."""
    rng = np.random.default_rng(8)
    shared = _simulated(rng, 4000, 8, 40, 0.03, 0.2, 0.0)
    x_b = shared + _simulated(rng, 4000, 8, 40, 0.01, 0.05, 0.15) - 0.4
    x_m = shared + _simulated(rng, 4000, 8, 40, 0.01, 0.05, 0.15) - 0.4 + 0.02
    low, high = S.t_bounds(*S.crossed_mean([x_m - x_b]))
    assert np.mean((low <= 0.02) & (0.02 <= high)) >= 0.94
    one = S.compare_runs(x_m[0], x_b[0], paired=True, n_resamples=99).difference
    assert (one.low, one.high) == pytest.approx((low[0], high[0]), rel=1e-12)


def test_fewer_than_five_runs_are_flagged_unreliable():
    x = np.random.default_rng(2).uniform(size=(4, 50))
    assert not S.mean_interval(x).reliable
    assert S.mean_interval(np.vstack([x, x[:1]])).reliable


def test_item_term_gives_coverage_that_a_run_only_interval_misses():
    """Crossed model x = mu + run + item + noise with a large item effect: the interval over runs only
    ignores the sampling of the shared items and under-covers; the two-level interval covers about 95 %."""
    rng = np.random.default_rng(0)
    x = _simulated(rng, 2000, 8, 300, 0.01, 0.25, 0.2)
    low, high = S.t_bounds(*S.crossed_mean([x]))
    run_low, run_high = S.t_bounds(*S.crossed_mean([x.mean(axis=-1, keepdims=True)]))
    assert 0.94 <= np.mean((low <= 0.4) & (0.4 <= high)) <= 0.97
    assert np.mean((run_low <= 0.4) & (0.4 <= run_high)) < 0.7


# ------------------------------------------------------------ tests of a difference


def test_p_values_are_scipys_t_tests_on_per_run_scalars_and_agree_with_the_interval():
    rng = np.random.default_rng(4)
    b = rng.uniform(0.3, 0.5, 6)
    a = b + rng.normal(0.03, 0.05, 6)
    paired = S.compare_runs(a, b, paired=True, n_resamples=99)
    assert paired.p_value == pytest.approx(stats.ttest_rel(a, b).pvalue, rel=1e-10)
    unpaired = S.compare_runs(a[:5], b, paired=False, n_resamples=99)
    assert unpaired.p_value == pytest.approx(stats.ttest_ind(a[:5], b, equal_var=False).pvalue, rel=1e-10)
    welch = stats.ttest_ind(a[:5], b, equal_var=False).confidence_interval()
    assert (unpaired.difference.low, unpaired.difference.high) == pytest.approx((welch.low, welch.high), rel=1e-10)
    assert "Welch" in unpaired.test and not unpaired.paired
    # with items the p-value is the t-test of the interval's own estimate, SE and df: they never disagree
    for rep in range(30):
        x_b = rng.uniform(0, 1, (5, 40))
        x_m = x_b + rng.normal(0.02, 0.05, (5, 1)) + rng.normal(0, 0.2, (1, 40)) + rng.normal(0, 0.1, (5, 40))
        c = S.compare_runs(x_m, x_b, paired=True, n_resamples=99)
        d = c.difference
        assert c.p_value == pytest.approx(2 * stats.t.sf(abs(d.estimate) / d.se, d.df), rel=1e-10)
        assert (c.p_value < 0.05) == (d.low > 0 or d.high < 0), rep


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
    table = S.summary_table(records, budget=3.0).set_index("method")
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
    """Pure noise (no item effect): the t-interval over run means already carries the noise, so the
    two-level interval should be barely wider than it; counting the noise again would make it ~1.4x."""
    x = 0.4 + np.random.default_rng(6).normal(0, 0.2, (400, 8, 300))
    low, high = S.t_bounds(*S.crossed_mean([x]))
    run_low, run_high = S.t_bounds(*S.crossed_mean([x.mean(axis=-1, keepdims=True)]))
    assert np.median((high - low) / (run_high - run_low)) < 1.1


# ------------------------------------------------------------ leave one seed out, the study's family


def test_leave_one_seed_out_is_the_comparison_without_each_seed():
    rng = np.random.default_rng(12)
    x_b = rng.uniform(0.3, 0.6, (6, 30))
    x_m = x_b + rng.normal(0.02, 0.03, (6, 1)) + rng.normal(0, 0.05, (6, 30))
    loso = S.leave_one_seed_out(x_m, x_b)
    for i in range(6):
        keep = [j for j in range(6) if j != i]
        d = S.compare_runs(x_m[keep], x_b[keep], paired=True, n_resamples=99).difference
        np.testing.assert_allclose(loso[i], [d.estimate, d.low, d.high], rtol=1e-12)
    with pytest.raises(ValueError, match="at least 3 paired seeds; got 2"):
        S.leave_one_seed_out(x_m[:2], x_b[:2])
    records = synthetic_records({"grpo": 0.0, "rlsd": 0.05}, seeds=range(5), budgets=(1.0,))
    row = S.comparison_table(records, budget=1.0, n_resamples=99).iloc[0]
    assert row["loso_subsets"] == 5 and row["loso_min"] <= row["diff"] <= row["loso_max"]
    assert row["loso_excluding_zero"] == 5  # a planted 5 points survives dropping any one seed


def test_study_family_tests_the_primary_alone_and_the_rest_as_one_holm_family():
    rows = pd.DataFrame({"table": ["budget=0.5", "budget=0.5", "budget=1", "budget=1", "auc"],
                         "method": ["rlsd", "opsd", "rlsd", "opsd", "rlsd"], "baseline": ["grpo"] * 5,
                         "p_value": [0.01, 0.2, 0.04, 0.003, float("nan")]})
    out = S.study_family(rows, ("budget=1", "rlsd", "grpo"))
    primary = out[out["family"] == "primary"]
    assert len(primary) == 1 and primary["p_holm"].iloc[0] == 0.04 and bool(primary["significant"].iloc[0])
    rest = out[out["family"] == "holm"]
    reject, adjusted = multipletests([0.01, 0.2, 0.003], method="holm")[:2]
    np.testing.assert_allclose(rest["p_holm"].to_numpy()[:3], adjusted)
    assert rest["significant"].tolist() == [*reject.tolist(), False] and np.isnan(rest["p_holm"].iloc[3])
    with pytest.raises(ValueError, match=r"primary comparison \('budget=2', 'rlsd', 'grpo'\) matches 0 rows"):
        S.study_family(rows, ("budget=2", "rlsd", "grpo"))
    every = S.study_family(rows, None)
    assert (every["family"] == "holm").all()


def test_power_gives_the_range_the_sds_chi_square_interval_allows():
    rng = np.random.default_rng(5)
    b = rng.normal(0.40, 0.05, 8)
    a = b + rng.normal(0.01, 0.03, 8)
    pw = S.power_analysis(a, b, paired=True, delta_points=3.0)
    sd = np.std(a - b, ddof=1)
    assert (pw.sd_low, pw.sd_high) == pytest.approx((sd * math.sqrt(7 / stats.chi2.ppf(0.975, 7)),
                                                     sd * math.sqrt(7 / stats.chi2.ppf(0.025, 7))))
    z = TTestPower().solve_power(nobs=8, alpha=0.05, power=0.8) * 100
    assert pw.min_detectable_range == pytest.approx((z * pw.sd_low, z * pw.sd_high))
    high = math.ceil(TTestPower().solve_power(effect_size=0.03 / pw.sd_high, alpha=0.05, power=0.8))
    assert pw.runs_needed_range[1] == high and pw.runs_needed_range[0] <= pw.runs_needed <= high
    assert f"7 df, allows {z * pw.sd_low:.1f} to {z * pw.sd_high:.1f} points" in pw.sentence


# ------------------------------------------------------------ two checkpoints on the same items


def test_mcnemar_exact_matches_statsmodels_and_its_interval_matches_the_test():
    from statsmodels.stats.contingency_tables import mcnemar

    # 100 items: 50 both right, 14 only a, 5 only b, 31 both wrong
    a = np.array([1] * 50 + [1] * 14 + [0] * 5 + [0] * 31)
    b = np.array([1] * 50 + [0] * 14 + [1] * 5 + [0] * 31)
    res = S.mcnemar_exact(a, b)
    assert res.difference == pytest.approx(0.09) and res.n_items == 100
    assert res.p_value == pytest.approx(mcnemar([[50, 14], [5, 31]], exact=True).pvalue)
    assert res.p_value == pytest.approx(stats.binomtest(14, 19).pvalue)
    ci = stats.binomtest(14, 19).proportion_ci(method="exact")
    assert (res.low, res.high) == pytest.approx((0.19 * (2 * ci.low - 1), 0.19 * (2 * ci.high - 1)))
    rng = np.random.default_rng(9)
    for _ in range(200):  # the interval excludes 0 exactly when the exact test rejects
        u, v = rng.random(60) < 0.6, rng.random(60) < rng.uniform(0.3, 0.7)
        r = S.mcnemar_exact(u.astype(int), v.astype(int))
        assert (r.p_value < 0.05) == (r.low > 0 or r.high < 0)
    with pytest.raises(ValueError, match="0/1 outcomes; got values \\[0.5\\]"):
        S.mcnemar_exact([1, 0, 0.5], [1, 1, 0])
    with pytest.raises(ValueError, match="same >= 2 items"):
        S.mcnemar_exact([1, 0, 1], [1, 0])


def test_paired_bootstrap_items_against_scipy_and_an_enumerated_sign_flip_test():
    import itertools

    a = np.array([0.75, 0.5, 1.0, 0.25, 0.75, 1.0, 0.5, 0.75, 0.0, 1.0])
    b = np.array([0.5, 0.5, 0.75, 0.25, 0.25, 0.75, 0.75, 0.5, 0.0, 0.5])
    res = S.paired_bootstrap_items(a, b, n_resamples=4999, seed=1)
    d = a - b
    assert res.difference == pytest.approx(d.mean())
    # 2^10 sign flips < 4999 resamples: scipy enumerates them, and so does this test, independently
    flips = np.array([np.mean(np.array(s) * d) for s in itertools.product([1, -1], repeat=10)])
    assert res.p_value == pytest.approx(np.mean(np.abs(flips) >= abs(d.mean()) - 1e-12))
    ref = stats.bootstrap((a, b), lambda u, v, axis=-1: np.mean(u - v, axis=axis), paired=True, n_resamples=4999,
                          method="BCa", rng=np.random.default_rng(1)).confidence_interval
    assert (res.low, res.high) == pytest.approx((ref.low, ref.high))
    # many items: the randomization p-value and the interval agree with the paired t-test over items
    rng = np.random.default_rng(10)
    u = rng.binomial(4, 0.55, 1200) / 4
    v = np.clip(u - rng.binomial(4, 0.05, 1200) / 4 + rng.binomial(4, 0.03, 1200) / 4, 0, 1)
    big = S.paired_bootstrap_items(u, v, n_resamples=2999)
    t = stats.ttest_rel(u, v)
    assert big.p_value == pytest.approx(t.pvalue, abs=0.01)
    assert (big.low, big.high) == pytest.approx(tuple(t.confidence_interval()), abs=0.003)
