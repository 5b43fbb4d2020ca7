"""Reading a comparison's run folders: run status, every metrics line, the per-item held-out records at the
budget points (`load_study`), as the tables, plots and tuning picks use them.

What is read. Each run's held-out evaluations at the experiment's budget points: metrics.jsonl lines with
`eval/<split>/budget_point` (a fraction of train.budget.value; 0 is the base policy at step 0) and
`eval/<split>/file`, the per-item records evals/<split>-step<rollout_step:06d>.jsonl, one line per item
{"id", "correct": k 0/1 verdicts, "greedy": 0/1 or null}. An item's score is its mean@k (the fraction of its
k samples that are correct). A packed study keeps each jsonl gzip-compressed beside its name (analysis/pack.py).

Metric names are read as the trainer writes them (training/metrics.py: namespaced). Older studies with the
flat names of earlier runs, or with tuning picks that lack their seeds and overrides, are migrated once by
bench/migrate_studies.py; a flat name met here is an error that says so, not a second reading path. A finished
run without per-item records at the budget points is counted as such beside the tables, never read another way.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from rlsd_harness.config import BUDGET_KEYS
from rlsd_harness.io import parse_jsonl


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
    """Every line of a run's metrics.jsonl (or its packed .gz); [] when it has none. A line cut by a kill is
    dropped (io's policy). ValueError on a flat metric name of an older run: migrate its study once."""
    from rlsd_harness.training.metrics import namespaced

    text = record_text(run_dir / "metrics.jsonl")
    if text is None:
        return []
    lines = parse_jsonl(text, run_dir / "metrics.jsonl")
    # the trainer's own mapping says which names are not today's (it leaves a namespaced name as it is)
    flat = sorted({k for line in lines for k in line if k not in namespaced({k: None})})
    if flat:
        raise ValueError(f"{run_dir / 'metrics.jsonl'}: flat metric names {flat[:5]} of a run written before metrics "
                         f"were namespaced; migrate its study once: python bench/migrate_studies.py <study folder>")
    return lines


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
    rlsd_harness/training/metrics.py; `metrics_lines` refuses older runs' flat names) plus `run` (the folder name),
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
    status: pd.DataFrame  # run_status, plus `records`: items | none
    mode: str  # items (per-item records) | none (no finished run has any)
    points: list[float]  # the nominal budget points (fractions), 0 first when the base was evaluated
    budget_key: str
    split: str
    notes: list[str] = field(default_factory=list)


RECORD_FRAME = ["method", "seed", "budget", "item", "score", "greedy", "k", "spend"]


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
    records, mode = (pd.concat(frames, ignore_index=True), "items") if frames else (pd.DataFrame(columns=RECORD_FRAME),
                                                                                   "none")
    older = status[(status["status"] == "finished") & (status["records"] == "none")]
    if frames and len(older):
        notes.append(f"{len(older)} finished run(s) wrote no per-item {split} records at the budget points and are "
                     f"left out of the tables: {', '.join(older['run'])}")
    points = sorted(set(records["budget"].astype(float))) if len(records) else []
    return Study(records, status, mode, points, budget_key, split, notes)
