"""Tables and plots of a comparison, rebuilt from its run folders (`rlsd-report folder=results/<name>`).

What is read. Each run's held-out evaluations at the experiment's budget points: metrics.jsonl lines with
`eval/<split>/budget_point` (a fraction of train.budget.value; 0 is the base policy at step 0) and
`eval/<split>/file`, the per-item records evals/<split>-step<rollout_step:06d>.jsonl, one line per item
{"id", "correct": k 0/1 verdicts, "greedy": 0/1 or null}. An item's score is its mean@k (the fraction of its
k samples that are correct). The tables read the test split; the tuning picks (`write_tuning`) read the
validation split, so neither split serves both purposes.

Statistics (analysis/stats.py, which states its methods): at every budget point, each method's mean and 95 %
interval over seeds and items, and each method against the baseline (experiment key `baseline`, default
grpo) and the requested `pairs`: the difference, its 95 % interval, a paired t-test over seeds (same seed:
same base policy, prompt stream and test items), Holm-corrected over the comparisons of one table, the
probability of improvement and the power line. The same for two curve summaries: the area under
accuracy-vs-budget (over 0 and the budget points) and the mean of the last K budget points.

Nothing is dropped silently: failed runs (failed.json), unfinished runs and runs that lack a budget point are
counted beside the row they would have entered. Older runs without per-item records are read from their
aggregate accuracy (`eval/pass@1`, greedy) at their last evaluation within each budget, the budget points
being fractions of the smallest final budget a finished run reached; their intervals then cover seeds only,
and the README says so.

Every file is written whole to a temporary name and renamed, so an interrupted report never leaves a torn
table behind.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rlsd_harness.analysis import claims, factorial, stats
from rlsd_harness.config import (
    BUDGET_KEYS,
    PICK_RULE,
    TuningPoint,
    arms,
    baseline_of,
    budget_points_of,
    factor_levels,
    pairs_of,
)
from rlsd_harness.io import atomic_path, atomic_write_text, parse_jsonl

LEGACY_ACCURACY = "eval/pass@1"  # runs written before per-item records: greedy accuracy of the whole set
AGGREGATE_ITEM = "(whole set)"  # the one "item" of a run read from its aggregate accuracy
DYNAMICS = [
    ("rollout/reward", "training reward (mean over samples)"),
    ("actor/entropy", "policy entropy (nats / token)"),
    ("teacher/kl", "teacher-student KL on sampled tokens"),
    ("actor/w_clip_frac", "RLSD w clipped, low + high (fraction of tokens)"),
    ("rollout/leakage", "leakage rate (responses)"),
    ("rollout/response_length", "response length (tokens)"),
]


# ---------------------------------------------------------------- atomic files


def write_text(path: Path, text: str) -> None:
    """Write `text` to `path` atomically (rlsd_harness.io), creating its folder first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)


def write_csv(df: pd.DataFrame, path: Path) -> None:
    write_text(path, df.to_csv(index=False))


def write_json(obj: Any, path: Path) -> None:
    write_text(path, json.dumps(obj, indent=1) + "\n")


def _save_figure(fig: Any, path: Path, dpi: int) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")


# ---------------------------------------------------------------- reading run folders


def parse_run_name(name: str) -> tuple[str, int] | None:
    """'<arm>-s<seed>' -> (arm, seed); None for a folder that is not a run of a comparison."""
    arm, sep, seed = name.rpartition("-s")
    return (arm, int(seed)) if sep and arm and seed.isdigit() else None


def record_text(path: Path) -> str | None:
    """A run's jsonl file, else its gzip-compressed copy `<path>.gz` (how a packed study stores it:
    analysis/pack.py), else None."""
    import gzip

    if path.exists():
        return path.read_text()
    packed = path.with_name(path.name + ".gz")
    return gzip.decompress(packed.read_bytes()).decode() if packed.exists() else None


def metrics_lines(run_dir: Path) -> list[dict]:
    from rlsd_harness.training.metrics import namespaced

    text = record_text(run_dir / "metrics.jsonl")
    if text is None:
        return []
    # older runs wrote flat names (the mapping is idempotent); a line cut by a kill is dropped (io's policy)
    return [namespaced(m) for m in parse_jsonl(text, run_dir / "metrics.jsonl")]


def _finished(run_dir: Path, lines: list[dict]) -> bool:
    """A run that reached its end: its final policy is saved, or (committed runs keep no weights) its last
    metrics line reached train.steps or the budget of its config.yaml."""
    if (run_dir / "final" / "config.json").exists():
        return True
    if not lines or not (run_dir / "config.yaml").exists():
        return False
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(run_dir / "config.yaml")
    last = lines[-1]
    if last.get("rollout_step") == cfg.train.steps:
        return True
    budget = cfg.train.get("budget") or {}
    key = BUDGET_KEYS.get(budget.get("kind") or "")
    return key is not None and budget.get("value") is not None and float(last.get(key, 0.0)) >= float(budget.value)


