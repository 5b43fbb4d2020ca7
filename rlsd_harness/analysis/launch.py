"""Where the runs of a study train: `launcher=local` (this machine, `workers` at a time: analysis/compare.py) or
`launcher=slurm`, each run one Slurm job submitted with submitit (https://github.com/facebookincubator/submitit).

A Slurm job runs `compare._train` on the run's folder, so a job resumes and records failures exactly as a local
run does (training/run.py: `run_state`). Every task of a multi-task job (`launcher.nodes` x
`launcher.tasks_per_node`) is one rank of one run; the process group comes from Slurm's variables (dist.py:
`launcher_env`). Before its time limit (or on preemption notice) Slurm sends SIGUSR2 `launcher.signal_delay_s`
seconds early; submitit then calls `SlurmRun.checkpoint` and requeues the job, which resumes the run from its
newest good checkpoint (at most `train.save_every` steps are trained again), at most
`launcher.max_requeues` times after time-outs. A job that ends without finishing its run is reported with its
job id and its log's tail and its run marked failed (failed.json), never resubmitted by the same invocation;
the next rlsd-compare retries it, as it retries a failed local run.

<out>/jobs.json records every run's job id, state, log and state history (each change a waiting rlsd-compare saw:
a requeued job shows RUNNING, PENDING, RUNNING); a rerun of rlsd-compare reads it and never submits a
run that is finished or whose job is still pending or running. `launcher.wait=false` submits and returns."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rlsd_harness.config import ConfigError
from rlsd_harness.training.durable import atomic_write_text

LAUNCHERS = ("local", "slurm")
# Slurm job states in which a job will still run (squeue lists only these by default)
LIVE = ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
        "RESIZING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD")
# variables the controller may hold from its own one-rank process group: a job must not inherit them
_DIST_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass
class SlurmOptions:
    """The `launcher.*` keys of rlsd-compare (KEYS describes each)."""

    nodes: int = 1
    tasks_per_node: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int = 1
    mem: str | None = None
    time: int = 60
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    sbatch: list[str] = field(default_factory=list)
    wait: bool = True
    poll_s: float = 30.0
    signal_delay_s: int = 90
    max_requeues: int = 3
    folder: str | None = None

    @property
    def ranks(self) -> int:
        return self.nodes * self.tasks_per_node

    def executor_parameters(self, job_name: str) -> dict[str, Any]:
        """submitit.SlurmExecutor's parameters for one run's job."""
        extra: dict[str, Any] = {}  # (submitit opens the logs with --open-mode=append: a requeued job's continue)
        for line in self.sbatch:
            key, eq, value = line.removeprefix("--").partition("=")
            extra[key.replace("-", "_")] = value if eq else True
        return {"job_name": job_name, "nodes": self.nodes, "ntasks_per_node": self.tasks_per_node,
                "cpus_per_task": self.cpus_per_task, "time": self.time, "signal_delay_s": self.signal_delay_s,
                **({"gpus_per_node": self.gpus_per_node} if self.gpus_per_node else {}),
                **{k: v for k, v in (("mem", self.mem), ("partition", self.partition), ("account", self.account),
                                     ("qos", self.qos)) if v is not None},
                "setup": [f"unset {' '.join(_DIST_ENV)}"], "additional_parameters": extra}

    def describe(self) -> str:
        shown = [f"nodes={self.nodes}", f"tasks_per_node={self.tasks_per_node}", f"gpus_per_node={self.gpus_per_node}",
                 f"cpus_per_task={self.cpus_per_task}", f"mem={self.mem or '(partition default)'}", f"time={self.time} min"]
        shown += [f"{k}={getattr(self, k)}" for k in ("partition", "account", "qos") if getattr(self, k)]
        shown += [f"sbatch {' '.join(self.sbatch)}"] if self.sbatch else []
        return ", ".join(shown)


KEYS = {
    "launcher": f"where runs train: {' or '.join(LAUNCHERS)} (default local: this machine, `workers` at a time; "
                "slurm: each run one Slurm job via submitit)",
    "launcher.nodes": "slurm: nodes per run (default 1)",
    "launcher.tasks_per_node": "slurm: tasks (ranks) per node, one per GPU (default 1)",
    "launcher.gpus_per_node": "slurm: GPUs per node (default 0)",
    "launcher.cpus_per_task": "slurm: CPUs per task, also torch's thread count (default 1)",
    "launcher.mem": "slurm: memory per node, sbatch --mem syntax (e.g. 64G; default the partition's)",
    "launcher.time": "slurm: time limit per job in minutes (default 60); the run is requeued and resumes",
    "launcher.partition": "slurm: partition (default the cluster's)",
    "launcher.account": "slurm: account to charge",
    "launcher.qos": "slurm: quality of service",
    "launcher.sbatch": "slurm: extra sbatch options, ';'-separated (e.g. '--constraint=a100;--exclusive')",
    "launcher.wait": "slurm: true (default): wait for the jobs and write the report; false: submit and return",
    "launcher.poll_s": "slurm: seconds between queue polls while waiting (default 30)",
    "launcher.signal_delay_s": "slurm: seconds before the time limit that SIGUSR2 asks for a requeue (default 90)",
    "launcher.max_requeues": "slurm: requeues after time-outs per job (default 3)",
    "launcher.folder": "slurm: submitit's folder of job scripts and logs (default <out>/slurm)",
}


def _positive_int(key: str, value: str, low: int = 1) -> int:
    try:
        n = int(value)
    except ValueError:
        n = None
    if n is None or n < low:
        raise ConfigError(f"{key} must be an integer >= {low}; got {value!r}")
    return n


def parse_options(given: dict[str, str]) -> tuple[str, SlurmOptions | None]:
    """(launcher, its options) from rlsd-compare's `launcher*` arguments; a ConfigError naming a bad value."""
    launcher = given.get("launcher", "local")
    if launcher not in LAUNCHERS:
        raise ConfigError(f"launcher must be one of {', '.join(LAUNCHERS)}; got {launcher!r}")
    keys = {k.removeprefix("launcher."): v for k, v in given.items() if k.startswith("launcher.")}
    if launcher == "local":
        if keys:
            raise ConfigError(f"{', '.join('launcher.' + k for k in keys)} apply to launcher=slurm; this is launcher=local")
        return launcher, None
    opts = SlurmOptions()
    known = {f.name for f in fields(SlurmOptions)}
    for key, value in keys.items():
        if key not in known:
            raise ConfigError(f"unknown key launcher.{key}; valid: {', '.join('launcher.' + k for k in known)}")
        if key in ("nodes", "tasks_per_node", "cpus_per_task", "time"):
            setattr(opts, key, _positive_int(f"launcher.{key}", value))
        elif key in ("gpus_per_node", "signal_delay_s", "max_requeues"):
            setattr(opts, key, _positive_int(f"launcher.{key}", value, 0))
        elif key == "poll_s":
            try:
                opts.poll_s = float(value)
            except ValueError:
                opts.poll_s = -1.0
            if not opts.poll_s > 0:
                raise ConfigError(f"launcher.poll_s must be a number of seconds > 0; got {value!r}")
        elif key == "wait":
            if value.lower() not in ("true", "false"):
                raise ConfigError(f"launcher.wait must be true or false; got {value!r}")
            opts.wait = value.lower() == "true"
        elif key == "sbatch":
            opts.sbatch = [s.strip() for s in value.split(";") if s.strip()]
            bad = [s for s in opts.sbatch if not s.startswith("--")]
            if bad:
                raise ConfigError(f"launcher.sbatch takes long sbatch options (--name=value), ';'-separated; got {bad}")
        else:
            setattr(opts, key, value or None)
    return launcher, opts


