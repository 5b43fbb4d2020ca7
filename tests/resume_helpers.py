"""Comparing two run folders bit for bit: every metric (wall-clock ones aside), the final weights, and the last
checkpoint's weights, optimizer state, teacher, RNG, scheduler and counters. Shared by the resume tests and the
kill-and-resume fuzzer (bench/kill_fuzz.py)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file


def timing(key: str) -> bool:
    """Wall-clock quantities: they differ between any two runs, interrupted or not."""
    return "time/" in key or key.endswith("seconds")


def metric_lines(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def _tensors_differ(a: Path, b: Path) -> list[str]:
    ta, tb = load_file(a), load_file(b)
    if set(ta) != set(tb):
        return [f"{a.name}: tensor names differ ({sorted(set(ta) ^ set(tb))[:3]})"]
    return [f"{a.name}:{k}" for k in sorted(ta) if ta[k].dtype != tb[k].dtype or not torch.equal(ta[k], tb[k])]


def _untimed(tree):
    if isinstance(tree, dict):
        return {k: _untimed(v) for k, v in tree.items() if not timing(k)}
    return tree


def differences(a: Path, b: Path, checkpoints: bool = True) -> list[str]:
    """Everything in which run folders `a` and `b` differ (an empty list: bit-identical)."""
    a, b = Path(a), Path(b)
    out = []
    ma, mb = metric_lines(a), metric_lines(b)
    if len(ma) != len(mb):
        out.append(f"metrics.jsonl: {len(ma)} lines vs {len(mb)}")
    for la, lb in zip(ma, mb):
        keys = {k for k in la.keys() | lb.keys() if not timing(k)}
        bad = sorted(k for k in keys if la.get(k) != lb.get(k))
        if bad:
            out.append(f"metrics step {la.get('rollout_step')}: {bad[:6]}")
    ea, eb = ({q.name: q.read_text() for q in sorted((r / "evals").glob("*.jsonl"))} for r in (a, b))
    if ea != eb:  # the per-item records of every held-out evaluation
        out.append(f"evals/: {sorted(k for k in ea.keys() | eb.keys() if ea.get(k) != eb.get(k))[:4]}")
    for name in ("model.safetensors",):
        fa, fb = a / "final" / name, b / "final" / name
        if fa.exists() != fb.exists():
            out.append(f"final/{name}: only one run has it")
        elif fa.exists():
            out += [f"final/{d}" for d in _tensors_differ(fa, fb)]
    if checkpoints:
        ca, cb = sorted((a / "checkpoints").glob("step-*")), sorted((b / "checkpoints").glob("step-*"))
        if not ca or not cb or ca[-1].name != cb[-1].name:
            out.append(f"last checkpoints differ: {ca[-1:]} vs {cb[-1:]}")
        else:
            for fa in sorted(ca[-1].glob("*.safetensors")):
                out += [f"{ca[-1].name}/{d}" for d in _tensors_differ(fa, cb[-1] / fa.name)]
            for name in ["state.json"] + sorted(p.name for p in ca[-1].glob("rank*.json")):
                ja, jb = (_untimed(json.loads((c[-1] / name).read_text())) for c in (ca, cb))
                if ja != jb:
                    out.append(f"{ca[-1].name}/{name} differs")
    return out
