"""Tables and plots of a comparison, rebuilt from its run folders (`rlsd-report results/<name>`).

Matched compute: budget points are fractions of the smallest final budget any finished run reached, so every
method is read at budgets all of them spent. A run's accuracy at budget b is its last held-out evaluation
made with at most b spent (no interpolation). Means and standard deviations are over seeds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from rlsd_harness.config import BUDGET_KEYS
from rlsd_harness.training.durable import atomic_path, atomic_write_text, kill_point
from rlsd_harness.training.run import read_metrics, run_state

ACCURACY = "eval/test/pass@1"  # greedy pass@1 on the test split (training/evals.py), evaluated at budget points

CURVES = [
    ("rollout/reward", "training reward (mean over samples)"),
    ("actor/entropy", "policy entropy (nats / token)"),
    ("teacher/kl", "teacher-student KL on sampled tokens"),
    ("actor/w_clip_frac", "RLSD w clipped (fraction of tokens)"),
    ("rollout/leakage", "leakage rate (responses)"),
    ("rollout/response_length", "response length (tokens)"),
]


def load_runs(runs_dir: Path) -> tuple[pd.DataFrame, dict[str, str]]:
    frames, failed = [], {}
    # hidden folders are not runs (an overwritten run kept aside until its replacement's first checkpoint)
    for run_dir in sorted(p for p in runs_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        method, seed = run_dir.name.rsplit("-s", 1)
        state = run_state(run_dir)
        if state == "failed":
            failed[run_dir.name] = json.loads((run_dir / "failed.json").read_text())["error"]
            continue
        if not (run_dir / "metrics.jsonl").exists():
            continue
        df = pd.DataFrame(read_metrics(run_dir / "metrics.jsonl"))
        df["method"], df["seed"], df["finished"] = method, int(seed), state == "finished"
        if "actor/w_clip_low_frac" in df:
            df["actor/w_clip_frac"] = df["actor/w_clip_low_frac"] + df["actor/w_clip_high_frac"]
        frames.append(df)
    return (pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()), failed


def matched_table(df: pd.DataFrame, budget_key: str, fractions: list[float]) -> tuple[pd.DataFrame, list[float]]:
    evals = df.dropna(subset=[ACCURACY])
    finals = evals[evals["finished"]].groupby(["method", "seed"])[budget_key].max()
    top = float(finals.min())
    points = [f * top for f in fractions]
    rows = []
    for (method, seed), run in evals.groupby(["method", "seed"]):
        row = {"method": method, "seed": seed}
        for b in points:
            spent = run[run[budget_key] <= b + 1e-9]
            row[b] = 100 * spent[ACCURACY].iloc[-1] if len(spent) else float("nan")
        rows.append(row)
    per_seed = pd.DataFrame(rows)
    return per_seed, points


def _fmt_budget(kind: str, b: float) -> str:
    return {"flops": f"{b / 1e12:.3g} TFLOP", "tokens": f"{b / 1e3:.3g}k tok", "steps": f"{b:.3g} steps",
            "seconds": f"{b:.3g} s"}[kind]


def write_report(out: Path, exp, meta: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df, failed = load_runs(out / "runs")
    if df.empty:
        atomic_write_text(out / "README.md", "No finished runs yet.\n")
        return
    kind = exp.get("budget_kind", "flops")
    key = BUDGET_KEYS[kind]
    per_seed, points = matched_table(df, key, list(exp.get("budget_points", [0.25, 0.5, 0.75, 1.0])))
    base = df[df["rollout_step"] == 0].dropna(subset=[ACCURACY])[ACCURACY] * 100
    cols = [_fmt_budget(kind, b) for b in points]
    per_seed = per_seed.rename(columns=dict(zip(points, cols)))
    mean = per_seed.groupby("method")[cols].mean()
    std = per_seed.groupby("method")[cols].std(ddof=1).fillna(0.0)
    n = per_seed.groupby("method").size()
    from rlsd_harness.config import arms

    order = [m for m in arms(exp) if m in mean.index]
    best = {c: mean[c].idxmax() for c in cols}
    table = pd.DataFrame(index=["base"] + order + [m for m in failed_methods(failed) if m not in order],
                         columns=cols + ["seeds"], dtype=object)
    for c in cols:
        table.loc["base", c] = f"{base.mean():.1f} ± {base.std(ddof=1) if len(base) > 1 else 0:.1f}"
    table.loc["base", "seeds"] = str(len(base))
    for m in order:
        for c in cols:
            cell = f"{mean.loc[m, c]:.1f} ± {std.loc[m, c]:.1f}"
            table.loc[m, c] = f"**{cell}**" if best[c] == m else cell
        table.loc[m, "seeds"] = str(int(n[m]))
    for name in failed:
        method = name.rsplit("-s", 1)[0]
        table.loc[method, "seeds"] = f"{table.loc[method, 'seeds'] if isinstance(table.loc[method, 'seeds'], str) else 0} (+{name} failed)"
    table = table.fillna("failed")
    table.index.name = "method"
    atomic_write_text(out / "table.md",
        f"Held-out pass@1 (%) on the embedded test split, greedy, at matched {kind} budgets; mean ± std over seeds; "
        f"best per column in bold.\n\n{table.to_markdown()}\n")
    numeric = per_seed.groupby("method")[cols].agg(["mean", "std"])
    kill_point("report")
    with atomic_path(out / "table.csv") as tmp:
        numeric.to_csv(tmp)
    atomic_write_text(out / "table.tex", table.to_latex(escape=True))
    with atomic_path(out / "per_seed.csv") as tmp:
        per_seed.to_csv(tmp, index=False)

    # accuracy against compute, one curve per method, band = ± std over seeds
    fig, ax = plt.subplots(figsize=(6, 4))
    grid = [points[-1] * f for f in [i / 20 for i in range(21)]]
    colour = {m: f"C{i}" for i, m in enumerate(order)}  # one colour per method in every figure
    for m in order:
        acc = []
        for _, run in df[(df["method"] == m)].dropna(subset=[ACCURACY]).groupby("seed"):
            acc.append([100 * run[run[key] <= b + 1e-9][ACCURACY].iloc[-1] for b in grid])
        a = pd.DataFrame(acc)
        x = [g / (1e12 if kind == "flops" else 1) for g in grid]
        ax.plot(x, a.mean(), label=m, color=colour[m])
        ax.fill_between(x, a.mean() - a.std(ddof=1).fillna(0), a.mean() + a.std(ddof=1).fillna(0), alpha=0.2,
                        color=colour[m])
    ax.set_xlabel("TFLOP spent" if kind == "flops" else kind)
    ax.set_ylabel("held-out pass@1 (%)")
    ax.set_title("Accuracy at matched compute")
    ax.legend()
    fig.tight_layout()
    with atomic_path(out / "accuracy_vs_compute.png") as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    for ax, (col, title) in zip(axes.flat, CURVES):
        for m in order:
            sub = df[(df["method"] == m) & (df["rollout_step"] > 0)]
            if col not in sub or sub[col].isna().all():
                continue
            g = sub.groupby("rollout_step")[col]
            mu, sd = g.mean().rolling(3, min_periods=1).mean(), g.std(ddof=1).fillna(0).rolling(3, min_periods=1).mean()
            ax.plot(mu.index, mu, label=m, color=colour[m])
            ax.fill_between(mu.index, mu - sd, mu + sd, alpha=0.15, color=colour[m])
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("rollout step")
    for ax in axes.flat:
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(out / "dynamics.png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)

    wall = df.groupby(["method", "seed"])["ledger/cum/time/step"].max().sum() + df.get("eval/seconds", pd.Series(dtype=float)).sum()
    lines = [
        f"# Comparison `{meta.get('experiment')}`", "",
        f"Arms {list(arms(exp))} x seeds {list(exp.seeds)}, all from the same warmed-up base policy; "
        f"common overrides: `{' '.join(exp.overrides)}`.", "",
        f"Machine: {meta.get('machine')}. Finished {meta.get('finished')}. "
        f"Wall time of this invocation: {meta.get('seconds', 0):.0f} s; training + evaluation time summed over runs: {wall:.0f} s.",
        "", "Budget points are fractions of the smallest final budget any run reached "
        f"({_fmt_budget(kind, points[-1])}); each method is read at its last evaluation within the budget.", "",
        (out / "table.md").read_text(), "", "![accuracy](accuracy_vs_compute.png)", "", "![dynamics](dynamics.png)", "",
    ]
    if (out / "credit_rlsd.png").exists():
        lines += ["RLSD's credit on one correct and one wrong rollout (tokens coloured by the clipped weight w_t):", "",
                  "![credit](credit_rlsd.png)", ""]
    if failed:
        lines += ["## Failed runs", ""] + [f"- {k}: {v}" for k, v in failed.items()]
    atomic_write_text(out / "README.md", "\n".join(lines) + "\n")


def failed_methods(failed: dict[str, str]) -> list[str]:
    return sorted({k.rsplit("-s", 1)[0] for k in failed})
