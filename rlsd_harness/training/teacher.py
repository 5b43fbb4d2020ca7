"""The privileged self-teacher: whose weights it runs, and what context it reads.

Weight sources:
  none    no teacher (GRPO); an objective that asks for a teacher signal refuses it
  frozen  the initial policy, never updated (OPSD's official setting);
  sync    the initial policy, hard-copied from the student every `sync_every` optimizer steps (RLSD: 10 / 20);
  ema     theta_T <- (1 - tau) theta_T + tau theta_S after every optimizer step (SDPO: tau = 0.05);
  live    the current student itself (no copy, no extra memory).

Context builders (one conversation per response row; its images are the student's prompt's, then the example's
`teacher_images`, which only the teacher sees: see `context_images`):
  reference  the question plus a reference ("Here is a reference solution: ...", RLSD / OPSD); when the example's
             reference is an image (the embedded task's privileged="image_hint"), a text naming that image instead;
  sibling    the question plus a successful sibling response of the same group (SDPO); rows without one get
             teacher_mask = 0 and no distillation loss. (The SDPO paper can also show a failed attempt the
             environment's feedback on it; the verifiers here return a reward and a parsed answer, no such text.)
The student's response tokens are appended unchanged by the trainer.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from rlsd_harness import dist
from rlsd_harness.algorithms.registry import make_config
from rlsd_harness.prompts import IMAGE_HINT_TEMPLATE, REFERENCE_TEMPLATE, SIBLING_TEMPLATE, SOLUTION_TEMPLATE
from rlsd_harness.rollout.hf import user_messages

WEIGHT_SOURCES = ("none", "frozen", "sync", "ema", "live")


@dataclass
class TeacherConfig:
    weights: str = "frozen"
    sync_every: int = 10
    ema_rate: float = 0.05
    hint: str = "answer"  # reference context: the gold "answer" (RLSD) or the reference "solution" (OPSD)
    success_threshold: float = 1.0  # sibling context: a sibling counts as a solution at reward >= this
    include_own_success: bool = False  # sibling context: may a successful response demonstrate itself

    def __post_init__(self) -> None:
        if self.weights not in WEIGHT_SOURCES:
            raise ValueError(f"teacher.weights {self.weights!r}; valid: {', '.join(WEIGHT_SOURCES)}")
        if self.hint not in ("answer", "solution"):
            raise ValueError(f"teacher.hint {self.hint!r}; valid: answer, solution")
        if self.weights == "sync" and self.sync_every < 1:
            raise ValueError(f"teacher.sync_every must be >= 1, got {self.sync_every}")
        if self.weights == "ema" and not 0 < self.ema_rate <= 1:
            raise ValueError(f"teacher.ema_rate must be in (0, 1], got {self.ema_rate}")


def teacher_config(params: Mapping[str, Any] | None) -> TeacherConfig:
    """The config's `algorithm.teacher` mapping as a TeacherConfig; an unknown key is an error listing the valid ones."""
    return make_config(TeacherConfig, params, "algorithm.teacher")


def context_images(example: Any) -> list:
    """The images of the teacher's conversation for `example`: the student's, then those only the teacher sees
    (`example.teacher_images`, when it has any), in the order the conversation's image placeholders take them."""
    return [*example.images, *getattr(example, "teacher_images", [])]


def reference_contexts(examples: list, group_size: int, hint: str) -> list[list[dict]]:
    """One privileged conversation per response row (rows group by group)."""
    convs = []
    for ex in examples:
        if getattr(ex, "privileged", "text") == "image_hint":  # the reference is the last image, not text
            text = IMAGE_HINT_TEMPLATE.format(question=ex.question)
        else:
            text = REFERENCE_TEMPLATE.format(question=ex.question, hint=getattr(ex, hint))
        convs += [user_messages(text, len(context_images(ex)))] * group_size
    return convs


