"""The learning signal and the RLSD paper's dynamics claims, measured on a comparison's runs with intervals.

Every quantity is one number per run (per seed); a method's value is the mean over its seeds with a 95 %
Student-t interval (scipy.stats.t), and a difference between two methods is paired by seed (the same seed
gives the same base policy, prompt stream and test items) with a paired t-test (scipy.stats.ttest_rel).

- Learning signal (the laptop task's criterion: GRPO gains at least 15 points in both):
  training reward = mean `rollout/reward` of the last `window` (10) steps minus that of the first `window` (a
  run shorter than two windows: its last half minus its first half; every "change" below alike);
  test mean@k = the run's test score at the last budget point minus its base (step-0) score, over the same
  items.
- The paper's claims (arXiv 2604.03128), each a test against a stated margin on its 95 % interval (two-sided,
  so each one-sided decision is at 2.5 %), with a verdict `held`, `did not hold` or `cannot tell`:
  1. RLSD >= GRPO at matched compute, a non-inferiority test with margin ``MARGIN_POINTS`` (1 point): the
     difference RLSD - GRPO of test mean@k at the last budget point. With the report's comparison table
     this is the study's primary comparison (its interval over seeds and items, not corrected); held if the
     interval's low end lies above -margin, did not hold if its high end lies below -margin (RLSD behind by
     more than the margin), cannot tell otherwise. Its p is the one-sided non-inferiority p against
     H0: difference <= -margin (t with the interval's df), below 0.025 exactly when it held. The row also
     says whether the interval shows superiority (low end above 0), a deficit (high end below 0) and
     equivalence (inside +-margin).
  2. OPSD peaks early and then falls while its leakage rises: two superiority tests, OPSD's test score at
     the last budget point minus at the first (a fall: below 0) and its leakage (`rollout/leakage`) change,
     last window minus first (a rise: above 0), each with margin 1 point. Held if both intervals lie on
     the claimed side of 0; did not hold if either interval excludes every change of at least the margin
     in its claimed direction.
  3. GRPO's entropy falls faster than RLSD's: a superiority test on the paired difference GRPO - RLSD of
     the `actor/entropy` change (last window minus first) over the same compute, margin ``ENTROPY_MARGIN``
     (0.01 nats/token, about a quarter of GRPO's fall on the embedded task): held if the interval lies
     below 0, did not hold if it excludes every difference of -margin or less.
  4. RLSD's w-clip fraction is a few percent: an equivalence test of the mean over steps of
     `actor/w_clip_frac` (tokens whose evidence weight hit 1 - eps_w or 1 + eps_w) against [1 %, 10 %]:
     held if its interval lies inside, did not hold if it lies entirely outside.
  5. RLSD's convergence ceiling is higher than GRPO's (the paper's Fig. 5: "a higher ceiling"): each run's
     asymptote A of ScaleRL's saturating accuracy-vs-compute curve, fitted to its test mean@k at the budget
     points with the exponent fixed (analysis/ceiling.py states the fit and when a run's A is identified);
     a superiority test on the paired difference RLSD - GRPO of A over seeds, margin 1 point: held if the
     interval lies above 0, did not hold if it lies below +1; cannot tell whenever a compared run's A is not
     identified by its budget points.

A verdict is `held` or `did not hold` only when the interval decides it by the rule above; otherwise
`cannot tell`. A claim whose arms are not in the study (OPSD's claim without an `opsd` arm, every claim in an
ablation whose arms are `rlsd-eps_w0.1-...`) has no row at all: a row of NaNs would read as a result.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

from rlsd_harness.analysis import ceiling as ceiling_fit

CONFIDENCE = 0.95
FEW_PERCENT = (0.01, 0.10)  # "a few percent": the w-clip fraction's interval inside [1 %, 10 %]
# The smallest difference that matters, fixed before the data: one point of test accuracy (a tenth of the
# spread between methods at 8 seeds, and about the smallest difference 8 seeds resolve on the reference).
MARGIN_POINTS = 1.0
LEAKAGE_MARGIN_POINTS = 1.0  # a leakage rise smaller than 1 point of responses does not count as rising
ENTROPY_MARGIN = 0.01  # nats/token


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float, float, int]:
    """Mean, 95 % t-interval (low, high) and n of `values` (NaNs dropped; no interval below 2 values)."""
    x = np.asarray([v for v in values if np.isfinite(v)], dtype=float)
    if len(x) < 2:
        return (float(x.mean()) if len(x) else float("nan")), float("nan"), float("nan"), len(x)
    if np.all(x == x[0]):
        return float(x[0]), float(x[0]), float(x[0]), len(x)
    low, high = sps.t.interval(confidence, len(x) - 1, loc=x.mean(), scale=sps.sem(x))
    return float(x.mean()), float(low), float(high), len(x)


def paired_difference(a: pd.Series, b: pd.Series) -> dict[str, float]:
    """a - b over the seeds both have: mean, t-interval, paired t-test p-value, n, and the mean's se and df."""
    both = pd.concat([a.rename("a"), b.rename("b")], axis=1).dropna()
    d = both["a"] - both["b"]
    mean, low, high, n = t_interval(d)
    p = float(sps.ttest_rel(both["a"], both["b"]).pvalue) if n >= 2 and d.std() > 0 else float("nan")
    se = float(d.std(ddof=1) / np.sqrt(n)) if n >= 2 else float("nan")
    return {"mean": mean, "ci_low": low, "ci_high": high, "p": p, "n": n, "se": se, "df": float(n - 1)}