def arguments(launcher: str, opts: SlurmOptions | None) -> list[str]:
    """The `launcher*` arguments that reproduce (launcher, opts) on a command line (for the resume command)."""
    if opts is None:
        return [] if launcher == "local" else [f"launcher={launcher}"]
    default, out = SlurmOptions(), [f"launcher={launcher}"]
    for key, value in asdict(opts).items():
        if value != getattr(default, key):
            text = ";".join(value) if key == "sbatch" else str(value).lower() if isinstance(value, bool) else str(value)
            out.append(shlex.quote(f"launcher.{key}={text}"))
    return out


class SlurmRun:
    """The callable a run's Slurm job executes (every task of it: each is one rank of the run). `checkpoint`
    is submitit's requeue hook: the requeued job calls this again on the same run folder, which then resumes
    from its newest good checkpoint."""

    def __init__(self, train: Callable[..., None], threads: int) -> None:
        self.train, self.threads = train, threads

    def __call__(self, run_dir: str, cfg_yaml: str, command: str) -> str:
        import torch

        from rlsd_harness import dist
        from rlsd_harness.training.run import Interrupted, run_state

        torch.set_num_threads(self.threads)

        def log(msg: str) -> None:
            print(msg, file=sys.stderr, flush=True)

        try:
            self.train(Path(run_dir), OmegaConf.create(cfg_yaml), log, command)
        except Interrupted as e:  # SIGTERM (scancel, requeue): the checkpoint is written; Slurm decides what next
            log(f"{Path(run_dir).name}: {e}")
            return "interrupted"
        finally:
            dist.shutdown()
        return run_state(Path(run_dir))

    def checkpoint(self, *args: Any, **kwargs: Any):
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def require_slurm() -> None:
    """A ConfigError unless Slurm's clients are on PATH (checked before a study writes anything)."""
    import shutil

    missing = [tool for tool in ("sbatch", "squeue", "scontrol") if shutil.which(tool) is None]
    if missing:
        raise ConfigError(f"launcher=slurm needs Slurm's {', '.join(missing)} on PATH, which this machine lacks: run "
                          f"rlsd-compare on a node of the cluster (a login node), or launcher=local here")


