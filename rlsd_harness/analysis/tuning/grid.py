"""The grid protocol of fair tuning (an experiment's `tuning:` section, tuning.mode grid): the section's keys
and its check (`tuning_grid`: every method a grid of the same size), one tuning run's overrides, each grid
point's validation results at the budget points, the pick per method (GRID_PICK_RULE), the files that record
them (tuning.csv, tuning.md, picks.json) and `earlier_picks`, which takes an earlier study's picks (rlsd-compare
tuning_from=) from those records. The validation split never enters the tables and the test split never enters
a pick. (The Optuna tuner is analysis/tuning/search.py, the tuning report across protocols
analysis/tuning/protocols.py.)

picks.json is the machine-readable record: the rule, split and budget point, the base policy (sha256 of its
weights), the tuning seeds and overrides, and per method {label, values, overrides, validation_mean, n_runs}.
tuning.md is for people; nothing reads it back."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from rlsd_harness.analysis import stats
from rlsd_harness.analysis.files import write_csv, write_json, write_text
from rlsd_harness.analysis.loading import load_study
from rlsd_harness.analysis.tables import left_out, pts
from rlsd_harness.config import (
    ConfigError,
    Overrides,
    budget_eval_overrides,
    budget_points_of,
    experiment_origin,
    format_value,
    unknown_message,
)

TUNING_KEYS = {
    "seeds": "seeds of the tuning runs",
    "split": "the split the picks read (validation: the test split never picks)",
    "overrides": "training overrides of the tuning runs only (the short budget)",
    "grid": "per method: {lr: [values], <one more config key>: [values]}, the same number of points for every method",
    "mode": "grid (the grid above) | optuna (multi-fidelity search of each method's search_space, analysis/tuning/search.py)",
    "optuna": "tuning.mode optuna: trials, reduction_factor, rungs, brackets, sampler, sampler_seed (analysis/tuning/search.py)",
}
GRID_PICK_RULE = ("highest mean validation mean@k over the tuning seeds at the last budget point; ties go to "
                  "the smaller learning rate, then to the earlier grid point")


@dataclass(frozen=True)
class TuningPoint:
    """One point of a method's tuning grid: its run label and the overrides that set it."""

    method: str
    label: str
    lr: float
    values: dict  # config key -> value, lr under algorithm.lr
    overrides: tuple[str, ...]


