"""`python -m bench.memory [--vocab V ...] [--lengths T ...] [--modes M ...] [--out FILE]`: peak memory of one
RLSD step (rollout excluded) by vocabulary size, response length and output-head mode.

Not a test: it measures, on the tiny Qwen3-VL with its embedding and head widened to V rows
(`model.head_vocab`; the tokenizer's ids are a prefix, the rest never sampled), one prompt x 2 responses of
exactly T tokens, one row per micro-batch, through the trainer's step: the teacher's forward, the update's
forward and backward, the optimizer step. Modes (rlsd_harness/training/vocab.py):
  full     the whole (B, T, V) fp32 log-softmax, as every forward computed it before the chunked head;
  chunked  the chunked head at its automatic chunk size (train.logits_chunk=null);
  floor    the same step with the head's output cut to the sampled tokens: the least any head can cost.
The rollout is excluded: its prompts are encoded by one real 1-token generate call, and the responses are
random tokens of the tokenizer (no end-of-turn, so every row is T long), all made before the measurement.
One step at T = 16 runs first, so the optimizer state exists before the measured step.

Peak memory: the process's resident-set high-water mark (Linux VmHWM, reset through /proc/self/clear_refs
just before the step) minus the resident set at that moment. Each configuration runs in a fresh
subprocess, so peaks never mix. By default the subprocesses run with glibc's mmap threshold fixed at 1 MiB
(MALLOC_MMAP_THRESHOLD_): glibc otherwise raises it after each large free, so the chunked head's repeated
tens-of-MB chunks come from the heap, which keeps freed chunks resident (measured here: +100 MB at 256 tokens,
+1 GB at 1,024 tokens at V = 151,936, none of it live tensors). The trainer fixes the threshold itself on CPU
with the chunked head (`keep_large_frees_off_the_heap`); `--malloc glibc` leaves the environment alone, so it
measures that. The table and the fitted bytes per response token go to stdout and `--out`.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MODES = ("full", "chunked", "floor")
MIB = 1024**2


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:  # "5" resets VmHWM to the current resident set (Linux >= 4.0)
        f.write("5")


def measure(vocab: int, length: int, mode: str, threads: int = 1) -> dict[str, Any]:
    """One configuration, in this process: {peak_mib, seconds, ...}."""
    import torch

    from rlsd_harness.config import compose_config
    from rlsd_harness.data import build_data
    from rlsd_harness.models import load_model, load_processor, resolve_model
    from rlsd_harness.rollout.hf import Rollout, vision_token_ids
    from rlsd_harness.training.preflight import read_config
    from rlsd_harness.training.trainer import Trainer
    from rlsd_harness.training.vocab import HeadConfig

    torch.set_num_threads(threads)
    run_dir = tempfile.mkdtemp(prefix="bench-memory-")
    overrides = [
        "algorithm=rlsd", "model=tiny_qwen3vl", "model.warmup=null", f"model.head_vocab={vocab}",
        "train.prompts_per_step=1", "train.group_size=2", "train.micro_batch_size=1", "train.eval_every=0",
        "train.save_every=0", "train.progress=false", f"rollout.max_new_tokens={length}", f"run.dir={run_dir}",
        "train.logits_chunk=" + ("0" if mode == "full" else "null"),
    ]
    cfg = read_config(compose_config(overrides))  # as rlsd-train: the Trainer reads a validated, typed config
    path = resolve_model(cfg.model)
    model, processor = load_model(path), load_processor(path)
    trainer = Trainer(cfg, model, processor, build_data(cfg.data, cfg.seed), log=lambda m: None)
    if mode == "floor":
        trainer.head = HeadConfig("floor")
    real_generate = trainer.rollout.generate
    tok = processor.tokenizer
    banned = set(vision_token_ids(model.config)) | {tok.convert_tokens_to_ids("<|im_end|>"), tok.pad_token_id}
    allowed = torch.tensor([i for i in range(len(tok)) if i not in banned])

    def rollout_of(prompts, params, seeds, n_tokens: int) -> Rollout:
        one = real_generate(prompts, type(params)(**{**vars(params), "max_new_tokens": 1}), seeds)
        g = torch.Generator().manual_seed(len(seeds) * 1000 + n_tokens)
        ids = allowed[torch.randint(0, len(allowed), (len(seeds), n_tokens), generator=g)]
        return Rollout(one.prompt, one.vision, ids, torch.ones(ids.shape), torch.zeros(ids.shape),
                       tok.batch_decode(ids))

    step_prompts = lambda s: trainer.data.prompts(s, cfg.train.prompts_per_step)  # noqa: E731
    seeds = list(range(cfg.train.group_size))
    warm = rollout_of(step_prompts(1), trainer.sampling, seeds, 16)
    measured = rollout_of(step_prompts(2), trainer.sampling, seeds, length)
    queue = [warm, measured]
    trainer.rollout.generate = lambda prompts, params, seeds: queue.pop(0)
    trainer.step()  # optimizer state and gradient buffers exist from here on
    gc.collect()
    base = _status_kib("VmRSS")
    _reset_peak()
    t0 = time.perf_counter()
    metrics = trainer.step()
    seconds = time.perf_counter() - t0
    peak = _status_kib("VmHWM")
    return {"vocab": vocab, "length": length, "mode": mode, "peak_mib": (peak - base) / 1024,
            "baseline_mib": base / 1024, "seconds": seconds, "rows": cfg.train.group_size,
            "chunk_rows": trainer.head.rows(vocab, torch.device("cpu")) if mode == "chunked" else None,
            "loss": metrics["actor/loss"]}


def _child(vocab: int, length: int, mode: str, threads: int, malloc: str) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.memory", "--one", str(vocab), str(length), mode, "--threads", str(threads)]
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_OFFLINE": "1"}
    if malloc == "fixed":
        env["MALLOC_MMAP_THRESHOLD_"] = str(MIB)
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=Path(__file__).resolve().parent.parent)
    if out.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _slope(rows: list[dict], vocab: int, mode: str) -> float | None:
    """Least-squares bytes per response token (per row) of `mode` at `vocab`, over the measured lengths."""
    pts = [(r["length"], r["peak_mib"] * MIB / r["rows"]) for r in rows if r["vocab"] == vocab and r["mode"] == mode]
    if len(pts) < 2:
        return None
    mx, my = sum(x for x, _ in pts) / len(pts), sum(y for _, y in pts) / len(pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)


def table(rows: list[dict]) -> str:
    lines = ["| V | response tokens | full (MiB) | chunked (MiB) | floor (MiB) | full / floor | chunked / floor | "
             "step s (full / chunked / floor) |", "|---|---|---|---|---|---|---|---|"]
    for vocab in sorted({r["vocab"] for r in rows}):
        for length in sorted({r["length"] for r in rows}):
            got = {r["mode"]: r for r in rows if r["vocab"] == vocab and r["length"] == length}
            peaks = {m: f"{got[m]['peak_mib']:.0f}" if m in got else "-" for m in MODES}
            ratios = {m: f"{got[m]['peak_mib'] / got['floor']['peak_mib']:.2f}x" if m in got and "floor" in got else "-"
                      for m in MODES}
            secs = " / ".join(f"{got[m]['seconds']:.1f}" if m in got else "-" for m in MODES)
            lines.append(f"| {vocab} | {length} | {peaks['full']} | {peaks['chunked']} | {peaks['floor']} | "
                         f"{ratios['full']} | {ratios['chunked']} | {secs} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.split("\n\n")[0])
    p.add_argument("--vocab", type=int, nargs="+", default=[512, 151936])
    p.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048])
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--threads", type=int, default=1, help="torch threads per measurement (default 1)")
    p.add_argument("--malloc", choices=("fixed", "glibc"), default="fixed",
                   help="fixed: glibc's mmap threshold at 1 MiB in every measurement (default); glibc: its default")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "memory.json")
    p.add_argument("--one", nargs=3, metavar=("V", "T", "MODE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        vocab, length, mode = int(args.one[0]), int(args.one[1]), args.one[2]
        print(json.dumps(measure(vocab, length, mode, args.threads)))
        return
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    rows = []
    for vocab in args.vocab:
        for length in args.lengths:
            for mode in args.modes:
                r = _child(vocab, length, mode, args.threads, args.malloc)
                rows.append(r)
                print(f"V={vocab} T={length} {mode}: peak {r['peak_mib']:.0f} MiB above the step's start, "
                      f"{r['seconds']:.1f} s", flush=True)
    slopes = {f"{m}@{v}": _slope(rows, v, m) for v in args.vocab for m in args.modes}
    report = {"rows": rows, "bytes_per_response_token": slopes, "load_avg_1min_at_start": load,
              "cpus": os.cpu_count(), "threads": args.threads, "malloc": args.malloc,
              "command": "python -m bench.memory " + " ".join(argv if argv is not None else sys.argv[1:])}
    print()
    print(table(rows))
    print()
    for k, v in slopes.items():
        if v is not None:
            print(f"bytes per response token per row, {k}: {v:,.0f}")
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"(load average {load:.1f} on {os.cpu_count()} CPUs at the start; written to {args.out})")


if __name__ == "__main__":
    main()
