"""The RLSD paper's main table from a study's benchmark evaluations: methods x {MMMU, MathVista, MathVision,
ZeroBench, WeMath, average} at each budget point.

Input: the folders `rlsd-evaluate study=<study>` writes, `<study>/runs/<method>-s<seed>/benchmarks/<fraction>/`
with each benchmark's per-(item, sample) records `<name>.jsonl` (see rlsd_harness/evaluation/study.py).

Each cell is the benchmark's headline metric (the one the paper's table reports: its module's
`METADATA.headline`), as mean@k over the k sampled responses, in points: the mean over seeds with a 95 %
interval over seeds and items (`stats.mean_interval`, the crossed seed x item model: its items are the benchmark's
`METADATA.unit_scores` unit, a composite problem for We-Math). The average column is the unweighted mean of the
benchmarks present (the paper's "Avg" over its five); its interval treats the pooled units of all benchmarks,
each weighted so that the row mean is that average. Below each table, every method minus the baseline (GRPO by
default), paired by seed (`stats.compare_runs`), with Holm's correction over the methods within each column and
budget point (the family is stated in the output). The step-0 policies (budget 0.00, the same base for every
method) form the "base" row.

Beside it, the paper's own numbers (its Table 2): they are comparable only where the runs reproduce the paper's
setting (`PAPER_SETTING`); otherwise the output says which keys differ.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from rlsd_harness.analysis import stats
from rlsd_harness.benchmarks import EVAL_BENCHMARK_NAMES
from rlsd_harness.config import ConfigError
from rlsd_harness.evaluation.runner import unit_scores
from rlsd_harness.evaluation.study import RESULTS, RUN_LABEL

COLUMNS = {"mmmu": "MMMU", "mathvista": "MathVista", "mathvision": "MathVision", "zerobench": "ZeroBench",
           "wemath": "WeMath"}
# RLSD paper (arXiv 2604.03128) Table 2, Qwen3-VL-8B-Instruct, 4K responses, mean@4; the same numbers are in the
# official repository's README (github.com/iie-ycx/RLSD). "Avg" is the unweighted mean of the five.
PAPER_TABLE_2 = {
    "base": {"mmmu": 62.44, "mathvista": 73.80, "mathvision": 47.37, "zerobench": 19.76, "wemath": 54.10, "average": 51.49},
    "grpo": {"mmmu": 65.11, "mathvista": 76.20, "mathvision": 48.82, "zerobench": 22.60, "wemath": 56.57, "average": 53.86},
    "opsd": {"mmmu": 63.82, "mathvista": 75.10, "mathvision": 47.53, "zerobench": 21.06, "wemath": 54.95, "average": 52.49},
    "sdpo": {"mmmu": 65.11, "mathvista": 74.00, "mathvision": 47.27, "zerobench": 25.15, "wemath": 52.19, "average": 52.74},
    "grpo_opsd": {"mmmu": 63.22, "mathvista": 75.90, "mathvision": 48.52, "zerobench": 22.16, "wemath": 54.76,
                  "average": 52.91},
    "rlsd": {"mmmu": 67.22, "mathvista": 78.10, "mathvision": 52.73, "zerobench": 24.85, "wemath": 58.00, "average": 56.18},
}
# The paper's setting as run config keys (its §5): a run that differs in any of them is not comparable with Table 2.
PAPER_SETTING = {"model.arch": "qwen3_vl", "model.size": None, "train.prompts_per_step": 256, "train.group_size": 8,
                 "rollout.max_new_tokens": 4096, "rollout.temperature": 1.0, "eval.k": 4}
BASE = "0.00"


@dataclass(frozen=True)
class Cell:
    seeds: list[int]
    x: np.ndarray  # (seeds, units): unit scores in [0, 1], weighted for the average column


def _unit_scores(folder: Path, name: str) -> dict[str, float] | None:
    """{unit: score} of one benchmark's records in an evaluation folder, None when it was not evaluated."""
    if not (folder / f"{name}.metrics.json").exists():  # written once every item is in: a partial file is not read
        return None
    return unit_scores(folder / f"{name}.jsonl", name)[0]


def load_scores(study: Path) -> dict[tuple[str, str, str], dict[int, dict[str, float]]]:
    """{(method, fraction, benchmark): {seed: {unit: score}}} from every run's benchmark evaluations."""
    runs = study / "runs"
    if not runs.is_dir():
        raise FileNotFoundError(f"{study} has no runs/ folder: not a study")
    out: dict[tuple[str, str, str], dict[int, dict[str, float]]] = {}
    for run in sorted(runs.iterdir()):
        m = RUN_LABEL.match(run.name)
        if m is None or not (run / RESULTS).is_dir():
            continue
        for folder in sorted((run / RESULTS).iterdir()):
            for name in EVAL_BENCHMARK_NAMES:
                scores = _unit_scores(folder, name)
                if scores is not None:
                    out.setdefault((m["method"], folder.name, name), {})[int(m["seed"])] = scores
    if not out:
        raise FileNotFoundError(f"no benchmark evaluations under {runs}/*/{RESULTS}/: run "
                                f"`rlsd-evaluate study={study} benchmarks=[...]` first")
    return out


