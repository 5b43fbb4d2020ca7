"""`python -m bench.newcomer_slips [out=results/newcomer-slips.md] [only=<id>,<id>]`: the newcomer catalogue.

Runs each slip a new user makes (issue #28's, and the earlier ones the slip tests pin: tests/test_slips.py,
tests/test_bad_input.py, tests/test_eval_slips.py, tests/test_eval_every_zero.py, tests/test_tracker_checks.py,
tests/test_help_examples.py) as its own console-script subprocess, from a fresh empty temporary folder (its
cwd; the run, study and evaluation outputs are sent there too), and records the command, the exit status, the
first line of stderr, the number of stderr lines and whether anything was written into that folder. A slip is
*clean* when it exits non-zero with one stderr line per problem (one line; or, where a command lists several
problems at once, "error: N problems..." and one line for each, plus at most one note), no traceback, and writes
nothing. Each slip is
refused in validation, before any model is built, so the whole catalogue costs the commands' start-up times.

Each slip's harness cache (HARNESS_CACHE) is inside its folder too, so a slip that builds or warms up a model
before refusing counts as writing. Fixtures the slips need (a copy of a shipped base with its weights damaged, local data files, benchmark folders
in their official layouts with a file or images missing, a copy of the committed demo study) are made once in a
separate folder, outside the slips' own folders. Writes the table to `out` (markdown) and beside it a JSON file.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
BASE = ROOT / "rlsd_harness" / "bases" / "qwen2_5_vl_tiny_warmup143_level1"


@dataclass(frozen=True)
class Slip:
    name: str
    origin: str  # where it was found / which test pins it
    argv: str  # the command line; {tmp} is the slip's own folder, {fx} the fixtures' folder
    setup: str = ""  # a pre-existing state in {tmp} (not counted as written): "run", see earlier_run


SLIPS: list[Slip] = [
    # rlsd-train: keys
    Slip("key of another objective", "issue #28 (81-line traceback); test_slips",
         "rlsd-train algorithm=grpo algorithm.params.eps_w=0.2 run.dir={tmp}/runs"),
    Slip("typo under algorithm.params", "test_slips", "rlsd-train algorithm.params.clip_rati=0.2 run.dir={tmp}/runs"),
    Slip("typo under algorithm.teacher", "issue #28; test_slips",
         "rlsd-train algorithm=rlsd algorithm.teacher.wieghts=sync run.dir={tmp}/runs"),
    Slip("typo under train", "test_slips", "rlsd-train train.stpes=3 run.dir={tmp}/runs"),
    Slip("typo at the top", "test_slips", "rlsd-train sed=1 run.dir={tmp}/runs"),
    Slip("typo of an algorithm", "test_slips", "rlsd-train algorithm=rlds run.dir={tmp}/runs"),
    Slip("key below a value", "test_slips", "rlsd-train train.steps.x=1 run.dir={tmp}/runs"),
    Slip("mapping set to a value", "test_slips", "rlsd-train train.budget=5 run.dir={tmp}/runs"),
    Slip("'+' on an existing key", "test_slips", "rlsd-train +train.steps=4 run.dir={tmp}/runs"),
    Slip("unclosed list", "test_slips", "rlsd-train 'eval.budget_points=[0.5,1' run.dir={tmp}/runs"),
    # rlsd-train: values
    Slip("word for a count", "test_bad_input", "rlsd-train train.steps=two run.dir={tmp}/runs"),
    Slip("float for a count", "test_bad_input", "rlsd-train train.steps=2.5 run.dir={tmp}/runs"),
    Slip("zero learning rate", "test_bad_input", "rlsd-train optim.lr=0 run.dir={tmp}/runs"),
    Slip("micro-batch does not divide", "test_bad_input", "rlsd-train train.micro_batch_size=3 run.dir={tmp}/runs"),
    Slip("budget kind without a value", "test_bad_input", "rlsd-train train.budget.kind=flops run.dir={tmp}/runs"),
    Slip("objective value out of range", "test_bad_input",
         "rlsd-train algorithm=rlsd algorithm.params.eps_w=1.5 run.dir={tmp}/runs"),
    Slip("model config without its folder", "test_bad_input", "rlsd-train model=qwen3-vl-8b run.dir={tmp}/runs"),
    Slip("local data without its file", "test_bad_input", "rlsd-train data=local run.dir={tmp}/runs"),
    Slip("unknown tracker", "test_bad_input", "rlsd-train 'run.trackers=[tensorbored]' run.dir={tmp}/runs"),
    Slip("tracker package not installed", "issue #28 (found after the run folder existed); test_tracker_checks",
         "rlsd-train 'run.trackers=[wandb]' run.dir={tmp}/runs"),
    Slip("run name with a path", "test_bad_input", "rlsd-train run.name=../elsewhere run.dir={tmp}/runs"),
    # rlsd-train: files
    Slip("truncated model.safetensors", "issue #28 (raw SafetensorError); test_eval_slips",
         "rlsd-train model.path={fx}/truncated run.dir={tmp}/runs"),
    Slip("data row without an answer", "test_bad_input",
         "rlsd-train data=local data.path={fx}/data/no-answer.jsonl data.test_path={fx}/data/no-answer.jsonl "
         "data.verifier=exact run.dir={tmp}/runs"),
    Slip("data row with a missing image", "test_bad_input",
         "rlsd-train data=local data.path={fx}/data/missing-image.jsonl data.test_path={fx}/data/missing-image.jsonl "
         "data.verifier=exact run.dir={tmp}/runs"),
    Slip("4000 x 3 image", "issue #28 (traceback in step 1 after writing 3 files); test_first_hour_data",
         "rlsd-train data=local data.path={fx}/data/thin-image.jsonl data.test_path={fx}/data/thin-image.jsonl "
         "data.verifier=exact run.dir={tmp}/runs"),
    Slip("run folder exists", "test_first_hour_overwrite / test_resume",
         "rlsd-train algorithm=rlsd seed=0 run.name=rlsd-s0 run.dir={tmp}/runs", setup="run"),
    Slip("resume with a changed model key", "issue #28 (refused only after the warm-up)",
         "rlsd-train algorithm=rlsd seed=0 run.name=rlsd-s0 run.resume=true model.size=small run.dir={tmp}/runs",
         setup="run"),
    # rlsd-compare
    Slip("experiment key on the command line", "issue #28 (traceback); test_slips",
         "rlsd-compare 'seeds=[0,1]' out={tmp}/study"),
    Slip("methods on the command line", "test_slips", "rlsd-compare experiment=smoke 'methods=[grpo,rlsd]' out={tmp}/study"),
    Slip("typo of an argument", "test_slips", "rlsd-compare experimnt=smoke out={tmp}/study"),
    Slip("typo of an experiment", "test_slips", "rlsd-compare experiment=smok out={tmp}/study"),
    Slip("eval_every=0 in a comparison", "issue #28 (8 runs, then no table); test_eval_every_zero",
         "rlsd-compare experiment=ablation_rlsd train.eval_every=0 out={tmp}/study"),
    Slip("bad override in a comparison", "test_bad_input", "rlsd-compare experiment=smoke train.steps=two out={tmp}/study"),
    # rlsd-report / rlsd-credit / rlsd-warmup
    Slip("typo of report's argument", "test_slips", "rlsd-report foldr={fx}/embedded"),
    Slip("report of a folder that is not there", "catalogue", "rlsd-report folder={tmp}/nothing"),
    Slip("credit of a run without weights", "issue #28 (--help example failed); test_help_examples",
         "rlsd-credit run={fx}/embedded/runs/rlsd-s0 out={tmp}/credit.png"),
    Slip("unknown warm-up argument", "catalogue", "rlsd-warmup rebuld=true"),
    # rlsd-evaluate
    Slip("benchmark without a source", "issue #28; test_eval_slips",
         "rlsd-evaluate checkpoint={base} 'benchmarks=[mmmu]' out={tmp}/eval"),
    Slip("MathVision folder with testmini only", "issue #28 (no eval.splits hint); test_eval_slips",
         "rlsd-evaluate checkpoint={base} 'benchmarks=[mathvision]' eval.sources.mathvision={fx}/mathvision-mini "
         "out={tmp}/eval"),
    Slip("MathVista folder without its images", "issue #28 (hint the CLI refused); test_eval_slips",
         "rlsd-evaluate checkpoint={base} 'benchmarks=[mathvista]' eval.sources.mathvista={fx}/mathvista-official "
         "out={tmp}/eval"),
    Slip("unknown prompt variant", "test_eval_slips",
         "rlsd-evaluate checkpoint={base} 'benchmarks=[zerobench:fancy]' eval.sources.zerobench={fx}/bench/zerobench "
         "out={tmp}/eval"),
    Slip("unknown benchmark", "test_eval_slips", "rlsd-evaluate checkpoint={base} 'benchmarks=[mmlu]' out={tmp}/eval"),
    Slip("empty model.safetensors", "issue #28 (raw SafetensorError); test_eval_slips",
         "rlsd-evaluate checkpoint={fx}/empty 'benchmarks=[embedded]' limit=1 out={tmp}/eval"),
    Slip("corrupt model.safetensors", "issue #28 (raw SafetensorError); test_eval_slips",
         "rlsd-evaluate checkpoint={fx}/overwritten 'benchmarks=[embedded]' limit=1 out={tmp}/eval"),
    Slip("checkpoint that is not there", "catalogue", "rlsd-evaluate checkpoint={tmp}/nothing out={tmp}/eval"),
    Slip("evaluation key out of range", "test_bad_input", "rlsd-evaluate checkpoint={base} eval.batch=0 out={tmp}/eval"),
    Slip("all four benchmark problems at once", "issue #28 (four tries for four fixes): one line per problem",
         "rlsd-evaluate checkpoint={base} 'benchmarks=[mmmu,mathvista,mathvision,zerobench:fancy]' "
         "eval.sources.mathvista={fx}/mathvista-official eval.sources.mathvision={fx}/mathvision-mini "
         "eval.sources.zerobench={fx}/bench/zerobench out={tmp}/eval"),
]
# A command that finds several problems lists them all at once: "error: 3 config errors:", "error: 4 problems;
# ...", "error: data.path: 2 bad row(s); ...", then a line for each (and at most one note, e.g. where relative
# image paths start).
LISTING = re.compile(r"^error: (?:[\w.]+: )?(\d+) (?:config errors\b|problems\b|bad row\(s\))")


def make_fixtures(fx: Path) -> None:
    """Everything the slips read, made once: damaged copies of a shipped base, local data, benchmark folders."""
    from PIL import Image

    sys.path.insert(0, str(ROOT))
    from tests import benchmark_fixtures as fixtures

    for damage in ("truncated", "empty", "overwritten"):
        shutil.copytree(BASE, fx / damage)
        weights = fx / damage / "model.safetensors"
        data = weights.read_bytes()
        weights.write_bytes({"empty": b"", "truncated": data[: len(data) // 2], "overwritten": b"\0" * 64}[damage])
    d = fx / "data"
    d.mkdir()
    Image.new("RGB", (32, 32), "red").save(d / "a.png")
    Image.new("RGB", (4000, 3), "red").save(d / "thin.png")
    good = {"question": "How many?", "answer": "3", "images": ["a.png"]}
    rows = {"no-answer": {"question": "q", "images": ["a.png"]}, "missing-image": {**good, "images": ["nope.png"]},
            "thin-image": {**good, "images": ["thin.png"]}}
    for name, row in rows.items():
        (d / f"{name}.jsonl").write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n")
    bench = fixtures.write_all(fx / "bench")
    mini = fx / "mathvision-mini"  # the official MATH-V layout ships testmini only
    shutil.copytree(bench["mathvision"], mini)
    for f in (mini / "data").glob("test-*"):
        f.unlink()
    vista = fx / "mathvista-official" / "data"  # the official MathVista repository: testmini.json, no images
    vista.mkdir(parents=True)
    vista_rows = {r["pid"]: dict(r, image=f"images/{r['pid']}.jpg") for r in fixtures.MATHVISTA_ROWS}
    (vista / "testmini.json").write_text(json.dumps(vista_rows))
    shutil.copytree(ROOT / "results" / "embedded", fx / "embedded")


def earlier_run(runs: Path) -> None:
    """What an earlier `rlsd-train algorithm=rlsd seed=0` left: its config and a checkpoint's manifest (the
    marker of a complete checkpoint; the refusals read no weights)."""
    from omegaconf import OmegaConf

    from rlsd_harness.config import compose_config

    run_dir = runs / "rlsd-s0"
    (run_dir / "checkpoints" / "step-000010").mkdir(parents=True)
    cfg = compose_config(["algorithm=rlsd", "seed=0", f"run.dir={runs}"])
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    (run_dir / "checkpoints" / "step-000010" / "manifest.json").write_text("{}")


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def run_slip(slip: Slip, fx: Path, scratch: Path) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="slip-", dir=scratch))
    if slip.setup == "run":
        earlier_run(tmp / "runs")
    command = slip.argv.format(tmp=tmp, fx=fx, base=BASE)
    argv = shlex.split(command)
    argv[0] = str(BIN / argv[0])
    before = snapshot(tmp)
    # the harness cache inside the slip's folder: a slip that builds or warms up a model before its refusal
    # (into the repository's .cache otherwise) counts as writing
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "HARNESS_CACHE": str(tmp / ".cache")}
    env.pop("HARNESS_DEBUG", None)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(argv, cwd=tmp, env=env, capture_output=True, text=True, timeout=300)
        rc, err = proc.returncode, proc.stderr
    except subprocess.TimeoutExpired as e:
        rc, err = "timeout", (e.stderr or b"").decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
    seconds = time.perf_counter() - t0
    after = snapshot(tmp)
    written = sorted(k for k in after if before.get(k) != after[k])
    lines = [ln for ln in err.splitlines() if ln.strip()]
    listing = LISTING.match(lines[0]) if lines else None
    one_per_problem = (1 < len(lines) <= int(listing.group(1)) + 2) if listing else len(lines) == 1
    clean = rc not in (0, "timeout") and one_per_problem and "Traceback" not in err and not written
    shutil.rmtree(tmp)
    def shown(text: str) -> str:  # the same on every machine: the folders by name, the repository relative
        return text.replace(str(fx), "<fixtures>").replace(str(tmp), "<tmp>").replace(str(ROOT) + "/", "")

    lines = [shown(ln) for ln in lines]
    return {"name": slip.name, "origin": slip.origin, "command": shown(command), "exit": rc, "first_line": lines[0]
            if lines else "", "stderr_lines": len(lines), "stderr": shown(err[-4000:]) if not clean else "\n".join(lines),
            "written": written[:10], "clean": clean, "seconds": round(seconds, 1)}


def markdown(results: list[dict], header: str) -> str:
    def cell(s: str) -> str:
        return s.replace("|", "\\|").replace("\n", " ")

    def shown(r: dict) -> str:  # a clean listing shows every problem's line, the rest their first line
        return " ⏎ ".join(r["stderr"].splitlines()) if r["clean"] and r["stderr_lines"] > 1 else r["first_line"]

    out = [header, "", "| # | slip (found by / pinned in) | command | exit | stderr lines | stderr: its first line (a listing: every line) | "
           "wrote | clean |", "|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(results, 1):
        out.append(f"| {i} | {cell(r['name'])} ({cell(r['origin'])}) | `{cell(r['command'])}` | {r['exit']} | "
                   f"{r['stderr_lines']} | {cell(shown(r))} | {'yes: ' + ', '.join(r['written']) if r['written'] else 'nothing'} | "
                   f"{'yes' if r['clean'] else '**no**'} |")
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    opts = dict(a.split("=", 1) for a in argv)
    out = Path(opts.get("out", ROOT / "results" / "newcomer-slips.md"))
    only = set(opts["only"].split(",")) if "only" in opts else None
    slips = [s for s in SLIPS if only is None or s.name in only]
    if only and len(slips) != len(only):
        known = ", ".join(s.name for s in SLIPS)
        print(f"error: only= names {sorted(only - {s.name for s in slips})}; valid: {known}", file=sys.stderr)
        return 2
    scratch = Path(tempfile.mkdtemp(prefix="newcomer-slips-"))
    try:
        fx = scratch / "fixtures"
        fx.mkdir()
        make_fixtures(fx)
        results = []
        t0 = time.perf_counter()
        for slip in slips:
            r = run_slip(slip, fx, scratch)
            results.append(r)
            print(f"{'clean' if r['clean'] else 'NOT CLEAN':>9}  exit={r['exit']} lines={r['stderr_lines']} "
                  f"{r['seconds']:>5.1f}s  {slip.name}: {r['first_line'][:160]}", flush=True)
        seconds = time.perf_counter() - t0
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    clean = sum(r["clean"] for r in results)
    load = os.getloadavg()
    header = (f"# The newcomer catalogue: {clean} of {len(results)} slips answered cleanly\n\n"
              f"`python -m bench.newcomer_slips` ({seconds:.0f} s, load average {load[0]:.1f}). Each slip runs as its "
              "console script in a fresh empty folder; *clean* = a non-zero exit, one stderr line per problem "
              "(one line, or where a command lists several problems at once `error: N problems` and a line for "
              "each, plus at most one note), no traceback, nothing written. `<tmp>` is the slip's own folder, `<fixtures>` the damaged model "
              "copies, data files and benchmark folders the script makes first.")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown(results, header))
    out.with_suffix(".json").write_text(json.dumps({"seconds": seconds, "load": load, "slips": results}, indent=1))
    print(f"{clean}/{len(results)} clean; {out}")
    return 0 if clean == len(results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
