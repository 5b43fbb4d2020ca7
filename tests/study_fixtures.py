"""Synthetic comparison folders in the run-folder format the report reads, with planted differences.

A run folder: metrics.jsonl (a step-0 line with the base evaluation, one line per rollout step with a few
training curves, budget-point evaluations as eval/<split>/{mean@k, pass@1, n, k, file, budget_point}),
evals/<split>-step<rollout_step:06d>.jsonl (one line per item: id, correct = k 0/1 verdicts, greedy), and
final/config.json (a finished run). Nothing here trains or imports the training code.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np

BUDGET_KEY = "ledger/cum/flops/total"


def write_run(run_dir: Path, evals: dict[float, dict[str, np.ndarray]], *, steps: int = 10, budget: float = 1e12,
              finished: bool = True, curves: dict[str, np.ndarray] | None = None) -> None:
    """One run: `evals[budget_point][split]` is an (items, k) 0/1 array evaluated at that fraction of
    `budget` (0 = the base at step 0); item ids are i0, i1, ...; `curves` maps a metric to one value per
    rollout step."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "evals").mkdir(exist_ok=True)
    by_step: dict[int, dict] = {}
    for bp, splits in evals.items():
        step = 0 if bp == 0 else max(1, round(bp * steps))
        line = by_step.setdefault(step, {})
        for split, correct in splits.items():
            rel = f"evals/{split}-step{step:06d}.jsonl"
            with (run_dir / rel).open("w") as f:
                for i, row in enumerate(np.asarray(correct, dtype=int)):
                    f.write(json.dumps({"id": f"i{i}", "correct": row.tolist(), "greedy": int(row[0])}) + "\n")
            line.update({f"eval/{split}/mean@k": float(np.mean(correct)), f"eval/{split}/pass@1": float(np.mean(correct[:, 0])),
                         f"eval/{split}/n": int(correct.shape[0]), f"eval/{split}/k": int(correct.shape[1]),
                         f"eval/{split}/file": rel, f"eval/{split}/budget_point": float(bp)})
        line["eval/seconds"] = 0.1
    lines = [{"rollout_step": 0, "step": 0.0, **by_step.get(0, {})}]
    for step in range(1, steps + 1):
        line = {"rollout_step": step, "step": float(step), BUDGET_KEY: budget * step / steps,
                "ledger/cum/time/step": 0.5 * step}
        for key, values in (curves or {}).items():
            line[key] = float(values[step - 1])
        line.update(by_step.get(step, {}))
        lines.append(line)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    if finished:
        (run_dir / "final").mkdir(exist_ok=True)
        (run_dir / "final" / "config.json").write_text("{}")


def sample_correct(rng: np.random.Generator, logits: np.ndarray, k: int) -> np.ndarray:
    p = 1.0 / (1.0 + np.exp(-logits))
    return (rng.random((logits.size, k)) < p[:, None]).astype(int)


def fabricate_study(out: Path, effects: dict[str, float], seeds: list[int], *, items: int = 200, k: int = 4,
                    points: tuple[float, ...] = (0.5, 1.0), split: str = "test", rng_seed: int = 0,
                    gain: float = 0.4, seed_sd: float = 0.15) -> dict[tuple[str, int, float], np.ndarray]:
    """Runs of every method x seed in out/runs. An item's success logit is its difficulty + the seed's
    effect (shared by every method of that seed: the pairing) + gain * b + effects[method] * b at budget
    fraction b, so a method's planted difference grows to `effects[method]` logits at the full budget.
    Returns the 0/1 arrays written, keyed (method, seed, budget)."""
    rng = np.random.default_rng(rng_seed)
    difficulty = rng.normal(0.0, 1.5, items)
    seed_effect = {s: rng.normal(0.0, seed_sd) for s in seeds}
    written = {}
    for method, effect in effects.items():
        for s in seeds:
            evals = {}
            for b in (0.0, *points):
                logits = difficulty + seed_effect[s] + gain * b + effect * b
                # the base evaluation is the same policy for every method of a seed: the same draws
                draw = np.random.default_rng([rng_seed, s, int(b * 1000), 0 if b == 0 else zlib.crc32(method.encode())])
                correct = sample_correct(draw, logits, k)
                evals[b] = {split: correct}
                written[(method, s, b)] = correct
            curves = {"rollout/reward": np.linspace(0.2, 0.4, 10) + 0.01 * s, "actor/entropy": np.linspace(1.0, 0.5, 10)}
            write_run(out / "runs" / f"{method}-s{s}", evals, curves=curves)
    return written


def records_from(written: dict[tuple[str, int, float], np.ndarray]):
    """The stats module's tidy frame built directly from the arrays (independent of the report's reader)."""
    import pandas as pd

    rows = [{"method": m, "seed": s, "budget": b, "item": f"i{i}", "score": float(row.mean())}
            for (m, s, b), correct in written.items() for i, row in enumerate(correct)]
    return pd.DataFrame(rows)
