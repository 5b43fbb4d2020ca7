"""Reproduce part of a committed study here: `rlsd-compare reproduce=results/reference seeds=[0,1] out=<folder>`.

Each chosen test run is retrained from the config.yaml the committed run recorded (every resolved key: the
tuning pick, the budget, the seed; a key added to the harness since takes its default), with only run.dir
changed, into <out>/runs/<method>-s<seed>/, with the committed study's `workers` (a run's float reductions depend on its thread count). The report, reproduce.md and
reproduce.csv in <out>, gives per method and budget point:
- the mean difference rerun - committed (points) over the items, each item's score (mean@k) paired with the same
  item of the same seed's committed run and averaged over the rerun seeds;
- a TOST equivalence test (two one-sided t-tests over the items, Schuirmann 1987) against +-MARGIN points:
  "equivalent" when both one-sided p-values are below 0.05;
- how many runs have bit-identical per-item records (expected where the CPU and its ISA match);
- the verdict of every comparison against the study's baseline (paired over seeds, crossed seeds x items
  interval: higher / lower / cannot tell) with the committed runs, and with the rerun seeds' runs in their place,
  and whether every verdict comes out the same;
- both machines' CPU model and ISA, from each run's manifest.json.
"""

from __future__ import annotations

import json
import math
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import OmegaConf
from scipy import stats as st

from rlsd_harness.config import BUDGET_KEYS, ConfigError, compose_config

MARGIN_POINTS = 1.5
ALPHA = 0.05


def tost_paired(x: Sequence[float], y: Sequence[float], low: float, high: float) -> dict[str, float]:
    """Two one-sided paired t-tests of mean(x - y) in (low, high) (statsmodels' ttost_paired, written out so that
    identical data, zero spread, gives p 0 inside the bounds instead of nan). Returns mean, se, df, p_low (H0:
    mean <= low), p_high (H0: mean >= high) and p (the larger)."""
    d = np.asarray(x, dtype=float) - np.asarray(y, dtype=float)
    n = d.size
    if n < 2:
        raise ValueError(f"TOST needs at least 2 pairs; got {n}")
    mean, df = float(d.mean()), n - 1
    se = float(d.std(ddof=1) / math.sqrt(n))
    if se == 0.0:
        p_low, p_high = float(mean <= low), float(mean >= high)
    else:
        p_low = float(st.t.sf((mean - low) / se, df))
        p_high = float(st.t.cdf((mean - high) / se, df))
    return {"mean": mean, "se": se, "df": float(df), "p_low": p_low, "p_high": p_high, "p": max(p_low, p_high)}


def _verdict(low: float, high: float) -> str:
    return "higher" if low > 0 else "lower" if high < 0 else "cannot tell"


def verdicts(records: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """Every method against `baseline` at every budget point > 0 (paired over their common seeds, the crossed
    seeds x items interval of stats.compare_runs): method, budget, diff_points, low, high, verdict."""
    from rlsd_harness.analysis import stats

    rows = []
    for (method, budget), g in records.groupby(["method", "budget"]):
        if method == baseline or budget <= 0:
            continue
        b = records[(records["method"] == baseline) & np.isclose(records["budget"], budget)]
        seeds = sorted(set(g["seed"]) & set(b["seed"]))
        if len(seeds) < 2:
            continue
        x_m = g[g["seed"].isin(seeds)].pivot_table(index="seed", columns="item", values="score").loc[seeds]
        x_b = b[b["seed"].isin(seeds)].pivot_table(index="seed", columns="item", values="score").loc[seeds]
        items = sorted(set(x_m.columns) & set(x_b.columns))
        c = stats.compare_runs(x_m[items].to_numpy(), x_b[items].to_numpy(), paired=True, n_resamples=200)
        rows.append({"method": method, "budget": float(budget), "diff_points": 100 * c.difference.estimate,
                     "low": 100 * c.difference.low, "high": 100 * c.difference.high,
                     "verdict": _verdict(c.difference.low, c.difference.high)})
    return pd.DataFrame(rows, columns=["method", "budget", "diff_points", "low", "high", "verdict"])


def _records(runs: dict[tuple[str, int], Path], points: list[float], key: str) -> pd.DataFrame:
    from rlsd_harness.analysis.report import run_records

    frames = []
    for (method, seed), folder in runs.items():
        rec = run_records(folder, "test", points, key)
        if rec is None or not len(rec):
            continue
        frames.append(rec.assign(method=method, seed=seed))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["budget", "item", "score", "method", "seed"])


def _cpu(folder: Path) -> str:
    try:
        return str(json.loads((folder / "manifest.json").read_text()).get("cpu") or "(not recorded)")
    except (OSError, json.JSONDecodeError):
        return "(no manifest.json)"


