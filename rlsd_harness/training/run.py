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
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rlsd_harness.config import REPO, ConfigError, budget_spent
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


def manifest(cfg: DictConfig, device: str) -> dict[str, Any]:
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


def run_dir_of(cfg: DictConfig) -> Path:
    name = str(cfg.run.name) if cfg.run.name is not None else f"{cfg.algorithm.name}-s{cfg.seed}"
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


def check_run_dir(cfg: DictConfig) -> tuple[Path, dict[str, tuple[Any, Any]]]:
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
        changes = config_changes(OmegaConf.load(run_dir / "config.yaml"), cfg)
        changes = {k: v for k, v in changes.items() if not k.startswith("run.")}
        refused = {k: v for k, v in changes.items() if not resumable(k)}
        if refused and not cfg.run.get("resume_changed", False):
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


def prepare_run_dir(cfg: DictConfig) -> Path:
    """`check_run_dir`, then create the folder (an overwritten run is moved aside, see the module doc)."""
    run_dir, _ = check_run_dir(cfg)
    _take_run_dir(run_dir, bool(cfg.run.overwrite) and not cfg.run.resume)
    return run_dir


def _resume_metrics(metrics_file: Path, step: int, log) -> None:
    """Keep the lines up to the checkpoint's step (the steps after it are redone identically); each step
    0..step must be there once."""
    lines = [m for m in read_jsonl(metrics_file, warn=log) if m["rollout_step"] <= step]
    if [m["rollout_step"] for m in lines] != list(range(step + 1)):
        raise ValueError(f"{metrics_file} does not hold one line per step 0..{step} (it has "
                         f"{[m['rollout_step'] for m in lines]}); the run cannot be resumed exactly")
    atomic_write_text(metrics_file, "".join(json.dumps(m) + "\n" for m in lines))


