"""Factorial ablations: each factor's main effect and the two-factor interactions, with intervals, seed-blocked.

An experiment with `factors: {algorithm.params.eps_w: [0.1, 0.4], algorithm.teacher.sync_every: [1, 3]}` trains
one arm per combination of levels (config.factor_levels) at every seed. The report reads it as a factorial
design, not as arms compared with the first one.

Effects. A factor's main effect at level l is the difference of marginal means, level l minus the factor's first
level, each marginal mean the average over the arms at that level (so over every level of the other factors,
equally weighted). The interaction of two factors at levels (l, m) is the difference of differences:
(F=l, G=m) - (F=l0, G=m) - (F=l, G=m0) + (F=l0, G=m0), averaged over the other factors; 0 when F's effect does
not depend on G. Two-level factors give one row each; an F-test per model term (main effects and every
interaction, higher-order ones included) is beside them.

Model: ordinary least squares (statsmodels) on the run means, one observation per run (arm x seed), with seed
fixed effects: y[a, s] = mu + seed_s + tau_a + e[a, s], a randomised complete block design whose blocks are the
seeds (every arm of a seed starts from the same base policy, prompt stream and test items, so the seed's shift
cancels from every contrast). Each effect is a contrast of the tau_a, tested with ``t_test``: its interval is
the t-interval with the (arms - 1) x (seeds - 1) residual degrees of freedom pooled over all arms. The F-tests
are ``anova_lm`` (type III, sum-to-zero coding) of ``y ~ C(f1) * C(f2) * ... + C(seed)`` on the same runs.

Why this model and not another:
- not OLS over the item rows: a run's items share its training noise, so 300 items of one run are not 300
  independent observations, and that model's intervals are far too narrow (the run is the experimental unit);
- not a mixed model (statsmodels MixedLM with a random seed effect): with 4 seeds the seed variance has 3
  degrees of freedom, its REML estimate is poor and often on the boundary, and the contrasts are within-seed
  anyway, so fixed seed effects cost the same and assume no distribution for them.
The test items are fixed in that model (the same items in every run: an item's difficulty cancels from every
contrast). The column "over seeds x items" gives the same contrast under the crossed seeds x items random-effects
model of the comparison tables (analysis/stats.py: per seed, the contrast of every item's score; the item term
then generalises over test items), with that contrast's own Satterthwaite df; it needs every arm at a seed
(seeds missing an arm are left out of it, and the table says how many entered).

Diagnostics. Each run's mean over its training steps of the objective's own metrics (docs/metrics.md: RLSD's
w-clip fractions and the teacher-minus-student gap delta, the teacher KL, OPSD's leakage, the entropy), per arm
the mean over seeds with its t-interval (analysis/claims.t_interval); the factorial effects on each of them by
the same model, where every arm logged it.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from rlsd_harness.analysis import claims, stats

CONFIDENCE = 0.95
# (metric key, what it is): the per-run diagnostics, each a mean over the run's steps where it was logged.
DIAGNOSTICS = [
    ("actor/w_clip_frac", "RLSD w clipped, low + high (fraction of tokens)"),
    ("actor/w_clip_low_frac", "RLSD w at 1 - eps_w (fraction of tokens)"),
    ("actor/w_clip_high_frac", "RLSD w at 1 + eps_w (fraction of tokens)"),
    ("actor/delta_mean", "RLSD delta: teacher - student log-prob, mean"),
    ("actor/delta_std", "RLSD delta: its standard deviation"),
    ("teacher/kl", "teacher KL on sampled tokens"),
    ("rollout/leakage", "leakage rate (responses)"),
    ("actor/entropy", "policy entropy (nats / token)"),
    ("rollout/reward", "training reward"),
]
# The diagnostics whose factorial effects the report gives (the objective's own; the generic ones per arm only).
EFFECT_DIAGNOSTICS = ("actor/w_clip_frac", "actor/delta_mean", "actor/delta_std", "teacher/kl", "rollout/leakage")


@dataclass(frozen=True)
class Contrast:
    """A named linear combination of arm means: weights over arm labels summing to 0."""

    term: str  # "eps_w" or "eps_w x sync_every"
    kind: str  # main | interaction
    levels: str  # "0.4 - 0.1", or "(0.4, 3)" for an interaction
    weights: Mapping[str, float]


def short(key: str) -> str:
    return str(key).rsplit(".", 1)[-1]


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def contrasts(levels: Mapping[str, Mapping[str, Any]]) -> list[Contrast]:
    """Main-effect contrasts of every factor (each level against the first) and two-factor interaction
    contrasts of every pair of factors (each pair of non-first levels), over the arms in `levels`
    (label -> {factor: level}, config.factor_levels). Weights of a marginal mean are spread equally over its
    arms, so every contrast's weights sum to 0."""
    frame = pd.DataFrame.from_dict(levels, orient="index")
    factors = list(frame.columns)
    uniques = {f: list(dict.fromkeys(frame[f].tolist())) for f in factors}
    out = []

    def mean_weights(mask: pd.Series) -> dict[str, float]:
        arms = frame.index[mask]
        return {a: 1.0 / len(arms) for a in arms}

    def combine(*parts: tuple[float, dict[str, float]]) -> dict[str, float]:
        w: dict[str, float] = {}
        for sign, part in parts:
            for a, x in part.items():
                w[a] = w.get(a, 0.0) + sign * x
        return {a: x for a, x in w.items() if abs(x) > 1e-15}

    for f in factors:
        first = uniques[f][0]
        for lv in uniques[f][1:]:
            out.append(Contrast(short(f), "main", f"{_fmt(lv)} - {_fmt(first)}",
                                combine((1.0, mean_weights(frame[f] == lv)), (-1.0, mean_weights(frame[f] == first)))))
    def cell(f: str, a: Any, g: str, b: Any) -> dict[str, float]:
        return mean_weights((frame[f] == a) & (frame[g] == b))

    for f, g in itertools.combinations(factors, 2):
        f0, g0 = uniques[f][0], uniques[g][0]
        for lf, lg in itertools.product(uniques[f][1:], uniques[g][1:]):
            out.append(Contrast(f"{short(f)} x {short(g)}", "interaction",
                                f"({short(f)} {_fmt(lf)} - {_fmt(f0)}) x ({short(g)} {_fmt(lg)} - {_fmt(g0)})",
                                combine((1.0, cell(f, lf, g, lg)), (-1.0, cell(f, f0, g, lg)), (-1.0, cell(f, lf, g, g0)),
                                        (1.0, cell(f, f0, g, g0)))))
    return out