def tuning_grid(exp: DictConfig, name: str = "experiment") -> dict[str, list[TuningPoint]]:
    """method -> its tuning grid, or {} without a `tuning:` section. Every method of the experiment gets a
    grid of the same size: a learning-rate list (`lr`, set as algorithm.lr so that it wins over a method's
    own default) and at most one more config key. The grids are run at the tuning seeds with the tuning
    overrides (the short budget) and picked on the validation split by GRID_PICK_RULE."""
    t = exp.get("tuning")
    if not t:
        return {}
    where = f"experiment {name}: tuning"
    unknown = sorted(set(t.keys()) - set(TUNING_KEYS))
    if unknown:
        raise ConfigError(f"{where}: " + unknown_message("key", str(unknown[0]), TUNING_KEYS))
    if exp.get("grid") or exp.get("factors"):
        raise ConfigError(f"experiment {name}: tuning and an ablation grid (grid or factors) cannot be combined; drop "
                          f"one of them")
    if str(t.get("split", "validation")) != "validation":
        raise ConfigError(f"{where}.split must be validation (the test split reports, it never picks); got {t.split!r}")
    if not list(t.get("seeds") or []):
        raise ConfigError(f"{where}.seeds: give at least one seed")
    mode = str(t.get("mode", "grid"))
    if mode not in ("grid", "optuna"):
        raise ConfigError(f"{where}.mode={mode!r}; valid: grid, optuna")
    if (mode == "optuna") == bool(t.get("grid")) or (mode == "grid" and t.get("optuna")):
        raise ConfigError(f"{where}: mode {mode} takes " + ("an optuna: section and no grid" if mode == "optuna"
                                                           else "a grid: section and no optuna"))
    if mode == "optuna":  # no grid: the search spaces are the objectives' own (analysis/tuning/search.py)
        return {}
    grid = t.get("grid") or {}
    methods = [str(m) for m in exp.methods]
    if sorted(grid) != sorted(methods):
        raise ConfigError(f"{where}.grid must have one entry per method {methods}; it has {sorted(grid)}")
    out: dict[str, list[TuningPoint]] = {}
    for m in methods:
        spec = dict(grid[m])
        lrs = list(spec.pop("lr", None) or [])
        if not lrs or any(not isinstance(v, (int, float)) or v <= 0 for v in lrs):
            raise ConfigError(f"{where}.grid.{m}.lr must be a list of positive learning rates; got {lrs}")
        if len(spec) > 1:
            raise ConfigError(f"{where}.grid.{m}: lr and at most one more key; got {sorted(spec)}")
        knob, values = (next(iter(spec.items())) if spec else (None, [None]))
        values = list(values)
        if not values:
            raise ConfigError(f"{where}.grid.{m}.{knob}: give at least one value")
        points = []
        for lr, v in itertools.product(lrs, values):
            vals: dict[str, Any] = {"algorithm.lr": float(lr)}
            label = f"{m}-lr{format_value(float(lr))}"
            if knob is not None:
                vals[str(knob)] = v
                label += f"-{str(knob).rsplit('.', 1)[-1]}{format_value(v)}"
            points.append(TuningPoint(m, label, float(lr), vals,
                                      tuple(f"{k}={format_value(x)}" for k, x in vals.items())))
        out[m] = points
    sizes = {m: len(p) for m, p in out.items()}
    if len(set(sizes.values())) > 1:
        raise ConfigError(f"{where}.grid: every method gets the same tuning budget, but the grid sizes differ: "
                          f"{sizes}")
    return out


def tuning_run_overrides(exp: DictConfig, point: TuningPoint, seed: int, runs_dir: Path,
                         extra: list[str]) -> list[str]:
    """One tuning run: the experiment's overrides, the method's, the tuning budget, the grid point, the
    command line's last."""
    t = exp.tuning
    own = [f"algorithm={point.method}", f"seed={seed}", f"run.dir={runs_dir}", f"run.name={point.label}-s{seed}",
           *exp.overrides, *budget_eval_overrides(exp, str(t.get("split", "validation"))),
           *(exp.get("method_overrides") or {}).get(point.method, [])]
    origin = experiment_origin(exp)
    return (Overrides(own, origin=origin) + Overrides(list(t.get("overrides") or []), origin=f"{origin} tuning")
            + Overrides(list(point.overrides), origin=f"{origin} tuning grid") + Overrides(extra))


TUNING_FILES = ("tuning.csv", "tuning.md", "picks.json")