def _record_changes(run_dir: Path, cfg: DictConfig, changes: dict[str, tuple[Any, Any]], step: int) -> None:
    import yaml

    history_file = run_dir / "config_history.yaml"
    history = (yaml.safe_load(history_file.read_text()) or []) if history_file.exists() else []
    history.append({"resumed_at_step": step, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "forced": bool(cfg.run.get("resume_changed", False)) and any(not resumable(k) for k in changes),
                    "changed": {k: {"old": old, "new": new} for k, (old, new) in changes.items()}})
    atomic_write_text(history_file, yaml.safe_dump(history, sort_keys=False))
    atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))


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

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def run(cfg: DictConfig, log=None, resume_command: str | None = None) -> Path:
    """Train one run to `train.steps` or its budget; returns its folder. `resume_command` is what an
    interrupted run prints as the way to continue it (default: this process's command line, resumed)."""
    import torch
    from tqdm.auto import tqdm

    from rlsd_harness import dist
    from rlsd_harness.data import build_data
    from rlsd_harness.models import load_model, load_processor, save_model
    from rlsd_harness.training import checkpoint
    from rlsd_harness.training.evals import (
        RunEvaluator,
        budget_point_due,
        budget_progress,
        validate_fractions,
    )
    from rlsd_harness.training.metrics import check_trackers, open_sinks
    from rlsd_harness.training.preflight import check_run
    from rlsd_harness.training.trainer import NonFiniteLoss, Trainer
    from rlsd_harness.training.warmup import policy_path
    from rlsd_harness.verifier import build_verifier

    check_run(cfg)  # config, model folder and data, before anything is written
    check_trackers(list(cfg.run.get("trackers") or []))  # a missing tracker package, before the run folder exists
    log = log or (lambda msg: print(msg, file=sys.stderr))
    init_path = policy_path(cfg.model, cfg.data, log)  # a bad model or data path fails before the run folder exists
    data = build_data(cfg.data, cfg.seed)
    # Held-out evaluation with the run's verifier (training/evals.py); a bad eval key fails here too.
    evaluator = RunEvaluator(cfg, data, build_verifier(cfg.data.verifier))
    # Everything that can refuse this config runs before anything is written or moved: the run folder's checks
    # (an existing run, a resume's changed keys), the trainer (batch geometry, the objective's needs), the
    # checkpoint a resume starts from.
    run_dir, changes = check_run_dir(cfg)
    rank, world = dist.init_distributed()
    # every generator a checkpoint restores starts from the seed: two runs of one config are the same run
    import random

    import numpy as np

    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    evaluator.place(run_dir, rank, world)
    torch.manual_seed(cfg.seed)
    processor = load_processor(init_path)
    trainer = Trainer(cfg, load_model(init_path), processor, data, log, model_path=str(init_path))
    ckpt = None
    if cfg.run.resume:
        ckpt = checkpoint.latest_good(run_dir, log)
        if ckpt is None:
            raise checkpoint.CheckpointError(f"run.resume=true but every checkpoint of {run_dir} is damaged (named "
                                             f"above); start it again with run.overwrite=true" + kept_run_note(run_dir))
        trainer.load_state_dict(checkpoint.load(ckpt, trainer, rank))
    aside = None
    if rank == 0:
        aside = _take_run_dir(run_dir, bool(cfg.run.overwrite) and not cfg.run.resume, log)
    checkpoint._barrier()
    metrics_file = run_dir / "metrics.jsonl"
    if rank == 0:
        (run_dir / "finished.json").unlink(missing_ok=True)
        if cfg.run.resume:
            _resume_metrics(metrics_file, trainer.rollout_step, log)
            if changes:
                _record_changes(run_dir, cfg, changes, trainer.rollout_step)
                log(f"resumed with changed keys: {', '.join(changes)} (recorded in config_history.yaml)")
        else:
            atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
            atomic_write_text(run_dir / "manifest.json", json.dumps(manifest(cfg, str(dist.device())), indent=1))
    if ckpt is not None:
        log(f"resumed {run_dir.name} at step {trainer.rollout_step} from {ckpt.name}")

    def release_old_run() -> None:
        nonlocal aside
        if aside is not None:  # the new run now stands on its own: the one it replaces can go
            shutil.rmtree(aside)
            log(f"deleted the overwritten run (kept aside at {aside} until this run's first checkpoint)")
            aside = None

    if cfg.run.resume and rank == 0:  # only rank 0 decides budget points (RunEvaluator.step_targets)
        evaluator.resume(read_jsonl(metrics_file))

    # Budget points, decided like the evaluator's (training/evals.py) but also when no evaluation runs: they
    # mark the checkpoints retention keeps and the steps whose policy goes to budget_policies/. The points
    # reached are recorded in <run>/budget_points.json; a resume keeps those up to its checkpoint's step.
    fractions = validate_fractions(cfg.eval.get("budget_points"))
    keep_last, keep_points = cfg.train.get("keep_last", None), bool(cfg.train.get("keep_budget_points", True))
    reached = [e for e in checkpoint.read_budget_record(run_dir) if e["step"] <= trainer.rollout_step] \
        if cfg.run.resume else []
    if rank == 0:
        checkpoint.write_budget_record(run_dir, reached)
    points_done = {f for f in fractions if reached and f <= max(e["fraction"] for e in reached) + 1e-9}

    def budget_point(metrics: dict[str, Any], last: bool, base: bool = False) -> float | None:
        point = 0.0 if base else None
        if rank == 0 and not base:  # a seconds budget differs between ranks: rank 0 decides for all
            point = budget_point_due(budget_progress(cfg, metrics, trainer.rollout_step), fractions, points_done, last)
        point = dist.all_gather_object(point)[0]
        if point is not None:
            if not base:
                points_done.update(f for f in fractions if f <= point + 1e-9)
            entry = {"fraction": point, "step": trainer.rollout_step,
                     "flops": float(metrics.get("ledger/cum/flops/total", 0.0))}
            reached.append(entry)
            if rank == 0:
                checkpoint.write_budget_record(run_dir, reached)
            if cfg.train.get("save_budget_policies", False):
                recipe = init_path / "recipe.json"
                checkpoint.write_policy(run_dir, trainer.engine, processor, rank, point, entry["step"], entry["flops"],
                                        recipe if recipe.exists() else None)
        return point

    def evaluate(metrics: dict[str, float] | None = None, last: bool = False) -> dict[str, float]:
        step = trainer.rollout_step
        targets = evaluator.targets(0) if metrics is None else evaluator.step_targets(step, metrics, last)
        return evaluator.run(trainer.engine.module, processor, targets, step, synced=trainer.synced_generation)

    def save() -> Path:
        folder = checkpoint.save(run_dir / "checkpoints" / f"step-{trainer.rollout_step:06d}", trainer, rank,
                                 {**trainer.state_dict(), "algorithm": cfg.algorithm.name})
        if rank == 0:
            release_old_run()
            # older checkpoints go only now that this one is complete and verified (train.keep_last)
            checkpoint.prune(run_dir, folder, keep_last, keep_points, log)
        return folder

    def finished(metrics: dict[str, Any]) -> bool:
        return trainer.rollout_step >= cfg.train.steps or budget_spent(cfg.train.budget, metrics)

    sinks = []
    try:
        if rank == 0:  # a tracker that cannot start is a failure before the first checkpoint: the old run comes back
            sinks = open_sinks(run_dir, list(cfg.run.get("trackers") or []), OmegaConf.to_container(cfg, resolve=True))
        if trainer.rollout_step == 0:
            first = {"rollout_step": 0, "step": 0.0, **evaluate()}
            first.update({f"ledger/cum/{k}": 0.0 for k in ("flops/total", "tokens/generated", "time/step")})
            if rank == 0:
                atomic_write_text(metrics_file, "")
                for sink in sinks:
                    sink.log(first, 0)
            if fractions:  # the base policy is budget point 0, as in the evaluator
                budget_point(first, False, base=True)
        # a resumed run that had already reached its length or budget trains no further step
        done = finished(trainer.cumulative())
        if done and ckpt is not None:
            log(f"{run_dir.name} had already reached train.steps={cfg.train.steps} or its budget at step "
                f"{trainer.rollout_step}: nothing to train")
        bar = tqdm(total=cfg.train.steps, initial=trainer.rollout_step, desc=f"{run_dir.name}",
                   disable=not cfg.train.progress or rank != 0, dynamic_ncols=True)
        with _StopRequests(log) as stop:
            try:
                while not done:
                    metrics = trainer.step()
                    metrics["rollout_step"] = trainer.rollout_step
                    done = finished(metrics)
                    metrics.update(evaluate(metrics, done))
                    point = budget_point(metrics, done)
                    if rank == 0:
                        for sink in sinks:
                            sink.log(metrics, trainer.rollout_step)
                    stopping = stop.signum is not None
                    if world > 1:  # every rank stops at the same step (the checkpoint is a collective)
                        stopping = bool(dist.all_reduce_max(int(stopping)))
                    # a budget point's checkpoint is saved even off the save_every grid when retention keeps it
                    at_point = point is not None and keep_points
                    if stopping or (cfg.train.save_every and (trainer.rollout_step % cfg.train.save_every == 0 or done
                                                              or at_point)):
                        folder = save()
                    if stopping:
                        command = resume_command or default_resume_command()
                        signum = stop.signum or signal.SIGTERM
                        log(f"stopped by {signal.Signals(signum).name} after step {trainer.rollout_step}; "
                            f"checkpoint {folder}. Resume with:\n  {command}")
                        raise Interrupted(signum, folder, command)
                    bar.update(1)
                    if not done:
                        shown = f"eval/{evaluator.split}/mean@k"
                        bar.set_postfix(reward=f"{metrics['rollout/reward']:.2f}", loss=f"{metrics.get('actor/loss', 0.0):.3f}",
                                        **({"acc": f"{metrics[shown]:.2f}"} if shown in metrics else {}))
            finally:
                bar.close()
        weights = checkpoint.export_state_dict(trainer.engine)  # every rank: a collective under ZeRO-3; LoRA merged
        if rank == 0:
            # final/ is complete or absent: written beside, renamed, and only then marked finished
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
            atomic_write_text(run_dir / "finished.json", json.dumps(
                {"rollout_step": trainer.rollout_step, "step": trainer.step_count,
                 "stopped_by": "train.steps" if trainer.rollout_step >= cfg.train.steps else "train.budget",
                 # a tuning rung short of the budget: compare._train resumes the run when asked for more
                 "stop_at": (cfg.train.get("budget") or {}).get("stop_at"),
                 "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=1))
            release_old_run()
    except NonFiniteLoss as e:
        if rank == 0:
            atomic_write_text(run_dir / "failed.json", json.dumps({"error": str(e), "step": trainer.rollout_step}))
        log(f"stopped: {e}. Last good checkpoint: {checkpoint.latest(run_dir) or 'none'}"
            + (f"; the run this one was to replace is kept at {aside}" if aside is not None else ""))
        raise
    except Exception:
        if rank == 0 and aside is not None:  # failed before its first checkpoint: the overwritten run comes back
            shutil.rmtree(run_dir)
            os.replace(aside, run_dir)
            log(f"the new run failed before its first checkpoint; the run it was to replace is back at {run_dir}")
        raise
    finally:
        for sink in sinks:
            sink.close()
    return run_dir
