"""The tuning report, whichever protocol tuned (a grid, analysis/tuning/grid.py, or Optuna,
analysis/tuning/search.py).

The report (tuning.md + tuning.png, `python -m rlsd_harness.analysis.tuning report <study>...` for committed
studies, the grid protocols included): per method the expected best validation score against tuning FLOPs
(Dodge et al. 2019, "Show your work", EMNLP: the expected maximum of n trials drawn from the observed ones,
with its standard deviation as the band), each knob's sensitivity (Spearman's rho of the score over the knob,
and the scores across its range), the pick and every trial's result.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rlsd_harness.analysis.files import save_figure, write_text
from rlsd_harness.analysis.tuning.search import OPTUNA_PICK_RULE, Knob, Settings, _test_budget
from rlsd_harness.config import ConfigError, load_experiment


@dataclass
class Protocol:
    """One tuning protocol's results, whatever produced them: one row per trial (method, label, value: the
    validation score the pick reads, cost: FLOPs of the trial, param.<key> columns, state), the picks
    ({method: {label, values, edges}}) and how it was run (a sentence)."""

    name: str
    trials: pd.DataFrame
    picks: dict[str, dict]
    description: str
    knobs: dict[str, list[Knob]]
    sensitivity_column: str = "value"  # the score a knob's sensitivity reads (every trial has it)


def expected_max(values: Sequence[float], n: int) -> tuple[float, float]:
    """Dodge et al. 2019 (arXiv 1909.03004, Eq. 1): the expected maximum of n draws with replacement from the
    observed scores, and its standard deviation: sum_i v_(i) [(i/N)^n - ((i-1)/N)^n] over the sorted scores."""
    v = np.sort(np.asarray([x for x in values if math.isfinite(x)], dtype=float))
    N = v.size
    if N == 0 or n < 1:
        return float("nan"), float("nan")
    i = np.arange(1, N + 1)
    w = (i / N) ** n - ((i - 1) / N) ** n
    mean = float(np.sum(w * v))
    var = float(np.sum(w * v**2) - mean**2)
    return mean, math.sqrt(max(var, 0.0))


def expected_max_curve(protocol: Protocol, method: str) -> pd.DataFrame:
    """n = 1 .. the number of scored trials: tuning FLOPs (n x the method's FLOPs per scored trial, pruned
    trials' compute spread over the scored ones) and the expected best validation score with its SD."""
    t = protocol.trials[protocol.trials["method"] == method]
    scored = t[np.isfinite(t["value"].astype(float))]
    per_trial = float(t["cost"].sum()) / max(1, len(scored))
    rows = []
    for n in range(1, len(scored) + 1):
        mean, sd = expected_max(scored["value"].astype(float).tolist(), n)
        rows.append({"n": n, "flops": n * per_trial, "mean": mean, "sd": sd})
    return pd.DataFrame(rows)


def sensitivity(protocol: Protocol, method: str) -> list[dict[str, Any]]:
    """Per knob of the method: Spearman's rho of the score over the knob's value, the score's range and the
    knob value of the best and worst trial (every trial's score at sensitivity_column)."""
    from scipy.stats import spearmanr

    t = protocol.trials[protocol.trials["method"] == method]
    col = protocol.sensitivity_column
    out = []
    for knob in protocol.knobs.get(method, []):
        c = f"param.{knob.key}"
        sub = t[[c, col]].dropna() if c in t else pd.DataFrame()
        if len(sub) < 2:
            continue
        x, y = sub[c].astype(float), sub[col].astype(float)
        rho = float(spearmanr(x, y).statistic) if x.nunique() > 1 and y.nunique() > 1 else float("nan")
        out.append({"knob": knob.key, "trials": len(sub), "rho": rho, "score_low": float(y.min()),
                    "score_high": float(y.max()), "best_at": float(x[y.idxmax()]), "worst_at": float(x[y.idxmin()])})
    return out


def protocol_from_optuna(trials: pd.DataFrame, picks: dict[str, dict], s: Settings, budget: float,
                         spaces: dict[str, list[Knob]], name: str) -> Protocol:
    t = trials.copy()
    t["cost"] = t["flops"]
    desc = (f"{name}: Optuna {s.sampler} (seed {s.sampler_seed}), synchronous successive halving, "
            f"{s.brackets} bracket(s) of {' -> '.join(map(str, s.sizes()))} trials at rungs "
            f"{', '.join(f'{r:g}' for r in s.rungs)} of the test budget ({budget:.3g} FLOPs), seeds {list(s.seeds)}; "
            f"the score is the validation mean@k at the last rung; sensitivity reads every trial's first-rung score")
    return Protocol(name, t, picks, desc, spaces, sensitivity_column=f"at_{s.rungs[0]:g}")


def protocol_from_grid(folder: Path, flops_per_run: float | None = None) -> Protocol:
    """A committed grid-tuned study (tuning.csv, picks.json): every grid point one trial whose score is its
    mean over the tuning seeds at the tuning budget's last point, costing n_runs x the tuning budget
    (train.budget.value in picks.json's tuning overrides, else `flops_per_run`, else the study's experiment's
    budget)."""
    folder = Path(folder)
    table = pd.read_csv(folder / "tuning.csv")
    recorded = json.loads((folder / "picks.json").read_text())
    if "overrides" not in recorded:
        raise ConfigError(f"{folder / 'picks.json'} records no tuning overrides (written before picks.json kept "
                          f"them); bench/migrate_studies.py {folder} adds them from its tuning.md")
    found = re.search(r"train\.budget\.value=([0-9.eE+-]+)", " ".join(recorded["overrides"]))
    if found:
        flops_per_run = float(found.group(1))
    elif flops_per_run is None:
        flops_per_run = _test_budget(load_experiment(folder.name))
    picks = recorded["picks"]
    t = pd.DataFrame({"method": table["method"], "label": table["label"], "value": table["mean"].astype(float),
                      "cost": table["n_runs"].astype(float) * flops_per_run, "param.lr": table["lr"].astype(float),
                      "state": np.where(table["picked"], "picked", "complete")})
    lrs = sorted(set(t["param.lr"]))
    knobs = {m: [Knob("lr", min(lrs), max(lrs), log=True)] for m in t["method"].unique()}
    grid_picks = {}
    for m, p in picks.items():
        tried = sorted(set(t.loc[t["method"] == m, "param.lr"]))
        lr = float(p["values"]["algorithm.lr"])
        edge = [f"lr={lr:g} is the {'smallest' if lr == tried[0] else 'largest'} tried"] \
            if len(tried) > 1 and lr in (tried[0], tried[-1]) else []
        grid_picks[m] = {**p, "edges": edge}
    n_runs = sorted(set(table["n_runs"]))
    desc = (f"{folder.name}: learning-rate grid of {len(lrs)} points {', '.join(f'{x:g}' for x in lrs)} per method"
            f" (the same for every method), {'/'.join(map(str, n_runs))} seeds, {flops_per_run:.3g} FLOPs per run, "
            f"scored at the tuning budget's last point")
    return Protocol(folder.name, t, grid_picks, desc, knobs)


def _pts(x: float) -> str:
    return "-" if not math.isfinite(x) else f"{100 * x:.1f}"


def report_markdown(p: Protocol) -> str:
    lines = [f"# Tuning: {p.name}", "", p.description + ".", "", f"Pick rule: {OPTUNA_PICK_RULE}." if "optuna" in
             p.description.lower() else "Pick rule: the highest mean validation score at the tuning budget's last "
             "point; ties to the smaller learning rate.", "",
             "## Expected best validation score against tuning FLOPs", "",
             "Dodge et al. 2019: the expected maximum of n trials drawn from the scored ones (+- its SD); FLOPs = n x "
             "the method's tuning FLOPs per scored trial (a pruned trial's compute is charged to the scored ones).", "",
             "| method | trials scored | tuning FLOPs | E[best] at n = 1 | at n = all | pick | pick's score | edge |",
             "|---|---|---|---|---|---|---|---|"]
    for m in p.picks:
        curve = expected_max_curve(p, m)
        if not len(curve):
            continue
        first, last = curve.iloc[0], curve.iloc[-1]
        pick = p.picks[m]
        values = ", ".join(f"{k.removeprefix('algorithm.')}={v:.4g}" for k, v in pick["values"].items())
        lines.append(f"| {m} | {len(curve)} | {last['flops']:.3g} | {_pts(first['mean'])} +- {_pts(first['sd'])} | "
                     f"{_pts(last['mean'])} +- {_pts(last['sd'])} | {values} | "
                     f"{_pts(float(pick.get('validation_mean', float('nan'))))} | "
                     f"{'; '.join(pick.get('edges') or []) or '-'} |")
    lines += ["", "## Sensitivity", "",
              f"Spearman's rho of the score ({p.sensitivity_column}) over each knob, the score's range over the trials "
              f"and where the best and worst trials put the knob.", "",
              "| method | knob | trials | rho | score range | best at | worst at |", "|---|---|---|---|---|---|---|"]
    for m in p.picks:
        for r in sensitivity(p, m):
            lines.append(f"| {m} | {r['knob']} | {r['trials']} | {r['rho']:+.2f} | {_pts(r['score_low'])} .. "
                         f"{_pts(r['score_high'])} | {r['best_at']:.4g} | {r['worst_at']:.4g} |")
    params = [c for c in p.trials.columns if c.startswith("param.")]
    rungs = [c for c in p.trials.columns if c.startswith("at_")]
    lines += ["", "## Every trial", "", "| method | trial | state | " + " | ".join(c[6:] for c in params)
              + "".join(f" | {c[3:]}" for c in rungs) + " | score | FLOPs |",
              "|---|---|---|" + "---|" * (len(params) + len(rungs) + 2)]
    for r in p.trials.to_dict("records"):
        lines.append(f"| {r['method']} | {r['label']} | {r['state']} | "
                     + " | ".join("-" if not isinstance(r[c], int | float) or not math.isfinite(r[c]) else f"{r[c]:.4g}"
                                  for c in params)
                     + "".join(f" | {_pts(r[c])}" for c in rungs) + f" | {_pts(r['value'])} | {r['cost']:.3g} |")
    return "\n".join(lines) + "\n"


def plot_protocol(p: Protocol, path: Path) -> None:
    """Per method: the expected-best curve with its band, and the score over each knob (log axes for log knobs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(p.picks)
    cols = 1 + max((len(p.knobs.get(m, [])) for m in methods), default=0)
    fig, axes = plt.subplots(len(methods), cols, figsize=(3.2 * cols, 2.4 * len(methods)), squeeze=False)
    for i, m in enumerate(methods):
        curve = expected_max_curve(p, m)
        ax = axes[i][0]
        if len(curve):
            ax.plot(curve["flops"], 100 * curve["mean"], marker="o", ms=3)
            ax.fill_between(curve["flops"], 100 * (curve["mean"] - curve["sd"]), 100 * (curve["mean"] + curve["sd"]),
                            alpha=0.25)
        ax.set_title(f"{m}: E[best] vs tuning FLOPs", fontsize=8)
        ax.set_xlabel("tuning FLOPs", fontsize=7)
        ax.set_ylabel("validation (points)", fontsize=7)
        t = p.trials[p.trials["method"] == m]
        for j, knob in enumerate(p.knobs.get(m, []), start=1):
            ax = axes[i][j]
            c = f"param.{knob.key}"
            if c in t:
                ax.scatter(t[c].astype(float), 100 * t[p.sensitivity_column].astype(float), s=10)
                picked = p.picks[m]["values"].get(f"algorithm.{knob.key}")
                if picked is not None:
                    ax.axvline(float(picked), color="red", lw=0.8)
            if knob.log:
                ax.set_xscale("log")
            ax.set_title(f"{m}: {knob.key}", fontsize=8)
        for j in range(1 + len(p.knobs.get(m, [])), cols):
            axes[i][j].axis("off")
    fig.tight_layout()
    save_figure(fig, path, 110)
    plt.close(fig)


def write_tuning_report(folder: Path, p: Protocol, stem: str = "tuning") -> None:
    write_text(Path(folder) / f"{stem}.md", report_markdown(p))
    plot_protocol(p, Path(folder) / f"{stem}.png")


def side_by_side(protocols: Sequence[Protocol]) -> str:
    """One table: per protocol and method, the pick, its validation score, the tuning FLOPs and E[best]."""
    lines = ["| protocol | method | pick | pick's validation score | tuning FLOPs | E[best] at all trials | edge |",
             "|---|---|---|---|---|---|---|"]
    for p in protocols:
        for m, pick in p.picks.items():
            curve = expected_max_curve(p, m)
            last = curve.iloc[-1] if len(curve) else {"flops": float("nan"), "mean": float("nan"), "sd": float("nan")}
            values = ", ".join(f"{k.removeprefix('algorithm.')}={v:.4g}" for k, v in pick["values"].items())
            lines.append(f"| {p.name} | {m} | {values} | {_pts(float(pick.get('validation_mean', float('nan'))))} | "
                         f"{last['flops']:.3g} | {_pts(last['mean'])} +- {_pts(last['sd'])} | "
                         f"{'; '.join(pick.get('edges') or []) or '-'} |")
    return "\n".join(lines) + "\n"


def load_protocol(folder: Path) -> Protocol:
    """A study folder's tuning, whichever protocol made it (picks.json's mode)."""
    folder = Path(folder)
    recorded = json.loads((folder / "picks.json").read_text())
    if recorded.get("mode") != "optuna":
        return protocol_from_grid(folder)
    st = recorded["settings"]
    s = Settings(st["trials"], st["reduction_factor"], tuple(st["rungs"]), st["brackets"], st["sampler"],
                 st["sampler_seed"], tuple(st["seeds"]))
    trials = pd.read_csv(folder / "tuning.csv")
    spaces: dict[str, list[Knob]] = {}
    for m in recorded["picks"]:
        cols = [c for c in trials.columns if c.startswith("param.") and trials.loc[trials["method"] == m, c].notna().any()]
        spaces[m] = []
        for c in cols:
            x = trials.loc[trials["method"] == m, c].dropna().astype(float)
            spaces[m].append(Knob(c[6:], float(x.min()), float(x.max()) if x.max() > x.min() else float(x.min()) + 1,
                                  log=c == "param.lr"))
    budget = recorded.get("planned_flops_per_method", 0.0) / max(s.runs_per_method(), 1e-12)
    return protocol_from_optuna(trials, recorded["picks"], s, budget, spaces, folder.name)


def main(argv: list[str] | None = None) -> None:
    """python -m rlsd_harness.analysis.tuning report <study folder>... out=<folder>: each study's tuning report
    (<name>.md, <name>.png) and protocols.md, the protocols side by side."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] != "report":
        raise SystemExit("usage: python -m rlsd_harness.analysis.tuning report <study folder>... out=<folder>")
    folders = [a for a in args[1:] if not a.startswith("out=")]
    out = Path(next((a[4:] for a in args if a.startswith("out=")), "tuning-report"))
    missing = [f for f in folders if not (Path(f) / "picks.json").exists() or not (Path(f) / "tuning.csv").exists()]
    if not folders or missing:
        raise SystemExit(f"give study folders with tuning.csv and picks.json; not one: {missing or '(none given)'}")
    protocols = [load_protocol(Path(f)) for f in folders]
    out.mkdir(parents=True, exist_ok=True)
    for p in protocols:
        write_tuning_report(out, p, stem=p.name)
    write_text(out / "protocols.md", "# Tuning protocols side by side\n\n" + "\n".join(f"- {p.description}."
               for p in protocols) + "\n\n" + side_by_side(protocols))
    print(f"tuning reports in {out}")
