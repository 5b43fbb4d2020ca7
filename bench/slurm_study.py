"""A comparison study on a real Slurm, one of its jobs preempted mid-run, against the same study on this machine.

    python -m bench.slurm_study [--out results/slurm-study] [--work /tmp/rlsd-slurm-study] [--victim grpo-s0]

1. Slurm: the one reachable through SLURM_CONF (or /etc/slurm) when `sinfo` answers, else a one-node Slurm on
   loopback started from Debian's packages with tests/slurm/start_slurm.sh (root only), stopped at the end.
2. `rlsd-compare experiment=smoke launcher=slurm launcher.wait=false` submits the 2 methods x 2 seeds (each run
   one job of 1 CPU). Once the victim run has written its first checkpoint, `scancel --signal=USR2 <job>` sends
   it the signal Slurm sends `launcher.signal_delay_s` before a time limit or on a preemption notice: submitit's
   handler calls the run's checkpoint hook, requeues the job and ends it mid-step. Slurm holds the requeued job
   for its usual begin-time delay (not shortened here) and starts it again; the run resumes from its newest good
   checkpoint. `rlsd-compare` (same arguments, waiting) finds its four jobs, submits nothing and writes the report.
3. The same study with `launcher=local workers=2` (two runs at a time, one torch thread each: the CPUs the Slurm
   jobs had).
4. Each study is packed (`rlsd-report pack=`: records, no weights) into <out>/slurm and <out>/local, with the
   submitit logs of every job in <out>/slurm/slurm-logs; <out>/slurm_vs_local.json and .md compare the two:
   the tables byte for byte, every run's metrics (wall-clock ones aside), evaluation records, final weights and
   last checkpoint (tests/resume_helpers.differences, on the unpacked studies in --work), and say which job was
   requeued, how many times each job started (submitit logs) and restarted (Slurm's own count), the wall times,
   the CPU and the load average.

Exit status 0 when everything compared equal, 1 when something differed (written down either way).
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rlsd_harness.io import read_jsonl

REPO = Path(__file__).resolve().parent.parent
START = REPO / "tests" / "slurm" / "start_slurm.sh"
BIN = Path(sys.executable).parent
# The smoke experiment (grpo and rlsd x seeds 0 and 1 from the warmed-up tiny Qwen2.5-VL, budget points at 0.5
# and 1 of the FLOPs budget) with a checkpoint after every step, so that a preempted run loses at most one.
OVERRIDES = ("train.steps=4", "train.save_every=1", "train.prompts_per_step=4", "train.group_size=4",
             "train.micro_batch_size=16", "eval.n=32", "eval.budget_n=32")
SLURM_ARGS = ("launcher=slurm", "launcher.cpus_per_task=1", "launcher.time=30", "launcher.poll_s=1")
TABLES = ("table.csv", "table.md", "per_seed.csv", "per_seed.md", "claims.csv", "claims.md", "per_run_dynamics.csv")


def _run(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> float:
    """Run `cmd` with its output appended to `log`; its wall time in seconds. A failure names the log."""
    t0 = time.time()
    with log.open("a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        r = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env=env)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} ... failed (exit {r.returncode}); see {log}")
    return time.time() - t0


def _slurm_answers() -> bool:
    try:
        r = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0 and bool(r.stdout.strip())


def ensure_slurm(state: Path) -> bool:
    """A Slurm that answers, started here when none does (SLURM_CONF then points at it); True if started here."""
    if _slurm_answers():
        return False
    # ports of its own: the `cluster` tests' Slurm (16817/16818) may be running beside it
    env = {**os.environ, "SLURMCTLD_PORT": "16837", "SLURMD_PORT": "16838"}
    r = subprocess.run(["bash", str(START), "start", str(state)], capture_output=True, text=True, timeout=180, env=env)
    if r.returncode != 0:
        raise SystemExit(f"no Slurm answers and tests/slurm/start_slurm.sh could not start one (exit {r.returncode}):"
                         f" {r.stderr.strip()}")
    os.environ["SLURM_CONF"] = r.stdout.strip().splitlines()[-1].split("=", 1)[1]
    return True


def show_job(job_id: str) -> dict[str, str]:
    """`scontrol show job` as a dict (Slurm keeps an ended job there for MinJobAge seconds)."""
    r = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, timeout=60)
    return dict(m.groups() for m in re.finditer(r"(\w+)=(\S*)", r.stdout))


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.5)


def sha256(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def table_diffs(slurm: Path, local: Path) -> tuple[dict[str, bool], dict[str, list[str]]]:
    """Each table of the two folders: identical bytes or not, and the first lines of any difference."""
    same, diffs = {}, {}
    for t in TABLES:
        if (local / t).is_file() or (slurm / t).is_file():
            a, b = ((d / t).read_text() if (d / t).is_file() else "" for d in (slurm, local))
            same[t] = a == b
            if a != b:
                diffs[t] = list(difflib.unified_diff(a.splitlines(), b.splitlines(), "slurm", "local", n=0,
                                                     lineterm=""))[:12]
    return same, diffs


def compare_studies(slurm: Path, local: Path) -> dict[str, Any]:
    """What the two unpacked studies share: tables byte for byte, runs bit for bit (wall-clock metrics aside)."""
    sys.path.insert(0, str(REPO))
    from tests.resume_helpers import differences

    tables, diffs = table_diffs(slurm, local)
    runs = {}
    for run in sorted(p.name for p in (local / "runs").iterdir() if p.is_dir()):
        lines = read_jsonl(slurm / "runs" / run / "metrics.jsonl")
        runs[run] = {"differences": differences(local / "runs" / run, slurm / "runs" / run),
                     # the runs learned (groups of mixed rewards: non-zero advantages), else equality says little
                     "mixed_groups_by_step": [m.get("rollout/mixed_groups") for m in lines[1:]],
                     "train_reward_by_step": [m.get("rollout/reward") for m in lines[1:]],
                     "final_weights_sha256": {side: sha256(d / "runs" / run / "final" / "model.safetensors")
                                              for side, d in (("slurm", slurm), ("local", local))}}
    return {"tables_identical_bytes": tables, "table_differences": diffs, "runs": runs,
            "identical": all(tables.values()) and bool(tables) and not any(r["differences"] for r in runs.values())}


def victim_log_lines(logs: Path, job_id: str) -> dict[str, list[str]]:
    """The lines of a job's logs that tell its preemption: submitit's info on stdout, its warnings, Slurm's
    and the run's messages on stderr."""
    wanted = ("Starting with", "Caught signal", "Calling checkpoint", "Requeued job", "Exiting gracefully",
              "CANCELLED", "resumed", "Job completed")
    return {ext: [ln.strip() for ln in (logs / f"{job_id}_0_log.{ext}").read_text(errors="replace").splitlines()
                  if any(w in ln for w in wanted)] for ext in ("out", "err")}


