"""The comparison's tables: one section per budget point and curve summary (stats.summary_table and
stats.comparison_table), the study-wide Holm family, their markdown and csv, and the per-run table.

Statistics (analysis/stats.py, which states its methods): at every budget point, each method's mean and 95 %
interval over seeds and items, and each method against the baseline (experiment key `baseline`, default
grpo) and the requested `pairs`: the difference, its 95 % interval, a paired t-test over seeds (same seed:
same base policy, prompt stream and test items), Holm-corrected over the comparisons of one table, the
probability of improvement and the power line. The same for two curve summaries: the area under
accuracy-vs-budget (over 0 and the budget points) and the mean of the last K budget points.

Nothing is dropped silently: failed runs (failed.json), unfinished runs and runs that lack a budget point are
counted beside the row they would have entered.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from rlsd_harness.analysis import stats
from rlsd_harness.analysis.loading import Study


@dataclass
class Section:
    """One table: a measure (a budget point or a curve summary) with its summary and comparison rows."""

    key: str  # "budget=0.5", "auc", "last3"
    title: str
    summary: pd.DataFrame  # stats.summary_table, plus `left_out`
    comparisons: pd.DataFrame  # stats.comparison_table (may be empty)
    notes: list[str]
    power_line: str


def left_out(study: Study, method: str, have: set[int], what: str) -> str:
    """The runs of `method` not counted in a table whose counted seeds are `have`, each with why ("; "-joined)."""
    st = study.status[study.status["method"] == method]
    parts = [f"{r.run} {r.status}" for r in st.itertuples() if r.status != "finished"]
    parts += [f"{r.run} {what}" for r in st.itertuples()
              if r.status == "finished" and r.records != "none" and r.seed not in have]
    parts += [f"{r.run} has no records" for r in st.itertuples() if r.status == "finished" and r.records == "none"]
    return "; ".join(parts)


def power_line(comparisons: pd.DataFrame, baseline: str, delta_points: float) -> str:
    """One power figure per comparison (the rows against `baseline` first): the smallest difference it
    resolves and the seeds `delta_points` needs, each with the range its SD's 95 % chi-square interval
    allows (stats.power_analysis); a maximum over comparisons would describe none of them."""
    if not len(comparisons):
        return "Power: no comparison in this table."
    rows = pd.concat([comparisons[comparisons["baseline"] == baseline], comparisons[comparisons["baseline"] != baseline]])
    parts = []
    for _, r in rows.iterrows():
        name = f"{r['method']} - {r['baseline']}"
        if pd.isna(r["min_detectable_points"]):
            parts.append(f"{name}: {r['power_sentence']}")
            continue
        unit = "seeds" if r["paired"] else "seeds per method"
        dof = int(r["n_runs"]) - 1 if r["paired"] else int(r["n_runs"]) + int(r["n_runs_baseline"]) - 2
        parts.append(f"{name} resolves >= {r['min_detectable_points']:.1f} points [{r['min_detectable_low']:.1f}, "
                     f"{r['min_detectable_high']:.1f}] with {int(r['n_runs'])} {unit}, delta={delta_points:g} needs "
                     f"{int(r['runs_needed'])} [{int(r['runs_needed_low'])}, {int(r['runs_needed_high'])}] "
                     f"({dof} df)")
    test = "paired t-test over seeds" if bool(rows["paired"].all()) else "t-test over runs"
    return (f"Power: one figure per comparison (80 % power, alpha 0.05, {test}; in brackets the range the 95 % chi-square "
            f"interval of its seed SD allows): " + "; ".join(parts))


def decide_study_family(sections: list[Section], fractions: Sequence[float], alpha: float = 0.05) -> str:
    """Re-decide every section's p_holm / significant over the whole study (stats.study_family): the primary
    comparison stats.PRIMARY at the last budget point alone, all other comparisons one Holm family. Returns
    the sentence that states the rule. Idempotent: it decides from p_value alone."""
    frames = [s.comparisons.assign(table=s.key) for s in sections if len(s.comparisons)]
    if not frames:
        return ""
    rows = pd.concat(frames, ignore_index=True)
    key = (f"budget={max(fractions):g}", *stats.PRIMARY)
    found = bool(((rows["table"] == key[0]) & (rows["method"] == key[1]) & (rows["baseline"] == key[2])).any())
    decided = stats.study_family(rows, key if found else None, alpha)
    for s in sections:
        if len(s.comparisons):
            s.comparisons = decided[decided["table"] == s.key].drop(columns="table").reset_index(drop=True)
    family = int((decided["family"] == "holm").sum() - decided.loc[decided["family"] == "holm", "p_value"].isna().sum())
    primary = (f"The primary comparison, fixed before the runs, is {key[1]} - {key[2]} at the last budget point "
               f"({max(fractions):g} x budget): "
               f"tested alone at alpha {alpha:g}, its p not corrected (p Holm shows \"primary\"). "
               if found else f"No primary comparison ({key[1]} - {key[2]} at the last budget point has no row). ")
    return primary + (f"Every other comparison of these tables is one Holm family of {family}: \"p Holm\" and "
                      f"**significant** are that family's.")


def build_sections(study: Study, order: list[str], baseline: str, pairs: list[tuple[str, str]],
                   fractions: list[float], delta_points: float, last_k: int,
                   n_resamples: int = stats.N_RESAMPLES) -> list[Section]:
    """The tables of a study: one per budget point, then the area under the curve and the last-K mean."""
    recs = study.records
    sections = []
    measures: list[tuple[str, str, dict, pd.DataFrame, str]] = []
    for b in fractions:
        at = recs[np.isclose(recs["budget"], b)]
        measures.append((f"budget={b:g}", f"at {b:g} x budget", {"budget": b}, at, "lacks this budget point"))
    curve_points = [p for p in study.points if p == 0.0 or any(np.isclose(p, f) for f in fractions)]
    if len(curve_points) >= 2:
        per_run = recs.groupby(["method", "seed"])["budget"].apply(lambda s: set(s.round(9)))
        complete = {k for k, v in per_run.items() if {round(p, 9) for p in curve_points} <= v}
        keep = recs[[(m, s) in complete for m, s in zip(recs["method"], recs["seed"])]]
        keep = keep[keep["budget"].round(9).isin([round(p, 9) for p in curve_points])]
        span = ", ".join(f"{p:g}" for p in curve_points)
        measures.append(("auc", f"area under accuracy vs budget (points {span})", {"curve": "auc"}, keep,
                         "lacks a budget point of the curve"))
        measures.append((f"last{last_k}", f"mean of the last {last_k} budget points", {"curve": "last",
                         "last_k": last_k}, keep, "lacks a budget point of the curve"))
    for key, title, kw, sub, missing in measures:
        present = [m for m in order if m in set(sub["method"])]
        notes = []
        left = {m: left_out(study, m, set(sub[sub["method"] == m]["seed"]), missing) for m in order}
        absent = [m for m in order if m not in present]
        if absent:
            notes.append(f"no runs in this table: {', '.join(absent)}")
        if not present:
            sections.append(Section(key, title, pd.DataFrame(), pd.DataFrame(), notes, "Power: no runs."))
            continue
        sub = sub[sub["method"].isin(present)]
        summary = stats.summary_table(sub, methods=present, **kw)
        summary["left_out"] = [left[m] for m in summary["method"]]
        base = baseline if baseline in present else None
        if base is None:
            notes.append(f"the baseline {baseline} has no runs here: no comparisons against it")
        extra = [p for p in pairs if p[0] in present and p[1] in present]
        notes += [f"pair {a} vs {b} skipped: {b if a in present else a} has no runs here" for a, b in pairs
                  if (a, b) not in extra]
        comps = pd.DataFrame()
        if (base is not None and len(present) > 1) or extra:
            comps = stats.comparison_table(sub, baseline=base, extra_pairs=extra, delta_points=delta_points,
                                           n_resamples=n_resamples, **kw)
        sections.append(Section(key, title, summary, comps, notes, power_line(comps, baseline, delta_points)))
    decide_study_family(sections, fractions)
    return sections


def pts(x: float) -> str:
    """A fraction as points with one decimal; empty for a missing value."""
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def _p(x: float) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.3f}" if x >= 0.001 else f"{x:.1e}"


def _loso(c: pd.Series) -> str:
    """The leave-one-seed-out range of a difference and how many of those intervals exclude 0."""
    if not c.get("loso_subsets"):
        return ""
    return (f"{100 * c['loso_min']:+.1f} to {100 * c['loso_max']:+.1f} ({int(c['loso_excluding_zero'])}/"
            f"{int(c['loso_subsets'])} exclude 0)")


def _p_family(c: pd.Series) -> str:
    return "primary" if c.get("family") == "primary" else _p(c["p_holm"])


def section_markdown(s: Section, baseline: str, measure: str) -> str:
    """A section as markdown: one row per method (mean and interval, then its comparison against the
    baseline), the extra pairs below, the power line, the notes."""
    lines = [f"**{measure}, {s.title}** (points; 95 % intervals)", ""]
    if s.summary.empty:
        return "\n".join(lines + ["No runs.", *s.notes, ""])
    comps = s.comparisons
    vs = {r["method"]: r for _, r in comps.iterrows() if r["baseline"] == baseline} if len(comps) else {}
    header = ["method", "runs", "mean", "95 % CI", "IQM", f"- {baseline}", "95 % CI", "one seed left out", "p",
              "p Holm", "significant", "P(better)", "not counted"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, r in s.summary.iterrows():
        cells = [str(r["method"]) + (" (baseline)" if r["method"] == baseline else ""), str(r["n_runs"]),
                 pts(r["mean"]), f"[{pts(r['ci_low'])}, {pts(r['ci_high'])}]", pts(r["iqm"])]
        c = vs.get(r["method"])
        if c is None:
            cells += ["", "", "", "", "", "", ""]
        else:
            sig = bool(c["significant"])
            diff = f"{100 * c['diff']:+.1f}"
            cells += [f"**{diff}**" if sig else diff, f"[{100 * c['diff_low']:+.1f}, {100 * c['diff_high']:+.1f}]",
                      _loso(c), _p(c["p_value"]), _p_family(c),
                      "**yes**" if sig else ("n/a" if math.isnan(c["p_value"]) else "no"),
                      f"{c['p_improvement']:.2f}"]
        cells.append(r["left_out"] or "")
        lines.append("| " + " | ".join(cells) + " |")
    others = comps[comps["baseline"] != baseline] if len(comps) else comps
    if len(others):
        lines += ["", "| pair | runs | difference | 95 % CI | one seed left out | p | p Holm | significant | P(better) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for _, c in others.iterrows():
            sig = bool(c["significant"])
            lines.append(f"| {c['method']} - {c['baseline']} | {c['n_runs']} vs {c['n_runs_baseline']} | "
                         f"{'**' if sig else ''}{100 * c['diff']:+.1f}{'**' if sig else ''} | "
                         f"[{100 * c['diff_low']:+.1f}, {100 * c['diff_high']:+.1f}] | {_loso(c)} | {_p(c['p_value'])} | "
                         f"{_p_family(c)} | {'**yes**' if sig else 'no'} | {c['p_improvement']:.2f} |")
    lines += ["", s.power_line.rstrip(".") + "."]
    unreliable = s.summary[~s.summary["reliable"]]["method"].tolist()
    if unreliable:
        lines.append(f"Intervals over fewer than {stats.MIN_RELIABLE_RUNS} runs are unreliable: {', '.join(unreliable)}.")
    lines += [f"Note: {n}." for n in s.notes]
    return "\n".join(lines) + "\n"


def sections_frame(sections: list[Section]) -> pd.DataFrame:
    """All tables in one long frame (fractions, as analysis/stats.py returns them): one row per method and
    measure with its summary, and its comparison columns when it is compared (baseline rows, extra pairs)."""
    rows = []
    for s in sections:
        if s.summary.empty:
            continue
        summ = s.summary.set_index("method")
        comps = s.comparisons if len(s.comparisons) else pd.DataFrame(columns=["method", "baseline"])
        compared = set()
        for _, c in comps.iterrows():
            row = {"table": s.key, **summ.loc[c["method"]].to_dict(), "method": c["method"],
                   **{f"cmp_{k}" if k in ("measure", "n_runs", "reliable", "ci_method") else k: v
                      for k, v in c.items() if k != "method"}}
            rows.append(row)
            compared.add(c["method"])
        for m, r in summ.iterrows():
            if m not in compared:
                rows.append({"table": s.key, "method": m, **r.to_dict()})
    return pd.DataFrame(rows)


def per_seed_frame(study: Study, fractions: list[float], last_k: int) -> pd.DataFrame:
    """One row per run: status, records kind and its score (fraction) at the base and every budget point,
    with its area under the curve and last-K mean when it has every point."""
    recs = study.records
    per_run = recs.groupby(["method", "seed", "budget"])["score"].mean() if len(recs) else pd.Series(dtype=float)
    pts = [0.0, *fractions]
    rows = []
    for r in study.status.itertuples(index=False):
        row = {"method": r.method, "seed": r.seed, "status": r.status, "records": r.records, "error": r.error}
        vals = []
        for p in pts:
            v = per_run.get((r.method, r.seed, p), float("nan"))
            row["base" if p == 0.0 else f"at {p:g}"] = v
            vals.append(v)
        curve = [(p, v) for p, v in zip(pts, vals) if p in study.points]
        ok = len(curve) >= 2 and all(np.isfinite(v) for _, v in curve)
        row["auc"] = float(stats.area_under_curve(np.array([v for _, v in curve]), [p for p, _ in curve])) if ok else float("nan")
        row[f"last{last_k}"] = float(stats.last_k_mean(np.array([v for _, v in curve]), last_k)) if ok and last_k <= len(curve) else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def per_seed_markdown(per_seed: pd.DataFrame) -> str:
    shown = per_seed.drop(columns=["error"]).copy()
    for c in shown.columns[4:]:
        shown[c] = [pts(v) for v in shown[c]]
    return "Per run (points; status and records kind; empty = not evaluated there):\n\n" + shown.to_markdown(index=False) + "\n"


def point_summaries(study: Study, order: list[str]) -> dict[float, pd.DataFrame]:
    """stats.summary_table at every budget point (0 included), for the methods evaluated there."""
    out = {}
    for p in study.points:
        sub = study.records[np.isclose(study.records["budget"], p)]
        methods = [m for m in order if m in set(sub["method"])]
        if methods:
            out[p] = stats.summary_table(sub, budget=p, methods=methods).set_index("method")
    return out


def cannot_resolve(sections: list[Section], delta_points: float) -> list[str]:
    """The comparisons at the last table that are not resolved, with their intervals and the design's limit."""
    if not sections:
        return []
    last = [s for s in sections if s.key.startswith("budget=") and len(s.comparisons)]
    if not last:
        return []
    s = last[-1]
    out = []
    for _, c in s.comparisons.iterrows():
        if bool(c["significant"]):
            continue
        mdd, need = c["min_detectable_points"], c["runs_needed"]
        if mdd is not None and np.isfinite(mdd):
            limit = (f"with {c['n_runs']} seeds this design resolves >= {mdd:.1f} points; {delta_points:g} points "
                     f"needs {int(need)} seeds")
        else:
            limit = f"the power cannot be estimated from {c['n_runs']} run(s)"
        out.append(f"- {c['method']} vs {c['baseline']} ({s.title}): {100 * c['diff']:+.1f} points, 95 % CI "
                   f"[{100 * c['diff_low']:+.1f}, {100 * c['diff_high']:+.1f}], "
                   f"{'p ' + _p(c['p_value']) + ' (primary)' if c.get('family') == 'primary' else 'p Holm ' + _p(c['p_holm'])}"
                   f": cannot tell "
                   f"({limit})")
    return out