def _wall_seconds(folder: Path) -> float | None:
    """A run's wall time: its manifest's start to its completion marker (None where either is missing), so a
    report written after the reruns finished (a later call skips them) still says how long they took."""
    from datetime import datetime

    try:
        start = json.loads((folder / "manifest.json").read_text())["started"]
        end = json.loads((folder / "finished.json").read_text())["time"]
    except (OSError, KeyError, json.JSONDecodeError):
        return None
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def _fmt_seconds(s: float | None) -> str:
    return "unknown" if s is None else f"{s:.0f} s"


def chosen_runs(study: Path, seeds: Sequence[int] | None, methods: Sequence[str] | None) -> dict[tuple[str, int], Path]:
    """The committed study's finished test runs of the chosen seeds and methods (all when None); a ConfigError
    naming what is missing."""
    from rlsd_harness.analysis.report import parse_run_name

    runs_dir = Path(study) / "runs"
    if not runs_dir.is_dir():
        raise ConfigError(f"reproduce={study}: no runs/ folder there (a study made by rlsd-compare has one)")
    found = {}
    for folder in sorted(runs_dir.iterdir()):
        parsed = parse_run_name(folder.name)
        if parsed and (folder / "config.yaml").is_file() and (folder / "finished.json").is_file():
            found[parsed] = folder
    have_methods = sorted({m for m, _ in found})
    have_seeds = sorted({s for _, s in found})
    bad = [m for m in (methods or []) if m not in have_methods] + [str(s) for s in (seeds or []) if s not in have_seeds]
    if bad:
        raise ConfigError(f"reproduce={study}: {', '.join(bad)} not among its finished runs (methods {have_methods}, "
                          f"seeds {have_seeds})")
    return {k: v for k, v in found.items() if (not methods or k[0] in methods) and (seeds is None or k[1] in seeds)}