def sibling_contexts(
    examples: list, group_size: int, texts: list[str], rewards: torch.Tensor, cfg: TeacherConfig
) -> tuple[list[list[dict]], torch.Tensor]:
    """SDPO's reprompt: the first successful sibling (own success excluded unless configured). Returns the
    conversations and the (B,) mask of rows that have one."""
    convs, mask = [], []
    for g, ex in enumerate(examples):
        rows = range(g * group_size, (g + 1) * group_size)
        winners = [r for r in rows if rewards[r] >= cfg.success_threshold]
        for r in rows:
            demo = next((w for w in winners if w != r or cfg.include_own_success), None)
            solution = SOLUTION_TEMPLATE.format(attempt=texts[demo]) if demo is not None else ""
            text = SIBLING_TEMPLATE.format(question=ex.question, solution=solution)
            convs.append(user_messages(text, len(context_images(ex))))
            mask.append(float(demo is not None))
    return convs, torch.tensor(mask)


def weight_update(cfg: TeacherConfig, step: int) -> Callable[[torch.Tensor, torch.Tensor], Any] | None:
    """What optimizer step `step` (1-based) does to a teacher tensor t given the student's s: sync copies every
    `sync_every` steps, ema moves t by `ema_rate` toward s; None when the teacher does not change (frozen, live,
    or a sync step off its schedule). Shared by the full-copy teacher and LoRA's teacher adapters."""
    if cfg.weights == "sync" and step % cfg.sync_every == 0:
        return lambda t, s: t.copy_(s)
    if cfg.weights == "ema":
        return lambda t, s: t.lerp_(s.to(t.dtype), cfg.ema_rate)
    return None


class TeacherWeights:
    """Holds the teacher's parameters (a copy, or nothing when live) and updates them on schedule.

    The copy is a full replica on every rank, except when the policy is ZeRO-3: then `place` partitions it
    the same way (a DeepSpeed engine without an optimizer), each rank keeps 1/N of every parameter, and each
    teacher forward gathers layer by layer like the policy's. Because the two share one partitioning, a sync
    or EMA update is local to each rank's shard: no communication, never more than one parameter's shard of
    scratch memory."""

    def __init__(self, cfg: TeacherConfig, policy: torch.nn.Module) -> None:
        self.cfg = cfg
        self.model = None
        self.partitioned = False
        if cfg.weights != "live":
            # Copied before DeepSpeed touches the policy (under ZeRO-3 its parameters are then shards).
            self.model = copy.deepcopy(policy).eval()
            for p in self.model.parameters():
                p.requires_grad_(False)
        self.updates = 0  # how many times the weights were refreshed from the student (sync) or blended (ema)

    def place(self, dtype: torch.dtype, zero_stage: int, ds_config: dict) -> None:
        """After the policy's DeepSpeed engine exists: frozen and synced copies take the policy's dtype; an EMA
        stays fp32, so that tau-sized updates are not rounded away when the policy trains in bf16. Under
        ZeRO-3 the copy is then partitioned like the policy (whose DeepSpeed config is `ds_config`)."""
        if self.model is None:
            return
        self.model.to(torch.float32 if self.cfg.weights == "ema" else dtype)
        if zero_stage == 3:
            self._engine = dist.initialize_inference_engine(self.model, ds_config)  # holds the partitioning hooks
            self.partitioned = True

    def module(self, policy: torch.nn.Module) -> torch.nn.Module:
        return policy if self.model is None else self.model

    @torch.no_grad()
    def after_step(self, step: int, policy: torch.nn.Module, zero_stage: int = 0) -> bool:
        """Called after optimizer step `step` (1-based). Returns whether the teacher's weights changed.
        The student's parameters are read one at a time (gathered just for that one under ZeRO-3, or, when
        the teacher is partitioned too, shard by shard)."""
        update = weight_update(self.cfg, step)
        if update is None:
            return False
        teacher = dict(self.model.named_parameters())
        if self.partitioned:
            dist.release_gathered(list(teacher.values()))  # persistent small parameters are kept whole; drop them
            for name, p in policy.named_parameters():
                update(teacher[name].ds_tensor, p.ds_tensor)
        else:
            for name, full in dist.iter_full_parameters(policy, zero_stage):
                update(teacher[name], full)
        self.updates += 1
        return True
