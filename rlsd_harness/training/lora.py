"""LoRA training (`model.lora.enabled=true`): which weights train, what the teacher and the KL reference run,
and the exported (merged) weights.

The adapters are peft's, injected into the policy in place (`rlsd_harness.models.apply_lora`); every other
weight is frozen, so the optimizer (and DeepSpeed's ZeRO partitions of it) holds the adapters alone.

The teacher shares the policy's frozen base, never a second copy of it:
  model.lora.teacher=adapters (default): the teacher follows `algorithm.teacher.weights` with adapters of its own.
      frozen  the initial policy, which is the base (peft starts B at zero): the base with adapters off;
      sync    a second adapter set, hard-copied from the student's every `sync_every` optimizer steps;
      ema     that second adapter set, blended tau toward the student's after every optimizer step;
      live    the student itself.
  model.lora.teacher=base: the base with adapters off, whatever the schedule; only with `weights: frozen`
      (sync / ema / live would ask for a teacher that changes).
A KL reference (an objective's `needs_ref`) is the initial policy, hence the base with adapters off too.
"""

from __future__ import annotations

from typing import Any

import torch

from rlsd_harness import dist
from rlsd_harness.config.typed import ModelLoraSection, RunConfig
from rlsd_harness.models import (
    TEACHER_ADAPTER,
    AdapterView,
    apply_lora,
    lora_layers,
)
from rlsd_harness.training.teacher import TeacherConfig, TeacherWeights, teacher_config, weight_update


def lora_settings(cfg: RunConfig) -> ModelLoraSection | None:
    """The config's `model.lora` mapping when LoRA is on, else None."""
    return cfg.model.lora if cfg.model.lora.enabled else None


def teacher_adapter_needed(lora: Any, weights: str) -> bool:
    """Whether the teacher needs adapters of its own (a sync or EMA copy of the student's). (The config schema
    refuses model.lora.teacher=base with a schedule that changes the teacher.)"""
    return lora.teacher == "adapters" and weights in ("sync", "ema")


def prepare_policy(cfg: RunConfig, policy: torch.nn.Module) -> torch.nn.Module:
    """The policy the trainer trains: `policy` itself without LoRA, else `policy` with adapters injected (and a
    teacher adapter set when `algorithm.teacher.weights` needs one). Call before the optimizer and the teacher
    exist."""
    lora = lora_settings(cfg)
    if lora is None:
        return policy
    weights = teacher_config(cfg.algorithm.teacher).weights
    return apply_lora(policy, lora, teacher_adapter=teacher_adapter_needed(lora, weights))


class LoraTeacher:
    """A teacher (or reference) run on the policy's own modules: the base with adapters off, or the
    `TEACHER_ADAPTER` set in place of the student's. The interface of `TeacherWeights`; `model` is None (no
    copy: checkpoints save the teacher adapter with the policy's weights, since it is one of its parameters)."""

    def __init__(self, cfg: TeacherConfig, adapter: str | None) -> None:
        self.cfg, self.adapter = cfg, adapter
        self.model = None
        self.partitioned = False
        self.updates = 0

    def place(self, dtype: torch.dtype, zero_stage: int, ds_config: dict) -> None:
        """Nothing to place: the teacher's weights are the policy's parameters, cast and partitioned with them.
        (An EMA adapter set thus has the policy's dtype; under bf16 small tau-sized steps round, see teacher.py.)"""

    def module(self, policy: torch.nn.Module) -> AdapterView:
        return AdapterView(policy, self.adapter)

    @torch.no_grad()
    def after_step(self, step: int, policy: torch.nn.Module, zero_stage: int = 0) -> bool:
        """After optimizer step `step` (1-based): the teacher adapter takes the student's (sync) or moves tau
        toward it (ema). Under ZeRO-3 both adapter sets are partitioned alike (same shapes), so each rank
        updates its own shard; below stage 3 the parameters are whole on every rank."""
        if self.adapter is None:
            return False
        update = weight_update(self.cfg, step)
        if update is None:
            return False
        pairs = [(getattr(layer, part)["default"].weight, getattr(layer, part)[self.adapter].weight)
                 for layer in lora_layers(policy) for part in ("lora_A", "lora_B")]
        if zero_stage == 3:
            # small "persistent" parameters stay gathered after a forward: drop the teacher's full copies, so that
            # its shard is the one copy, updated from the student's shard (which the optimizer step wrote)
            dist.release_gathered([t for _, t in pairs])
            for student, teacher in pairs:
                update(teacher.ds_tensor, student.ds_tensor)
        else:
            for student, teacher in pairs:
                update(teacher, student)
        self.updates += 1
        return True


def teacher_weights(cfg: RunConfig, tconf: TeacherConfig, policy: torch.nn.Module) -> TeacherWeights | LoraTeacher:
    """The teacher's weight holder: `TeacherWeights` (a copy of the policy) without LoRA or for a live teacher,
    else a `LoraTeacher` on the policy's own base."""
    lora = lora_settings(cfg)
    if lora is None or tconf.weights == "live":
        return TeacherWeights(tconf, policy)
    adapter = TEACHER_ADAPTER if teacher_adapter_needed(lora, tconf.weights) else None
    return LoraTeacher(tconf, adapter)


def reference_weights(cfg: RunConfig, policy: torch.nn.Module) -> TeacherWeights | LoraTeacher:
    """A KL reference (the initial policy): a frozen copy without LoRA, the base with adapters off with it."""
    if lora_settings(cfg) is None:
        return TeacherWeights(TeacherConfig(weights="frozen"), policy)
    return LoraTeacher(TeacherConfig(weights="frozen"), None)


def idle_parameters(policy: torch.nn.Module) -> frozenset[str]:
    """Parameters the policy's own forward never runs: the teacher's adapter set (for the ledger's shape)."""
    return frozenset(n for n, _ in policy.named_parameters() if f".{TEACHER_ADAPTER}." in n)
