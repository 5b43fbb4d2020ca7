"""One training run, in its own folder (the library side of `rlsd-train`).

results/runs/<name>/ holds config.yaml (the resolved config in use), manifest.json (versions, commit, seeds,
device), metrics.jsonl (one line per step: objective metrics, rollout statistics, held-out accuracy when
evaluated, the compute ledger), evals/ (per-item records of every held-out evaluation, training/evals.py),
checkpoints/step-N/ (each verified by its own manifest), final/ (a Hugging Face
folder of the last policy) and, once final/ is complete, finished.json; a run that stopped on an error has
failed.json. `run_state` reads a run's state from those markers alone.

Resuming (`run.resume=true`) continues from the newest good checkpoint and repeats the uninterrupted run
exactly. The config must be the one the run was started with, except the keys of RESUMABLE_KEYS (how long
to train and how often to evaluate, save and log); any other change is refused naming each key, unless
`run.resume_changed=true`. Every accepted change is recorded in config_history.yaml and config.yaml is
rewritten to the config in use.

`run.overwrite=true` moves an existing run aside (to a hidden `.<name>.overwritten` folder beside it) only
once the new config has been accepted and the trainer built, and deletes it only once the new run has
written its first checkpoint (or finished, when it saves none); if the new run fails before that, the old
one is moved back.

SIGINT / SIGTERM: the current step is finished, a checkpoint written, the command that resumes printed, and
`Interrupted` raised (the command line exits with 128 + the signal's number). A second signal stops at once.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple

from omegaconf import DictConfig, OmegaConf

from rlsd_harness.config import REPO, ConfigError, budget_spent
from rlsd_harness.config.typed import RunConfig
from rlsd_harness.io import read_jsonl
from rlsd_harness.training.durable import atomic_write_text, kill_point, replace_folder
from rlsd_harness.trees import flatten

# Keys a resumed run may change: the length of training (steps and budget) and the cadence of evaluation,
# checkpoints and progress output. A key ending in "." covers everything under it.
RESUMABLE_KEYS = ("run.", "train.steps", "train.budget.", "train.eval_every", "train.save_every",
                  "train.progress", "eval.progress", "train.keep_last", "train.keep_budget_points",
                  "algorithm.search_space.",  # the tuner's ranges: training never reads them
                  "train.save_budget_policies")


class Interrupted(BaseException):
    """The run stopped on SIGINT / SIGTERM after saving a checkpoint. A BaseException, like
    KeyboardInterrupt: a caller that records failed runs (the comparison) lets it through."""

    def __init__(self, signum: int, checkpoint: Path, command: str) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}; checkpoint {checkpoint}; resume with: {command}")
        self.signum, self.checkpoint, self.command = signum, checkpoint, command
        self.exit_code = 128 + signum

    def __reduce__(self) -> tuple:  # a pool process's run returns it to the comparison
        return (Interrupted, (self.signum, self.checkpoint, self.command))


def manifest(cfg: RunConfig, device: str) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    from rlsd_harness import dist

    def v(pkg: str) -> str | None:
        try:
            return version(pkg)
        except PackageNotFoundError:
            return None

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True).stdout)
    except OSError:
        commit, dirty = None, None
    import torch

    return {
        "command": shlex.join(sys.argv),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "git_commit": commit, "git_dirty": dirty,
        "seed": cfg.seed,
        "device": device, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
        "platform": platform.platform(), "cpu": dist.cpu_identity(), "python": platform.python_version(),
        "packages": {p: v(p) for p in ("torch", "transformers", "deepspeed", "tokenizers", "math-verify", "vllm", "hydra-core")},
    }


def run_dir_of(cfg: RunConfig) -> Path:
    name = cfg.run.name if cfg.run.name is not None else f"{cfg.algorithm.name}-s{cfg.seed}"
    return (REPO / cfg.run.dir / name) if not Path(cfg.run.dir).is_absolute() else Path(cfg.run.dir) / name


def run_state(run_dir: Path) -> str:
    """'finished' (final/ complete and marked), 'failed' (its last attempt stopped on an error), 'partial' (a
    completely written checkpoint to resume from) or 'none' (nothing to resume: absent, or cut short before its
    first checkpoint). From the completion markers only, never from a folder's existence."""
    from rlsd_harness.training import checkpoint

    run_dir = Path(run_dir)
    if (run_dir / "finished.json").is_file() and (run_dir / "final").is_dir():
        return "finished"
    if (run_dir / "failed.json").is_file():
        return "failed"
    return "partial" if checkpoint.latest(run_dir) is not None else "none"