def reproduce(study: Path, out: Path, seeds: Sequence[int] | None, methods: Sequence[str] | None,
              train: Callable[[list, int], None], log: Callable[[str], None] = print,
              margin_points: float = MARGIN_POINTS) -> pd.DataFrame:
    """Retrain the chosen runs of `study` into `out` with `train(jobs, workers)` (compare._train_all) and write
    reproduce.md / reproduce.csv (module docstring); returns the per method and budget point table."""
    from rlsd_harness.analysis.report import write_csv, write_json, write_text
    from rlsd_harness.config import baseline_of, load_experiment
    from rlsd_harness.training.preflight import check_config

    study, out = Path(study), Path(out).absolute()
    meta = json.loads((study / "meta.json").read_text()) if (study / "meta.json").exists() else {}
    if out.resolve() == study.resolve():
        raise ConfigError(f"out={out} is the study being reproduced; give another folder")
    runs = chosen_runs(study, seeds, methods)
    if not runs:
        raise ConfigError(f"reproduce={study}: no finished run matches seeds={seeds} methods={methods}")
    jobs = []
    for (method, seed), folder in runs.items():
        recorded = OmegaConf.load(folder / "config.yaml")
        # keys added since the study ran take their defaults (each off by default: the recorded behaviour)
        cfg = OmegaConf.merge(compose_config([f"algorithm={recorded.algorithm.name}"]), recorded)
        OmegaConf.update(cfg, "run.dir", str(out / "runs"))
        OmegaConf.update(cfg, "run.resume", False)
        OmegaConf.update(cfg, "run.overwrite", False)
        check_config(cfg)
        jobs.append((f"{method}-s{seed}", out / "runs" / folder.name, cfg))
    workers = int(meta.get("workers", 1))
    started = time.time()
    train(jobs, workers)
    first = next(iter(runs.values()))
    cfg0 = OmegaConf.load(first / "config.yaml")
    points = sorted({0.0, *[float(p) for p in cfg0.eval.get("budget_points") or []]})
    key = BUDGET_KEYS[str(cfg0.train.budget.kind or "steps")]
    old = _records(runs, points, key)
    new_runs = {k: out / "runs" / v.name for k, v in runs.items()}
    new = _records(new_runs, points, key)
    margin = margin_points / 100
    rows = []
    for (method, budget), g in old.groupby(["method", "budget"]):
        n = new[(new["method"] == method) & np.isclose(new["budget"], budget)]
        if not len(n):
            continue
        both = g.merge(n, on=["seed", "item"], suffixes=("_old", "_new"))
        per_item = both.groupby("item")[["score_new", "score_old"]].mean()
        t = tost_paired(per_item["score_new"], per_item["score_old"], -margin, margin)
        seeds_both = sorted(set(both["seed"]))
        identical = sum(bool((both[both["seed"] == s]["score_new"] == both[both["seed"] == s]["score_old"]).all())
                        for s in seeds_both)
        rows.append({"method": method, "budget": float(budget), "seeds": len(seeds_both), "items": len(per_item),
                     "committed": 100 * float(per_item["score_old"].mean()),
                     "rerun": 100 * float(per_item["score_new"].mean()), "diff_points": 100 * t["mean"],
                     "se_points": 100 * t["se"], "tost_p": t["p"], "equivalent": bool(t["p"] < ALPHA),
                     "identical_runs": identical})
    table = pd.DataFrame(rows)
    # the verdicts, with the committed study's every run, and with the rerun seeds' runs in place of theirs
    name = meta.get("experiment") or study.name
    try:
        baseline = baseline_of(load_experiment(meta.get("experiment_file") or name))
    except ConfigError:
        baseline = "grpo"
    every = chosen_runs(study, None, None)
    committed_all = _records(every, points, key)
    swapped = pd.concat([committed_all.merge(new[["method", "seed"]].drop_duplicates(), how="left", indicator=True)
                         .query("_merge == 'left_only'").drop(columns="_merge"), new], ignore_index=True)
    v_old, v_new = verdicts(committed_all, baseline), verdicts(swapped, baseline)
    both_v = v_old.merge(v_new, on=["method", "budget"], suffixes=("_committed", "_rerun"))
    same = bool((both_v["verdict_committed"] == both_v["verdict_rerun"]).all()) if len(both_v) else None
    out.mkdir(parents=True, exist_ok=True)
    write_csv(table, out / "reproduce.csv")
    write_csv(both_v, out / "reproduce_verdicts.csv")
    cpu_old = sorted({_cpu(f) for f in runs.values()})
    cpu_new = sorted({_cpu(f) for f in new_runs.values()})
    lines = [f"# Reproducing {study}", "",
             f"{len(runs)} test runs ({', '.join(sorted(f'{m}-s{s}' for m, s in runs))}) retrained here from their "
             f"committed config.yaml with {workers} worker(s); this call took {time.time() - started:.0f} s (reruns "
             f"already finished are not trained again); each rerun's wall time, start to completion marker: "
             + ", ".join(f"{f.name} {_fmt_seconds(_wall_seconds(f))}" for f in new_runs.values()) + ".", "",
             f"- committed runs' CPU: {', '.join(cpu_old)}",
             f"- this machine's runs' CPU: {', '.join(cpu_new)} ({platform.platform()})", "",
             f"Rerun - committed, test mean@k in points, each item paired with the same seed's committed item and "
             f"averaged over the rerun seeds; TOST equivalence at +-{margin_points:g} points (two one-sided paired "
             f"t-tests over the items, equivalent when p < {ALPHA:g}); identical = runs whose every item's score is "
             f"equal.", "",
             "| method | budget | seeds | items | committed | rerun | rerun - committed | TOST p | equivalent | identical |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in table.to_dict("records"):
        lines.append(f"| {r['method']} | {r['budget']:g} | {r['seeds']} | {r['items']} | {r['committed']:.2f} | "
                     f"{r['rerun']:.2f} | {r['diff_points']:+.2f} (SE {r['se_points']:.2f}) | {r['tost_p']:.3g} | "
                     f"{'yes' if r['equivalent'] else '**no**'} | {r['identical_runs']} / {r['seeds']} |")
    lines += ["", f"Verdicts against {baseline} (paired over seeds, 95 % crossed seeds x items interval; higher / lower"
              f" / cannot tell), with the committed runs and with the rerun seeds' runs in their place: "
              + ("every verdict is the same." if same else "**verdicts differ**." if same is False
                 else "no comparison (fewer than 2 common seeds)."), "",
              "| method | budget | committed: diff [95 % CI] | verdict | with the reruns: diff [95 % CI] | verdict |",
              "|---|---|---|---|---|---|"]
    for r in both_v.to_dict("records"):
        lines.append(f"| {r['method']} | {r['budget']:g} | {r['diff_points_committed']:+.2f} [{r['low_committed']:+.2f}, "
                     f"{r['high_committed']:+.2f}] | {r['verdict_committed']} | {r['diff_points_rerun']:+.2f} "
                     f"[{r['low_rerun']:+.2f}, {r['high_rerun']:+.2f}] | {r['verdict_rerun']} |")
    write_text(out / "reproduce.md", "\n".join(lines) + "\n")
    write_json({"study": str(study), "runs": sorted(f"{m}-s{s}" for m, s in runs), "workers": workers,
                "cpu_committed": cpu_old, "cpu_here": cpu_new, "margin_points": margin_points,
                "all_equivalent": bool(table["equivalent"].all()) if len(table) else None,
                "all_identical": bool((table["identical_runs"] == table["seeds"]).all()) if len(table) else None,
                "verdicts_same": same}, out / "reproduce.json")
    log(f"reproduce report in {out / 'reproduce.md'}")
    return table