def _cell(per_seed: dict[int, dict[str, float]], where: str) -> Cell:
    seeds = sorted(per_seed)
    units = sorted(per_seed[seeds[0]])
    for s in seeds:
        if sorted(per_seed[s]) != units:
            raise ValueError(f"{where}: seed {s} is evaluated on other items than seed {seeds[0]}; every run at a "
                             f"budget point must see the same items (same limit= and data)")
    return Cell(seeds, np.array([[per_seed[s][u] for u in units] for s in seeds]))


def _average(cells: list[Cell]) -> Cell:
    """The benchmarks' unweighted mean as one (seeds, units) matrix: each unit weighted by 1 / (B n_b) times the
    pooled count, so that a row's mean is the mean of its benchmarks' means."""
    total = sum(c.x.shape[1] for c in cells)
    return Cell(cells[0].seeds, np.concatenate([c.x * total / (len(cells) * c.x.shape[1]) for c in cells], axis=1))


@dataclass
class PaperTable:
    fractions: list[str]
    methods: list[str]
    benchmarks: list[str]  # present in the study, in the paper's order
    summary: pd.DataFrame  # fraction, method, column, n_seeds, mean, low, high (points)
    differences: pd.DataFrame  # fraction, method, baseline, column, diff, low, high, p, p_holm, significant
    baseline: str
    setting_differences: list[str]


def build(study: str | Path, baseline: str = "grpo", n_resamples: int = stats.N_RESAMPLES,
          run_config: Callable[[Path], dict] | None = None) -> PaperTable:
    """The paper table of `study`; `run_config(run_dir)` reads a run's resolved config (default: config.yaml)."""
    study = Path(study)
    scores = load_scores(study)
    methods = sorted({m for m, _, _ in scores}, key=lambda m: (m != baseline, m))
    if baseline not in methods:
        raise ConfigError(f"baseline={baseline!r} has no benchmark evaluations in {study}; valid: {', '.join(methods)}")
    fractions = sorted({f for _, f, _ in scores}, key=float)
    benchmarks = [b for b in EVAL_BENCHMARK_NAMES if any(k[2] == b for k in scores)]
    rows, diffs = [], []
    kw = {"n_resamples": n_resamples}
    for frac in fractions:
        cells: dict[tuple[str, str], Cell] = {}
        for method in methods:
            present = [b for b in benchmarks if (method, frac, b) in scores]
            for b in present:
                cells[(method, b)] = _cell(scores[(method, frac, b)], f"{method} at {frac}, {b}")
            if present == benchmarks and len({tuple(cells[(method, b)].seeds) for b in present}) == 1:
                cells[(method, "average")] = _average([cells[(method, b)] for b in present])
        for (method, col), cell in cells.items():
            iv = stats.mean_interval(cell.x)
            rows.append({"fraction": frac, "method": method, "column": col, "n_seeds": len(cell.seeds),
                         "mean": 100 * iv.estimate, "low": 100 * iv.low, "high": 100 * iv.high})
        if frac == BASE:
            continue  # every method's step 0 is the same base: nothing to compare
        for col in [*benchmarks, "average"]:
            family = []
            for method in methods:
                if method == baseline or (method, col) not in cells or (baseline, col) not in cells:
                    continue
                a, b = cells[(method, col)], cells[(baseline, col)]
                paired = a.seeds == b.seeds
                c = stats.compare_runs(a.x, b.x, paired=paired, **kw)
                family.append({"fraction": frac, "method": method, "baseline": baseline, "column": col,
                               "paired": paired, "diff": 100 * c.difference.estimate,
                               "low": 100 * c.difference.low, "high": 100 * c.difference.high, "p": c.p_value})
            if family:
                adjusted, reject = stats.holm([f["p"] for f in family])
                for f, p_holm, sig in zip(family, adjusted, reject):
                    diffs.append({**f, "p_holm": float(p_holm), "significant": bool(sig)})
    reader = run_config or _read_run_config
    setting = sorted({d for run in (study / "runs").iterdir() if RUN_LABEL.match(run.name)
                      for d in setting_differences(reader(run))})
    return PaperTable(fractions, methods, benchmarks, pd.DataFrame(rows), pd.DataFrame(diffs), baseline, setting)


