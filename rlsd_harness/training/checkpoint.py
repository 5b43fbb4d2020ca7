"""Checkpoints that load without unpickling: tensors in safetensors, everything else in JSON.

A checkpoint folder `step-000010/` holds the policy weights, each rank's optimizer state (the base torch
optimizer's, over whatever parameters DeepSpeed gave it: the model's under ZeRO-0, flat fp32 partitions under
ZeRO-1/2), the teacher's and reference's weights when they exist, RNG states, the step counters, the data
position and the ledger totals. It is written to a temporary folder and renamed, so a crash mid-write
leaves the previous checkpoint as the latest one; its last file, manifest.json, lists every other file with
its size and SHA-256, and a checkpoint is used only when all of them match (`verify`), so a damaged newest
checkpoint (a disk error, a copy cut short) is skipped for the previous good one (`latest_good`).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from collections.abc import Callable, Collection, Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from rlsd_harness.dist import all_gather_object, iter_full_parameters
from rlsd_harness.training.durable import atomic_write_text, kill_point

MANIFEST = "manifest.json"


class CheckpointError(FileNotFoundError):
    """No usable checkpoint: the message names the folder and what is wrong with it."""


def _optimizer_slots(engine) -> tuple[torch.optim.Optimizer, list[torch.Tensor]]:
    """The torch optimizer DeepSpeed drives and the tensors it updates, in a stable order: the model's
    parameters (ZeRO-0), flat fp32 partitions (ZeRO-1/2: in its param groups; ZeRO-3: its own list, which it
    swaps into the param groups only during a step)."""
    opt = engine.optimizer
    base = getattr(opt, "optimizer", opt)
    flat3 = getattr(opt, "fp32_partitioned_groups_flat", None)
    params = list(flat3) if flat3 is not None else [p for g in base.param_groups for p in g["params"]]
    return base, params


def _optimizer_to_flat(engine) -> tuple[dict[str, torch.Tensor], dict]:
    base, params = _optimizer_slots(engine)
    tensors, scalars = {}, {}
    for i, p in enumerate(params):
        for name, v in base.state.get(p, {}).items():
            if isinstance(v, torch.Tensor):
                tensors[f"state.{i}.{name}"] = v.detach().clone().contiguous()
            else:
                scalars[f"{i}.{name}"] = v
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items() if k != "params"} for g in base.param_groups]
    return tensors, {"param_groups": groups, "scalars": scalars}


def _optimizer_from_flat(engine, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    base, params = _optimizer_slots(engine)
    for key, v in tensors.items():
        _, i, name = key.split(".", 2)
        p = params[int(i)]
        base.state.setdefault(p, {})[name] = v.to(p.device)
    for key, v in meta["scalars"].items():
        i, name = key.split(".", 1)
        base.state.setdefault(params[int(i)], {})[name] = v
    for group, saved in zip(base.param_groups, meta["param_groups"]):
        group.update({k: (tuple(v) if k == "betas" else v) for k, v in saved.items()})


def _rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    py = random.getstate()
    np_state = np.random.get_state()
    tensors = {"torch_cpu": torch.get_rng_state(), "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64))}
    if torch.cuda.is_available():
        tensors["torch_cuda"] = torch.cuda.get_rng_state()
    meta = {"python": [py[0], list(py[1]), py[2]], "numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])]}
    return tensors, meta


def _set_rng_state(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    v, state, gauss = meta["python"]
    random.setstate((v, tuple(state), gauss))
    name, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, tensors["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["torch_cpu"])
    if "torch_cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["torch_cuda"])


def save(folder: Path, trainer, rank: int, state: dict) -> Path:
    """Write `folder` (atomically per rank: rank files land in the temp folder, rank 0 renames after a barrier)."""
    tmp = folder.with_name(folder.name + ".tmp")
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    engine = trainer.engine
    full = full_state_dict(engine)  # collective under ZeRO-3: every rank takes part
    copies = {role: _copy_weights(holder) for role, holder in (("teacher", trainer.teacher), ("ref", trainer.ref))}
    if rank == 0:
        save_file(full, tmp / "model.safetensors")
        kill_point("checkpoint")
        for role, weights in copies.items():
            if weights is not None:
                save_file(weights, tmp / f"{role}.safetensors")
    opt_tensors, opt_meta = _optimizer_to_flat(engine)
    fp32 = _fp32_partitions(engine)
    if fp32 is not None:  # ZeRO master copies: restored exactly rather than re-derived from the model
        opt_tensors.update({f"fp32.{i}": t.detach().clone() for i, t in enumerate(fp32)})
    save_file(opt_tensors, tmp / f"optimizer-rank{rank}.safetensors")
    rng_tensors, rng_meta = _rng_state()
    save_file(rng_tensors, tmp / f"rng-rank{rank}.safetensors")
    sched = engine.lr_scheduler
    meta = {
        "ledger": trainer.ledger.state_dict(),  # each rank's own counts (the metrics sum them over ranks)
        "optimizer": opt_meta,
        "rng": rng_meta,
        "scheduler": {"last_epoch": sched.last_epoch, "_step_count": sched._step_count, "base_lrs": sched.base_lrs,
                      "_last_lr": sched._last_lr},
    }
    (tmp / f"rank{rank}.json").write_text(json.dumps(meta))
    _barrier()
    if rank == 0:
        (tmp / "state.json").write_text(json.dumps(state, indent=1))
        files = sorted(p.name for p in tmp.iterdir() if p.is_file())
        (tmp / MANIFEST).write_text(json.dumps({"files": {n: _describe(tmp / n) for n in files}}, indent=1))
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    _barrier()
    return folder


def _describe(path: Path) -> dict:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def verify(folder: Path) -> str | None:
    """None when `folder` is a complete checkpoint whose files all match its manifest, else what is wrong."""
    folder = Path(folder)
    try:
        listed = json.loads((folder / MANIFEST).read_text())["files"]
    except FileNotFoundError:
        return f"no {MANIFEST} (its write was cut short)"
    except (ValueError, KeyError, TypeError) as e:
        return f"unreadable {MANIFEST} ({e})"
    for name, want in listed.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != want["bytes"]:
            return f"{name} has {path.stat().st_size} bytes, the manifest says {want['bytes']}"
        if _describe(path)["sha256"] != want["sha256"]:
            return f"{name} does not match its SHA-256 in the manifest"
    if "state.json" not in listed:
        return "the manifest lists no state.json"
    return None


def latest_good(run_dir: Path, log: Callable[[str], None] | None = None) -> Path | None:
    """The newest checkpoint that passes `verify`; each damaged newer one is named in a warning (to `log`),
    together with the one used instead."""
    damaged = []
    for folder in reversed(_step_folders(run_dir)):
        problem = verify(folder)
        if problem is None:
            for bad, why in damaged:
                if log is not None:
                    log(f"warning: checkpoint {bad} is damaged ({why}); using the previous good one, {folder}")
            return folder
        damaged.append((folder, problem))
    if damaged and log is not None:
        log("warning: no good checkpoint in " + "; ".join(f"{f} ({why})" for f, why in damaged))
    return None


def load(folder: Path, trainer, rank: int) -> dict:
    folder = Path(folder)
    problem = verify(folder)
    if problem is not None:
        raise CheckpointError(f"checkpoint {folder} is damaged: {problem}")
    engine = trainer.engine
    load_parameters(engine.module, load_file(folder / "model.safetensors"), engine.zero_optimization_stage() == 3)
    for role, holder in (("teacher", trainer.teacher), ("ref", trainer.ref)):
        if (folder / f"{role}.safetensors").exists():
            load_parameters(holder.model, load_file(folder / f"{role}.safetensors"), holder.partitioned)
    meta = json.loads((folder / f"rank{rank}.json").read_text())
    opt_tensors = load_file(folder / f"optimizer-rank{rank}.safetensors")
    fp32 = {k: v for k, v in opt_tensors.items() if k.startswith("fp32.")}
    for k in fp32:
        opt_tensors.pop(k)
    _optimizer_from_flat(engine, opt_tensors, meta["optimizer"])
    groups = _fp32_partitions(engine)
    if groups is not None:
        with torch.no_grad():
            for i, t in enumerate(groups):
                t.copy_(fp32[f"fp32.{i}"])
    for k, v in meta["scheduler"].items():
        setattr(engine.lr_scheduler, k, v)
    _set_rng_state(load_file(folder / f"rng-rank{rank}.safetensors"), meta["rng"])
    state = json.loads((folder / "state.json").read_text())
    if "ledger" in meta and "ledger" in state:
        state["ledger"] = meta["ledger"]
    return state


def _fp32_partitions(engine) -> list[torch.Tensor] | None:
    opt = engine.optimizer
    return getattr(opt, "single_partition_of_fp32_groups", None) or getattr(opt, "fp32_partitioned_groups_flat", None)


def full_state_dict(engine) -> dict[str, torch.Tensor]:
    """The policy's full weights (tied ones once). Under ZeRO-3 they are consolidated by DeepSpeed (a
    collective call: all ranks), elsewhere read from the module."""
    if engine.zero_optimization_stage() == 3:
        state = engine._zero3_consolidated_16bit_state_dict()
    else:
        state = engine.module.state_dict()
    names = {n for n, _ in engine.module.named_parameters()} | {n for n, _ in engine.module.named_buffers()}
    return {k: v.detach().contiguous().clone() for k, v in (state or {}).items() if k in names}


def export_state_dict(engine) -> dict[str, torch.Tensor]:
    """The policy's weights as a plain model folder holds them (final/, budget-point policies): the full state
    dict, with LoRA adapters merged into their weights under the plain model's names (a collective under
    ZeRO-3, like `full_state_dict`)."""
    from rlsd_harness.models import merged_state_dict

    return merged_state_dict(engine.module, full_state_dict(engine))


def _copy_weights(holder) -> dict[str, torch.Tensor] | None:
    """A teacher's or reference's own weights (gathered one parameter at a time when partitioned: a collective,
    so every rank calls it), or None when there is no copy (no teacher, or a live one)."""
    if holder is None or holder.model is None:
        return None
    stage = 3 if holder.partitioned else 0
    return {name: t.detach().clone().contiguous() for name, t in iter_full_parameters(holder.model, stage)}


@torch.no_grad()
def load_parameters(module: torch.nn.Module, state: dict[str, torch.Tensor], partitioned: bool) -> None:
    """Inverse of full_state_dict / _copy_weights; when partitioned (ZeRO-3) each parameter is gathered, set on
    rank 0 and re-partitioned from it in turn."""
    if partitioned:
        import deepspeed

        for name, p in module.named_parameters():
            with deepspeed.zero.GatheredParameters([p], modifier_rank=0):
                if torch.distributed.get_rank() == 0:
                    p.copy_(state[name])
    else:
        missing = sorted({name for name, _ in module.named_parameters()} - set(state))
        if missing:
            raise KeyError(f"the checkpoint lacks {len(missing)} parameters, e.g. {missing[:3]}")
        module.load_state_dict(state, strict=False)  # tied aliases (saved once) are not in `state`


def _step_folders(run_dir: Path) -> list[Path]:
    return sorted(p for p in (Path(run_dir) / "checkpoints").glob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))


def latest(run_dir: Path) -> Path | None:
    """The newest checkpoint folder that was completely written (its manifest is there); `latest_good`
    also checks every file against it."""
    steps = [p for p in _step_folders(run_dir) if (p / MANIFEST).exists()]
    return steps[-1] if steps else None


def _barrier() -> None:
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.barrier()


# ----------------------------------------------------------------------------- retention

BUDGET_RECORD = "budget_points.json"  # <run>/budget_points.json: the budget points reached, in order
DELETING = ".deleting"


def kept_steps(steps: Sequence[int], budget_steps: Collection[int], keep_last: int | None,
               keep_budget_points: bool) -> list[int]:
    """The checkpoint steps retention keeps: the newest `keep_last` (all when None) and, with
    `keep_budget_points`, every step in `budget_steps`."""
    if keep_last is not None and keep_last < 1:
        raise ValueError(f"train.keep_last={keep_last}; valid: an integer >= 1, or null to keep every checkpoint")
    ordered = sorted(steps)
    keep = set(ordered if keep_last is None else ordered[-keep_last:])
    if keep_budget_points:
        keep |= set(ordered) & set(budget_steps)
    return sorted(keep)


def step_of(folder: Path) -> int:
    return int(Path(folder).name.split("-", 1)[1])


def read_budget_record(run_dir: Path) -> list[dict]:
    """The budget points a run has reached: [{"fraction", "step", "flops"}, ...] (step 0 first)."""
    path = Path(run_dir) / BUDGET_RECORD
    return json.loads(path.read_text()) if path.is_file() else []


def write_budget_record(run_dir: Path, entries: list[dict]) -> None:
    atomic_write_text(Path(run_dir) / BUDGET_RECORD, json.dumps(entries, indent=1))


def prune(run_dir: Path, newest: Path, keep_last: int | None, keep_budget_points: bool,
          log: Callable[[str], None] | None = None) -> list[Path]:
    """Delete the checkpoints retention does not keep (see `kept_steps`; budget-point steps are read from
    <run>/budget_points.json), once `newest` passes `verify`: until then every older one stays. Only folders
    older than `newest` are candidates. Each is renamed to a hidden `.step-N.deleting` before its files go, so
    a kill mid-delete never leaves a half folder that `latest` could take for a checkpoint. Returns the
    deleted folders."""
    run_dir, newest = Path(run_dir), Path(newest)
    for leftover in (run_dir / "checkpoints").glob(f".step-*{DELETING}"):  # a kill cut an earlier delete short
        shutil.rmtree(leftover, ignore_errors=True)
    if keep_last is None:
        return []
    problem = verify(newest)
    if problem is not None:
        if log is not None:
            log(f"warning: the new checkpoint {newest} does not verify ({problem}); no older checkpoint is deleted")
        return []
    folders = {step_of(f): f for f in _step_folders(run_dir) if step_of(f) <= step_of(newest)}
    budget = {int(e["step"]) for e in read_budget_record(run_dir)}
    keep = set(kept_steps(list(folders), budget, keep_last, keep_budget_points)) | {step_of(newest)}
    deleted = []
    for step in sorted(set(folders) - keep):
        folder = folders[step]
        doomed = folder.with_name(f".{folder.name}{DELETING}")
        os.replace(folder, doomed)
        kill_point("prune")
        shutil.rmtree(doomed)
        deleted.append(folder)
    return deleted


# ----------------------------------------------------------------------------- budget-point policies

POLICY_DIR = "budget_policies"


def policy_folder(run_dir: Path, fraction: float) -> Path:
    """<run>/budget_policies/<fraction formatted like 0.50>/ (0.00: the step-0 base)."""
    return Path(run_dir) / POLICY_DIR / f"{fraction:.2f}"


def write_policy(run_dir: Path, engine, processor, rank: int, fraction: float, step: int, flops: float,
                 recipe: Path | None = None) -> Path | None:
    """The policy as a Hugging Face model folder that `rlsd-evaluate checkpoint=<folder>` loads (config.json,
    model.safetensors, tokenizer and processor files, like final/), with budget.json {"fraction", "step",
    "flops"}. Written to a hidden temporary folder and renamed, so the final name holds a complete folder or
    none; an existing folder is kept as it is (a resumed run redoes the same step with the same weights).
    Every rank calls it (the weights are gathered collectively under ZeRO-3); rank 0 writes. Returns the
    folder, or None where it existed already."""
    from rlsd_harness.models import save_model

    folder = policy_folder(run_dir, fraction)
    if all_gather_object(folder.is_dir())[0]:  # rank 0's file system decides for every rank
        return None
    weights = export_state_dict(engine)  # every rank: a collective under ZeRO-3
    if rank == 0:
        tmp = folder.with_name(f".{folder.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        engine.module.config.save_pretrained(tmp)
        kill_point("budget_policy")
        save_model(engine.module, processor, tmp, state_dict=weights)
        if recipe is not None and recipe.exists():
            (tmp / "recipe.json").write_text(recipe.read_text())
        (tmp / "budget.json").write_text(json.dumps({"fraction": fraction, "step": step, "flops": flops}, indent=1))
        os.replace(tmp, folder)
    _barrier()
    return folder