def _aside(run_dir: Path) -> Path:
    return run_dir.with_name(f".{run_dir.name}.overwritten")


def kept_run_note(run_dir: Path) -> str:
    """What a refusal adds when an interrupted `run.overwrite=true` left the run it was replacing in the hidden
    folder beside `run_dir`: where it is, how to get it back, and that overwriting again deletes it."""
    aside = _aside(run_dir)
    if not aside.is_dir():
        return ""
    return (f" (the run an interrupted run.overwrite=true was replacing is kept in the hidden folder {aside}; "
            f"restore it with: rm -r {shlex.quote(str(run_dir))} && mv {shlex.quote(str(aside))} "
            f"{shlex.quote(str(run_dir))}; run.overwrite=true deletes it once the new run's first checkpoint is written)")


def config_changes(old: DictConfig, new: DictConfig) -> dict[str, tuple[Any, Any]]:
    """Dotted key -> (old, new) for every leaf that differs (a key only one side has counts as changed)."""
    a = flatten(OmegaConf.to_container(old, resolve=True, throw_on_missing=False))
    b = flatten(OmegaConf.to_container(new, resolve=True, throw_on_missing=False))
    missing = "<absent>"
    return {k: (a.get(k, missing), b.get(k, missing)) for k in sorted(set(a) | set(b)) if a.get(k, missing) != b.get(k, missing)}


def resumable(key: str) -> bool:
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in RESUMABLE_KEYS)


def check_run_dir(cfg: RunConfig) -> tuple[Path, dict[str, tuple[Any, Any]]]:
    """The run folder and, when resuming, the config keys that changed; writes nothing. Refuses a resume
    without a run or a checkpoint, or with a changed key outside RESUMABLE_KEYS (unless run.resume_changed),
    and an existing run without run.overwrite or run.resume."""
    from rlsd_harness.training import checkpoint

    run_dir = run_dir_of(cfg)
    if cfg.run.resume:
        if cfg.run.overwrite:
            raise ConfigError("run.resume=true and run.overwrite=true contradict each other; pass one of them")
        if not (run_dir / "config.yaml").exists():
            raise FileNotFoundError(f"run.resume=true but there is no run at {run_dir}")
        if checkpoint.latest(run_dir) is None:
            raise FileNotFoundError(f"run.resume=true but {run_dir} has no complete checkpoint (it stopped before its "
                                    f"first one); start it again with run.overwrite=true" + kept_run_note(run_dir))
        changes = config_changes(OmegaConf.load(run_dir / "config.yaml"), cfg.composed)
        changes = {k: v for k, v in changes.items() if not k.startswith("run.")}
        refused = {k: v for k, v in changes.items() if not resumable(k)}
        if refused and not cfg.run.resume_changed:
            listed = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in refused.items())
            raise ConfigError(f"run.resume=true with a config that differs from {run_dir / 'config.yaml'} in "
                              f"{len(refused)} key(s): {listed}. Keys that may change on resume: "
                              f"{', '.join(RESUMABLE_KEYS)} (a trailing dot: everything under it); pass "
                              f"run.resume_changed=true to continue with the changes anyway, or start a new run")
        return run_dir, changes
    if run_dir.exists() and any(run_dir.iterdir()) and not cfg.run.overwrite:
        raise FileExistsError(f"run folder {run_dir} exists; pass run.overwrite=true to replace it, "
                              f"run.resume=true to continue it, or another run.name" + kept_run_note(run_dir))
    return run_dir, {}


def _take_run_dir(run_dir: Path, overwrite: bool, log=None) -> Path | None:
    """Create the run folder; with `overwrite`, an existing run is moved aside (returned, deleted later).
    A leftover of an overwrite that was killed: when the folder has a checkpoint by now, the new run had
    superseded the old one, which is deleted; when not, the folder is the killed new run, and the old one aside
    stays the one to keep (until this run's first checkpoint). Either way `log` says so in one line: a kept
    run is never deleted unannounced."""
    from rlsd_harness.training import checkpoint

    log = log or (lambda msg: print(msg, file=sys.stderr))
    aside = _aside(run_dir)
    if aside.exists():
        if checkpoint.latest(run_dir) is not None:
            shutil.rmtree(aside)
            log(f"deleted {aside}, the run an interrupted run.overwrite=true was replacing: its replacement "
                f"{run_dir} had written a checkpoint")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
            log(f"{aside} holds the run an interrupted run.overwrite=true was replacing; it is deleted once this "
                f"run writes its first checkpoint (stop now and `mv {aside} {run_dir}` to keep it)")
    if overwrite and run_dir.exists() and any(run_dir.iterdir()):
        os.replace(run_dir, aside)
    run_dir.mkdir(parents=True, exist_ok=True)
    return aside if aside.exists() else None


