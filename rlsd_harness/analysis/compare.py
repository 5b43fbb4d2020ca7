"""`rlsd-compare experiment=embedded`: methods x seeds from one experiment file, each trained to the
same compute budget from the same base policy, compared at matched budget points.

Runs land in results/<experiment>/runs/<method>-s<seed>/. Each run's state comes from its completion markers
(training/run.py: run_state): a finished run is not rerun; a partial or failed one resumes from its newest good
checkpoint; one with none starts over. A run that fails is recorded (failed.json) and shown as failed in the
table, and the matrix goes on. The report (tables, plots, README) is rebuilt from the run folders at the end
(analysis/report.py), every file written under a temporary name and renamed.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import time
import traceback
from pathlib import Path

import torch
from omegaconf import OmegaConf

from rlsd_harness.config import REPO, arms, compose_config, load_experiment, run_overrides
from rlsd_harness.training import checkpoint
from rlsd_harness.training.durable import atomic_path, atomic_write_text, kill_point
from rlsd_harness.training.preflight import check_config
from rlsd_harness.training.run import run, run_state


def dry_run(exp, name: str, runs_dir: Path, extra: list[str]) -> str:
    """Validate every run's configuration and print the plan: runs, compute per method, memory per GPU."""
    from rlsd_harness.algorithms import build_objective
    from rlsd_harness.analysis.plan import plan

    cfgs, needs_ref, needs_teacher, missing = {}, {}, {}, set()
    for method in arms(exp):
        cfg = compose_config(run_overrides(exp, method, exp.seeds[0], runs_dir, extra))
        obj = build_objective(cfg.algorithm.name, dict(cfg.algorithm.get("params") or {}))
        cfgs[method], needs_ref[method], needs_teacher[method] = cfg, obj.needs_ref, obj.teacher_signal != "none"
        missing |= {f"{group}.path" for group in ("model", "data") if OmegaConf.is_missing(cfg[group], "path")}
    p = exp.get("plan") or {}
    lines = [f"experiment {name}: {len(arms(exp))} arms x {len(exp.seeds)} seeds -> {runs_dir}", ""]
    if missing:
        lines += [f"to set before launching: {', '.join(sorted(missing))}", ""]
    lines.append(plan(cfgs, needs_ref, needs_teacher, int(exp.get("world_size", 1)), int(p.get("prompt_tokens", 400)),
                      int(p.get("image_patches", 1024)), int(p.get("response_tokens", 1024))))
    return "\n".join(lines)


def compare(name: str = "embedded", out: str | Path | None = None, overrides: list[str] | None = None,
            dry: bool = False) -> Path | str:
    """Run (or continue) experiment `name` into `out` (default results/<name>) and write its report; returns
    the folder. With `dry`, only validates every run's configuration and returns the plan as text."""
    from tqdm.auto import tqdm

    from rlsd_harness import dist
    from rlsd_harness.analysis.report import write_report

    extra = list(overrides or [])
    exp = load_experiment(name)
    out = Path(out) if out else REPO / "results" / name
    runs_dir = out / "runs"
    jobs = [(m, s) for m in arms(exp) for s in exp.seeds]
    for m, s in jobs:  # validate every configuration before spending any compute or writing anything
        # a dry run checks the batch geometry of the planned cluster and lists the paths still to set
        check_config(compose_config(run_overrides(exp, m, s, runs_dir, extra)), allow_missing=dry,
                     world=int(exp.get("world_size", 1)) if dry else None)
    if dry:
        return dry_run(exp, name, runs_dir, extra)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    log = lambda msg: tqdm.write(msg, file=sys.stderr)  # noqa: E731
    bar = tqdm(jobs, desc=f"{name}: methods x seeds", unit="run", position=0, dynamic_ncols=True)
    command = " ".join(["rlsd-compare", f"experiment={name}", f"out={out}", *map(shlex.quote, extra)])
    for method, seed in bar:
        run_dir = runs_dir / f"{method}-s{seed}"
        bar.set_postfix(run=run_dir.name)
        state = run_state(run_dir)
        if state == "finished":
            continue
        good = checkpoint.latest_good(run_dir, log) if state in ("partial", "failed") else None
        if state in ("partial", "failed") and good is None:
            log(f"{run_dir.name}: no good checkpoint to resume from; starting it over")
        flags = ["run.resume=true"] if good is not None else ["run.overwrite=true"]
        (run_dir / "failed.json").unlink(missing_ok=True)
        try:
            run(compose_config(run_overrides(exp, method, seed, runs_dir, extra) + flags + ["train.progress=false"]),
                log, resume_command=command)
        except Exception as e:  # a failed run is reported, not dropped, and the matrix goes on
            run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(run_dir / "failed.json", json.dumps({"error": f"{type(e).__name__}: {e}",
                                                                   "traceback": traceback.format_exc()}))
            log(f"{run_dir.name} failed: {e}")
        kill_point("matrix")
    dist.shutdown()
    meta = {"experiment": name, "seconds": time.time() - started,
            "machine": f"{platform.platform()}, {os.cpu_count()} CPU cores, no GPU" if not torch.cuda.is_available()
            else f"{platform.platform()}, {torch.cuda.get_device_name()}",
            "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    atomic_write_text(out / "meta.json", json.dumps(meta, indent=1))
    rlsd_runs = sorted(p for p in runs_dir.glob("rlsd-s*") if run_state(p) == "finished")
    if rlsd_runs and not (out / "credit_rlsd.png").exists():
        from rlsd_harness.analysis.credit import draw, token_weights

        picks = token_weights(rlsd_runs[0])
        atomic_write_text(out / "credit_rlsd.json", json.dumps(picks, indent=1))
        with atomic_path(out / "credit_rlsd.png") as tmp:
            draw(picks, tmp)
    write_report(out, exp, meta)
    return out