def margin_verdict(low: float, high: float, test: str, margin: float, direction: float = 1.0) -> str:
    """The verdict of a one-sided claim from a two-sided interval [low, high] (module doc). ``direction`` +1:
    the claim is that the quantity is large, -1: that it is small (the interval is read with its sign
    flipped). ``test``: "non-inferiority" (held if the interval lies above -margin, did not hold if below
    it) or "superiority" (held if the interval lies above 0, did not hold if it lies below +margin)."""
    if test not in ("non-inferiority", "superiority"):
        raise ValueError(f"test must be 'non-inferiority' or 'superiority'; got {test!r}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0; got {margin}")
    if not (np.isfinite(low) and np.isfinite(high)):
        return "cannot tell"
    lo, hi = (low, high) if direction > 0 else (-high, -low)
    bar = -margin if test == "non-inferiority" else 0.0
    fails_below = -margin if test == "non-inferiority" else margin
    return "held" if lo > bar else ("did not hold" if hi < fails_below else "cannot tell")


def equivalence_verdict(low: float, high: float, bounds: tuple[float, float]) -> str:
    """Held if [low, high] lies inside ``bounds``, did not hold if it lies entirely outside them."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return "cannot tell"
    if bounds[0] <= low and high <= bounds[1]:
        return "held"
    return "did not hold" if (high < bounds[0] or low > bounds[1]) else "cannot tell"


def _non_inferiority_p(mean: float, se: float, df: float, margin: float) -> float:
    """One-sided p of H0: difference <= -margin (t with df); nan without an SE."""
    if not (np.isfinite(se) and se > 0 and np.isfinite(df)):
        return float("nan")
    return float(sps.t.sf((mean + margin) / se, df))


def run_quantities(df: pd.DataFrame, records: pd.DataFrame, window: int = 10) -> pd.DataFrame:
    """One row per finished run (method, seed): the per-run quantities the claims read.

    `df` is report.load_runs (every metrics line); `records` is the study's per-item test records
    (method, seed, budget, item, score)."""
    rows = []
    finished = df[df["status"] == "finished"] if "status" in df else df
    for (method, seed), run in finished.groupby(["method", "seed"]):
        steps = run[run.get("rollout/reward").notna()] if "rollout/reward" in run else run.iloc[0:0]
        steps = steps.sort_values("step")
        row = {"method": method, "seed": int(seed), "steps": len(steps)}

        def change(key: str, steps=steps) -> float:
            # a run shorter than two windows (a tiny-budget ablation) compares its halves instead
            x = steps[key].dropna() if key in steps else pd.Series(dtype=float)
            w = min(window, len(x) // 2)
            return float(x.iloc[-w:].mean() - x.iloc[:w].mean()) if w >= 1 else float("nan")

        row["reward_first"] = float(steps["rollout/reward"].iloc[:window].mean()) if len(steps) else float("nan")
        row["reward_gain"] = change("rollout/reward")
        row["entropy_change"] = change("actor/entropy")
        row["leakage_change"] = change("rollout/leakage")
        row["w_clip_frac"] = float(steps["actor/w_clip_frac"].mean()) if "actor/w_clip_frac" in steps else float("nan")
        rows.append(row)
    out = pd.DataFrame(rows)
    if out.empty or records is None or records.empty:
        return out
    per_budget = records.groupby(["method", "seed", "budget"])["score"].mean().unstack("budget")
    points = sorted(b for b in per_budget.columns if b > 0)
    if points and 0.0 in per_budget.columns:
        gain = (per_budget[points[-1]] - per_budget[0.0]).rename("test_gain")
        out = out.merge(gain.reset_index(), on=["method", "seed"], how="left")
    if points:
        out = out.merge(per_budget[points[-1]].rename("test_last").reset_index(), on=["method", "seed"], how="left")
        first = per_budget[points[0]].rename("test_first").reset_index()
        out = out.merge(first, on=["method", "seed"], how="left")
    if 0.0 in per_budget.columns:
        out = out.merge(per_budget[0.0].rename("test_base").reset_index(), on=["method", "seed"], how="left")
    if 0.0 in per_budget.columns and len(points) >= 2:  # the ceiling fit needs the base and two points beyond it
        out = out.merge(ceiling_fit.run_ceilings(records), on=["method", "seed"], how="left")
        for b in ceiling_fit.EXPONENT_SENSITIVITY:
            alt = ceiling_fit.run_ceilings(records, exponent=b)[["method", "seed", "ceiling", "ceiling_identified"]]
            out = out.merge(alt.rename(columns={"ceiling": f"ceiling_b{b:g}", "ceiling_identified":
                                                f"ceiling_identified_b{b:g}"}), on=["method", "seed"], how="left")
    return out


def _series(q: pd.DataFrame, method: str, col: str) -> pd.Series:
    sub = q[q["method"] == method]
    return sub.set_index("seed")[col] if col in sub else pd.Series(dtype=float)


def learning_rows(q: pd.DataFrame, methods: Sequence[str], criterion_points: float = 15.0) -> pd.DataFrame:
    """Each method's training-reward and test mean@k gains over the base, in points, with intervals."""
    rows = []
    for m in methods:
        for col, what in (("reward_gain", "sampled training reward, last minus first steps"),
                          ("test_gain", "test mean@k, last budget point minus base")):
            if col not in q:
                continue
            mean, low, high, n = t_interval(_series(q, m, col))
            if n == 0:
                continue  # no run measured it: a row of NaNs would read as a result
            rows.append({"method": m, "measure": what, "gain": 100 * mean, "ci_low": 100 * low, "ci_high": 100 * high,
                         "seeds": n, f"mean >= {criterion_points:g}": bool(100 * mean >= criterion_points)})
    return pd.DataFrame(rows)


