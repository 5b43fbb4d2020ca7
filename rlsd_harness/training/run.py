"""One training run, in its own folder (the library side of `rlsd-train`).

results/runs/<name>/ holds config.yaml (resolved), manifest.json (versions, commit, seeds, device),
metrics.jsonl (one line per step: objective metrics, rollout statistics, held-out accuracy when evaluated,
the compute ledger), evals/ (per-item records of every held-out evaluation, training/evals.py),
checkpoints/step-N/ and final/ (a Hugging Face folder of the last policy).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rlsd_harness.config import REPO, budget_spent


def manifest(cfg: DictConfig, device: str) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

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
        "command": " ".join(sys.argv),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "git_commit": commit, "git_dirty": dirty,
        "seed": cfg.seed,
        "device": device, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
        "platform": platform.platform(), "python": platform.python_version(),
        "packages": {p: v(p) for p in ("torch", "transformers", "deepspeed", "tokenizers", "math-verify", "vllm", "hydra-core")},
    }


def prepare_run_dir(cfg: DictConfig) -> Path:
    name = str(cfg.run.name) if cfg.run.name is not None else f"{cfg.algorithm.name}-s{cfg.seed}"
    run_dir = (REPO / cfg.run.dir / name) if not Path(cfg.run.dir).is_absolute() else Path(cfg.run.dir) / name
    if cfg.run.resume:
        if not (run_dir / "config.yaml").exists():
            raise FileNotFoundError(f"run.resume=true but there is no run at {run_dir}")
    elif run_dir.exists() and any(run_dir.iterdir()):
        if not cfg.run.overwrite:
            raise FileExistsError(f"run folder {run_dir} exists; pass run.overwrite=true to replace it, "
                                  f"run.resume=true to continue it, or another run.name")
        import shutil

        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def run(cfg: DictConfig, log=None) -> Path:
    """Train one run to `train.steps`; returns its folder."""
    import torch
    from tqdm.auto import tqdm

    from rlsd_harness import dist
    from rlsd_harness.data import build_data
    from rlsd_harness.models import load_model, load_processor, save_model
    from rlsd_harness.training import checkpoint
    from rlsd_harness.training.evals import RunEvaluator, read_metrics
    from rlsd_harness.training.metrics import open_sinks
    from rlsd_harness.training.preflight import check_run
    from rlsd_harness.training.trainer import NonFiniteLoss, Trainer
    from rlsd_harness.training.warmup import policy_path
    from rlsd_harness.verifier import build_verifier

    check_run(cfg)  # config, model folder and data, before anything is written
    log = log or (lambda msg: print(msg, file=sys.stderr))
    init_path = policy_path(cfg.model, cfg.data, log)  # a bad model or data path fails before the run folder exists
    data = build_data(cfg.data, cfg.seed)
    # Held-out evaluation with the run's verifier (training/evals.py); a bad eval key fails here too.
    evaluator = RunEvaluator(cfg, data, build_verifier(cfg.data.verifier))
    run_dir = prepare_run_dir(cfg)
    rank, world = dist.init_distributed()
    evaluator.place(run_dir, rank, world)
    if not cfg.run.resume and rank == 0:
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        (run_dir / "manifest.json").write_text(json.dumps(manifest(cfg, str(dist.device())), indent=1))
    torch.manual_seed(cfg.seed)
    processor = load_processor(init_path)
    trainer = Trainer(cfg, load_model(init_path), processor, data, log, model_path=str(init_path))
    metrics_file = run_dir / "metrics.jsonl"
    if cfg.run.resume:
        ckpt = checkpoint.latest(run_dir)
        if ckpt is None:
            raise FileNotFoundError(f"run.resume=true but {run_dir} has no checkpoint")
        state = checkpoint.load(ckpt, trainer, rank)
        trainer.step_count, trainer.rollout_step = state["step_count"], state["rollout_step"]
        trainer.ledger.load_state_dict(state["ledger"])
        if rank == 0:  # drop lines written after that checkpoint: those steps are redone identically
            lines = [ln for ln in metrics_file.read_text().splitlines() if json.loads(ln)["rollout_step"] <= trainer.rollout_step]
            metrics_file.write_text("".join(ln + "\n" for ln in lines))
        log(f"resumed {run_dir.name} at step {trainer.rollout_step} from {ckpt.name}")

    if cfg.run.resume and rank == 0:  # only rank 0 decides budget points (RunEvaluator.step_targets)
        evaluator.resume(read_metrics(metrics_file))

    def evaluate(metrics: dict[str, float] | None = None, last: bool = False) -> dict[str, float]:
        step = trainer.rollout_step
        targets = evaluator.targets(0) if metrics is None else evaluator.step_targets(step, metrics, last)
        return evaluator.run(trainer.engine.module, processor, targets, step, synced=trainer.synced_generation)

    def save() -> None:
        state = {"step_count": trainer.step_count, "rollout_step": trainer.rollout_step,
                 "ledger": trainer.ledger.state_dict(), "algorithm": cfg.algorithm.name}
        checkpoint.save(run_dir / "checkpoints" / f"step-{trainer.rollout_step:06d}", trainer, rank, state)

    sinks = open_sinks(run_dir, list(cfg.run.get("trackers") or []), OmegaConf.to_container(cfg, resolve=True)) \
        if rank == 0 else []
    if trainer.rollout_step == 0:
        first = {"rollout_step": 0, "step": 0.0, **evaluate()}
        first.update({f"ledger/cum/{k}": 0.0 for k in ("flops/total", "tokens/generated", "time/step")})
        if rank == 0:
            metrics_file.write_text("")
            for sink in sinks:
                sink.log(first, 0)
    bar = tqdm(total=cfg.train.steps, initial=trainer.rollout_step, desc=f"{run_dir.name}",
               disable=not cfg.train.progress or rank != 0, dynamic_ncols=True)
    try:
        while trainer.rollout_step < cfg.train.steps:
            metrics = trainer.step()
            metrics["rollout_step"] = trainer.rollout_step
            last = trainer.rollout_step == cfg.train.steps or budget_spent(cfg.train.budget, metrics)
            metrics.update(evaluate(metrics, last))
            if rank == 0:
                for sink in sinks:
                    sink.log(metrics, trainer.rollout_step)
            if cfg.train.save_every and (trainer.rollout_step % cfg.train.save_every == 0 or last):
                save()
            bar.update(1)
            if last:
                break
            shown = f"eval/{evaluator.split}/mean@k"
            bar.set_postfix(reward=f"{metrics['rollout/reward']:.2f}", loss=f"{metrics.get('actor/loss', 0.0):.3f}",
                            **({"acc": f"{metrics[shown]:.2f}"} if shown in metrics else {}))
    except NonFiniteLoss as e:
        if rank == 0:
            (run_dir / "failed.json").write_text(json.dumps({"error": str(e), "step": trainer.rollout_step}))
        ckpt = checkpoint.latest(run_dir)
        log(f"stopped: {e}. Last good checkpoint: {ckpt or 'none'}")
        raise
    finally:
        bar.close()
        for sink in sinks:
            sink.close()
    weights = checkpoint.full_state_dict(trainer.engine)  # every rank: a collective under ZeRO-3
    if rank == 0:
        save_model(trainer.engine.module, processor, run_dir / "final", state_dict=weights)
        recipe = init_path / "recipe.json"
        if recipe.exists():
            (run_dir / "final" / "recipe.json").write_text(recipe.read_text())
    return run_dir