def job_starts(logs: Path, job_id: str) -> int:
    """How many times a job's task started: submitit logs one 'Starting with JobEnvironment' per start."""
    return sum(p.read_text(errors="replace").count("Starting with JobEnvironment")
               for p in logs.glob(f"{job_id}_*_log.*"))


def write_md(out: Path, result: dict[str, Any]) -> None:
    r, v = result, result["victim"]
    lines = [f"# `launcher=slurm` vs `launcher=local`: {'identical' if r['comparison']['identical'] else 'DIFFERENT'}",
             "",
             f"Study: experiment=smoke (grpo, rlsd x seeds 0, 1), `{' '.join(r['overrides'])}`.",
             f"Machine: {r['cpu']}, {r['cpus']} CPUs, no GPU; load average {r['load_before']} before, "
             f"{r['load_after']} after; Slurm {r['slurm_version']} ({r['slurm']}).",
             "",
             "## Tables",
             "",
             "Compared byte for byte (the packed copies in slurm/ and local/ hold the same files):",
             "", "| file | identical bytes |", "|---|---|"]
    c = r["comparison"]
    lines[-4:] = ["Compared byte for byte, as each `rlsd-compare` wrote them and as committed (the packed copies in "
                  "slurm/ and local/, rebuilt by `rlsd-report pack=` from the packed records):", "",
                  "| file | identical: as written | identical: packed |", "|---|---|---|"]
    lines += [f"| {t} | {'yes' if same else 'NO'} | {'yes' if c['packed_tables_identical_bytes'].get(t) else 'NO'} |"
              for t, same in c["tables_identical_bytes"].items()]
    for t, diff in {**c["table_differences"], **c["packed_table_differences"]}.items():
        lines += ["", f"{t} differs:", "", "```", *diff, "```"]
    lines += ["", "## Runs", "",
              "Compared bit for bit on the unpacked studies: every metric of every step (wall-clock ones aside), the "
              "per-item evaluation records, the final weights and the last checkpoint (weights, optimizer, RNG, "
              "counters).", "",
              "| run | Slurm job | job starts (submitit log) | Slurm restarts | mixed-reward groups by step | "
              "differences | final weights sha256 |",
              "|---|---|---|---|---|---|---|"]
    for run, c in r["comparison"]["runs"].items():
        job = r["jobs"][run]
        mixed = ", ".join(f"{x:.2f}" for x in c["mixed_groups_by_step"])
        lines.append(f"| {run} | {job['job_id']} | {job['starts']} | {job['restarts']} | {mixed} | "
                     f"{'; '.join(c['differences']) or 'none'} | {(c['final_weights_sha256']['slurm'] or '-')[:16]}... |")
    lines += ["", "## The preemption", "",
              f"`scancel --signal=USR2 {v['job_id']}` ({v['run']}) at {v['signalled_at']}, after its checkpoint "
              f"{v['checkpoint_before']} and while it trained its next step. The job's logs (slurm/slurm-logs/), "
              f"stdout:", "", "```", *v["log_lines"]["out"], "```", "", "stderr:", "", "```", *v["log_lines"]["err"],
              "```", "",
              f"Slurm held the requeued job {v['held_s']:.0f} s (its begin time) and started it again; the run "
              f"resumed from {v['resumed_from']}, so step(s) after it were trained again: its metrics.jsonl has "
              f"steps {v['steps']} (none repeated, none missing).", "",
              "## Wall times", "",
              f"- Slurm study, first submission to report: {r['wall_s']['slurm']:.0f} s (the requeue hold included)",
              f"- local study (`workers=2`): {r['wall_s']['local']:.0f} s",
              f"- packing both: {r['wall_s']['pack']:.0f} s", "",
              "Command: `python -m bench.slurm_study --out results/slurm-study`."]
    (out / "slurm_vs_local.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=REPO / "results" / "slurm-study")
    p.add_argument("--work", type=Path, default=Path("/tmp/rlsd-slurm-study"),
                   help="the unpacked studies (weights, checkpoints) and the test Slurm's state; replaced")
    p.add_argument("--victim", default="grpo-s0", help="the run whose job is preempted (default grpo-s0)")
    p.add_argument("--rewrite-md", action="store_true",
                   help="only write <out>/slurm_vs_local.md again from its .json and the committed job logs")
    a = p.parse_args(argv)
    out, work = a.out.resolve(), a.work.resolve()
    if a.rewrite_md:
        result = json.loads((out / "slurm_vs_local.json").read_text())
        result["victim"]["log_lines"] = victim_log_lines(out / "slurm" / "slurm-logs", result["victim"]["job_id"])
        (out / "slurm_vs_local.json").write_text(json.dumps(result, indent=1) + "\n")
        write_md(out, result)
        return 0
    if a.victim not in {f"{m}-s{s}" for m in ("grpo", "rlsd") for s in (0, 1)}:
        raise SystemExit(f"--victim must be one of grpo-s0, grpo-s1, rlsd-s0, rlsd-s1; got {a.victim!r}")
    if (work / "slurm-state").is_dir():  # a Slurm this script left running when it was interrupted
        subprocess.run(["bash", str(START), "stop", str(work / "slurm-state")], timeout=120)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    started_here = ensure_slurm(work / "slurm-state")
    try:
        result = study(out, work, a.victim)
    finally:
        if started_here:
            subprocess.run(["bash", str(START), "stop", str(work / "slurm-state")], timeout=120)
    result["load_before"] = load_before
    result["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    result["slurm"] = "a one-node Slurm on loopback started by tests/slurm/start_slurm.sh" if started_here else \
        "the Slurm SLURM_CONF names"
    (out / "slurm_vs_local.json").write_text(json.dumps(result, indent=1) + "\n")
    write_md(out, result)
    print((out / "slurm_vs_local.md").read_text())
    return 0 if result["comparison"]["identical"] else 1


def study(out: Path, work: Path, victim_run: str) -> dict[str, Any]:
    slurm_dir, local_dir, log = work / "slurm", work / "local", work / "commands.log"
    common = ["experiment=smoke", *OVERRIDES]
    compare = str(BIN / "rlsd-compare")
    t0 = time.time()
    _run([compare, *common, f"out={slurm_dir}", *SLURM_ARGS, "launcher.wait=false"], log)
    jobs = json.loads((slurm_dir / "jobs.json").read_text())
    job_id, victim = jobs[victim_run]["job_id"], slurm_dir / "runs" / victim_run
    first = victim / "checkpoints" / "step-000001" / "manifest.json"
    wait_for(lambda: first.exists() or (victim / "finished.json").exists(), 1800, f"{victim_run}'s first checkpoint")
    if (victim / "finished.json").exists():
        raise SystemExit(f"{victim_run} finished before it could be preempted; give the runs more train.steps")
    checkpoint_before = max(p.parent.name for p in (victim / "checkpoints").glob("step-*/manifest.json"))
    signalled = time.time()
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True, timeout=60)
    # rlsd-compare again, waiting this time: it finds its four jobs, submits nothing, records each state change
    # it sees in jobs.json (the victim's RUNNING, PENDING, RUNNING) and writes the report once all have ended
    with log.open("a") as f:
        cmd = [compare, *common, f"out={slurm_dir}", *SLURM_ARGS]
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        waiting = subprocess.Popen(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
    wait_for(lambda: show_job(job_id).get("Reason") == "BeginTime", 300, f"job {job_id} to requeue itself")
    requeued = time.time()
    wait_for(lambda: show_job(job_id).get("JobState") != "PENDING", 600, f"job {job_id} to start again")
    held = time.time() - requeued
    if waiting.wait() != 0:
        raise SystemExit(f"rlsd-compare ... launcher=slurm failed (exit {waiting.returncode}); see {log}")
    slurm_wall = time.time() - t0

    # two runs at a time with one torch thread each (compare._threads_per_run): what the two 1-CPU jobs had
    local_wall = _run([compare, *common, f"out={local_dir}", "workers=2"], log)

    after = json.loads((slurm_dir / "jobs.json").read_text())
    logs = slurm_dir / "slurm"
    job_info = {}
    for run, rec in sorted(after.items()):
        info = show_job(rec["job_id"])
        job_info[run] = {"job_id": rec["job_id"], "state": rec["state"], "slurm_state": info.get("JobState"),
                         "restarts": int(info.get("Restarts", -1)), "starts": job_starts(logs, rec["job_id"]),
                         "history": rec.get("history", [])}
    victim_log = "".join(p.read_text(errors="replace") for p in sorted(logs.glob(f"{job_id}_*_log.*")))
    resumed = re.findall(r"resumed \S+ at step \d+ from (\S+)", victim_log)
    steps = [m["rollout_step"] for m in read_jsonl(victim / "metrics.jsonl")]
    comparison = compare_studies(slurm_dir, local_dir)

    t1 = time.time()
    tmp = out.with_name(f".{out.name}.writing")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    report = str(BIN / "rlsd-report")
    for side, src in (("slurm", slurm_dir), ("local", local_dir)):
        _run([report, f"folder={src}", f"pack={tmp / side}"], log)
    # the packed copies' tables (rebuilt by rlsd-report from the packed records), as they are committed
    packed, packed_diffs = table_diffs(tmp / "slurm", tmp / "local")
    comparison.update(packed_tables_identical_bytes=packed, packed_table_differences=packed_diffs,
                      identical=comparison["identical"] and all(packed.values()))
    (tmp / "slurm" / "slurm-logs").mkdir()
    for f in sorted(logs.glob("*_log.*")):  # the logs; not the pickles of the submitted calls
        shutil.copyfile(f, tmp / "slurm" / "slurm-logs" / f.name)
    if (out / "README.md").is_file():  # the folder's own description is kept across reruns
        shutil.copyfile(out / "README.md", tmp / "README.md")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    cpu = next((ln.split(":", 1)[1].strip() for ln in subprocess.run(["lscpu"], capture_output=True, text=True)
                .stdout.splitlines() if ln.startswith("Model name")), platform.processor())
    version = subprocess.run(["sinfo", "--version"], capture_output=True, text=True).stdout.strip()
    return {"overrides": list(OVERRIDES), "slurm_args": list(SLURM_ARGS), "cpu": cpu, "cpus": os.cpu_count(),
            "slurm_version": version, "jobs": job_info, "comparison": comparison,
            "victim": {"run": victim_run, "job_id": job_id,
                       "signalled_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(signalled)),
                       "checkpoint_before": checkpoint_before, "held_s": held,
                       "resumed_from": resumed[-1] if resumed else "(not named in the log)", "steps": steps,
                       "log_lines": victim_log_lines(logs, job_id)},
            "wall_s": {"slurm": slurm_wall, "local": local_wall, "pack": time.time() - t1}}


if __name__ == "__main__":
    sys.exit(main())