def run_status(runs_dir: Path) -> pd.DataFrame:
    """One row per run folder under `runs_dir`: run, method (the arm label), seed, status (finished | failed
    | unfinished) and error (the failure, for failed runs)."""
    rows = []
    # hidden folders are not runs (an overwritten run kept aside until its replacement's first checkpoint)
    for run_dir in sorted(p for p in Path(runs_dir).iterdir() if p.is_dir() and not p.name.startswith(".")) \
            if Path(runs_dir).is_dir() else []:
        parsed = parse_run_name(run_dir.name)
        if parsed is None:
            continue
        status, error = "unfinished", None
        if (run_dir / "failed.json").exists():
            status = "failed"
            try:
                error = json.loads((run_dir / "failed.json").read_text()).get("error")
            except json.JSONDecodeError:
                error = "failed.json unreadable"
        elif _finished(run_dir, metrics_lines(run_dir)):
            status = "finished"
        rows.append({"run": run_dir.name, "method": parsed[0], "seed": parsed[1], "status": status, "error": error})
    return pd.DataFrame(rows, columns=["run", "method", "seed", "status", "error"])


def load_runs(runs_dir: Path) -> pd.DataFrame:
    """Every metrics line of every run under `runs_dir` (a comparison's runs/ folder) as one pandas DataFrame.

    One row per line of each run's metrics.jsonl, columns = the metric names (namespaced as in
    rlsd_harness/training/metrics.py; older runs' flat names are mapped) plus `run` (the folder name),
    `method` (the arm label), `seed`, `status` (finished | failed | unfinished) and `error` (failed runs).
    A run folder without any metrics line still appears, as one row with only those columns, so that a
    failure before the first step is not lost. Empty DataFrame when there are no run folders.
    """
    status = run_status(runs_dir)
    frames = []
    for row in status.itertuples(index=False):
        lines = metrics_lines(Path(runs_dir) / row.run) or [{}]
        df = pd.DataFrame(lines)
        for col in ("run", "method", "seed", "status", "error"):
            df[col] = getattr(row, col)
        if "actor/w_clip_low_frac" in df:
            df["actor/w_clip_frac"] = df["actor/w_clip_low_frac"] + df.get("actor/w_clip_high_frac", 0.0)
        frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _snap(value: float, points: Sequence[float]) -> float | None:
    return next((p for p in points if abs(value - p) < 1e-6), None)


def run_records(run_dir: Path, split: str, points: Sequence[float], budget_key: str) -> pd.DataFrame | None:
    """The per-item records of one run at the nominal budget `points` (fractions; 0 = base): columns budget,
    item, score (mean@k), greedy, k, spend (the budget key's value when evaluated). None when the run wrote no
    per-item records of `split` at budget points (an older run). A budget point evaluated twice (a resumed
    run) keeps its last evaluation; fractions off `points` (a run stopped by train.steps short of its
    budget) are not table points and are skipped."""
    found: dict[float, tuple[dict, Path]] = {}
    any_record = False
    for line in metrics_lines(run_dir):
        bp, rel = line.get(f"eval/{split}/budget_point"), line.get(f"eval/{split}/file")
        if bp is None or rel is None or (isinstance(bp, float) and math.isnan(bp)):
            continue
        any_record = True
        nominal = _snap(float(bp), points)
        if nominal is not None:
            found[nominal] = (line, run_dir / rel)
    if not any_record:
        return None
    rows = []
    for budget, (line, path) in sorted(found.items()):
        text = record_text(path)
        if text is None:
            raise FileNotFoundError(f"{run_dir.name}: metrics.jsonl names the records {path} of budget point "
                                    f"{budget:g}, but the file is missing")
        for item in parse_jsonl(text, path):
            correct = [float(c) for c in item["correct"]]
            rows.append({"budget": budget, "item": str(item["id"]), "score": float(np.mean(correct)),
                         "greedy": item.get("greedy"), "k": len(correct), "spend": line.get(budget_key)})
    return pd.DataFrame(rows, columns=["budget", "item", "score", "greedy", "k", "spend"])


@dataclass
class Study:
    """What a report is built from."""

    records: pd.DataFrame  # method, seed, budget, item, score (+ greedy, k, spend): the stats module's input
    status: pd.DataFrame  # run_status, plus `records`: items | aggregate | none
    mode: str  # items (per-item records) | aggregate (older runs: one accuracy per run) | none
    points: list[float]  # the nominal budget points (fractions), 0 first when the base was evaluated
    budget_key: str
    split: str
    notes: list[str] = field(default_factory=list)