def queue_states(job_ids: Sequence[str]) -> dict[str, str]:
    """Job id -> state of those of `job_ids` still in Slurm's queue (pending, running, requeued ...); a job
    missing from the answer has ended."""
    if not job_ids:
        return {}
    r = subprocess.run(["squeue", "-h", "-o", "%i|%T", "-j", ",".join(job_ids)], capture_output=True, text=True,
                       timeout=120)
    if r.returncode != 0:
        if "Invalid job id" in r.stderr:  # every one of them has left the queue
            return {}
        raise ConfigError(f"squeue failed (exit {r.returncode}): {r.stderr.strip()}; the jobs in jobs.json go on: "
                          f"rerun the same command once Slurm answers")
    return dict(line.split("|", 1) for line in r.stdout.split() if "|" in line)


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


def _done(run_dir: Path) -> bool:
    from rlsd_harness.training.run import run_state

    # the second: a packed copy of a finished run (analysis/pack.py), its records kept, its weights not
    return run_state(run_dir) == "finished" or ((run_dir / "finished.json").is_file()
                                                and (run_dir / "metrics.jsonl.gz").is_file())


def _set_state(rec: dict, state: str) -> None:
    """A job record's state, and in its history (time, job id, state) each change this controller saw: a
    requeue shows as RUNNING, then PENDING again (squeue is polled every `launcher.poll_s` while waiting)."""
    if rec.get("state") != state or not rec.get("history"):
        rec.setdefault("history", []).append([time.strftime("%Y-%m-%dT%H:%M:%S%z"), rec.get("job_id"), state])
    rec["state"] = state


def dry_run_text(jobs: Sequence[tuple[str, Path]], opts: SlurmOptions, folder: Path, planned_ranks: int = 1) -> str:
    """What `launcher=slurm` would submit: one job per run, its resources and its sbatch header; a warning first
    when the jobs' ranks differ from the `planned_ranks` the plan's memory and time assume."""
    from submitit.slurm.slurm import _make_sbatch_string

    params = opts.executor_parameters("<run>")
    header = [ln for ln in _make_sbatch_string(command="<python -m submitit.core._submit>", folder=folder, **params)
              .splitlines() if ln.startswith("#SBATCH")]
    lines = [f"launcher=slurm: {len(jobs)} jobs, one per run, each {opts.describe()} "
             f"({opts.ranks} rank{'s' if opts.ranks > 1 else ''} per run)"]
    if opts.ranks != planned_ranks:
        lines.insert(0, f"warning: the plan above assumes {planned_ranks} ranks per run (the experiment's world_size) "
                        f"but these jobs would start {opts.ranks}: set launcher.nodes x launcher.tasks_per_node = "
                        f"{planned_ranks} (one task per GPU, launcher.gpus_per_node to match)")
    lines += [f"  {label} -> {run_dir}" for label, run_dir in jobs]
    lines += ["sbatch header of each job (submitit):", *[f"  {ln}" for ln in header]]
    return "\n".join(lines)