def _read_run_config(run: Path) -> dict:
    import yaml

    path = run / "config.yaml"
    return yaml.safe_load(path.read_text()) if path.exists() else {}  # unknown setting: differs in every key


def setting_differences(cfg: dict) -> list[str]:
    """`key: value (paper: value)` for every key of PAPER_SETTING where a run's config differs."""
    out = []
    for key, want in PAPER_SETTING.items():
        node = cfg
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node != want:
            out.append(f"{key}: {node!r} (paper: {want!r})")
    return out


def _fmt(v: float, signed: bool = False) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else (f"{v:+.1f}" if signed else f"{v:.1f}")


def markdown(table: PaperTable) -> str:
    """The table in the paper's layout, one block per budget point, then Table 2 for reference."""
    cols = [*table.benchmarks, "average"]
    head = "| method | seeds | " + " | ".join(COLUMNS.get(c, "average") for c in cols) + " |"
    rule = "|---|---|" + "---|" * len(cols)
    lines = [f"# The paper's main table: {len(table.methods)} methods x {len(table.benchmarks)} of the 5 benchmarks",
             "",
             "Headline metric per benchmark as mean@k, in points: mean over seeds [95 % interval over seeds and "
             "items]. Differences against "
             f"{table.baseline} are paired by seed (t-test of the crossed seed x item model), Holm-corrected over the methods "
             "within each column and budget point. The average is the unweighted mean of the benchmarks present"
             + ("" if len(table.benchmarks) == len(EVAL_BENCHMARK_NAMES) else
                f" ({len(table.benchmarks)} of {len(EVAL_BENCHMARK_NAMES)}: not the paper's Avg)") + ".", ""]
    s, d = table.summary, table.differences
    for frac in table.fractions:
        label = "the base policy (step 0, every method)" if frac == BASE else f"budget point {frac}"
        lines += [f"## {label}", "", head, rule]
        methods = [table.methods[0]] if frac == BASE else table.methods
        for method in methods:
            sub = s[(s["fraction"] == frac) & (s["method"] == method)].set_index("column")
            if sub.empty:
                continue
            name = "base" if frac == BASE else method
            cells = [f"{_fmt(sub.loc[c, 'mean'])} [{_fmt(sub.loc[c, 'low'])}, {_fmt(sub.loc[c, 'high'])}]"
                     if c in sub.index else "" for c in cols]
            lines.append(f"| {name} | {int(sub['n_seeds'].max())} | " + " | ".join(cells) + " |")
        if frac != BASE and len(d):
            for method in table.methods:
                sub = d[(d["fraction"] == frac) & (d["method"] == method)].set_index("column")
                if sub.empty:
                    continue
                cells = []
                for c in cols:
                    if c not in sub.index:
                        cells.append("")
                        continue
                    r = sub.loc[c]
                    mark = "**" if r["significant"] else ""
                    cells.append(f"{mark}{_fmt(r['diff'], True)}{mark} [{_fmt(r['low'], True)}, "
                                 f"{_fmt(r['high'], True)}] p {r['p_holm']:.2g}" if not math.isnan(r["p_holm"])
                                 else f"{_fmt(r['diff'], True)} [{_fmt(r['low'], True)}, {_fmt(r['high'], True)}]")
                lines.append(f"| {method} - {table.baseline} | | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## The paper's Table 2 (Qwen3-VL-8B-Instruct, mean@4; arXiv 2604.03128)", ""]
    if table.setting_differences:
        lines += ["Not comparable with these runs, which differ from the paper's setting in: "
                  + "; ".join(table.setting_differences) + ".", ""]
    else:
        lines += ["These runs use the paper's setting (model, batch, lengths, decoding): its numbers read beside "
                  "the last budget point.", ""]
    paper_cols = [*EVAL_BENCHMARK_NAMES, "average"]
    lines += ["| method | " + " | ".join(COLUMNS.get(c, "Avg") for c in paper_cols) + " |",
              "|---|" + "---|" * len(paper_cols)]
    for method, row in PAPER_TABLE_2.items():
        lines.append(f"| {method} | " + " | ".join(f"{row[c]:.2f}" for c in paper_cols) + " |")
    return "\n".join(lines) + "\n"


def write(study: str | Path, baseline: str = "grpo", n_resamples: int = stats.N_RESAMPLES) -> PaperTable:
    """Build the table and write paper_table.md and paper_table.csv (summary then differences) into the study."""
    study = Path(study)
    table = build(study, baseline, n_resamples)
    (study / "paper_table.md").write_text(markdown(table))
    frame = pd.concat([table.summary.assign(kind="mean"), table.differences.assign(kind="difference")],
                      ignore_index=True)
    frame.to_csv(study / "paper_table.csv", index=False, float_format="%.4f")
    return table