def _table_comparison(table: pd.DataFrame | None, method: str, baseline: str) -> pd.Series | None:
    """The comparison table's row of `method` against `baseline` at its last budget point (None if absent)."""
    if table is None or "table" not in table:
        return None
    rows = table[table["table"].astype(str).str.startswith("budget=") & (table["method"] == method)
                 & (table["baseline"] == baseline)]
    if rows.empty:
        return None
    return rows.loc[rows["table"].map(lambda t: float(str(t).split("=")[1])).idxmax()]


def claim_rows(q: pd.DataFrame, grpo: str = "grpo", rlsd: str = "rlsd", opsd: str = "opsd",
               table: pd.DataFrame | None = None, margin_points: float = MARGIN_POINTS) -> pd.DataFrame:
    """The four claims with their numbers and verdicts (rules in the module docstring and each row's `rule`).

    With `table` (the report's comparison table, report.sections_frame) claim 1 states that table's own
    interval at the last budget point, so that the report gives one interval for one difference; without
    it, the paired t-interval over seeds. Either way its verdict follows the interval and the margin.
    Only the claims whose arms the study has get a row (module docstring)."""
    rows = []
    present = set(q["method"]) if "method" in q else set()
    both = {grpo, rlsd} <= present
    first = f"{rlsd} >= {grpo} at matched compute"
    m = margin_points / 100
    compared = _table_comparison(table, rlsd, grpo)
    d = None
    if compared is not None:
        d = {"mean": compared["diff"], "ci_low": compared["diff_low"], "ci_high": compared["diff_high"],
             "se": compared.get("diff_se", float("nan")), "df": compared.get("diff_df", float("nan")),
             "n": compared["cmp_n_runs"]}
        source = ("the study's primary comparison: the table's interval over seeds and items, not corrected"
                  if compared.get("family") == "primary" else "the table's interval over seeds and items")
    elif "test_last" in q and both:
        d = paired_difference(_series(q, rlsd, "test_last"), _series(q, grpo, "test_last"))
        source = "paired t-interval over seeds"
    if d is not None and both:
        low, high = d["ci_low"], d["ci_high"]
        shows = [f"superior (> 0): {'yes' if low > 0 else 'no'}", f"behind (< 0): {'yes' if high < 0 else 'no'}",
                 f"equivalent (within +-{margin_points:g}): {'yes' if -m < low and high < m else 'no'}"]
        rows.append({"claim": first, "quantity": f"test mean@k at the last budget point, {rlsd} - {grpo} (points; "
                     f"{source}; {'; '.join(shows)})",
                     "mean": 100 * d["mean"], "ci_low": 100 * low, "ci_high": 100 * high,
                     "p": _non_inferiority_p(d["mean"], d["se"], d["df"], m), "n": d["n"],
                     "rule": f"non-inferiority, margin {margin_points:g} point: held if the interval lies above "
                             f"-{margin_points:g}, did not hold if below -{margin_points:g}; p: one-sided against "
                             f"a deficit of {margin_points:g} or more",
                     "verdict": margin_verdict(low, high, "non-inferiority", m)})
    if {"test_last", "test_first"} <= set(q) and opsd in present:
        sub = q[q["method"] == opsd]
        mean, low, high, n = t_interval(sub["test_last"] - sub["test_first"])
        lk = t_interval(sub["leakage_change"]) if "leakage_change" in sub else (float("nan"),) * 3 + (0,)
        fell = margin_verdict(low, high, "superiority", margin_points / 100, direction=-1.0)
        rose = margin_verdict(lk[1], lk[2], "superiority", LEAKAGE_MARGIN_POINTS / 100)
        verdict = "held" if fell == rose == "held" else ("did not hold" if "did not hold" in (fell, rose) else "cannot tell")
        early = t_interval(sub["test_first"] - sub["test_base"]) if "test_base" in sub else (float("nan"),) * 3 + (0,)
        rows.append({"claim": f"{opsd} peaks early, then falls while its leakage rises", "quantity":
                     f"{opsd} test mean@k, last minus first budget point (points; fall: {fell}); first budget point "
                     f"minus base {100 * early[0]:+.1f} [{100 * early[1]:+.1f}, {100 * early[2]:+.1f}]; leakage change "
                     f"{100 * lk[0]:+.2f} [{100 * lk[1]:+.2f}, {100 * lk[2]:+.2f}] points (rise: {rose})",
                     "mean": 100 * mean, "ci_low": 100 * low, "ci_high": 100 * high, "p": float("nan"), "n": n,
                     "rule": f"two superiority tests, margin {margin_points:g} point (score) and "
                             f"{LEAKAGE_MARGIN_POINTS:g} point (leakage): held if the score change's interval lies "
                             "below 0 and the leakage change's above 0; did not hold if either excludes every change "
                             "of at least its margin in the claimed direction",
                     "verdict": verdict})
    if "entropy_change" in q and both:
        d = paired_difference(_series(q, grpo, "entropy_change"), _series(q, rlsd, "entropy_change"))
        rows.append({"claim": f"{grpo}'s entropy falls faster than {rlsd}'s", "quantity":
                     f"entropy change over the budget, {grpo} - {rlsd} (nats/token, x100)", **_points(d),
                     "rule": f"superiority, margin {100 * ENTROPY_MARGIN:g} (x100 nats/token): held if the interval "
                             f"lies below 0; did not hold if it lies above -{100 * ENTROPY_MARGIN:g}; p: paired t-test",
                     "verdict": margin_verdict(d["ci_low"], d["ci_high"], "superiority", ENTROPY_MARGIN, direction=-1.0)})
    if "w_clip_frac" in q and rlsd in present:
        mean, low, high, n = t_interval(_series(q, rlsd, "w_clip_frac"))
        rows.append({"claim": f"{rlsd}'s w-clip fraction is a few percent", "quantity":
                     f"{rlsd} mean w-clip fraction over steps (percent of tokens)", "mean": 100 * mean,
                     "ci_low": 100 * low, "ci_high": 100 * high, "p": float("nan"), "n": n,
                     "rule": f"equivalence with [{100 * FEW_PERCENT[0]:g}, {100 * FEW_PERCENT[1]:g}] %: held if the "
                             "interval lies inside, did not hold if it lies entirely outside",
                     "verdict": equivalence_verdict(low, high, FEW_PERCENT)})
    if "ceiling" in q and both:
        rows.append(ceiling_row(q, grpo, rlsd, margin_points))
    return pd.DataFrame(rows)