RECORD_FRAME = ["method", "seed", "budget", "item", "score", "greedy", "k", "spend"]


def _aggregate_records(runs_dir: Path, status: pd.DataFrame, fractions: list[float], budget_key: str,
                       split: str) -> pd.DataFrame:
    """Older runs: each run's aggregate accuracy at its last evaluation within each budget point, the points
    being fractions of the smallest final budget any finished run reached (no interpolation)."""
    runs = {}
    for row in status[status["status"] == "finished"].itertuples(index=False):
        lines = metrics_lines(Path(runs_dir) / row.run)
        key = next((k for k in (f"eval/{split}/mean@k", LEGACY_ACCURACY) if any(k in ln for ln in lines)), None)
        if key is None:
            continue
        evals = [(float(ln.get(budget_key, 0.0)), float(ln[key]), ln.get("rollout_step", 0)) for ln in lines if key in ln]
        runs[(row.method, row.seed)] = evals
    if not runs:
        return pd.DataFrame(columns=RECORD_FRAME)
    top = min(max(b for b, _, _ in evals) for evals in runs.values())
    rows = []
    for (method, seed), evals in runs.items():
        base = [acc for b, acc, step in evals if step == 0]
        if base:
            rows.append({"method": method, "seed": seed, "budget": 0.0, "item": AGGREGATE_ITEM, "score": base[-1],
                         "greedy": None, "k": 1, "spend": 0.0})
        for f in fractions:
            within = [acc for b, acc, _ in evals if b <= f * top + 1e-9]
            if within:
                rows.append({"method": method, "seed": seed, "budget": f, "item": AGGREGATE_ITEM, "score": within[-1],
                             "greedy": None, "k": 1, "spend": f * top})
    return pd.DataFrame(rows, columns=RECORD_FRAME)


def load_study(runs_dir: Path, fractions: Sequence[float], budget_kind: str, split: str = "test") -> Study:
    """Records and run status of a comparison's runs/ folder at the budget point `fractions` of `split`."""
    budget_key = BUDGET_KEYS[budget_kind]
    status = run_status(runs_dir)
    status["records"] = "none"
    nominal = [0.0, *[float(f) for f in fractions]]
    frames = []
    for i, row in status.iterrows():
        if row["status"] != "finished":
            continue
        recs = run_records(Path(runs_dir) / row["run"], split, nominal, budget_key)
        if recs is not None:
            recs.insert(0, "seed", row["seed"])
            recs.insert(0, "method", row["method"])
            frames.append(recs)
            status.loc[i, "records"] = "items"
    notes: list[str] = []
    if frames:
        records, mode = pd.concat(frames, ignore_index=True), "items"
        older = status[(status["status"] == "finished") & (status["records"] == "none")]
        if len(older):
            notes.append(f"{len(older)} finished run(s) wrote no per-item {split} records (an older format) and are "
                         f"left out of the tables: {', '.join(older['run'])}")
    else:
        records = _aggregate_records(runs_dir, status, list(fractions), budget_key, split)
        mode = "aggregate" if len(records) else "none"
        for key in set(zip(records["method"], records["seed"])):
            status.loc[(status["method"] == key[0]) & (status["seed"] == key[1]), "records"] = "aggregate"
        if mode == "aggregate":
            notes.append("These runs have no per-item evaluation records (they were written before the harness kept "
                         "them): every number is a run's greedy pass@1 on the whole held-out set at its last "
                         "evaluation within each budget, budget points are fractions of the smallest final budget "
                         "a finished run reached, and the intervals cover seeds only (no item term, no paired "
                         "analysis over items).")
    points = sorted(set(records["budget"].astype(float))) if len(records) else []
    return Study(records, status, mode, points, budget_key, split, notes)


# ---------------------------------------------------------------- tables


@dataclass
class Section:
    """One table: a measure (a budget point or a curve summary) with its summary and comparison rows."""

    key: str  # "budget=0.5", "auc", "last3"
    title: str
    summary: pd.DataFrame  # stats.summary_table, plus `left_out`
    comparisons: pd.DataFrame  # stats.comparison_table (may be empty)
    notes: list[str]
    power_line: str


def _left_out(study: Study, method: str, have: set[int], what: str) -> str:
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
        left = {m: _left_out(study, m, set(sub[sub["method"] == m]["seed"]), missing) for m in order}
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


def _pts(x: float) -> str:
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
                 _pts(r["mean"]), f"[{_pts(r['ci_low'])}, {_pts(r['ci_high'])}]", _pts(r["iqm"])]
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
        shown[c] = [_pts(v) for v in shown[c]]
    return "Per run (points; status and records kind; empty = not evaluated there):\n\n" + shown.to_markdown(index=False) + "\n"


# ---------------------------------------------------------------- plots


