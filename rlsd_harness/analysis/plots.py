"""The comparison's figures: test accuracy against the compute spent at the budget points (band: the table's
95 % interval) and the training dynamics per method (band: 95 % t-interval over seeds)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from rlsd_harness.analysis.files import save_figure
from rlsd_harness.analysis.loading import Study

DYNAMICS = [
    ("rollout/reward", "training reward (mean over samples)"),
    ("actor/entropy", "policy entropy (nats / token)"),
    ("teacher/kl", "teacher-student KL on sampled tokens"),
    ("actor/w_clip_frac", "RLSD w clipped, low + high (fraction of tokens)"),
    ("rollout/leakage", "leakage rate (responses)"),
    ("rollout/response_length", "response length (tokens)"),
]


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
    ax.set_ylabel("test mean@k (%)")
    ax.set_title("Accuracy at matched compute (95 % intervals)")
    if ax.lines:
        ax.legend()
    fig.tight_layout()
    save_figure(fig, path, 120)
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
    save_figure(fig, path, 110)
    plt.close(fig)