def train_slurm(jobs: Sequence[tuple[str, Path, DictConfig]], opts: SlurmOptions, study: Path,
                train: Callable[..., None], log: Callable[[str], None], command: str, bar) -> bool:
    """Submit each of `jobs` (label, run folder, config) not finished and not already queued as one Slurm job,
    recording them in <study>/jobs.json; with `opts.wait`, poll until every job has ended. A job recorded as queued
    that has ended since is reported (finished, or failed with its log's tail), not resubmitted: a failed run
    is retried by the next invocation. True when every run is finished or failed (the report can be written),
    False when jobs are still queued (no wait)."""
    import submitit

    folder = Path(opts.folder) if opts.folder else study / "slurm"
    record_path = study / "jobs.json"
    records: dict[str, dict] = json.loads(record_path.read_text()) if record_path.is_file() else {}

    def save() -> None:
        atomic_write_text(record_path, json.dumps(records, indent=1, sort_keys=True))

    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=opts.max_requeues)
    tracked: dict[str, tuple[str, Path]] = {}  # job id -> (label, run folder)
    live = queue_states([r["job_id"] for r in records.values() if r.get("job_id")])
    for label, run_dir, cfg in jobs:
        rec = records.get(label)
        if _done(run_dir):
            if rec is not None and rec.get("state") != "finished":
                _set_state(rec, "finished")
            bar.update(1)
            continue
        if rec is not None and rec.get("job_id") in live:
            log(f"{label}: Slurm job {rec['job_id']} is {live[rec['job_id']]}; not submitted again")
            _set_state(rec, live[rec["job_id"]])
            tracked[rec["job_id"]] = (label, run_dir)
            continue
        if rec is not None and rec.get("state") in LIVE:  # ended since the last look: reported below, retried next time
            tracked[rec["job_id"]] = (label, run_dir)
            continue
        executor.update_parameters(**opts.executor_parameters(f"rlsd-{label.replace('/', '-')}"))
        job = executor.submit(SlurmRun(train, opts.cpus_per_task), str(run_dir), OmegaConf.to_yaml(cfg), command)
        earlier = ([rec["job_id"]] + rec.get("earlier_jobs", [])) if rec and rec.get("job_id") else []
        records[label] = {"job_id": str(job.job_id), "state": None, "run_dir": str(run_dir),
                          "log": str(job.paths.stderr).replace("%j", str(job.job_id)),
                          "submitted": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "resources": opts.describe(),
                          "earlier_jobs": earlier, "history": (rec or {}).get("history", [])}
        _set_state(records[label], "PENDING")
        tracked[str(job.job_id)] = (label, run_dir)
        log(f"{label}: submitted Slurm job {job.job_id}")
        save()  # at once: a crash here must not lose a submitted job's id
    save()
    while tracked:
        live = queue_states(list(tracked))
        for job_id, (label, run_dir) in list(tracked.items()):
            rec = records[label]
            if job_id in live:
                _set_state(rec, live[job_id])
                continue
            del tracked[job_id]
            bar.set_postfix(finished=label)
            bar.update(1)
            if _done(run_dir):
                _set_state(rec, "finished")
                continue
            tail = log_tail(Path(rec["log"]))
            if (run_dir / "failed.json").is_file():
                _set_state(rec, "failed")
                error = json.loads((run_dir / "failed.json").read_text()).get("error")
            else:  # the job died without the run noticing (killed, out of memory, node failure, time-outs)
                _set_state(rec, "ended unfinished")
                error = f"Slurm job {job_id} ended without finishing the run"
                run_dir.mkdir(parents=True, exist_ok=True)
                atomic_write_text(run_dir / "failed.json", json.dumps({"error": error, "slurm_job": job_id,
                                                                       "log_tail": tail}))
            log(f"{label} failed in Slurm job {job_id}: {error}\n  log {rec['log']}, last lines:\n"
                + "\n".join(f"    {ln}" for ln in tail.splitlines()))
        save()
        if tracked and not opts.wait:
            log(f"{len(tracked)} Slurm jobs queued (jobs.json); rerun the same command to wait for them and "
                f"write the report")
            return False
        if tracked:
            time.sleep(opts.poll_s)
    return True