def _t_band(values: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """Mean over seeds (columns) and the half-width of its 95 % t-interval (scipy.stats.t), 0 for one seed."""
    from scipy.stats import t

    n = values.notna().sum(axis=1)
    sd = values.std(axis=1, ddof=1)
    half = pd.Series([t.ppf(0.975, k - 1) * s / math.sqrt(k) if k > 1 and np.isfinite(s) else 0.0
                      for k, s in zip(n, sd)], index=values.index)
    return values.mean(axis=1), half


def _x_unit(kind: str) -> tuple[float, str]:
    return {"flops": (1e12, "TFLOP spent"), "tokens": (1e3, "thousand generated tokens"), "steps": (1.0, "optimizer steps"),
            "seconds": (1.0, "training seconds")}[kind]


def point_summaries(study: Study, order: list[str]) -> dict[float, pd.DataFrame]:
    """stats.summary_table at every budget point (0 included), for the methods evaluated there."""
    out = {}
    for p in study.points:
        sub = study.records[np.isclose(study.records["budget"], p)]
        methods = [m for m in order if m in set(sub["method"])]
        if methods:
            out[p] = stats.summary_table(sub, budget=p, methods=methods).set_index("method")
    return out


def plot_accuracy(study: Study, order: list[str], kind: str, path: Path, summaries: dict[float, pd.DataFrame]) -> None:
    """Test accuracy at the budget points against the compute actually spent there (mean over seeds), with
    each point's 95 % interval (stats.summary_table, `point_summaries`) as the band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scale, label = _x_unit(kind)
    fig, ax = plt.subplots(figsize=(6, 4))
    recs = study.records
    for i, m in enumerate(order):
        xs, ys, lo, hi = [], [], [], []
        for p in study.points:
            sub = recs[(recs["method"] == m) & np.isclose(recs["budget"], p)]
            if sub.empty or m not in summaries.get(p, pd.DataFrame()).index:
                continue
            row = summaries[p].loc[m]
            spend = sub.groupby("seed")["spend"].first().astype(float)
            x = 0.0 if p == 0.0 else float(spend.mean()) / scale  # the base spent nothing
            if not math.isfinite(x):
                continue
            xs.append(x)
            ys.append(100 * row["mean"])
            lo.append(100 * row["ci_low"])
            hi.append(100 * row["ci_high"])
        if xs:
            ax.plot(xs, ys, marker="o", label=m, color=f"C{i}")
            ax.fill_between(xs, lo, hi, alpha=0.2, color=f"C{i}")
    ax.set_xlabel(label)
    ax.set_ylabel(f"test {'mean@k' if study.mode == 'items' else 'pass@1'} (%)")
    ax.set_title("Accuracy at matched compute (95 % intervals)")
    if ax.lines:
        ax.legend()
    fig.tight_layout()
    _save_figure(fig, path, 120)
    plt.close(fig)


def plot_dynamics(df: pd.DataFrame, order: list[str], path: Path) -> None:
    """Training curves per method over rollout steps: mean over finished seeds, 95 % t-band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    done = df[(df["status"] == "finished") & (df.get("rollout_step", pd.Series(dtype=float)) > 0)] if len(df) else df
    for ax, (col, title) in zip(axes.flat, DYNAMICS):
        # Each band is clipped to the range of the panel's data (every seed's values of every method): with few
        # seeds left at the tail a t-band grows far past any value observed (-5 to +7 nats of entropy where the
        # data lie in 0-2) and flattened the panel.
        seen = pd.to_numeric(done[done["method"].isin(order)][col], errors="coerce") if len(done) and col in done \
            else pd.Series(dtype=float)
        seen = seen[np.isfinite(seen)]
        floor, ceiling = (float(seen.min()), float(seen.max())) if len(seen) else (None, None)
        for i, m in enumerate(order):
            sub = done[done["method"] == m] if len(done) else done
            if col not in sub or sub[col].isna().all():
                continue
            wide = sub.pivot_table(index="rollout_step", columns="seed", values=col)
            mu, half = _t_band(wide)
            ax.plot(mu.index, mu, label=m, color=f"C{i}")
            ax.fill_between(mu.index, (mu - half).clip(floor, ceiling), (mu + half).clip(floor, ceiling), alpha=0.15,
                            color=f"C{i}")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("rollout step")
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    _save_figure(fig, path, 110)
    plt.close(fig)


# ---------------------------------------------------------------- the report


def report_settings(exp: Any) -> dict[str, Any]:
    fractions = budget_points_of(exp)
    return {"fractions": fractions, "kind": str(exp.get("budget_kind", "flops")), "baseline": baseline_of(exp),
            "pairs": pairs_of(exp), "delta": float(exp.get("delta_points", 3.0)),
            "last_k": int(exp.get("last_k") or min(3, len(fractions))), "order": list(arms(exp))}


def _cannot_resolve(sections: list[Section], delta_points: float) -> list[str]:
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


def write_report(out: Path, exp: Any, meta: dict, split: str = "test", n_resamples: int = stats.N_RESAMPLES,
                 plots: bool = True) -> list[Section]:
    """Rebuild every table, plot and the README of the comparison in `out` from out/runs; returns the
    sections (the tables' content). `plots=False` keeps the plots that are there (tests of the tables)."""
    out = Path(out)
    cfg = report_settings(exp)
    study = load_study(out / "runs", cfg["fractions"], cfg["kind"], split)
    if study.mode == "none":
        write_text(out / "README.md", f"# Comparison `{meta.get('experiment')}`\n\nNo finished runs with held-out "
                   f"evaluations yet ({len(study.status)} run folders).\n")
        return []
    order = [m for m in cfg["order"] if m in set(study.status["method"])]
    order += sorted(set(study.status["method"]) - set(order))
    sections = build_sections(study, order, cfg["baseline"], cfg["pairs"], cfg["fractions"], cfg["delta"],
                              cfg["last_k"], n_resamples)
    k = sorted(set(study.records["k"].dropna().astype(int))) if study.mode == "items" else [1]
    n_items = sorted(set(study.records.groupby(["method", "seed", "budget"]).size()))
    measure = (f"test mean@{'/'.join(map(str, k))}" if study.mode == "items" else "held-out pass@1 (greedy)")
    md = [f"Tables of `{meta.get('experiment')}`: {measure} in points; each method's mean over seeds with its 95 % "
          f"interval, its difference from {cfg['baseline']} (paired by seed when both have the same seeds) with "
          f"the range it spans when one seed is left out, **significant** at alpha 0.05 after correction. "
          f"{decide_study_family(sections, cfg['fractions'])} "
          f"Budget points are fractions of the run's {cfg['kind']} budget (train.budget.value; of train.steps "
          f"when a run has no budget).", ""]
    summaries = point_summaries(study, order)
    if 0.0 in summaries:  # every method starts from the same base policy; the baseline's runs carry its evaluation
        src = cfg["baseline"] if cfg["baseline"] in summaries[0.0].index else summaries[0.0].index[0]
        b = summaries[0.0].loc[src]
        md += [f"Base policy (budget 0, the {src} runs' step-0 evaluation): {_pts(b['mean'])} "
               f"[{_pts(b['ci_low'])}, {_pts(b['ci_high'])}] over {b['n_runs']} seeds.", ""]
    md += [section_markdown(s, cfg["baseline"], measure) for s in sections]
    md += [f"Note: {n}" for n in study.notes]
    write_text(out / "table.md", "\n".join(md) + "\n")
    write_csv(sections_frame(sections), out / "table.csv")
    per_seed = per_seed_frame(study, cfg["fractions"], cfg["last_k"])
    write_csv(per_seed, out / "per_seed.csv")
    write_text(out / "per_seed.md", per_seed_markdown(per_seed))
    df = load_runs(out / "runs")
    quantities = claims.run_quantities(df, study.records if study.mode == "items" else None)
    claims_md = ""
    if not quantities.empty:
        learning = claims.learning_rows(quantities, order)
        claim_table = claims.claim_rows(quantities, cfg["baseline"], table=sections_frame(sections))
        write_csv(quantities, out / "per_run_dynamics.csv")
        write_csv(pd.concat([learning.assign(table="learning"), claim_table.assign(table="claims")]), out / "claims.csv")
        claims_md = claims.markdown(learning, claim_table)
        write_text(out / "claims.md", claims_md)
    factorial_md, effects = "", pd.DataFrame()
    levels = factor_levels(exp)
    if levels and study.mode == "items":  # a factorial experiment: effects, not arms against the first one
        factorial_md, effects = factorial.factorial_section(levels, study.records, df, cfg["fractions"], measure)
        write_text(out / "factorial.md", factorial_md)
        write_csv(effects, out / "factorial.csv")
    if plots:
        plot_accuracy(study, order, cfg["kind"], out / "accuracy_vs_compute.png", summaries)
        plot_dynamics(df, order, out / "dynamics.png")

    failed = study.status[study.status["status"] == "failed"]
    unfinished = study.status[study.status["status"] == "unfinished"]
    wall = 0.0
    if "ledger/cum/time/step" in df:
        wall = float(df.groupby("run")["ledger/cum/time/step"].max().sum() + df.get("eval/seconds", pd.Series(dtype=float)).sum())
    lines = [
        f"# Comparison `{meta.get('experiment')}`", "",
        f"Arms {order} x seeds {list(exp.seeds)}, all from the same base policy; common overrides: "
        f"`{' '.join(exp.overrides)}`.", "",
        f"Machine: {meta.get('machine', 'not recorded')}. Finished {meta.get('finished', '(not recorded)')}. Wall time of the last invocation: "
        f"{meta.get('seconds', 0):.0f} s; training + evaluation time summed over runs: {wall:.0f} s.", "",
        f"Runs: {int((study.status['status'] == 'finished').sum())} finished, {len(failed)} failed, "
        f"{len(unfinished)} unfinished.", "",
    ]
    if study.mode == "items":
        lines += [f"Measure: {measure} on the {split} split ({'/'.join(map(str, n_items))} items per evaluation, "
                  f"k samples per item, an item's score = its fraction of correct samples), evaluated at "
                  f"{', '.join(f'{p:g}' for p in study.points)} of the {cfg['kind']} budget (0 = the base policy). "
                  f"Hyperparameters were never chosen on this split.", ""]
    lines += [f"> {n}" for n in study.notes] + ([""] if study.notes else [])
    if (out / "tuning.md").exists():
        source, same = meta.get("tuning_from"), ("same base, grid" if meta.get("base") else
                                                 "no base policy recorded, so possibly another base; same grid")
        lines += ["## Tuning", "", *([f"The picks were taken from the tuned study in `{source}` ({same}, seeds "
                                      f"and tuning overrides; its tuning runs are not repeated here).", ""] if source else []),
                  (out / "tuning.md").read_text(), ""]
    if factorial_md:
        lines += ["## Factorial analysis", "", factorial_md, ""]
    lines += ["## Tables", "", (out / "table.md").read_text(), ""]
    if claims_md:
        lines += ["## Learning signal and the paper's claims", "", claims.__doc__.split("\n\n")[1].strip(), "",
                  claims_md, ""]
    unresolved = _cannot_resolve(sections, cfg["delta"])
    if factorial_md:  # a factorial study asks about its factors, not about each arm against the first one
        unresolved = factorial.unresolved(effects, max(cfg["fractions"]))
    if unresolved:
        lines += ["## What this study cannot resolve", "",
                  ("Effects on the test score at the last budget point whose 95 % interval includes 0:" if factorial_md
                   else "Comparisons at the last budget point whose difference is not significant after correction:"),
                  "", *unresolved, ""]
    lines += ["## Plots", "", "Test accuracy against the compute spent (band: the table's 95 % interval at each "
              "budget point):", "", "![accuracy](accuracy_vs_compute.png)", "",
              "Training dynamics (mean over finished seeds, band: 95 % t-interval over seeds):", "",
              "![dynamics](dynamics.png)", ""]
    if (out / "credit_rlsd.png").exists():
        lines += ["RLSD's credit on one correct and one wrong rollout (tokens coloured by the clipped weight w_t):", "",
                  "![credit](credit_rlsd.png)", ""]
    if (out / "compare_with.md").exists():
        lines += ["## Against an earlier run of this study", "", (out / "compare_with.md").read_text(), ""]
    if len(failed) or len(unfinished):
        lines += ["## Runs not in the tables", ""]
        lines += [f"- {r.run}: failed: {r.error}" for r in failed.itertuples()]
        lines += [f"- {r.run}: unfinished" for r in unfinished.itertuples()]
        lines.append("")
    lines += ["Files: table.md / table.csv (every table; the csv in fractions, as analysis/stats.py returns them), "
              "per_seed.md / per_seed.csv, claims.md / claims.csv / per_run_dynamics.csv, accuracy_vs_compute.png, "
              "dynamics.png"
              + (", tuning.md / tuning.csv / picks.json" if (out / "tuning.md").exists() else "")
              + (", factorial.md / factorial.csv (effects in fractions)" if factorial_md else "") + "."]
    write_text(out / "README.md", "\n".join(lines) + "\n")
    return sections


# ---------------------------------------------------------------- tuning


def tuning_results(runs_dir: Path, grid: dict[str, list[TuningPoint]], fractions: list[float],
                   budget_kind: str) -> tuple[pd.DataFrame, dict[str, dict]]:
    """The tuning grid's validation results at the last budget point and the pick per method (PICK_RULE),
    with each earlier budget point's mean beside them (whether the ranking holds along the tuning budget).

    Rows: method, label, lr, knob, value, n_runs, mean, ci_low, ci_high, reliable, not_counted, picked, and
    mean_at_<f>, ci_low_at_<f>, ci_high_at_<f> per earlier budget point f > 0.
    Raises ValueError when a method has no grid point with a finished run that has validation records."""
    study = load_study(runs_dir, fractions, budget_kind, split="validation")
    last = max(fractions)
    records = study.records if study.mode == "items" else study.records.iloc[0:0]
    earlier = [f for f in sorted(fractions) if 0 < f < last]

    def at_budget(label: str, f: float) -> tuple[pd.DataFrame, pd.Series | None]:
        sub = records[(records["method"] == label) & np.isclose(records["budget"], f)]
        return sub, (stats.summary_table(sub, budget=f, methods=[label]).iloc[0]
                     if len(sub) else None)

    rows, picks = [], {}
    for method, points in grid.items():
        candidates = []
        for i, pt in enumerate(points):
            knob = next((k for k in pt.values if k != "algorithm.lr"), None)
            sub, s = at_budget(pt.label, last)
            row = {"method": method, "label": pt.label, "lr": pt.lr, "knob": knob,
                   "value": pt.values.get(knob) if knob else None,
                   "not_counted": _left_out(study, pt.label, set(sub["seed"]), f"lacks budget point {last:g}"),
                   "n_runs": 0, "mean": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"),
                   "reliable": False, "picked": False}
            if s is not None:
                row.update(n_runs=int(s["n_runs"]), mean=float(s["mean"]), ci_low=float(s["ci_low"]),
                           ci_high=float(s["ci_high"]), reliable=bool(s["reliable"]))
                candidates.append((-round(row["mean"], 12), pt.lr, i, pt))
            for f in earlier:
                s_f = at_budget(pt.label, f)[1]
                row.update({f"{k}_at_{f:g}": float("nan") if s_f is None else float(s_f[k])
                            for k in ("mean", "ci_low", "ci_high")})
            rows.append(row)
        if not candidates:
            raise ValueError(f"tuning: no grid point of {method} has a finished run with validation records at budget "
                             f"point {last:g} in {runs_dir}; the runs must evaluate the validation split at the "
                             f"budget points (per-item records in evals/)")
        best = min(candidates, key=lambda c: c[:3])[3]
        for row in rows:
            if row["label"] == best.label:
                row["picked"] = True
        picks[method] = {"label": best.label, "values": best.values, "overrides": list(best.overrides),
                         "validation_mean": -min(candidates, key=lambda c: c[:3])[0],
                         "n_runs": next(r["n_runs"] for r in rows if r["label"] == best.label)}
    return pd.DataFrame(rows), picks


def grid_edges(grid: dict[str, list[TuningPoint]], picks: dict[str, dict]) -> dict[str, list[str]]:
    """Per method, each picked value that is the smallest or largest its grid tried (of two or more)."""
    edges: dict[str, list[str]] = {}
    for method, pick in picks.items():
        for key, value in pick["values"].items():
            tried = sorted({float(pt.values[key]) for pt in grid[method] if key in pt.values})
            if len(tried) > 1 and float(value) in (tried[0], tried[-1]):
                side = "smallest" if float(value) == tried[0] else "largest"
                edges.setdefault(method, []).append(f"{key.rsplit('.', 1)[-1]}={value:g} is the {side} tried")
    return edges


def study_picks(out: Path, exp: Any, grid: dict[str, list[TuningPoint]]) -> tuple[pd.DataFrame, dict[str, dict]]:
    """tuning_results over a study folder's own tuning runs (out/tuning/runs) at its experiment's budget points."""
    return tuning_results(Path(out) / "tuning" / "runs", grid, budget_points_of(exp),
                          str(exp.get("budget_kind", "flops")))


def changed_picks(out: Path, picks: dict[str, dict]) -> str | None:
    """'old -> new' overrides when out/picks.json records other picks than `picks`, None otherwise (or none recorded)."""
    if not (Path(out) / "picks.json").exists():
        return None
    was = {m: p["overrides"] for m, p in json.loads((Path(out) / "picks.json").read_text())["picks"].items()}
    now = {m: p["overrides"] for m, p in picks.items()}
    return None if was == now else f"{was} -> {now}"


def write_tuning(out: Path, exp: Any, grid: dict[str, list[TuningPoint]], table: pd.DataFrame,
                 picks: dict[str, dict], base: list[str] | None = None) -> None:
    """Write tuning_results' table and picks ({method: {label, values, overrides, validation_mean, n_runs}}) into
    `out` as tuning.csv, tuning.md and picks.json."""
    fractions = budget_points_of(exp)
    earlier = [f for f in sorted(fractions) if 0 < f < max(fractions) and f"mean_at_{f:g}" in table]
    write_csv(table, Path(out) / "tuning.csv")
    t = exp.tuning
    lines = [f"Tuning: every method gets a grid of {len(next(iter(grid.values())))} points, seeds "
             f"{list(t.seeds)}, overrides `{' '.join(t.get('overrides') or [])}`; validation mean@k (points) at the "
             f"last budget point ({max(fractions):g}), 95 % intervals. Rule: {PICK_RULE}.", "",
             "| method | lr | knob | runs | mean | 95 % CI | picked | not counted |"
             + "".join(f" at {f:g} (95 % CI) |" for f in earlier), "|---|---|---|---|---|---|---|---|" + "---|" * len(earlier)]
    def interval(r: dict, suffix: str) -> str:
        return f"{_pts(r['mean' + suffix])} [{_pts(r['ci_low' + suffix])}, {_pts(r['ci_high' + suffix])}]"

    for r in table.to_dict("records"):
        knob = f"{r['knob'].rsplit('.', 1)[-1]}={r['value']:g}" if isinstance(r["knob"], str) else ""  # None -> nan
        lines.append(f"| {r['method']} | {r['lr']:g} | {knob} | {r['n_runs']} | {_pts(r['mean'])} | "
                     f"[{_pts(r['ci_low'])}, {_pts(r['ci_high'])}] | {'**picked**' if r['picked'] else ''} | "
                     f"{r['not_counted']} |" + "".join(f" {interval(r, f'_at_{f:g}')} |" for f in earlier))
    edges = grid_edges(grid, picks)
    if edges:
        lines += ["", "At the edge of the grid (a better value may lie beyond it; widen the grid that way): "
                  + "; ".join(f"{m}: {', '.join(e)}" for m, e in edges.items()) + "."]
    write_text(Path(out) / "tuning.md", "\n".join(lines) + "\n")
    write_json({"rule": PICK_RULE, "split": "validation", "budget_point": max(fractions), "base": base, "picks": picks},
               Path(out) / "picks.json")


# ---------------------------------------------------------------- two runs of one study


def compare_studies(new: Path, old: Path, exp: Any, split: str = "test") -> pd.DataFrame:
    """Per method and budget point, the two studies' means and the difference (points), and how many runs
    of the same seed have identical per-item records (on CPU a rerun of the same seeds should match bit for
    bit). Columns: method, budget, runs_new, runs_old, runs_both, runs_identical, max_abs_item_diff,
    mean_new, mean_old, diff_points."""
    cfg = report_settings(exp)
    study_a = load_study(Path(new) / "runs", cfg["fractions"], cfg["kind"], split)
    study_b = load_study(Path(old) / "runs", cfg["fractions"], cfg["kind"], split)
    a, b = study_a.records, study_b.records
    rows = []
    for (method, budget), ga in a.groupby(["method", "budget"]):
        gb = b[(b["method"] == method) & np.isclose(b["budget"], budget)]
        both = sorted(set(ga["seed"]) & set(gb["seed"]))
        identical, worst = 0, 0.0
        for seed in both:
            xa = ga[ga["seed"] == seed].set_index("item")["score"].sort_index()
            xb = gb[gb["seed"] == seed].set_index("item")["score"].sort_index()
            if xa.index.equals(xb.index):
                d = float((xa - xb).abs().max())
                identical += int(d == 0.0)
                worst = max(worst, d)
            else:
                worst = float("nan")
        mean_new = float(ga.groupby("seed")["score"].mean().mean())
        mean_old = float(gb.groupby("seed")["score"].mean().mean()) if len(gb) else float("nan")
        rows.append({"method": method, "budget": float(budget), "runs_new": ga["seed"].nunique(),
                     "runs_old": gb["seed"].nunique(), "runs_both": len(both), "runs_identical": identical,
                     "max_abs_item_diff": worst, "mean_new": mean_new, "mean_old": mean_old,
                     "diff_points": 100 * (mean_new - mean_old), "records_new": study_a.mode,
                     "records_old": study_b.mode})
    return pd.DataFrame(rows)


def write_comparison(new: Path, old: Path, exp: Any, split: str = "test") -> pd.DataFrame:
    """compare_studies written into `new` as compare_with.csv and compare_with.md."""
    table = compare_studies(new, old, exp, split)
    write_csv(table, Path(new) / "compare_with.csv")
    lines = [f"This folder against `{old}` ({split} split; points; identical = same seed, every item's score equal):",
             "", "| method | budget | runs (new / old / both) | identical | new | old | new - old |",
             "|---|---|---|---|---|---|---|"]
    for r in table.itertuples(index=False):
        lines.append(f"| {r.method} | {r.budget:g} | {r.runs_new} / {r.runs_old} / {r.runs_both} | "
                     f"{r.runs_identical} / {r.runs_both} | {_pts(r.mean_new)} | {_pts(r.mean_old)} | "
                     f"{r.diff_points:+.2f} |")
    if len(table) and (table["records_new"] != table["records_old"]).any():
        lines += ["", "The two studies do not measure the same thing: one has per-item records (mean@k), the other "
                  "only aggregate greedy pass@1 (runs from before per-item records), so the differences above mix "
                  "the measure with the runs."]
    write_text(Path(new) / "compare_with.md", "\n".join(lines) + "\n")
    return table