def _resume_metrics(metrics_file: Path, step: int, log) -> None:
    """Keep the lines up to the checkpoint's step (the steps after it are redone identically); each step
    0..step must be there once."""
    lines = [m for m in read_jsonl(metrics_file, warn=log) if m["rollout_step"] <= step]
    if [m["rollout_step"] for m in lines] != list(range(step + 1)):
        raise ValueError(f"{metrics_file} does not hold one line per step 0..{step} (it has "
                         f"{[m['rollout_step'] for m in lines]}); the run cannot be resumed exactly")
    atomic_write_text(metrics_file, "".join(json.dumps(m) + "\n" for m in lines))


def _record_changes(run_dir: Path, cfg: RunConfig, changes: dict[str, tuple[Any, Any]], step: int) -> None:
    import yaml

    history_file = run_dir / "config_history.yaml"
    history = (yaml.safe_load(history_file.read_text()) or []) if history_file.exists() else []
    history.append({"resumed_at_step": step, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "forced": cfg.run.resume_changed and any(not resumable(k) for k in changes),
                    "changed": {k: {"old": old, "new": new} for k, (old, new) in changes.items()}})
    atomic_write_text(history_file, yaml.safe_dump(history, sort_keys=False))
    atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg.composed, resolve=True))


def default_resume_command(args: list[str] | None = None) -> str:
    """The training command line of this process (with `args` as its arguments when given), with
    run.resume=true instead of any run.overwrite / run.resume."""
    args = [a for a in (sys.argv[1:] if args is None else args)
            if not a.startswith(("run.resume=", "run.overwrite=", "--local_rank"))]
    prog = (f"{Path(sys.executable).name} -m rlsd_harness.cli.train" if sys.argv[0].endswith("train.py")
            else Path(sys.argv[0]).name)
    return " ".join([prog, *map(shlex.quote, args), "run.resume=true"])


class _StopRequests:
    """SIGINT / SIGTERM while installed: the first asks the loop to stop after its step, a second stops at
    once (KeyboardInterrupt). Only the main thread can take signals; elsewhere this does nothing."""

    def __init__(self, log) -> None:
        self.signum: int | None = None
        self.log = log
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> _StopRequests:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        self.log(f"{signal.Signals(signum).name}: finishing this step, then saving a checkpoint "
                 f"(send it again to stop at once, without one)")

    def agreed(self, world: int) -> bool:
        """Whether to stop after this step: every rank stops at the same step (the checkpoint is a collective)."""
        from rlsd_harness import dist

        stopping = self.signum is not None
        return bool(dist.all_reduce_max(int(stopping))) if world > 1 else stopping

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


class OldRun:
    """The overwrite protocol, in one place. With `replace` (run.overwrite=true, not a resume) rank 0 moves an
    existing run aside once everything that can refuse the new config has run; the old run is deleted once the
    new one stands on its own (its first checkpoint, or its end when it saves none) and moved back if the new one
    fails before then. A non-finite loss keeps it aside, and says where."""

    def __init__(self, run_dir: Path, replace: bool, rank: int, log) -> None:
        self.run_dir, self.log = run_dir, log
        self.aside = _take_run_dir(run_dir, replace, log) if rank == 0 else None

    def release(self) -> None:
        if self.aside is not None:
            shutil.rmtree(self.aside)
            self.log(f"deleted the overwritten run (kept aside at {self.aside} until this run's first checkpoint)")
            self.aside = None

    def restore(self) -> None:
        if self.aside is not None:
            shutil.rmtree(self.run_dir)
            os.replace(self.aside, self.run_dir)
            self.log(f"the new run failed before its first checkpoint; the run it was to replace is back at {self.run_dir}")

    def note(self) -> str:
        return f"; the run this one was to replace is kept at {self.aside}" if self.aside is not None else ""