def _check_cells(cells: pd.DataFrame, levels: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    missing = {"arm", "seed", "y"} - set(cells.columns)
    if missing:
        raise ValueError(f"cells need columns arm, seed, y; missing {sorted(missing)}")
    cells = cells[np.isfinite(cells["y"].astype(float))]
    unknown = sorted(set(cells["arm"]) - set(levels))
    if unknown:
        raise ValueError(f"arms {unknown} are not in the factorial design; its arms: {sorted(levels)}")
    return cells


def fit_effects(cells: pd.DataFrame, levels: Mapping[str, Mapping[str, Any]],
                confidence: float = CONFIDENCE) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """The effects of a factorial design on one per-run quantity.

    `cells`: one row per run with columns arm (a label of `levels`), seed and y (the run's value). Returns
    (effects, anova, note): effects has one row per contrast (term, kind, levels, estimate, ci_low, ci_high,
    se, df, p); anova one row per model term (term, df, F, p); note a sentence when the data cannot give
    intervals (every arm needs a run, and the residual needs a degree of freedom), else ''."""
    import statsmodels.formula.api as smf
    from statsmodels.stats.anova import anova_lm

    cells = _check_cells(cells, levels)
    present = sorted(set(cells["arm"]))
    cons = contrasts(levels)
    empty = pd.DataFrame(columns=["term", "kind", "levels", "estimate", "ci_low", "ci_high", "se", "df", "p"])
    absent = sorted(set(levels) - set(present))
    if absent:
        return empty, pd.DataFrame(columns=["term", "df", "F", "p"]), f"no effects: arms without a run: {', '.join(absent)}"
    data = cells.assign(arm=cells["arm"].astype(str), seed=cells["seed"].astype(str), y=cells["y"].astype(float))
    seeds = data["seed"].nunique()
    rhs = "C(arm)" + (" + C(seed)" if seeds > 1 else "")
    res = smf.ols(f"y ~ {rhs}", data).fit()
    rows = []
    ref = sorted(present)[0]  # patsy's reference level: its tau is 0, the contrasts' weights on it drop out
    names = list(res.params.index)
    for c in cons:
        L = np.zeros(len(names))
        for arm, w in c.weights.items():
            if arm != ref:
                L[names.index(f"C(arm)[T.{arm}]")] = w
        est = float(L @ res.params.to_numpy())
        if res.df_resid >= 1:
            t = res.t_test(L)
            low, high = (float(x) for x in np.asarray(t.conf_int(alpha=1 - confidence)).ravel()[:2])
            se, p = float(np.asarray(t.sd).ravel()[0]), float(np.asarray(t.pvalue).ravel()[0])
        else:
            low = high = se = p = float("nan")
        rows.append({"term": c.term, "kind": c.kind, "levels": c.levels, "estimate": est, "ci_low": low,
                     "ci_high": high, "se": se, "df": float(res.df_resid), "p": p})
    note = "" if res.df_resid >= 1 else "no intervals: one run per arm leaves no residual degree of freedom"
    anova = pd.DataFrame(columns=["term", "df", "F", "p"])
    frame = pd.DataFrame.from_dict(levels, orient="index")
    if res.df_resid >= 1:
        # the factors under plain names (formula-safe): f0, f1, ...
        names_of = {f"f{i}": f for i, f in enumerate(frame.columns)}
        for col, f in names_of.items():
            data[col] = [str(frame.loc[a, f]) for a in data["arm"]]
        formula = "y ~ " + " * ".join(f"C({c}, Sum)" for c in names_of) + (" + C(seed)" if seeds > 1 else "")
        table = anova_lm(smf.ols(formula, data).fit(), typ=3)
        for term, r in table.iterrows():
            if term in ("Intercept", "Residual", "C(seed)"):
                continue
            label = " x ".join(short(names_of[part.split(",")[0].removeprefix("C(")]) for part in str(term).split(":"))
            anova.loc[len(anova)] = {"term": label, "df": float(r["df"]), "F": float(r["F"]), "p": float(r["PR(>F)"])}
    return pd.DataFrame(rows, columns=empty.columns), anova, note


def crossed_effects(records: pd.DataFrame, levels: Mapping[str, Mapping[str, Any]],
                    confidence: float = CONFIDENCE) -> pd.DataFrame:
    """Each contrast under the crossed seeds x items model (analysis/stats.py): per seed that has every arm,
    the contrast of each item's score, then stats.mean_interval over (seeds, items). `records`: method (the
    arm label), seed, item, score at one budget point. Rows: term, levels, estimate, ci_low, ci_high, df, seeds."""
    cons = contrasts(levels)
    wide = records.pivot_table(index=["seed", "item"], columns="method", values="score", aggfunc="mean")
    arms = list(levels)
    have = [a for a in arms if a in wide.columns]
    rows = []
    complete = wide[have].dropna() if len(have) == len(arms) else wide.iloc[0:0]
    seeds = sorted(set(complete.index.get_level_values("seed")))
    # a seed enters only with every item of every arm (a seed missing items would unbalance the matrix)
    items = sorted(set(complete.index.get_level_values("item")))
    seeds = [s for s in seeds if len(complete.loc[s]) == len(items)]
    for c in cons:
        if not seeds:
            rows.append({"term": c.term, "levels": c.levels, "estimate": float("nan"), "ci_low": float("nan"),
                         "ci_high": float("nan"), "df": float("nan"), "seeds": 0})
            continue
        d = np.stack([sum(w * complete.loc[s][a].reindex(items).to_numpy() for a, w in c.weights.items())
                      for s in seeds])
        iv = stats.mean_interval(d, confidence=confidence)
        rows.append({"term": c.term, "levels": c.levels, "estimate": iv.estimate, "ci_low": iv.low,
                     "ci_high": iv.high, "df": iv.df, "seeds": len(seeds)})
    return pd.DataFrame(rows, columns=["term", "levels", "estimate", "ci_low", "ci_high", "df", "seeds"])


def run_diagnostics(df: pd.DataFrame) -> pd.DataFrame:
    """One row per finished run (method = arm label, seed): each DIAGNOSTICS key's mean over the run's
    metrics lines that logged it (NaN where the run never did). `df` is report.load_runs."""
    finished = df[df["status"] == "finished"] if "status" in df else df
    rows = []
    for (arm, seed), run in finished.groupby(["method", "seed"]):
        row: dict[str, Any] = {"method": arm, "seed": int(seed)}
        for key, _ in DIAGNOSTICS:
            x = pd.to_numeric(run[key], errors="coerce").dropna() if key in run else pd.Series(dtype=float)
            row[key] = float(x.mean()) if len(x) else float("nan")
        rows.append(row)
    return pd.DataFrame(rows, columns=["method", "seed", *[k for k, _ in DIAGNOSTICS]])


def diagnostics_per_arm(diag: pd.DataFrame, order: Sequence[str]) -> pd.DataFrame:
    """Per arm and logged diagnostic: mean over seeds, 95 % t-interval, seeds (long format)."""
    rows = []
    for key, what in DIAGNOSTICS:
        if key not in diag or diag[key].isna().all():
            continue
        for arm in order:
            x = diag.loc[diag["method"] == arm, key]
            mean, low, high, n = claims.t_interval(x.to_numpy(dtype=float))
            rows.append({"metric": key, "what": what, "method": arm, "mean": mean, "ci_low": low, "ci_high": high,
                         "seeds": n})
    return pd.DataFrame(rows, columns=["metric", "what", "method", "mean", "ci_low", "ci_high", "seeds"])


# ---------------------------------------------------------------- the report's section


def _ci(low: float, high: float, scale: float, digits: int) -> str:
    if not (np.isfinite(low) and np.isfinite(high)):
        return "n/a"
    return f"[{scale * low:+.{digits}f}, {scale * high:+.{digits}f}]"


def _p(p: float) -> str:
    if p is None or not np.isfinite(p):
        return "n/a"
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def effects_markdown(effects: pd.DataFrame, anova: pd.DataFrame, crossed: pd.DataFrame | None, unit: str,
                     scale: float, digits: int) -> list[str]:
    """One effects table: a row per contrast (estimate, OLS interval, its p, the term's F-test p, and the
    crossed-model interval when given)."""
    fp = dict(zip(anova["term"], anova["p"])) if len(anova) else {}
    head = ["effect", "levels", f"estimate ({unit})", "95 % CI (OLS, seed-blocked)", "p", "F-test p (term)"]
    if crossed is not None:
        head.append("95 % CI (over seeds x items)")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, r in effects.reset_index(drop=True).iterrows():
        cells = [f"{r['term']} ({r['kind']})", r["levels"], f"{scale * r['estimate']:+.{digits}f}",
                 _ci(r["ci_low"], r["ci_high"], scale, digits), _p(r["p"]), _p(fp.get(r["term"], float("nan")))]
        if crossed is not None:
            c = crossed.iloc[i]
            cells.append(_ci(c["ci_low"], c["ci_high"], scale, digits) + (f" ({int(c['seeds'])} seeds)" if c["seeds"] else ""))
        lines.append("| " + " | ".join(cells) + " |")
    higher = anova[anova["term"].str.count(" x ") >= 2] if len(anova) else anova
    for r in higher.itertuples(index=False):
        lines.append(f"| {r.term} (interaction, F-test only) | | | | | {_p(r.p)} | " + ("|" if crossed is not None else ""))
    return lines


def factorial_section(levels: Mapping[str, Mapping[str, Any]], records: pd.DataFrame, runs: pd.DataFrame,
                      fractions: Sequence[float], measure: str) -> tuple[str, pd.DataFrame]:
    """The report's factorial section (markdown) and its long table (csv): the effects on the test score at
    every budget point, the diagnostics per arm, and the effects on each diagnostic every arm logged.
    `records`: the study's per-item records (method = arm label); `runs`: report.load_runs."""
    order = list(levels)
    frame = pd.DataFrame.from_dict(levels, orient="index")
    design = " x ".join(f"{short(f)} {{{', '.join(_fmt(v) for v in dict.fromkeys(frame[f]))}}}" for f in frame.columns)
    lines = [f"A {' x '.join(str(frame[f].nunique()) for f in frame.columns)} factorial design ({design}); "
             f"{len(order)} arms. Effects in points of {measure}: a main effect is the difference of the marginal means "
             "(level minus the factor's first level, averaged over the other factors); an interaction is the "
             "difference of differences. Intervals: OLS on run means with seed fixed effects (the seeds are "
             "blocks), and beside it the crossed seeds x items model of the tables "
             "(analysis/factorial.py states both and why).", ""]
    long_rows = []
    for b in fractions:
        at = records[np.isclose(records["budget"], b) & records["method"].isin(order)]
        cells = at.groupby(["method", "seed"])["score"].mean().rename("y").reset_index().rename(columns={"method": "arm"})
        lines.append(f"**Test score at {b:g} x budget**")
        lines.append("")
        if cells.empty:
            lines += ["No runs evaluated here.", ""]
            continue
        effects, anova, note = fit_effects(cells, levels)
        crossed = crossed_effects(at, levels) if not effects.empty else None
        runs_per = cells.groupby("arm")["seed"].nunique().reindex(order).fillna(0).astype(int)
        means = cells.groupby("arm")["y"].mean().reindex(order)
        lines.append("Arm means: " + "; ".join(f"{a} {100 * means[a]:.1f} ({runs_per[a]} runs)" for a in order
                                               if np.isfinite(means[a])) + ".")
        lines.append("")
        if not effects.empty:
            lines += effects_markdown(effects, anova, crossed, "points", 100.0, 1)
            for r, c in zip(effects.itertuples(index=False), crossed.itertuples(index=False)):
                long_rows.append({"quantity": f"test score at {b:g}", "term": r.term, "kind": r.kind,
                                  "levels": r.levels, "estimate": r.estimate, "ci_low": r.ci_low, "ci_high": r.ci_high,
                                  "p": r.p, "df": r.df, "crossed_ci_low": c.ci_low, "crossed_ci_high": c.ci_high,
                                  "crossed_df": c.df, "crossed_seeds": c.seeds})
        if note:
            lines.append(f"Note: {note}.")
        lines.append("")
    diag = run_diagnostics(runs) if len(runs) else pd.DataFrame()
    per_arm = diagnostics_per_arm(diag, order) if len(diag) else pd.DataFrame()
    if len(per_arm):
        metrics = list(dict.fromkeys(per_arm["metric"]))
        lines += ["**The objective's own diagnostics per arm** (each run's mean over its training steps; mean over "
                  "seeds with the 95 % t-interval; fractions in percent)", "",
                  "| arm | " + " | ".join(f"`{m}`" for m in metrics) + " |", "|---|" + "---|" * len(metrics)]
        for arm in order:
            cells = []
            for m in metrics:
                r = per_arm[(per_arm["metric"] == m) & (per_arm["method"] == arm)].iloc[0]
                scale, digits = (100.0, 2) if "frac" in m or m == "rollout/leakage" else (1.0, 4)
                cells.append("n/a" if not np.isfinite(r["mean"]) else
                             f"{scale * r['mean']:.{digits}f} {_ci(r['ci_low'], r['ci_high'], scale, digits).replace('+', '')}")
            lines.append(f"| {arm} | " + " | ".join(cells) + " |")
        lines.append("")
        for m in [m for m in metrics if m in EFFECT_DIAGNOSTICS]:
            cells = diag[["method", "seed", m]].rename(columns={"method": "arm", m: "y"})
            cells = cells[cells["arm"].isin(order)]
            if cells["y"].isna().any() or set(cells["arm"]) != set(order) or cells["y"].nunique() < 2:
                continue  # an arm that never logged it (λ = 0 throughout, another objective), or a constant
            effects, anova, note = fit_effects(cells, levels)
            if effects.empty:
                continue
            scale, digits, unit = (100.0, 2, "percent") if "frac" in m or m == "rollout/leakage" else (1.0, 4, "")
            lines += [f"Effects on `{m}`{' (' + unit + ')' if unit else ''}:", "",
                      *effects_markdown(effects, anova, None, unit or "value", scale, digits), ""]
            for r in effects.itertuples(index=False):
                long_rows.append({"quantity": m, "term": r.term, "kind": r.kind, "levels": r.levels,
                                  "estimate": r.estimate, "ci_low": r.ci_low, "ci_high": r.ci_high, "p": r.p,
                                  "df": r.df})
    return "\n".join(lines) + "\n", pd.DataFrame(long_rows)


def unresolved(effects: pd.DataFrame, budget: float) -> list[str]:
    """The effects on the test score at `budget` whose seed-blocked 95 % interval includes 0 (markdown items)."""
    if effects.empty:
        return []
    rows = effects[effects["quantity"] == f"test score at {budget:g}"]
    return [f"- {r.term} ({r.kind}, {r.levels}): {100 * r.estimate:+.1f} points, 95 % CI [{100 * r.ci_low:+.1f}, "
            f"{100 * r.ci_high:+.1f}] (seed-blocked OLS, {r.df:g} df): cannot tell"
            for r in rows.itertuples(index=False) if not (r.ci_low > 0 or r.ci_high < 0)]