def ceiling_row(q: pd.DataFrame, grpo: str = "grpo", rlsd: str = "rlsd",
                margin_points: float = MARGIN_POINTS) -> dict:
    """Claim 5: RLSD - GRPO in the fitted asymptote A, paired by seed (module docstring, analysis/ceiling.py)."""
    m = margin_points / 100

    def paired(col: str, ok: str) -> tuple[dict[str, float], int, int]:
        a, b = _series(q, rlsd, col), _series(q, grpo, col)
        seeds = a.dropna().index.intersection(b.dropna().index)
        good = (_series(q, rlsd, ok).reindex(seeds).astype("boolean").fillna(False).astype(bool)
                & _series(q, grpo, ok).reindex(seeds).astype("boolean").fillna(False).astype(bool))
        return paired_difference(a[good[good].index], b[good[good].index]), int(good.sum()), len(seeds)

    d, identified, n = paired("ceiling", "ceiling_identified")
    verdict = (margin_verdict(d["ci_low"], d["ci_high"], "superiority", m)
               if identified == n and n >= 2 else "cannot tell")
    others = []
    for b in ceiling_fit.EXPONENT_SENSITIVITY:
        if f"ceiling_b{b:g}" in q:
            o, ok, on = paired(f"ceiling_b{b:g}", f"ceiling_identified_b{b:g}")
            others.append(f"B = {b:g}: " + (f"{100 * o['mean']:+.1f} [{100 * o['ci_low']:+.1f}, {100 * o['ci_high']:+.1f}] "
                                            f"({ok}/{on} seeds identified)" if ok >= 2 else
                                            f"{ok}/{on} seeds identified, no interval"))
    asym = {meth: t_interval(_series(q, meth, "ceiling")[_series(q, meth, "ceiling_identified")
                                                         .astype("boolean").fillna(False).astype(bool)])
            for meth in (rlsd, grpo)}
    where = "; ".join(f"{meth} A {100 * v[0]:.1f} [{100 * v[1]:.1f}, {100 * v[2]:.1f}]" for meth, v in asym.items())
    return {"claim": f"{rlsd}'s convergence ceiling is higher than {grpo}'s", "quantity":
            f"asymptote A of R(C) = R0 + (A - R0) / (1 + (C_mid / C)^B) fitted per run to test mean@k at the budget "
            f"points, B fixed at {ceiling_fit.EXPONENT:g} (two points beyond the base fit only A and C_mid), "
            f"{rlsd} - {grpo} (points; paired t over the {identified} of {n} seeds whose both fits are identified; "
            f"{where}; other fixed B: {'; '.join(others) if others else '-'})",
            **_points(d),
            "rule": f"superiority, margin {margin_points:g} point: held if the interval lies above 0, did not hold if "
                    f"it lies below +{margin_points:g}; cannot tell unless every compared run's A is identified "
                    "(C_mid within the budget, A < 100 %); p: paired t-test",
            "verdict": verdict}