def tuning_results(runs_dir: Path, grid: dict[str, list[TuningPoint]], fractions: list[float],
                   budget_kind: str) -> tuple[pd.DataFrame, dict[str, dict]]:
    """The tuning grid's validation results at the last budget point and the pick per method (GRID_PICK_RULE),
    with each earlier budget point's mean beside them (whether the ranking holds along the tuning budget).

    Rows: method, label, lr, knob, value, n_runs, mean, ci_low, ci_high, reliable, not_counted, picked, and
    mean_at_<f>, ci_low_at_<f>, ci_high_at_<f> per earlier budget point f > 0.
    Raises ValueError when a method has no grid point with a finished run that has validation records."""
    study = load_study(runs_dir, fractions, budget_kind, split="validation")
    last = max(fractions)
    records = study.records
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
                   "not_counted": left_out(study, pt.label, set(sub["seed"]), f"lacks budget point {last:g}"),
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
             f"last budget point ({max(fractions):g}), 95 % intervals. Rule: {GRID_PICK_RULE}.", "",
             "| method | lr | knob | runs | mean | 95 % CI | picked | not counted |"
             + "".join(f" at {f:g} (95 % CI) |" for f in earlier), "|---|---|---|---|---|---|---|---|" + "---|" * len(earlier)]
    def interval(r: dict, suffix: str) -> str:
        return f"{pts(r['mean' + suffix])} [{pts(r['ci_low' + suffix])}, {pts(r['ci_high' + suffix])}]"

    for r in table.to_dict("records"):
        knob = f"{r['knob'].rsplit('.', 1)[-1]}={r['value']:g}" if isinstance(r["knob"], str) else ""  # None -> nan
        lines.append(f"| {r['method']} | {r['lr']:g} | {knob} | {r['n_runs']} | {pts(r['mean'])} | "
                     f"[{pts(r['ci_low'])}, {pts(r['ci_high'])}] | {'**picked**' if r['picked'] else ''} | "
                     f"{r['not_counted']} |" + "".join(f" {interval(r, f'_at_{f:g}')} |" for f in earlier))
    edges = grid_edges(grid, picks)
    if edges:
        lines += ["", "At the edge of the grid (a better value may lie beyond it; widen the grid that way): "
                  + "; ".join(f"{m}: {', '.join(e)}" for m, e in edges.items()) + "."]
    write_text(Path(out) / "tuning.md", "\n".join(lines) + "\n")
    write_json({"rule": GRID_PICK_RULE, "split": "validation", "budget_point": max(fractions), "base": base,
                "seeds": list(t.seeds), "overrides": list(t.get("overrides") or []), "picks": picks},
               Path(out) / "picks.json")


def earlier_picks(source: Path, exp: Any, grid: dict[str, list[TuningPoint]], base: list[str]) -> dict[str, dict]:
    """The picks of the study in `source` when it was tuned on the same grid, seeds, tuning overrides and base
    policy (`base`: compare.base_digests) as `exp`, read from its tuning.csv and picks.json; a ConfigError
    naming what differs otherwise."""
    source = Path(source)
    missing = [f for f in TUNING_FILES if not (source / f).exists()]
    if missing:
        raise ConfigError(f"tuning_from={source}: no {', '.join(missing)} there (a tuned study writes {', '.join(TUNING_FILES)})")
    table = pd.read_csv(source / "tuning.csv")
    want = sorted(pt.label for points in grid.values() for pt in points)
    if sorted(table["label"]) != want:
        raise ConfigError(f"tuning_from={source}: its grid {sorted(table['label'])} is not this experiment's {want}")
    seeds = len(exp.tuning.seeds)
    if (table["n_runs"] != seeds).any():
        raise ConfigError(f"tuning_from={source}: its grid points have {sorted(set(table['n_runs']))} runs each; this "
                          f"experiment tunes at {seeds} seeds {list(exp.tuning.seeds)}")
    recorded = json.loads((source / "picks.json").read_text())
    lacking = [k for k in ("seeds", "overrides") if k not in recorded]
    if lacking:
        raise ConfigError(f"tuning_from={source}: its picks.json records no tuning {' or '.join(lacking)} (written "
                          f"before picks.json kept them); bench/migrate_studies.py {source} adds them from its tuning.md")
    was = f"seeds {recorded['seeds']}, overrides `{' '.join(recorded['overrides'])}`"
    tuned = f"seeds {list(exp.tuning.seeds)}, overrides `{' '.join(exp.tuning.get('overrides') or [])}`"
    if was != tuned:
        raise ConfigError(f"tuning_from={source}: it was tuned with {was}; this experiment tunes with {tuned}")
    if recorded.get("base") != base:
        raise ConfigError(f"tuning_from={source}: it was tuned from base policy {recorded.get('base') or '(not recorded)'}"
                          f", these runs start from {base} (sha256 of the weights); tune on this base instead")
    picks = recorded["picks"]
    picked = {r.method: r.label for r in table.itertuples() if r.picked}
    if {m: p["label"] for m, p in picks.items()} != picked or sorted(picked) != sorted(grid):
        raise ConfigError(f"tuning_from={source}: picks.json {sorted(p['label'] for p in picks.values())} does not match "
                          f"the picked rows of its tuning.csv {sorted(picked.values())}")
    return picks
