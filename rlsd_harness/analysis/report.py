"""Tables and plots of a comparison, rebuilt from its run folders (`rlsd-report folder=results/<name>`).


The report's assembly: `write_report` reads the study (analysis/loading.py), writes its tables
(analysis/tables.py), plots (analysis/plots.py) and README; `write_comparison` sets two runs of one study side
by side. The tuning picks are analysis/tuning/ (grid.py). This module re-exports the names other modules and
tests import from it.

What is read. Each run's held-out evaluations at the experiment's budget points (analysis/loading.py). The
tables read the test split; the tuning picks (`write_tuning`) read the validation split, so neither split
serves both purposes. Statistics: analysis/tables.py and analysis/stats.py.

Every file is written whole to a temporary name and renamed (analysis/files.py), so an interrupted report
never leaves a torn table behind.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rlsd_harness.analysis import claims, factorial, stats
from rlsd_harness.analysis.files import save_figure as _save_figure
from rlsd_harness.analysis.files import write_csv, write_json, write_text
from rlsd_harness.analysis.loading import (
    RECORD_FRAME,
    Study,
    load_runs,
    load_study,
    metrics_lines,
    parse_run_name,
    record_text,
    run_records,
    run_status,
)
from rlsd_harness.analysis.plots import DYNAMICS, plot_accuracy, plot_dynamics
from rlsd_harness.analysis.tables import (
    Section,
    build_sections,
    cannot_resolve,
    decide_study_family,
    per_seed_frame,
    per_seed_markdown,
    point_summaries,
    power_line,
    pts,
    section_markdown,
    sections_frame,
)
from rlsd_harness.config import arms, baseline_of, budget_points_of, factor_levels, pairs_of

__all__ = [  # the names other modules and tests import from here
    "DYNAMICS", "RECORD_FRAME", "Section", "Study", "_save_figure",
    "build_sections", "compare_studies", "decide_study_family", "load_runs", "load_study", "metrics_lines",
    "parse_run_name", "per_seed_frame", "per_seed_markdown", "plot_accuracy", "plot_dynamics", "point_summaries",
    "power_line", "record_text", "report_settings", "run_records", "run_status", "section_markdown",
    "sections_frame", "write_comparison", "write_csv", "write_json", "write_report", "write_text",
]


def report_settings(exp: Any) -> dict[str, Any]:
    fractions = budget_points_of(exp)
    return {"fractions": fractions, "kind": str(exp.get("budget_kind", "flops")), "baseline": baseline_of(exp),
            "pairs": pairs_of(exp), "delta": float(exp.get("delta_points", 3.0)),
            "last_k": int(exp.get("last_k") or min(3, len(fractions))), "order": list(arms(exp))}


def _progress(log: Callable[[str], None] | None) -> Callable[[str], None]:
    """A line per phase of the report with the seconds since it began (the tables' bootstrap and the plots take
    tens of seconds on a study of 40 runs)."""
    t0, log = time.perf_counter(), log or (lambda msg: print(msg, file=sys.stderr))
    return lambda what: log(f"report: {what} ({time.perf_counter() - t0:.0f} s)")


def write_report(out: Path, exp: Any, meta: dict, split: str = "test", n_resamples: int = stats.N_RESAMPLES,
                 plots: bool = True, log: Callable[[str], None] | None = None) -> list[Section]:
    """Rebuild every table, plot and the README of the comparison in `out` from out/runs; returns the
    sections (the tables' content). `plots=False` keeps the plots that are there (tests of the tables). `log`
    takes a line per phase (default: standard error)."""
    out = Path(out)
    cfg = report_settings(exp)
    say = _progress(log)
    say(f"reading the runs of {out / 'runs'}")
    study = load_study(out / "runs", cfg["fractions"], cfg["kind"], split)
    if study.mode == "none":
        write_text(out / "README.md", f"# Comparison `{meta.get('experiment')}`\n\nNo finished runs with per-item "
                   f"held-out records at the budget points yet ({len(study.status)} run folders).\n")
        return []
    order = [m for m in cfg["order"] if m in set(study.status["method"])]
    order += sorted(set(study.status["method"]) - set(order))
    say(f"tables: {len(study.status)} runs, {len(order)} arms, {n_resamples} bootstrap resamples per interval")
    sections = build_sections(study, order, cfg["baseline"], cfg["pairs"], cfg["fractions"], cfg["delta"],
                              cfg["last_k"], n_resamples)
    k = sorted(set(study.records["k"].dropna().astype(int)))
    n_items = sorted(set(study.records.groupby(["method", "seed", "budget"]).size()))
    measure = f"test mean@{'/'.join(map(str, k))}"
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
        md += [f"Base policy (budget 0, the {src} runs' step-0 evaluation): {pts(b['mean'])} "
               f"[{pts(b['ci_low'])}, {pts(b['ci_high'])}] over {b['n_runs']} seeds.", ""]
    md += [section_markdown(s, cfg["baseline"], measure) for s in sections]
    md += [f"Note: {n}" for n in study.notes]
    write_text(out / "table.md", "\n".join(md) + "\n")
    write_csv(sections_frame(sections), out / "table.csv")
    per_seed = per_seed_frame(study, cfg["fractions"], cfg["last_k"])
    write_csv(per_seed, out / "per_seed.csv")
    write_text(out / "per_seed.md", per_seed_markdown(per_seed))
    say("learning signal and claims")
    df = load_runs(out / "runs")
    quantities = claims.run_quantities(df, study.records)
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
    if levels:  # a factorial experiment: effects, not arms against the first one
        factorial_md, effects = factorial.factorial_section(levels, study.records, df, cfg["fractions"], measure)
        write_text(out / "factorial.md", factorial_md)
        write_csv(effects, out / "factorial.csv")
    if plots:
        say("plots")
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
    unresolved = cannot_resolve(sections, cfg["delta"])
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
    say(f"done: {out / 'README.md'}")
    return sections


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
                     f"{r.runs_identical} / {r.runs_both} | {pts(r.mean_new)} | {pts(r.mean_old)} | "
                     f"{r.diff_points:+.2f} |")
    write_text(Path(new) / "compare_with.md", "\n".join(lines) + "\n")
    return table