def _points(d: dict[str, float]) -> dict[str, float]:
    return {"mean": 100 * d["mean"], "ci_low": 100 * d["ci_low"], "ci_high": 100 * d["ci_high"], "p": d["p"], "n": d["n"]}


def markdown(learning: pd.DataFrame, claims: pd.DataFrame, criterion_points: float = 15.0) -> str:
    """Both tables as markdown."""
    lines = ["### Learning signal (gain over the base policy, points; mean over seeds, 95 % t-interval)", "",
             f"| method | measure | gain | 95 % CI | seeds | mean >= {criterion_points:g} |", "|---|---|---|---|---|---|"]
    for r in learning.itertuples(index=False):
        lines.append(f"| {r.method} | {r.measure} | {r.gain:+.1f} | [{r.ci_low:+.1f}, {r.ci_high:+.1f}] | {r.seeds} | "
                     f"{'yes' if r[-1] else 'no'} |")
    lines += ["", "### The paper's claims", ""]
    if claims.empty:
        return "\n".join(lines + ["None applies: each claim reads arms by name (rlsd against grpo, opsd, rlsd), and "
                                  "this study has none of them.", ""])
    lines += ["| claim | quantity | mean | 95 % CI | p | seeds | rule | verdict |", "|---|---|---|---|---|---|---|---|"]
    for r in claims.itertuples(index=False):
        p = "-" if not np.isfinite(r.p) else f"{r.p:.3g}"
        n = "-" if not np.isfinite(r.n) else f"{r.n:.0f}"  # a column holding NaN is float
        lines.append(f"| {r.claim} | {r.quantity} | {r.mean:+.2f} | [{r.ci_low:+.2f}, {r.ci_high:+.2f}] | {p} | {n} | "
                     f"{r.rule} | **{r.verdict}** |")
    return "\n".join(lines) + "\n"
