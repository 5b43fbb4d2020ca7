"""Statistics for comparison tables: which objective is better, by how much, and how sure.

Pure functions on numbers; no I/O, no torch. Quantiles, tests, resampling and power come from scipy.stats
and statsmodels; nothing here hand-rolls a resampling loop.

Units. Scores, accuracies, differences and intervals are fractions in [0, 1]. Only ``delta_points``,
``min_detectable_points`` and the power sentence are in points (percent).

Input. One tidy ``pandas.DataFrame`` of per-item records, one row per (method, seed, budget, item):

    method  str    objective name, e.g. "grpo", "rlsd"
    seed    int    run seed; runs of two methods with the same seed are paired (same base, same prompt
                   stream, same test items)
    budget  float  the nominal budget point of the evaluation (equal across runs, e.g. 0.5 TFLOP)
    item    str    test item id
    score   float  the item's score in [0, 1]: mean@k over its k samples (``mean_at_k``), or 0/1 greedy

Failed or diverged runs have no place in these records: drop them beforehand and report their count
beside the table. Every run of a method at a budget must cover the same items.

Table API (what a report calls; every table value is a fraction unless named *_points):

    summary_table(records, budget=b)          one row per method: method, measure, n_runs, mean,
    summary_table(records, curve="auc")       ci_low, ci_high, se, df, iqm, reliable, ci_method
    summary_table(records, curve="last", last_k=3)
    comparison_table(records, budget=b, baseline="grpo", extra_pairs=[("rlsd", "opsd")], delta_points=3)
        one row per comparison (method minus baseline): method, baseline, measure, paired, n_runs,
        n_runs_baseline, diff, diff_low, diff_high, diff_se, diff_df, loso_min, loso_max,
        loso_excluding_zero, loso_subsets, test, p_value, p_holm, significant, p_improvement,
        p_improvement_low, p_improvement_high, reliable, ci_method, runs_needed, min_detectable_points,
        power_sentence, min_detectable_low, min_detectable_high, runs_needed_low, runs_needed_high

``budget=b`` reads the accuracy at one budget point; ``curve="auc"`` the area under accuracy-vs-budget
(trapezoid over the budget points every run in the table shares, divided by their span, so it reads as an
accuracy); ``curve="last"`` the mean of each run's last ``last_k`` shared evaluations. Two methods are
compared paired when they have the same seeds, unpaired otherwise. ``comparison_table``'s own Holm
family is the rows of one table (a report re-decides over its study with ``study_family``); a p-value is nan (never significant, outside the family) with fewer than 2 runs or zero spread.
``score_matrix(records, method, ...)`` gives the ``Scores`` (seeds, items, x) a table row is computed from;
``shared_budgets(records, methods)`` the budget points a curve summary uses.

Array API (what the tables are built from; x is a (runs, items) matrix, or a (runs,) vector of per-run
scalars, rows in seed order):

    mean_interval(x) -> Interval              per-method estimate and 95 % interval; iqm(per_run)
    crossed_mean([x...], signs), t_bounds     the same, vectorised over leading axes
    compare_runs(x_m, x_base, paired) -> Comparison
    leave_one_seed_out(x_m, x_base) -> (runs, 3)   the paired difference without each seed
    study_family(rows, primary) -> rows       the primary alone, the rest one Holm family
    probability_of_improvement(run_m, run_base, paired) -> Interval
    holm(p_values, alpha) -> (adjusted, reject)
    power_analysis(run_m, run_base, paired, delta_points) -> Power (.sentence is the table's power line)
    area_under_curve(x, budgets), last_k_mean(x, k)     reduce a (..., budgets) array to (...)
    pass_at_k(n, c, k), mean_at_k(correct), binomial_se(p, n), items_for_se(p, se)

Interval method (stated in ``Interval.method``). Two sources of variance enter an accuracy: seeds and the
test items (Agarwal et al. 2021, "Deep RL at the Edge of the Statistical Precipice"; Miller 2024, "Adding
Error Bars to Evals"). Under the crossed random-effects model x[r, i] = mu + a_r + b_i + e_ri the variance
of the grand mean is Var(a)/R + Var(b)/n + Var(e)/(R n), estimated by the two-way ANOVA moments as
(MS_runs + MS_items - MS_resid) / (R n): the seed term var(run means)/R (R - 1 df) plus the item term
var(item means)/n - MS_resid/(R n), truncated at 0 when negative. The interval is estimate -+ t * SE with
the Satterthwaite degrees of freedom of that sum of mean squares (Satterthwaite 1946), so it is the
Student t-interval over runs when the item term vanishes and tends to the normal one when items dominate.
A percentile bootstrap over 8 runs covered 88.9 % (75 % at 3 runs) of simulated normal data and was
0.77x the t-interval's width; this interval covers 95 % at 3, 5, 8 and 16 seeds (tests/test_stats.py).
Satterthwaite's df is slightly liberal when the seed term is most but not all of the variance: over a
grid of seed / item / noise mixes the worst coverage was 92.8 % at 3 seeds and 94 % at 5 and 8.
With one run the interval is the item term alone (t with n - 1 df). A difference uses the same model on
d = x_m - x_base (paired) or on both methods' terms (unpaired: Welch-Satterthwaite). The p-value is the
t-test of the same estimate, SE and df, so the interval and ``significant`` (before correction) agree.
Intervals from fewer than ``MIN_RELIABLE_RUNS`` runs are flagged unreliable (Henderson et al. 2018 ask for
at least 5 seeds; a 95 % t-interval over 3 runs is +-2.5 SD of the runs).

Multiplicity (``study_family``): one pre-specified primary comparison per study is tested alone, every
other comparison of the study's tables is one Holm family. Power (``power_analysis``): per comparison,
with the range its SD's chi-square interval allows.

Two checkpoints on the same items (``rlsd-evaluate``): ``mcnemar_exact(a, b)`` for 0/1 outcomes and
``paired_bootstrap_items(a, b)`` for mean@k scores return a ``PairedItems`` (difference, low, high,
p_value); they resample items only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestIndPower, TTestPower

from rlsd_harness.benchmarks import pass_at_k  # noqa: F401  (the package's one pass@k, part of this API)

N_RESAMPLES = 9999
MIN_RELIABLE_RUNS = 5
CONFIDENCE = 0.95
RECORD_COLUMNS = ("method", "seed", "budget", "item", "score")
# The one comparison every study fixes before its runs (the RLSD paper's claim): method - baseline at the
# last budget point, tested alone; a report puts every other comparison in one Holm family (study_family).
PRIMARY = ("rlsd", "grpo")


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float
    n_runs: int
    reliable: bool  # False when fewer than MIN_RELIABLE_RUNS runs (per method) enter the interval
    method: str  # how low/high were obtained, for the table's footnote
    se: float = float("nan")  # standard error of the estimate under the crossed model
    df: float = float("nan")  # its Satterthwaite degrees of freedom (nan when the SE is 0)


@dataclass(frozen=True)
class Power:
    sd: float  # between-run SD of per-run differences (paired) or pooled SD of per-run scores (unpaired)
    n_runs: tuple[int, int]  # runs of (method, baseline) that the SD comes from
    delta_points: float
    alpha: float
    power: float
    runs_needed: int | None  # runs per method to detect delta_points; None when the SD cannot be estimated
    min_detectable_points: float | None  # smallest difference detected with the current runs
    sentence: str
    sd_low: float = float("nan")  # the SD's chi-square confidence interval (runs - 1 df paired)
    sd_high: float = float("nan")
    min_detectable_range: tuple[float, float] | None = None  # min_detectable_points at sd_low and sd_high
    runs_needed_range: tuple[int, int] | None = None  # runs_needed at sd_low and sd_high


@dataclass(frozen=True)
class Comparison:
    difference: Interval  # mean of method minus baseline
    p_value: float  # nan when undefined (fewer than 2 runs, or zero spread)
    test: str
    paired: bool
    p_improvement: Interval  # P(a run of the method beats a run of the baseline)
    power: Power


# ---------------------------------------------------------------- per-sample and sizing estimators


def mean_at_k(correct: np.ndarray) -> np.ndarray:
    """Per-item mean@k (the papers' avg@k): the fraction of an item's k samples that are correct.
    ``correct`` is (items, k) of 0/1 (or scores in [0, 1])."""
    correct = np.asarray(correct, dtype=float)
    if correct.ndim != 2 or correct.shape[1] < 1:
        raise ValueError(f"mean_at_k needs an (items, k) array with k >= 1; got shape {correct.shape}")
    return correct.mean(axis=1)


def binomial_se(p: float, n: int) -> float:
    """Standard error of an accuracy p measured on n independent items: sqrt(p (1 - p) / n)."""
    if not (0.0 <= p <= 1.0) or n < 1:
        raise ValueError(f"binomial_se needs 0 <= p <= 1 and n >= 1; got p={p}, n={n}")
    return math.sqrt(p * (1.0 - p) / n)


def items_for_se(p: float, se: float) -> int:
    """Items needed so that the binomial standard error at accuracy p is at most se (both fractions)."""
    if not (0.0 <= p <= 1.0) or se <= 0:
        raise ValueError(f"items_for_se needs 0 <= p <= 1 and se > 0; got p={p}, se={se}")
    return max(1, math.ceil(p * (1.0 - p) / se**2))


# ---------------------------------------------------------------- curve summaries


def area_under_curve(x: np.ndarray, budgets: Sequence[float]) -> np.ndarray:
    """Trapezoid area under score-vs-budget over the last axis, divided by the budget span so that it
    reads as an accuracy. Linear in x, so it applies per item as well as per run."""
    b = np.asarray(budgets, dtype=float)
    x = np.asarray(x, dtype=float)
    if b.ndim != 1 or b.size < 2 or np.any(np.diff(b) <= 0) or x.shape[-1] != b.size:
        raise ValueError(
            f"area_under_curve needs >= 2 increasing budgets matching x's last axis; got budgets {b.tolist()} "
            f"and x of shape {x.shape}"
        )
    return np.trapezoid(x, b, axis=-1) / (b[-1] - b[0])


def last_k_mean(x: np.ndarray, k: int) -> np.ndarray:
    """Mean of the last k evaluations over the last axis (budgets in increasing order)."""
    x = np.asarray(x, dtype=float)
    if not 1 <= k <= x.shape[-1]:
        raise ValueError(f"last_k must be between 1 and the {x.shape[-1]} budget points; got {k}")
    return x[..., -k:].mean(axis=-1)


# ---------------------------------------------------------------- intervals and tests


def _runs_and_items(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=float)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"{name} must be (runs,) or (runs, items) with at least one of each; got {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} has non-finite scores; drop failed runs before the statistics")
    return x


def _residual_mean_square(x: np.ndarray) -> np.ndarray:
    """MS of the two-way layout's residual over the last two axes (..., runs, items)."""
    r, n = x.shape[-2:]
    resid = (x - x.mean(axis=-1, keepdims=True) - x.mean(axis=-2, keepdims=True)
             + x.mean(axis=(-2, -1), keepdims=True))
    return (resid**2).sum(axis=(-2, -1)) / ((r - 1) * (n - 1))


def crossed_mean(matrices: Sequence[np.ndarray], signs: Sequence[float] = (1.0,)) -> tuple[np.ndarray, np.ndarray,
                                                                                       np.ndarray]:
    """Estimate, variance and Satterthwaite degrees of freedom of sum_j sign_j * mean(x_j) under the crossed
    seeds x items random-effects model (module doc). Each x_j is (..., runs_j, items), every x_j over the same
    items, runs independent across j; leading axes are batched (vectorised: a coverage study passes
    thousands of replicates at once). Returns three arrays of the leading shape; df is nan where the
    variance is 0."""
    mats = [np.asarray(m, dtype=float) for m in matrices]
    n = mats[0].shape[-1]
    est = sum(s * m.mean(axis=(-2, -1)) for m, s in zip(mats, signs))
    lead = np.shape(est)
    # seed terms: var(run means)/R_j estimates Var(a_j)/R_j + Var(e_j)/(R_j n), with R_j - 1 df
    seed = [(np.var(m.mean(axis=-1), axis=-1, ddof=1) / m.shape[-2], m.shape[-2] - 1) for m in mats
            if m.shape[-2] >= 2]
    var = sum((v for v, _ in seed), np.zeros(lead))
    denom = sum((v**2 / df for v, df in seed), np.zeros(lead))
    if n >= 2:
        # item term: var(item means of the combination)/n carries Var(sum s_j b_j)/n plus the residual
        # noise the seed terms already hold, which the residual mean squares take back out
        item_means = sum(s * m.mean(axis=-2) for m, s in zip(mats, signs))
        items = (np.var(item_means, axis=-1, ddof=1) / n, n - 1)
        resid = [(_residual_mean_square(m) / (m.shape[-2] * n), (m.shape[-2] - 1) * (n - 1)) for m in mats
                 if m.shape[-2] >= 2]
        extra = items[0] - sum((v for v, _ in resid), np.zeros(lead))
        keep = extra > 0  # a negative moment estimate of Var(b) is truncated at 0 (the term is dropped)
        var = var + np.where(keep, extra, 0.0)
        denom = denom + np.where(keep, items[0] ** 2 / items[1] + sum((v**2 / df for v, df in resid),
                                                                     np.zeros(lead)), 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        df = np.where(var > 0, var**2 / denom, np.nan)
    return np.asarray(est, dtype=float), np.asarray(var, dtype=float), np.asarray(df, dtype=float)


def t_bounds(estimate: np.ndarray, var: np.ndarray, df: np.ndarray,
             confidence: float = CONFIDENCE) -> tuple[np.ndarray, np.ndarray]:
    """estimate -+ t_{df} quantile * sqrt(var), elementwise (scipy.stats.t); the point where var is 0."""
    with np.errstate(invalid="ignore"):
        half = np.where(var > 0, stats.t.ppf(0.5 + confidence / 2, np.where(var > 0, df, 1.0)) * np.sqrt(var), 0.0)
    return estimate - half, estimate + half


def _t_p_value(estimate: float, var: float, df: float) -> float:
    if not (var > 0 and np.isfinite(df)):
        return float("nan")
    return float(2 * stats.t.sf(abs(estimate) / math.sqrt(var), df))


def _bootstrap(samples: tuple[np.ndarray, ...], statistic, *, paired: bool, n_resamples: int,
               confidence: float, bootstrap_seed: int) -> tuple[float, float]:
    res = stats.bootstrap(
        samples, statistic, n_resamples=n_resamples, confidence_level=confidence, method="percentile",
        paired=paired, vectorized=True, rng=np.random.default_rng(bootstrap_seed),
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def _mean(a: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(a, axis=axis)


def _describe(runs: int, items: int, df: float) -> str:
    parts = []
    if runs >= 2:
        parts.append(f"Student t over {runs} runs ({runs - 1} df without an item term)")
    if items >= 2:
        parts.append(f"crossed seeds x items model over {items} shared items, Satterthwaite df "
                     f"{df:.1f}" if np.isfinite(df) else f"crossed seeds x items model over {items} shared items")
    if runs < MIN_RELIABLE_RUNS:
        parts.append(f"unreliable: {runs} run(s) < {MIN_RELIABLE_RUNS}")
    return "; ".join(parts) if parts else "no interval: one run of one scalar"


def mean_interval(x: np.ndarray, *, confidence: float = CONFIDENCE) -> Interval:
    """Mean over runs of the per-run mean, with the two-level t-interval of the crossed model (module doc).
    ``x``: (runs, items) per-item scores or (runs,) per-run scalars (then the Student t-interval)."""
    x = _runs_and_items(x, "x")
    est, var, df = crossed_mean([x])
    low, high = t_bounds(est, var, df, confidence)
    runs = x.shape[0]
    return Interval(float(est), float(low), float(high), runs, runs >= MIN_RELIABLE_RUNS,
                    _describe(runs, x.shape[1], float(df)), float(np.sqrt(var)), float(df))


def iqm(per_run: np.ndarray) -> float:
    """Interquartile mean over runs (25 % trimmed mean; Agarwal et al. 2021), via scipy.stats.trim_mean."""
    return float(stats.trim_mean(np.asarray(per_run, dtype=float), 0.25))


def _difference_interval(x_m: np.ndarray, x_b: np.ndarray, paired: bool, confidence: float) -> Interval:
    if paired:
        iv = mean_interval(x_m - x_b, confidence=confidence)
        return replace(iv, method="paired difference; " + iv.method)
    est, var, df = crossed_mean([x_m, x_b], [1.0, -1.0])
    low, high = t_bounds(est, var, df, confidence)
    runs = min(x_m.shape[0], x_b.shape[0])
    return Interval(float(est), float(low), float(high), runs, runs >= MIN_RELIABLE_RUNS,
                    f"unpaired difference ({x_m.shape[0]} vs {x_b.shape[0]} runs, Welch-Satterthwaite); "
                    + _describe(runs, x_m.shape[1], float(df)), float(np.sqrt(var)), float(df))


def leave_one_seed_out(x_m: np.ndarray, x_b: np.ndarray, *, confidence: float = CONFIDENCE) -> np.ndarray:
    """The paired difference method - baseline with each seed left out in turn: (runs, 3) of estimate, low,
    high (the same crossed-model interval), row r without seed r. How far the headline moves when one seed
    is dropped; needs paired rows and at least 3 seeds."""
    d = _runs_and_items(x_m, "x_m") - _runs_and_items(x_b, "x_b")
    r = d.shape[0]
    if r < 3:
        raise ValueError(f"leave-one-seed-out needs at least 3 paired seeds; got {r}")
    subsets = np.stack([np.delete(d, i, axis=0) for i in range(r)])  # (runs, runs - 1, items)
    est, var, df = crossed_mean([subsets])
    low, high = t_bounds(est, var, df, confidence)
    return np.stack([est, low, high], axis=-1)


def probability_of_improvement(run_m: np.ndarray, run_b: np.ndarray, paired: bool, *,
                               confidence: float = CONFIDENCE, n_resamples: int = N_RESAMPLES,
                               bootstrap_seed: int = 0) -> Interval:
    """P(a run of the method scores above a run of the baseline), ties counting one half (Agarwal et al.
    2021). Paired: the fraction of seeds where the method wins. Unpaired: the Mann-Whitney U statistic over
    R1 * R2 (scipy.stats.mannwhitneyu). Percentile bootstrap interval over runs (scipy.stats.bootstrap), as
    rliable does; a probability has no t-interval."""
    a, b = np.asarray(run_m, dtype=float), np.asarray(run_b, dtype=float)
    if paired:
        if a.shape != b.shape:
            raise ValueError(f"paired runs need equal counts; got {a.size} and {b.size}")
        wins = (a > b) + 0.5 * (a == b)
        est, samples, stat = float(wins.mean()), (wins,), _mean
    else:
        def stat(u, v, axis=-1):
            return stats.mannwhitneyu(u, v, axis=axis, method="asymptotic").statistic / (
                u.shape[axis] * v.shape[axis])
        est, samples = float(stat(a, b)), (a, b)
    runs = min(a.size, b.size)
    low = high = est
    if runs >= 2:
        low, high = _bootstrap(samples, stat, paired=False, n_resamples=n_resamples,
                               confidence=confidence, bootstrap_seed=bootstrap_seed)
    how = "fraction of seeds won" if paired else "Mann-Whitney U / (R1 R2)"
    return Interval(est, low, high, runs, runs >= MIN_RELIABLE_RUNS,
                    f"{how}; percentile bootstrap over {runs} runs ({n_resamples} resamples, scipy.stats.bootstrap)"
                    + ("" if runs >= MIN_RELIABLE_RUNS else f"; unreliable: {runs} run(s) < {MIN_RELIABLE_RUNS}"))


def _runs_needed(solver: TTestPower | TTestIndPower, effect: float, alpha: float, power: float,
                 paired: bool) -> int:
    size_kw = {"nobs": 2} if paired else {"nobs1": 2, "ratio": 1.0}
    at_two = solver.power(effect_size=effect, alpha=alpha, **size_kw)
    # statsmodels' noncentral t returns nan for very large effects (tiny spread), where the power is ~1
    if not math.isfinite(at_two) or at_two >= power:
        return 2  # a t-test needs two runs per method; the solver cannot go below that
    size_kw.pop("nobs" if paired else "nobs1")
    return math.ceil(solver.solve_power(effect_size=effect, alpha=alpha, power=power, **size_kw))


def power_analysis(run_m: np.ndarray, run_b: np.ndarray, paired: bool, *, delta_points: float = 3.0,
                   alpha: float = 0.05, power: float = 0.8, confidence: float = CONFIDENCE) -> Power:
    """Runs needed to detect a difference of ``delta_points`` with a two-sided t-test at ``alpha`` and
    ``power``, and the smallest difference the current runs detect (Colas et al. 2018, "How Many Random
    Seeds?"). Paired: statsmodels TTestPower on the SD of per-seed differences. Unpaired: TTestIndPower on
    the pooled SD, equal runs per method. Inputs are per-run scores (fractions).

    The SD comes from few runs (7 df at 8 seeds), so both figures are also given at the ends of the SD's
    ``confidence`` interval: sd * sqrt(df / chi2_{df}(q)) for q = 1 - a/2 and a/2 (scipy.stats.chi2), the
    range the variance estimate allows."""
    if delta_points <= 0:
        raise ValueError(f"delta_points must be > 0 (a difference in points); got {delta_points}")
    a, b = np.asarray(run_m, dtype=float), np.asarray(run_b, dtype=float)
    n = (a.size, b.size)
    if paired:
        d = a - b
        sd = float(np.std(d, ddof=1)) if d.size >= 2 else float("nan")
        solver, kw_now, test, dof = TTestPower(), {"nobs": d.size}, "paired t-test", d.size - 1
    else:
        ok = a.size >= 2 and b.size >= 2
        sd = math.sqrt(((a.size - 1) * np.var(a, ddof=1) + (b.size - 1) * np.var(b, ddof=1))
                       / (a.size + b.size - 2)) if ok else float("nan")
        solver, kw_now, test = TTestIndPower(), {"nobs1": a.size, "ratio": b.size / a.size}, "Welch t-test"
        dof = a.size + b.size - 2
    seeds_now = f"{n[0]} seeds" if paired else f"{n[0]} + {n[1]} seeds"
    if not (math.isfinite(sd) and sd > 0):
        why = "fewer than 2 runs" if not math.isfinite(sd) else "zero spread between runs"
        return Power(sd, n, delta_points, alpha, power, None, None,
                     f"with {seeds_now} the power of this comparison cannot be estimated ({why})")
    tail = (1 - confidence) / 2
    sd_low, sd_high = (sd * math.sqrt(dof / stats.chi2.ppf(q, dof)) for q in (1 - tail, tail))
    z_mdd = solver.solve_power(effect_size=None, alpha=alpha, power=power, **kw_now) * 100
    mdd = z_mdd * sd
    needed, needed_low, needed_high = (_runs_needed(solver, delta_points / 100 / s, alpha, power, paired)
                                       for s in (sd, sd_low, sd_high))
    per = "seeds" if paired else "seeds per method"
    sentence = (f"with {seeds_now} this comparison resolves differences >= {mdd:.1f} points "
                f"({power * 100:.0f} % power, alpha {alpha:g}, {test}); {delta_points:g} points needs "
                f"{needed} {per} (the SD's {confidence * 100:.0f} % chi-square interval, {dof} df, allows "
                f"{z_mdd * sd_low:.1f} to {z_mdd * sd_high:.1f} points and {needed_low} to {needed_high} {per})")
    return Power(sd, n, delta_points, alpha, power, needed, float(mdd), sentence, float(sd_low), float(sd_high),
                 (float(z_mdd * sd_low), float(z_mdd * sd_high)), (needed_low, needed_high))


def compare_runs(x_m: np.ndarray, x_b: np.ndarray, paired: bool, *, delta_points: float = 3.0,
                 alpha: float = 0.05, confidence: float = CONFIDENCE, n_resamples: int = N_RESAMPLES,
                 bootstrap_seed: int = 0) -> Comparison:
    """Method vs baseline from (runs, items) matrices (or (runs,) per-run scalars) over the same items.
    The p-value is the t-test of the difference interval's own model (estimate / SE against t with its
    Satterthwaite df), so the interval excludes 0 exactly when p < 1 - confidence. Paired (rows are the
    same seeds): without an item term this is the paired t-test over seeds (scipy.stats.ttest_rel).
    Unpaired: Welch's t-test (scipy.stats.ttest_ind, equal_var=False) without an item term. nan with fewer
    than 2 runs of either method. The p-value is uncorrected: ``holm`` / ``study_family`` correct."""
    x_m, x_b = _runs_and_items(x_m, "x_m"), _runs_and_items(x_b, "x_b")
    if x_m.shape[1] != x_b.shape[1]:
        raise ValueError(f"method and baseline must cover the same items; got {x_m.shape[1]} and {x_b.shape[1]}")
    if paired and x_m.shape[0] != x_b.shape[0]:
        raise ValueError(f"paired runs need the same seeds; got {x_m.shape[0]} and {x_b.shape[0]} runs")
    a, b = x_m.mean(axis=1), x_b.mean(axis=1)
    diff = _difference_interval(x_m, x_b, paired, confidence)
    enough = min(a.size, b.size) >= 2
    p = _t_p_value(diff.estimate, diff.se**2, diff.df) if enough else float("nan")
    test = ("paired t-test over seeds, crossed seeds x items variance, Satterthwaite df" if paired else
            "Welch t-test over runs, crossed seeds x items variance, Satterthwaite df")
    return Comparison(
        difference=diff,
        p_value=p,
        test=test,
        paired=paired,
        p_improvement=probability_of_improvement(a, b, paired, confidence=confidence, n_resamples=n_resamples,
                                                 bootstrap_seed=bootstrap_seed),
        power=power_analysis(a, b, paired, delta_points=delta_points, alpha=alpha),
    )


def holm(p_values: Sequence[float], alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Holm-adjusted p-values and reject flags for one family (statsmodels multipletests, method "holm").
    Undefined (nan) p-values stay nan, are never rejected and do not enlarge the family."""
    p = np.asarray(p_values, dtype=float)
    adjusted, reject = np.full(p.shape, np.nan), np.zeros(p.shape, dtype=bool)
    ok = np.isfinite(p)
    if ok.any():
        reject[ok], adjusted[ok] = multipletests(p[ok], alpha=alpha, method="holm")[:2]
    return adjusted, reject


def study_family(comparisons: pd.DataFrame, primary: tuple[str, str, str] | None,
                 alpha: float = 0.05) -> pd.DataFrame:
    """One study's multiplicity rule. ``comparisons``: every comparison row of the study's tables, with
    columns table, method, baseline, p_value. ``primary`` = (table, method, baseline), the comparison fixed
    before the runs: it is tested alone at ``alpha`` (p_holm = its p_value, no correction); every other row
    is one Holm family across all the tables. Returns a copy with p_holm, significant and family
    ("primary" or "holm"). A primary that names no row is an error, not a silent move into the family."""
    out = comparisons.copy()
    is_primary = np.zeros(len(out), dtype=bool)
    if primary is not None:
        key = (out["table"] == primary[0]) & (out["method"] == primary[1]) & (out["baseline"] == primary[2])
        if key.sum() != 1:
            have = sorted(set(zip(out["table"], out["method"], out["baseline"])))
            raise ValueError(f"primary comparison {primary} matches {int(key.sum())} rows; rows present: {have}")
        is_primary = key.to_numpy()
    p = out["p_value"].to_numpy(dtype=float)
    adjusted, reject = holm(p[~is_primary], alpha)
    out["p_holm"], out["significant"] = p.copy(), np.isfinite(p) & (p < alpha)
    out.loc[~is_primary, "p_holm"] = adjusted
    out.loc[~is_primary, "significant"] = reject
    out["family"] = np.where(is_primary, "primary", "holm")
    return out


# ---------------------------------------------------------------- two checkpoints on the same items


@dataclass(frozen=True)
class PairedItems:
    difference: float  # mean(a) - mean(b), a fraction
    low: float
    high: float
    p_value: float
    n_items: int
    method: str


def _paired_items(a: np.ndarray, b: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.ndim != 1 or a.shape != b.shape or a.size < 2:
        raise ValueError(f"{name} needs two 1-D arrays over the same >= 2 items; got shapes {a.shape} and {b.shape}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError(f"{name}: scores must be finite")
    return a, b


def mcnemar_exact(a: Sequence[float], b: Sequence[float], *, confidence: float = CONFIDENCE) -> PairedItems:
    """Two checkpoints' 0/1 outcomes (pass@1) on the same items: difference of accuracies a - b, the exact
    McNemar test (statsmodels.stats.contingency_tables.mcnemar, exact=True: binomial on the discordant
    items) and its matching conditional interval: the Clopper-Pearson interval of b10 / (b10 + b01)
    (scipy.stats.binomtest) mapped to (b10 - b01) / n = (b10 + b01) / n * (2 theta - 1). At theta = 1/2
    the central exact interval and the two-sided exact test agree, so the interval excludes 0 exactly when
    p < 1 - confidence."""
    from statsmodels.stats.contingency_tables import mcnemar

    a, b = _paired_items(a, b, "mcnemar_exact")
    if not (np.isin(a, (0.0, 1.0)).all() and np.isin(b, (0.0, 1.0)).all()):
        bad = [float(v) for v in sorted((set(np.unique(a)) | set(np.unique(b))) - {0.0, 1.0})[:3]]
        raise ValueError(f"mcnemar_exact needs 0/1 outcomes; got values {bad} (use paired_bootstrap_items for mean@k)")
    n = a.size
    b10, b01 = int(((a == 1) & (b == 0)).sum()), int(((a == 0) & (b == 1)).sum())
    table = [[int(((a == 1) & (b == 1)).sum()), b10], [b01, int(((a == 0) & (b == 0)).sum())]]
    discordant = b10 + b01
    if discordant == 0:
        return PairedItems(0.0, 0.0, 0.0, 1.0, n, "exact McNemar: no discordant items")
    p = float(mcnemar(table, exact=True).pvalue)
    ci = stats.binomtest(b10, discordant).proportion_ci(confidence_level=confidence, method="exact")
    scale = discordant / n
    return PairedItems((b10 - b01) / n, scale * (2 * ci.low - 1), scale * (2 * ci.high - 1), p, n,
                       f"exact McNemar ({b10} vs {b01} discordant of {n} items), conditional Clopper-Pearson interval")


def paired_bootstrap_items(a: Sequence[float], b: Sequence[float], *, confidence: float = CONFIDENCE,
                           n_resamples: int = N_RESAMPLES, seed: int = 0) -> PairedItems:
    """Two checkpoints' per-item scores (mean@k) on the same items: mean difference a - b, its BCa bootstrap
    interval over items (scipy.stats.bootstrap, paired) and the p-value of the paired sign-flip
    randomization test of mean(a - b) = 0 (scipy.stats.permutation_test, permutation_type "samples"; exact
    when 2^items <= n_resamples). Both resample items only: one seed of each checkpoint, so they say nothing
    about training-seed variance."""
    a, b = _paired_items(a, b, "paired_bootstrap_items")
    d = a - b
    est = float(d.mean())
    if np.ptp(d) == 0:
        return PairedItems(est, est, est, 1.0 if est == 0 else 0.0, a.size,
                           "every item has the same difference: no sampling variation")

    def diff(u, v, axis=-1):
        return np.mean(u - v, axis=axis)

    boot = stats.bootstrap((a, b), diff, paired=True, vectorized=True, n_resamples=n_resamples,
                           confidence_level=confidence, method="BCa", rng=np.random.default_rng(seed))
    perm = stats.permutation_test((a, b), diff, permutation_type="samples", vectorized=True,
                                  n_resamples=n_resamples, alternative="two-sided", rng=np.random.default_rng(seed))
    return PairedItems(est, float(boot.confidence_interval.low), float(boot.confidence_interval.high),
                       float(perm.pvalue), a.size, f"BCa bootstrap over {a.size} items, paired sign-flip test "
                       f"({n_resamples} resamples, scipy.stats)")


# ---------------------------------------------------------------- tidy records -> tables


def _check_records(records: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in RECORD_COLUMNS if c not in records.columns]
    if missing:
        raise ValueError(f"records lack columns {missing}; per-item records need {list(RECORD_COLUMNS)}")
    bad = records[~records["score"].between(0.0, 1.0)]
    if len(bad):
        raise ValueError(f"scores must be fractions in [0, 1]; got {bad['score'].head(3).tolist()} "
                         f"(method {bad['method'].iloc[0]!r}, seed {bad['seed'].iloc[0]})")
    dup = records.duplicated(["method", "seed", "budget", "item"])
    if dup.any():
        row = records[dup].iloc[0]
        raise ValueError(f"duplicate record for method {row['method']!r}, seed {row['seed']}, "
                         f"budget {row['budget']}, item {row['item']!r}")
    return records


@dataclass(frozen=True)
class Scores:
    seeds: list  # row order of x
    items: list | None  # column order of x; None when x is per run (runs,)
    x: np.ndarray


def shared_budgets(records: pd.DataFrame, methods: Sequence[str]) -> list[float]:
    """Budget points evaluated by every run of every method given (the points a curve summary uses)."""
    sub = records[records["method"].isin(methods)]
    per_run = [set(g["budget"]) for _, g in sub.groupby(["method", "seed"])]
    return sorted(set.intersection(*per_run)) if per_run else []


def score_matrix(records: pd.DataFrame, method: str, *, budget: float | None = None,
                 curve: Literal["auc", "last"] | None = None, last_k: int = 3,
                 budgets: Sequence[float] | None = None) -> Scores:
    """Seeds, items and x for one method, rows in seed order, columns in item order. x is (runs, items) at ``budget``, or the curve summary
    over ``budgets`` (default: those every run of the method has). A curve summary is per item, (runs, items),
    when every budget point has the same items, so its interval keeps the item term; when the budget points
    use different items (smaller evaluations in between) it is per run, (runs,), from per-run accuracies."""
    if (budget is None) == (curve is None) or curve not in (None, "auc", "last"):
        raise ValueError(f"give exactly one of budget= or curve= ('auc' or 'last'); got {budget=}, {curve=}")
    sub = records[records["method"] == method]
    if sub.empty:
        raise ValueError(f"no records for method {method!r}; methods present: {sorted(records['method'].unique().tolist())}")
    points = [budget] if curve is None else sorted(budgets if budgets is not None else shared_budgets(records, [method]))
    have = sorted(sub["budget"].unique().tolist())
    if not set(points) <= set(have):
        raise ValueError(f"method {method!r} lacks budget points {sorted(set(points) - set(have))}; it has {have}")
    items_at = []
    for b in points:
        grid = sub[sub["budget"] == b].pivot(index="seed", columns="item", values="score")
        if grid.isna().any().any():
            seed = grid.index[grid.isna().any(axis=1)].tolist()[0]
            raise ValueError(f"method {method!r}, seed {seed} lacks items at budget {b:g} that other runs "
                             f"have; every run at a budget point must be evaluated on the same items")
        items_at.append(grid)
    seeds = items_at[0].index.tolist()
    if any(g.index.tolist() != seeds for g in items_at):
        raise ValueError(f"method {method!r}: not every run is evaluated at every budget point {points}")
    items: list | None = items_at[0].columns.tolist()
    if curve is None:
        return Scores(seeds, items, items_at[0].to_numpy())
    if all(g.columns.tolist() == items for g in items_at):
        x = np.stack([g.to_numpy() for g in items_at], axis=-1)  # runs, items, budgets
    else:
        items, x = None, np.stack([g.to_numpy().mean(axis=1) for g in items_at], axis=-1)  # runs, budgets
    return Scores(seeds, items, area_under_curve(x, points) if curve == "auc" else last_k_mean(x, last_k))


def _measure_name(budget: float | None, curve: str | None, last_k: int) -> str:
    if curve == "auc":
        return "area under accuracy-vs-budget"
    if curve == "last":
        return f"mean of last {last_k} evaluations"
    return f"accuracy at budget {budget:g}"


def summary_table(records: pd.DataFrame, *, budget: float | None = None,
                  curve: Literal["auc", "last"] | None = None, last_k: int = 3,
                  methods: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per method: n_runs, mean, ci_low, ci_high, se, df, iqm, reliable, ci_method (fractions)."""
    records = _check_records(records)
    methods = list(methods) if methods is not None else sorted(records["method"].unique())
    points = shared_budgets(records, methods) if curve else None
    rows = []
    for m in methods:
        x = score_matrix(records, m, budget=budget, curve=curve, last_k=last_k, budgets=points).x
        iv = mean_interval(x)
        per_run = x.mean(axis=1) if x.ndim == 2 else x
        rows.append({"method": m, "measure": _measure_name(budget, curve, last_k), "n_runs": iv.n_runs,
                     "mean": iv.estimate, "ci_low": iv.low, "ci_high": iv.high, "se": iv.se, "df": iv.df,
                     "iqm": iqm(per_run),
                     "reliable": iv.reliable, "ci_method": iv.method})
    return pd.DataFrame(rows)


def comparison_table(records: pd.DataFrame, *, budget: float | None = None,
                     curve: Literal["auc", "last"] | None = None, last_k: int = 3,
                     baseline: str | None = "grpo", extra_pairs: Sequence[tuple[str, str]] = (),
                     delta_points: float = 3.0, alpha: float = 0.05, n_resamples: int = N_RESAMPLES,
                     bootstrap_seed: int = 0) -> pd.DataFrame:
    """One row per comparison (method minus baseline): every other method against ``baseline`` (None: no
    baseline rows), then ``extra_pairs`` as (method, baseline). Runs are paired when both methods have the
    same seeds. Holm correction over the rows of this table; ``significant`` is the Holm decision at alpha (a
    report re-decides both over its whole study with ``study_family``). Paired rows with >= 3 seeds carry
    the leave-one-seed-out range of the difference (loso_min, loso_max) and how many of those subsets'
    intervals exclude 0 (loso_excluding_zero of loso_subsets)."""
    records = _check_records(records)
    present = sorted(records["method"].unique().tolist())
    pairs = [(m, baseline) for m in present if m != baseline] if baseline is not None else []
    pairs += [tuple(p) for p in extra_pairs]
    for m in {name for pair in pairs for name in pair} | ({baseline} if baseline else set()):
        if m not in present:
            raise ValueError(f"method {m!r} (baseline or requested pair) has no records; methods present: {present}")
    points = shared_budgets(records, sorted({n for p in pairs for n in p})) if curve else None
    rows = []
    for m, base in pairs:
        s_m, s_b = (score_matrix(records, name, budget=budget, curve=curve, last_k=last_k, budgets=points)
                    for name in (m, base))
        if s_m.items != s_b.items:
            raise ValueError(f"{m!r} and {base!r} are not evaluated on the same items; a comparison needs them")
        c = compare_runs(s_m.x, s_b.x, paired=s_m.seeds == s_b.seeds, delta_points=delta_points, alpha=alpha,
                         n_resamples=n_resamples, bootstrap_seed=bootstrap_seed)
        loso = (leave_one_seed_out(s_m.x, s_b.x) if c.paired and len(s_m.seeds) >= 3
                else np.full((0, 3), np.nan))
        rows.append({"method": m, "baseline": base, "measure": _measure_name(budget, curve, last_k),
                     "paired": c.paired, "n_runs": len(s_m.seeds), "n_runs_baseline": len(s_b.seeds),
                     "diff": c.difference.estimate, "diff_low": c.difference.low, "diff_high": c.difference.high,
                     "diff_se": c.difference.se, "diff_df": c.difference.df,
                     "loso_min": float(loso[:, 0].min()) if len(loso) else float("nan"),
                     "loso_max": float(loso[:, 0].max()) if len(loso) else float("nan"),
                     "loso_excluding_zero": int(((loso[:, 1] > 0) | (loso[:, 2] < 0)).sum()), "loso_subsets": len(loso),
                     "test": c.test, "p_value": c.p_value, "p_improvement": c.p_improvement.estimate,
                     "p_improvement_low": c.p_improvement.low, "p_improvement_high": c.p_improvement.high,
                     "reliable": c.difference.reliable, "ci_method": c.difference.method,
                     "runs_needed": c.power.runs_needed, "min_detectable_points": c.power.min_detectable_points,
                     "power_sentence": c.power.sentence,
                     "min_detectable_low": (c.power.min_detectable_range or (np.nan, np.nan))[0],
                     "min_detectable_high": (c.power.min_detectable_range or (np.nan, np.nan))[1],
                     "runs_needed_low": (c.power.runs_needed_range or (None, None))[0],
                     "runs_needed_high": (c.power.runs_needed_range or (None, None))[1]})
    table = pd.DataFrame(rows)
    if len(table):
        table["p_holm"], table["significant"] = holm(table["p_value"].to_numpy(), alpha)
    return table
