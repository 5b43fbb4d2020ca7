"""The README's paper-table commands, rehearsed on CPU as written, at a tiny size.

The README marks each block it documents for the paper's main table with `<!-- rehearse: NAME -->`. This module
reads those blocks, keeps each command's words and swaps only what a CPU cannot have: the 8B model and the
data become a tiny Qwen3-VL built from a config and a few embedded-task rows, 8 GPUs become 2 ranks on the gloo
backend, vLLM becomes the HF engine, and the sizes shrink (`TRAIN_SIZES`, `EVAL_SIZES`, appended after the
README's own arguments, so they win). Everything else (the launchers and their flags, the experiment, ZeRO-3,
the study layout, the evaluation and the table) runs as a user would run it.

    python -m bench.paper_rehearsal [--out results/paper-rehearsal] [--methods grpo rlsd] [--seeds 0 1]
        [--benchmarks mathvision wemath] [--limit 40]

writes a study folder with the runs (weights are not kept: see .gitignore), their benchmark evaluations and
`paper_table.md`. The benchmark sources are the official repositories' MathVision and We-Math testmini files
where the checkout's sibling folder of real benchmark files holds them (`--sources real`), else the test fixtures (`--sources fixtures`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
REAL = REPO.parent / "shared" / "real-benchmarks"
MARK = re.compile(r"<!-- rehearse: (?P<name>[\w-]+) -->\s*```[^\n]*\n(?P<body>.*?)```", re.S)

# Appended to the README's training command: a run of a few steps of 2 prompts x 2 samples of 8 tokens.
TRAIN_SIZES = ("rollout=hf", "deepspeed.bf16=false", "train.steps=4", "train.prompts_per_step=2",
               "train.group_size=2", "train.micro_batch_size=2", "rollout.max_new_tokens=8", "train.save_every=2",
               "train.progress=false", "optim.lr=1e-4", "eval.n=4", "eval.budget_n=4", "eval.max_new_tokens=8")
EVAL_SIZES = ("rollout=hf", "eval.k=2", "eval.benchmark_max_new_tokens=8", "eval.max_new_tokens=8",
              "eval.progress=false", "eval.batch=8")


def readme_blocks(text: str | None = None) -> dict[str, list[list[str]]]:
    """{block name: [command words, ...]}: comments dropped, `\\` continuations joined, shell-quoted words split."""
    text = README.read_text() if text is None else text
    blocks: dict[str, list[list[str]]] = {}
    for m in MARK.finditer(text):
        joined = re.sub(r"\\\n\s*", " ", m["body"])
        commands = [shlex.split(line) for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        blocks[m["name"]] = commands
    return blocks


@dataclass
class Assets:
    """What replaces the README's paths on this machine."""

    root: Path
    model: Path
    data: Path
    hostfile: Path
    sources: dict[str, Path]
    study: Path
    extra_eval: list[str] = field(default_factory=list)


def _tiny_data(folder: Path, n: int = 16) -> Path:
    """n embedded-task rows in MMFineReason's columns (question, images, answer, solution), images beside."""
    from rlsd_harness.benchmarks import embedded

    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, item in enumerate(embedded.generate("train", n, seed=0, level=1)):
        image = folder / f"{i}.png"
        item.images[0].save(image)
        rows.append({"id": item.id, "question": item.question, "images": [image.name], "answer": str(item.answer),
                     "solution": item.solution})
    path = folder / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def make_assets(root: Path, sources: str = "fixtures", study: Path | None = None) -> Assets:
    from rlsd_harness.models import build_tiny

    root.mkdir(parents=True, exist_ok=True)
    hostfile = root / "hosts"
    hostfile.write_text("localhost slots=2\n")
    if sources == "real":
        if not (REAL / "mathvision" / "data" / "testmini.jsonl").exists() or not (REAL / "wemath" / "testmini.json").exists():
            raise FileNotFoundError(f"--sources real needs MathVision and We-Math testmini under {REAL}")
        found = {"mathvision": REAL / "mathvision", "wemath": REAL / "wemath"}
        extra = ["eval.splits.mathvision=testmini"]
    else:
        from tests import benchmark_fixtures

        found, extra = benchmark_fixtures.write_all(root / "benchmarks"), []
    return Assets(root=root, model=build_tiny("qwen3_vl", "tiny", seed=0), data=_tiny_data(root / "data"),
                  hostfile=hostfile, sources=found, study=study or root / "paper", extra_eval=extra)


