"""Statistics for comparison tables: which objective is better, by how much, and how sure.

Pure functions on numbers; no I/O, no torch. Every interval, test and power figure comes from scipy.stats
or statsmodels; nothing here hand-rolls a resampling loop.

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
    summary_table(records, curve="auc")       ci_low, ci_high, iqm, reliable, ci_method
    summary_table(records, curve="last", last_k=3)
    comparison_table(records, budget=b, baseline="grpo", extra_pairs=[("rlsd", "opsd")], delta_points=3)
        one row per comparison (method minus baseline): method, baseline, measure, paired, n_runs,
        n_runs_baseline, diff, diff_low, diff_high, test, p_value, p_holm, significant, p_improvement,
        p_improvement_low, p_improvement_high, reliable, ci_method, runs_needed, min_detectable_points,
        power_sentence

``budget=b`` reads the accuracy at one budget point; ``curve="auc"`` the area under accuracy-vs-budget
(trapezoid over the budget points every run in the table shares, divided by their span, so it reads as an
accuracy); ``curve="last"`` the mean of each run's last ``last_k`` shared evaluations. Two methods are
compared paired when they have the same seeds, unpaired otherwise. The Holm family is the rows of one
table; a p-value is nan (never significant, outside the family) with fewer than 2 runs or zero spread.
``score_matrix(records, method, ...)`` gives the ``Scores`` (seeds, items, x) a table row is computed from;
``shared_budgets(records, methods)`` the budget points a curve summary uses.

Array API (what the tables are built from; x is a (runs, items) matrix, or a (runs,) vector of per-run
scalars, rows in seed order):

    mean_interval(x) -> Interval              per-method estimate and 95 % interval; iqm(per_run)
    compare_runs(x_m, x_base, paired) -> Comparison
    probability_of_improvement(run_m, run_base, paired) -> Interval
    holm(p_values, alpha) -> (adjusted, reject)
    power_analysis(run_m, run_base, paired, delta_points) -> Power (.sentence is the table's power line)
    area_under_curve(x, budgets), last_k_mean(x, k)     reduce a (..., budgets) array to (...)
    pass_at_k(n, c, k), mean_at_k(correct), binomial_se(p, n), items_for_se(p, se)

Interval method (stated in ``Interval.method``). Two sources of variance enter an accuracy: seeds and the
test items (Agarwal et al. 2021, "Deep RL at the Edge of the Statistical Precipice"; Miller 2024, "Adding
Error Bars to Evals"). The seed term is a percentile bootstrap over runs of the per-run means
(``scipy.stats.bootstrap``, ``N_RESAMPLES`` resamples, percentile as in rliable). The item term is added
analytically: under the crossed model x[r, i] = mu + a_r + b_i + e_ri, the variance the shared items add to
the grand mean is Var(b)/n, estimated without bias as var(item means)/n - MSE/(R n) with MSE the residual
mean square of the two-way layout (the bootstrap over runs already carries Var(e)/(R n)). Each side of the
bootstrap interval is widened in quadrature by z * that standard error. With one run the interval is the
item term alone. A difference uses the same construction on d = x_m - x_base (paired) or on both methods'
terms (unpaired). Intervals from fewer than ``MIN_RELIABLE_RUNS`` runs are flagged unreliable (Henderson
et al. 2018 ask for at least 5 seeds; a 95 % t-interval over 3 runs is +-2.5 std): a percentile bootstrap
over few runs is narrower than a t-interval, so near the boundary the interval and the t-test's p-value
can disagree; the p-value decides ``significant``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestIndPower, TTestPower

N_RESAMPLES = 9999
MIN_RELIABLE_RUNS = 5
CONFIDENCE = 0.95
RECORD_COLUMNS = ("method", "seed", "budget", "item", "score")


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float
    n_runs: int
    reliable: bool  # False when fewer than MIN_RELIABLE_RUNS runs (per method) enter the interval
    method: str  # how low/high were obtained, for the table's footnote


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


@dataclass(frozen=True)
class Comparison:
    difference: Interval  # mean of method minus baseline
    p_value: float  # nan when undefined (fewer than 2 runs, or zero spread)
    test: str
    paired: bool
    p_improvement: Interval  # P(a run of the method beats a run of the baseline)
    power: Power


# ---------------------------------------------------------------- per-sample and sizing estimators


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k = 1 - C(n-c, k) / C(n, k) from n samples with c correct (Chen et al. 2021,
    "Evaluating Large Language Models Trained on Code"), in the product form 1 - prod_{j=n-c+1}^{n} (1 - k/j),
    which never forms the large binomials."""
    if not (n >= 1 and 0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass_at_k needs n >= 1, 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


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


def _residual_mean_square(x: np.ndarray) -> float:
    r, n = x.shape
    if r < 2 or n < 2:
        return 0.0
    resid = x - x.mean(axis=1, keepdims=True) - x.mean(axis=0, keepdims=True) + x.mean()
    return float((resid**2).sum() / ((r - 1) * (n - 1)))


def _item_variance(matrices: Sequence[np.ndarray], signs: Sequence[float]) -> float:
    """Variance that sampling the shared test items adds to sum_j sign_j * mean(x_j) (see the module doc).
    Zero for per-run scalars (one column)."""
    n = matrices[0].shape[1]
    if n < 2:
        return 0.0
    item_means = sum(s * m.mean(axis=0) for m, s in zip(matrices, signs))
    var = float(np.var(item_means, ddof=1)) / n
    var -= sum(_residual_mean_square(m) / (m.shape[0] * n) for m in matrices)
    return max(var, 0.0)


def _widen(estimate: float, low: float, high: float, item_var: float, confidence: float) -> tuple[float, float]:
    z_se = stats.norm.ppf(0.5 + confidence / 2) * math.sqrt(item_var)
    return (
        estimate - math.hypot(estimate - low, z_se),
        estimate + math.hypot(high - estimate, z_se),
    )


def _bootstrap(samples: tuple[np.ndarray, ...], statistic, *, paired: bool, n_resamples: int,
               confidence: float, bootstrap_seed: int) -> tuple[float, float]:
    res = stats.bootstrap(
        samples, statistic, n_resamples=n_resamples, confidence_level=confidence, method="percentile",
        paired=paired, vectorized=True, rng=np.random.default_rng(bootstrap_seed),
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def _mean(a: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(a, axis=axis)


def _describe(runs: int, items: int, n_resamples: int) -> str:
    parts = []
    if runs >= 2:
        parts.append(f"percentile bootstrap over {runs} runs ({n_resamples} resamples, scipy.stats.bootstrap)")
    if items >= 2:
        parts.append(f"+ item term over {items} shared items (two-way variance, added in quadrature)")
    if runs < MIN_RELIABLE_RUNS:
        parts.append(f"unreliable: {runs} run(s) < {MIN_RELIABLE_RUNS}")
    return "; ".join(parts) if parts else "no interval: one run of one scalar"


def mean_interval(x: np.ndarray, *, confidence: float = CONFIDENCE, n_resamples: int = N_RESAMPLES,
                  bootstrap_seed: int = 0) -> Interval:
    """Mean over runs of the per-run mean, with a two-level interval (module doc).
    ``x``: (runs, items) per-item scores or (runs,) per-run scalars."""
    x = _runs_and_items(x, "x")
    per_run = x.mean(axis=1)
    est = float(per_run.mean())
    low = high = est
    if per_run.size >= 2:
        low, high = _bootstrap((per_run,), _mean, paired=False, n_resamples=n_resamples,
                               confidence=confidence, bootstrap_seed=bootstrap_seed)
    low, high = _widen(est, low, high, _item_variance([x], [1.0]), confidence)
    return Interval(est, low, high, per_run.size, per_run.size >= MIN_RELIABLE_RUNS,
                    _describe(per_run.size, x.shape[1], n_resamples))


def iqm(per_run: np.ndarray) -> float:
    """Interquartile mean over runs (25 % trimmed mean; Agarwal et al. 2021), via scipy.stats.trim_mean."""
    return float(stats.trim_mean(np.asarray(per_run, dtype=float), 0.25))


def _difference_interval(x_m: np.ndarray, x_b: np.ndarray, paired: bool, confidence: float,
                         n_resamples: int, bootstrap_seed: int) -> Interval:
    if paired:
        iv = mean_interval(x_m - x_b, confidence=confidence, n_resamples=n_resamples,
                           bootstrap_seed=bootstrap_seed)
        return Interval(iv.estimate, iv.low, iv.high, iv.n_runs, iv.reliable, "paired difference; " + iv.method)
    a, b = x_m.mean(axis=1), x_b.mean(axis=1)
    est = float(a.mean() - b.mean())
    low = high = est
    if a.size >= 2 and b.size >= 2:
        low, high = _bootstrap((a, b), lambda u, v, axis=-1: u.mean(axis) - v.mean(axis), paired=False,
                               n_resamples=n_resamples, confidence=confidence, bootstrap_seed=bootstrap_seed)
    low, high = _widen(est, low, high, _item_variance([x_m, x_b], [1.0, -1.0]), confidence)
    runs = min(a.size, b.size)
    return Interval(est, low, high, runs, runs >= MIN_RELIABLE_RUNS,
                    f"unpaired difference ({a.size} vs {b.size} runs); " + _describe(runs, x_m.shape[1], n_resamples))


def probability_of_improvement(run_m: np.ndarray, run_b: np.ndarray, paired: bool, *,
                               confidence: float = CONFIDENCE, n_resamples: int = N_RESAMPLES,
                               bootstrap_seed: int = 0) -> Interval:
    """P(a run of the method scores above a run of the baseline), ties counting one half (Agarwal et al.
    2021). Paired: the fraction of seeds where the method wins. Unpaired: the Mann-Whitney U statistic over
    R1 * R2 (scipy.stats.mannwhitneyu). Percentile bootstrap interval over runs (scipy.stats.bootstrap)."""
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
    return Interval(est, low, high, runs, runs >= MIN_RELIABLE_RUNS, f"{how}; " + _describe(runs, 1, n_resamples))


def power_analysis(run_m: np.ndarray, run_b: np.ndarray, paired: bool, *, delta_points: float = 3.0,
                   alpha: float = 0.05, power: float = 0.8) -> Power:
    """Runs needed to detect a difference of ``delta_points`` with a two-sided t-test at ``alpha`` and
    ``power``, and the smallest difference the current runs detect (Colas et al. 2018, "How Many Random
    Seeds?"). Paired: statsmodels TTestPower on the SD of per-seed differences. Unpaired: TTestIndPower on
    the pooled SD, equal runs per method. Inputs are per-run scores (fractions)."""
    if delta_points <= 0:
        raise ValueError(f"delta_points must be > 0 (a difference in points); got {delta_points}")
    a, b = np.asarray(run_m, dtype=float), np.asarray(run_b, dtype=float)
    n = (a.size, b.size)
    if paired:
        d = a - b
        sd = float(np.std(d, ddof=1)) if d.size >= 2 else float("nan")
        solver, kw_now, test = TTestPower(), {"nobs": d.size}, "paired t-test"
    else:
        ok = a.size >= 2 and b.size >= 2
        sd = math.sqrt(((a.size - 1) * np.var(a, ddof=1) + (b.size - 1) * np.var(b, ddof=1))
                       / (a.size + b.size - 2)) if ok else float("nan")
        solver, kw_now, test = TTestIndPower(), {"nobs1": a.size, "ratio": b.size / a.size}, "Welch t-test"
    seeds_now = f"{n[0]} seeds" if paired else f"{n[0]} + {n[1]} seeds"
    if not (math.isfinite(sd) and sd > 0):
        why = "fewer than 2 runs" if not math.isfinite(sd) else "zero spread between runs"
        return Power(sd, n, delta_points, alpha, power, None, None,
                     f"with {seeds_now} the power of this comparison cannot be estimated ({why})")
    mdd = solver.solve_power(effect_size=None, alpha=alpha, power=power, **kw_now) * sd * 100
    effect = delta_points / 100 / sd
    size_kw = {"nobs": 2} if paired else {"nobs1": 2, "ratio": 1.0}
    at_two = solver.power(effect_size=effect, alpha=alpha, **size_kw)
    # statsmodels' noncentral t returns nan for very large effects (tiny spread), where the power is ~1
    if not math.isfinite(at_two) or at_two >= power:
        needed = 2  # a t-test needs two runs per method; the solver cannot go below that
    else:
        key = "nobs" if paired else "nobs1"
        size_kw.pop(key)
        needed = math.ceil(solver.solve_power(effect_size=effect, alpha=alpha, power=power, **size_kw))
    per = "seeds" if paired else "seeds per method"
    sentence = (f"with {seeds_now} this comparison resolves differences >= {mdd:.1f} points "
                f"({power * 100:.0f} % power, alpha {alpha:g}, {test}); {delta_points:g} points needs "
                f"{needed} {per}")
    return Power(sd, n, delta_points, alpha, power, needed, float(mdd), sentence)


def compare_runs(x_m: np.ndarray, x_b: np.ndarray, paired: bool, *, delta_points: float = 3.0,
                 alpha: float = 0.05, confidence: float = CONFIDENCE, n_resamples: int = N_RESAMPLES,
                 bootstrap_seed: int = 0) -> Comparison:
    """Method vs baseline from (runs, items) matrices (or (runs,) per-run scalars) over the same items.
    Paired (rows are the same seeds): paired t-test over seeds of per-run means (scipy.stats.ttest_rel).
    Unpaired: Welch's t-test (scipy.stats.ttest_ind, equal_var=False). The p-value is uncorrected: ``holm``
    corrects a table's family."""
    x_m, x_b = _runs_and_items(x_m, "x_m"), _runs_and_items(x_b, "x_b")
    if x_m.shape[1] != x_b.shape[1]:
        raise ValueError(f"method and baseline must cover the same items; got {x_m.shape[1]} and {x_b.shape[1]}")
    if paired and x_m.shape[0] != x_b.shape[0]:
        raise ValueError(f"paired runs need the same seeds; got {x_m.shape[0]} and {x_b.shape[0]} runs")
    a, b = x_m.mean(axis=1), x_b.mean(axis=1)
    p = float("nan")
    if paired:
        test = "paired t-test over seeds (scipy.stats.ttest_rel)"
        d = a - b
        if d.size >= 2 and np.ptp(d) > 0:
            p = float(stats.ttest_rel(a, b).pvalue)
    else:
        test = "Welch t-test over runs (scipy.stats.ttest_ind, equal_var=False)"
        if a.size >= 2 and b.size >= 2 and (np.ptp(a) > 0 or np.ptp(b) > 0):
            p = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
    kw = {"confidence": confidence, "n_resamples": n_resamples, "bootstrap_seed": bootstrap_seed}
    return Comparison(
        difference=_difference_interval(x_m, x_b, paired, **kw),
        p_value=p,
        test=test,
        paired=paired,
        p_improvement=probability_of_improvement(a, b, paired, **kw),
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
                  methods: Sequence[str] | None = None, n_resamples: int = N_RESAMPLES,
                  bootstrap_seed: int = 0) -> pd.DataFrame:
    """One row per method: n_runs, mean, ci_low, ci_high, iqm, reliable, ci_method (fractions)."""
    records = _check_records(records)
    methods = list(methods) if methods is not None else sorted(records["method"].unique())
    points = shared_budgets(records, methods) if curve else None
    rows = []
    for m in methods:
        x = score_matrix(records, m, budget=budget, curve=curve, last_k=last_k, budgets=points).x
        iv = mean_interval(x, n_resamples=n_resamples, bootstrap_seed=bootstrap_seed)
        per_run = x.mean(axis=1) if x.ndim == 2 else x
        rows.append({"method": m, "measure": _measure_name(budget, curve, last_k), "n_runs": iv.n_runs,
                     "mean": iv.estimate, "ci_low": iv.low, "ci_high": iv.high, "iqm": iqm(per_run),
                     "reliable": iv.reliable, "ci_method": iv.method})
    return pd.DataFrame(rows)


def comparison_table(records: pd.DataFrame, *, budget: float | None = None,
                     curve: Literal["auc", "last"] | None = None, last_k: int = 3,
                     baseline: str | None = "grpo", extra_pairs: Sequence[tuple[str, str]] = (),
                     delta_points: float = 3.0, alpha: float = 0.05, n_resamples: int = N_RESAMPLES,
                     bootstrap_seed: int = 0) -> pd.DataFrame:
    """One row per comparison (method minus baseline): every other method against ``baseline`` (None: no
    baseline rows), then ``extra_pairs`` as (method, baseline). Runs are paired when both methods have the
    same seeds. Holm correction over the rows of this table; ``significant`` is the Holm decision at alpha."""
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
        rows.append({"method": m, "baseline": base, "measure": _measure_name(budget, curve, last_k),
                     "paired": c.paired, "n_runs": len(s_m.seeds), "n_runs_baseline": len(s_b.seeds),
                     "diff": c.difference.estimate, "diff_low": c.difference.low, "diff_high": c.difference.high,
                     "test": c.test, "p_value": c.p_value, "p_improvement": c.p_improvement.estimate,
                     "p_improvement_low": c.p_improvement.low, "p_improvement_high": c.p_improvement.high,
                     "reliable": c.difference.reliable, "ci_method": c.difference.method,
                     "runs_needed": c.power.runs_needed, "min_detectable_points": c.power.min_detectable_points,
                     "power_sentence": c.power.sentence})
    table = pd.DataFrame(rows)
    if len(table):
        table["p_holm"], table["significant"] = holm(table["p_value"].to_numpy(), alpha)
    return table