class RunFiles:
    """What rank 0 writes as the run goes (on every other rank each call does nothing): the config and manifest
    (or, on a resume, the metrics cut back to its checkpoint and the changed keys recorded), a line per step in
    metrics.jsonl and the trackers, and the end's markers, finished.json or failed.json."""

    def __init__(self, cfg: RunConfig, run_dir: Path, rank: int, log) -> None:
        self.cfg, self.run_dir, self.rank, self.log = cfg, run_dir, rank, log
        self.metrics = run_dir / "metrics.jsonl"
        self.sinks: list = []

    def start(self, step: int, changes: dict[str, tuple[Any, Any]], device: str) -> None:
        if self.rank != 0:
            return
        (self.run_dir / "finished.json").unlink(missing_ok=True)
        if self.cfg.run.resume:
            _resume_metrics(self.metrics, step, self.log)
            if changes:
                _record_changes(self.run_dir, self.cfg, changes, step)
                self.log(f"resumed with changed keys: {', '.join(changes)} (recorded in config_history.yaml)")
        else:
            atomic_write_text(self.run_dir / "config.yaml", OmegaConf.to_yaml(self.cfg.composed, resolve=True))
            atomic_write_text(self.run_dir / "manifest.json", json.dumps(manifest(self.cfg, device), indent=1))

    def open(self) -> None:
        """The trackers: one that cannot start fails the run before its first checkpoint (the old run comes back)."""
        from rlsd_harness.training.metrics import open_sinks

        if self.rank == 0:
            self.sinks = open_sinks(self.run_dir, list(self.cfg.run.trackers),
                                    OmegaConf.to_container(self.cfg.composed, resolve=True))

    def log_step(self, metrics: dict[str, Any], step: int, first: bool = False) -> None:
        if self.rank == 0:
            if first:
                atomic_write_text(self.metrics, "")
            for sink in self.sinks:
                sink.log(metrics, step)

    def finished(self, trainer: Any) -> None:
        if self.rank == 0:
            atomic_write_text(self.run_dir / "finished.json", json.dumps(
                {"rollout_step": trainer.rollout_step, "step": trainer.step_count,
                 "stopped_by": "train.steps" if trainer.rollout_step >= self.cfg.train.steps else "train.budget",
                 # a tuning rung short of the budget: compare._train resumes the run when asked for more
                 "stop_at": self.cfg.train.budget.stop_at,
                 "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=1))

    def failed(self, error: Exception, step: int) -> None:
        if self.rank == 0:
            atomic_write_text(self.run_dir / "failed.json", json.dumps({"error": str(error), "step": step}))

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


def _to_stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


def run(cfg: DictConfig, log=None, resume_command: str | None = None) -> Path:
    """Train one run of the composed config `cfg` to `train.steps` or its budget; returns its folder. The config
    is validated once and read typed afterwards (a RunConfig). `resume_command` is what an interrupted run prints
    as the way to continue it (default: this process's command line, resumed)."""
    from rlsd_harness import dist
    from rlsd_harness.training import checkpoint
    from rlsd_harness.training.budget_points import BudgetPoints
    from rlsd_harness.training.trainer import NonFiniteLoss

    log = log or _to_stderr
    setup = _refusals(cfg, log)  # everything that can refuse this config; nothing written or moved yet
    cfg = setup.cfg  # the typed RunConfig from here on (the composed one is its `composed`)
    trainer, processor, ckpt = _start(cfg, setup, log)
    rank, world, run_dir, evaluator = trainer.rank, trainer.world, setup.run_dir, setup.evaluator
    old, files = OldRun(run_dir, cfg.run.overwrite and not cfg.run.resume, rank, log), RunFiles(cfg, run_dir, rank, log)
    checkpoint._barrier()
    files.start(trainer.rollout_step, setup.changes, str(dist.device()))
    if ckpt is not None:
        log(f"resumed {run_dir.name} at step {trainer.rollout_step} from {ckpt.name}")
    if cfg.run.resume and rank == 0:  # only rank 0 decides budget points (RunEvaluator.step_targets)
        evaluator.resume(read_jsonl(files.metrics))
    points = BudgetPoints(cfg, run_dir, trainer, processor, setup.init_path, rank)

    def evaluate(metrics: dict[str, float] | None = None, last: bool = False) -> dict[str, float]:
        step = trainer.rollout_step
        targets = evaluator.targets(0) if metrics is None else evaluator.step_targets(step, metrics, last)
        return evaluator.run(trainer.engine.module, processor, targets, step, synced=trainer.synced_generation)

    try:
        files.open()
        if trainer.rollout_step == 0:  # the base policy: step 0's evaluation, and budget point 0
            _record_base(evaluate(), files, points)
        done = _nothing_left(cfg, trainer, ckpt is not None, run_dir, log)
        with _Progress(cfg, trainer, evaluator, rank) as bar, _StopRequests(log) as stop:
            while not done:
                metrics = {**trainer.step(), "rollout_step": trainer.rollout_step}
                done = _finished(cfg, trainer, metrics)
                metrics.update(evaluate(metrics, done))
                point = points.reach(metrics, done)
                files.log_step(metrics, trainer.rollout_step)
                stopping = stop.agreed(world)
                if stopping or _checkpoint_due(cfg, trainer.rollout_step, done, point):
                    folder = _save(cfg, run_dir, trainer, rank, old, log)
                if stopping:
                    raise _interrupted(stop, folder, resume_command, trainer.rollout_step, log)
                bar.advance(metrics, done)
        _write_final(run_dir, trainer, processor, setup.init_path, rank)
        files.finished(trainer)
        old.release()
    except NonFiniteLoss as e:
        files.failed(e, trainer.rollout_step)
        log(f"stopped: {e}. Last good checkpoint: {checkpoint.latest(run_dir) or 'none'}{old.note()}")
        raise
    except Exception:
        old.restore()  # (only rank 0 holds one)
        raise
    finally:
        files.close()
    return run_dir


class _Setup(NamedTuple):
    cfg: RunConfig
    init_path: Path
    data: Any
    evaluator: Any
    run_dir: Path
    changes: dict[str, tuple[Any, Any]]


def _refusals(composed: DictConfig, log) -> _Setup:
    """Every check that can refuse this config, in the order a user meets them, before anything is written or
    moved: the config, model folder and data; the trackers' packages; the run folder (an existing run, a resume's
    changed keys: before the base policy, whose lookup warms one up for a recipe that does not ship); the base
    policy; the held-out evaluation (a bad eval key)."""
    from rlsd_harness.training.evals import RunEvaluator
    from rlsd_harness.training.metrics import check_trackers
    from rlsd_harness.training.preflight import check_run
    from rlsd_harness.training.warmup import policy_path
    from rlsd_harness.verifier import build_verifier

    cfg, data = check_run(composed)
    check_trackers(list(cfg.run.trackers))
    run_dir, changes = check_run_dir(cfg)
    init_path = policy_path(cfg.model, cfg.data, log)
    evaluator = RunEvaluator(cfg, data, build_verifier(cfg.data.verifier))
    return _Setup(cfg, init_path, data, evaluator, run_dir, changes)


def _start(cfg: RunConfig, setup: _Setup, log):
    """The process group, every generator seeded (two runs of one config are the same run), the trainer on the
    base policy and, on a resume, its newest good checkpoint loaded. The config was validated by `_refusals`
    (the batch geometry and the objective's needs too); the trainer's remaining checks (the data's refill, the
    vocabulary) and the checkpoint's run before the run folder is touched."""
    import random

    import numpy as np
    import torch

    from rlsd_harness import dist
    from rlsd_harness.models import load_model, load_processor
    from rlsd_harness.training import checkpoint
    from rlsd_harness.training.trainer import Trainer

    rank, world = dist.init_distributed()
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    setup.evaluator.place(setup.run_dir, rank, world)
    torch.manual_seed(cfg.seed)
    processor = load_processor(setup.init_path)
    trainer = Trainer(cfg, load_model(setup.init_path), processor, setup.data, log, model_path=str(setup.init_path))
    ckpt = None
    if cfg.run.resume:
        ckpt = checkpoint.latest_good(setup.run_dir, log)
        if ckpt is None:
            raise checkpoint.CheckpointError(f"run.resume=true but every checkpoint of {setup.run_dir} is damaged (named "
                                             f"above); start it again with run.overwrite=true" + kept_run_note(setup.run_dir))
        trainer.load_state_dict(checkpoint.load(ckpt, trainer, rank))
    return trainer, processor, ckpt


def _record_base(evaluation: dict[str, float], files: RunFiles, points: Any) -> None:
    first = {"rollout_step": 0, "step": 0.0, **evaluation,
             **{f"ledger/cum/{k}": 0.0 for k in ("flops/total", "tokens/generated", "time/step")}}
    files.log_step(first, 0, first=True)
    if points.fractions:
        points.reach(first, False, base=True)


def _nothing_left(cfg: RunConfig, trainer: Any, resumed: bool, run_dir: Path, log) -> bool:
    """Whether the run is at its end before its first step: a resumed run may have reached it already."""
    done = _finished(cfg, trainer, trainer.cumulative())  # (a collective: every rank)
    if done and resumed:
        log(f"{run_dir.name} had already reached train.steps={cfg.train.steps} or its budget at step "
            f"{trainer.rollout_step}: nothing to train")
    return done


def _finished(cfg: RunConfig, trainer: Any, metrics: dict[str, Any]) -> bool:
    return trainer.rollout_step >= cfg.train.steps or budget_spent(cfg.train.budget, metrics)


def _checkpoint_due(cfg: RunConfig, step: int, done: bool, point: float | None) -> bool:
    """On the save_every grid, at the end, and at a budget point that retention keeps (even off the grid)."""
    at_point = point is not None and cfg.train.keep_budget_points
    return bool(cfg.train.save_every) and (step % cfg.train.save_every == 0 or done or at_point)


def _save(cfg: RunConfig, run_dir: Path, trainer: Any, rank: int, old: OldRun, log) -> Path:
    """A checkpoint (a collective); then, on rank 0, the overwritten run goes and, now that this checkpoint is
    complete and verified, the older ones retention does not keep (train.keep_last)."""
    from rlsd_harness.training import checkpoint

    folder = checkpoint.save(run_dir / "checkpoints" / f"step-{trainer.rollout_step:06d}", trainer, rank,
                             {**trainer.state_dict(), "algorithm": cfg.algorithm.name})
    if rank == 0:
        old.release()
        checkpoint.prune(run_dir, folder, cfg.train.keep_last, cfg.train.keep_budget_points, log)
    return folder


def _interrupted(stop: _StopRequests, folder: Path, resume_command: str | None, step: int, log) -> Interrupted:
    command = resume_command or default_resume_command()
    signum = stop.signum or signal.SIGTERM
    log(f"stopped by {signal.Signals(signum).name} after step {step}; checkpoint {folder}. Resume with:\n  {command}")
    return Interrupted(signum, folder, command)


def _write_final(run_dir: Path, trainer: Any, processor: Any, init_path: Path, rank: int) -> None:
    """final/, the last policy as a Hugging Face folder: complete or absent (written beside, then renamed)."""
    from rlsd_harness.models import save_model
    from rlsd_harness.training import checkpoint

    weights = checkpoint.export_state_dict(trainer.engine)  # every rank: a collective under ZeRO-3; LoRA merged
    if rank != 0:
        return
    tmp = run_dir / "final.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    trainer.engine.module.config.save_pretrained(tmp)
    kill_point("final")
    save_model(trainer.engine.module, processor, tmp, state_dict=weights)
    recipe = init_path / "recipe.json"
    if recipe.exists():
        (tmp / "recipe.json").write_text(recipe.read_text())
    replace_folder(tmp, run_dir / "final")
    kill_point("run_done")


class _Progress:
    """The progress bar of rank 0 (train.progress): steps, with the reward, loss and held-out accuracy."""

    def __init__(self, cfg: RunConfig, trainer: Any, evaluator: Any, rank: int) -> None:
        from tqdm.auto import tqdm

        self.shown = f"eval/{evaluator.split}/mean@k"
        self.bar = tqdm(total=cfg.train.steps, initial=trainer.rollout_step, desc=evaluator.run_dir.name,
                        disable=not cfg.train.progress or rank != 0, dynamic_ncols=True)

    def __enter__(self) -> _Progress:
        return self

    def advance(self, metrics: dict[str, Any], done: bool) -> None:
        self.bar.update(1)
        if not done:
            self.bar.set_postfix(reward=f"{metrics['rollout/reward']:.2f}", loss=f"{metrics.get('actor/loss', 0.0):.3f}",
                                 **({"acc": f"{metrics[self.shown]:.2f}"} if self.shown in metrics else {}))

    def __exit__(self, *exc) -> None:
        self.bar.close()