def _swap(words: list[str], assets: Assets, method: str, seed: int, port: int,
          benchmarks: list[str] | None) -> list[str]:
    """The README's words with this machine's paths, ranks and sizes."""
    paths = {"/models/Qwen3-VL-8B-Instruct": str(assets.model), "/data/mmfinereason.parquet": str(assets.data),
             "results/paper": str(assets.study), "hosts": str(assets.hostfile), "node-1": "127.0.0.1"}
    names = {"MMMU": "mmmu", "MathVista": "mathvista", "MATH-V": "mathvision", "zerobench": "zerobench",
             "We-Math": "wemath"}
    out = []
    for i, w in enumerate(words):
        prev = words[i - 1] if i else ""
        if prev in ("--num_gpus", "--nproc_per_node"):
            w = "2"
        elif prev in ("--hostfile", "--master_addr"):
            w = paths[w]
        elif w.startswith("algorithm="):
            w = f"algorithm={method}"
        elif w.startswith("seed="):
            w = f"seed={seed}"
        elif w.startswith("eval.sources."):
            key, _, value = w.partition("=")
            name = names[Path(value).name]
            if name not in assets.sources or (benchmarks is not None and name not in benchmarks):
                continue
            w = f"{key}={assets.sources[name]}"
        elif w.startswith("benchmarks=") and benchmarks is not None:
            w = f"benchmarks=[{','.join(benchmarks)}]"
        else:
            key, eq, value = w.partition("=")
            for old, new in paths.items():
                if value == old or value.startswith(old + "/"):
                    w = f"{key}{eq}{new}{value[len(old):]}"
        out.append(w)
    launcher = out[0]
    if launcher in ("deepspeed", "torchrun"):
        out[0] = str(Path(sys.executable).parent / launcher)
        out.insert(1, f"--master_port={port}")
    elif launcher.startswith("rlsd-"):
        out[0] = str(Path(sys.executable).parent / launcher)
    return out


def command(block: str, words: list[str], assets: Assets, method: str = "rlsd", seed: int = 0, port: int = 29611,
            benchmarks: list[str] | None = None, limit: int | None = None) -> list[str]:
    """One README command as this machine runs it: swapped words, then the tiny sizes."""
    cmd = _swap(words, assets, method, seed, port, benchmarks)
    if block.startswith("train"):
        cmd += TRAIN_SIZES
    elif block == "evaluate":
        cmd += [*EVAL_SIZES, *assets.extra_eval, *([f"limit={limit}"] if limit else [])]
    return cmd


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "HARNESS_CACHE": os.environ.get(
        "HARNESS_CACHE", str(REPO / ".cache"))}


def run(cmd: list[str], log, timeout: int = 900) -> float:
    t0 = time.perf_counter()
    log("$ " + shlex.join(cmd))
    subprocess.run(cmd, cwd=REPO, env=env(), check=True, timeout=timeout)
    return time.perf_counter() - t0


def rehearse(assets: Assets, methods: list[str], seeds: list[int], benchmarks: list[str] | None = None,
             limit: int | None = 8, multinode_for: str | None = None, log=print, train: bool = True) -> dict[str, float]:
    """Run the README's blocks in order: train every (method, seed) (the several-nodes form for the runs of
    `multinode_for`; `train=False` goes on from a study whose runs are trained), evaluate the study, write the
    table. Returns the seconds per block."""
    blocks = readme_blocks()
    seconds: dict[str, float] = {}
    port = 29611
    for method in methods if train else []:
        for seed in seeds:
            name = "train-multinode" if method == multinode_for else "train"
            (words,) = blocks[name]
            port += 1
            seconds[name] = seconds.get(name, 0.0) + run(command(name, words, assets, method, seed, port), log)
    (words,) = blocks["evaluate"]
    seconds["evaluate"] = run(command("evaluate", words, assets, port=port + 1, benchmarks=benchmarks, limit=limit), log)
    (words,) = blocks["table"]
    seconds["table"] = run(command("table", words, assets), log)
    return seconds


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="results/paper-rehearsal")
    p.add_argument("--methods", nargs="+", default=["grpo", "rlsd"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--benchmarks", nargs="+", default=["mathvision", "wemath"])
    p.add_argument("--limit", type=int, default=40)
    p.add_argument("--sources", choices=("real", "fixtures"), default="real")
    p.add_argument("--evaluate-only", action="store_true",
                   help="go on from --out's trained runs (an interrupted rehearsal): evaluate and write the table")
    args = p.parse_args(argv)
    out = (REPO / args.out).resolve()
    if out.exists() and not args.evaluate_only:
        raise SystemExit(f"{out} exists: results are never overwritten; choose another --out or move it aside")
    if args.evaluate_only and not (out / "runs").is_dir():
        raise SystemExit(f"--evaluate-only needs the trained runs of {out}/runs")
    work = REPO / ".cache" / "paper-rehearsal-assets"
    assets = make_assets(work, args.sources, study=out)
    seconds = rehearse(assets, args.methods, args.seeds, args.benchmarks, args.limit,
                       multinode_for=None, train=not args.evaluate_only)
    cpu = subprocess.run(["sh", "-c", "lscpu | grep 'Model name' | head -1"], capture_output=True, text=True).stdout
    (out / "rehearsal.json").write_text(json.dumps({
        "seconds": seconds, "methods": args.methods, "seeds": args.seeds, "benchmarks": args.benchmarks,
        "limit": args.limit, "sources": args.sources, "cpu": cpu.split(":", 1)[-1].strip(),
        "load_average": os.getloadavg()}, indent=1))
    for run_dir in (out / "runs").iterdir():  # weights stay out of the repository; records and configs stay
        for heavy in ("checkpoints", "final", "budget_policies"):
            shutil.rmtree(run_dir / heavy, ignore_errors=True)
    print(f"rehearsal in {out}: {json.dumps(seconds)}")


if __name__ == "__main__":
    main()
