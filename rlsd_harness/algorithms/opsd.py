"""OPSD (On-Policy Self-Distillation, arXiv 2601.18734): on the student's own samples, pull the student's
next-token distribution toward the same model's distribution given the reference solution.

Two modes (the paper's objective and github.com/siyan-zhao/OPSD, opsd_trainer.py; TRL's port,
trl/experimental/opsd/opsd_config.py, for the 2026-03 setting):
- "logit": GKD's generalized JSD with β per position, over the full vocabulary (teacher_signal "full"),
  optionally restricted to the teacher's top-k ids (both distributions renormalised there) and with a
  point-wise clip of each vocabulary entry's term, β·k_T + (1 − β)·k_S, before the sum (the official 2026-03
  setting: β = 0, clip 0.05).
- "sampled": the policy-gradient form on the sampled token (OPSD's `--use_tinker_loss`): advantage
  Δ_t = sg(log P_T(y_t) − log P_S(y_t)), loss −Δ_t·log P_S(y_t) (teacher_signal "sampled"). Its gradient is
  the reverse KL's on the sampled token.
The reward plays no part. An optional truncated importance ratio (TRL's `distillation_is_clip`) reweights the
per-token loss when the policy has moved since the rollout.
"""

from __future__ import annotations

import dataclasses

import torch

from rlsd_harness.algorithms.batch import PolicyOutput, RolloutBatch
from rlsd_harness.algorithms.common import (
    LossAggMode,
    aggregate_loss,
    generalized_jsd,
    masked_mean,
    sampled_token_reverse_kl,
    truncated_importance_ratio,
)
from rlsd_harness.algorithms.registry import Objective, register_objective

OPSD_MODES = ("logit", "sampled")


def restrict_to_teacher_topk(
    student_logprobs: torch.Tensor, teacher_logprobs: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both (…, V) log-distributions gathered on the teacher's k most likely ids and renormalised there: (…, k).

    Gathering (rather than masking the rest with −inf) keeps every entry finite, so no NaN gradient can arise.
    """
    if not 0 < k <= teacher_logprobs.shape[-1]:
        raise ValueError(f"teacher top-k {k} must be in [1, vocabulary size {teacher_logprobs.shape[-1]}]")
    ids = teacher_logprobs.topk(k, dim=-1).indices
    student_k = student_logprobs.gather(-1, ids)
    teacher_k = teacher_logprobs.gather(-1, ids)
    return torch.log_softmax(student_k, dim=-1), torch.log_softmax(teacher_k, dim=-1)


def logit_distillation_loss(
    student_logprobs: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    beta: float,
    teacher_topk: int = 0,
    pointwise_clip: float | None = None,
) -> torch.Tensor:
    """Per-position generalized JSD_β(student, teacher): (B, T, V) log-probs in, (B, T) out.
    β = 0: KL(T‖S) (forward), β = 1: KL(S‖T) (reverse). `teacher_topk` = 0 uses the whole vocabulary."""
    teacher_logprobs = teacher_logprobs.detach()
    if teacher_topk:
        student_logprobs, teacher_logprobs = restrict_to_teacher_topk(student_logprobs, teacher_logprobs, teacher_topk)
    return generalized_jsd(student_logprobs, teacher_logprobs, beta, pointwise_clip)


@register_objective("opsd")
class OPSD(Objective):
    teacher_context = "reference"

    @dataclasses.dataclass
    class Config:
        mode: str = "logit"  # "logit" (full-vocabulary JSD) or "sampled" (sampled-token policy gradient)
        beta: float = 0.0  # logit mode: 0 forward KL(T‖S), 1 reverse KL(S‖T), between: generalized JSD
        teacher_topk: int = 0  # logit mode: restrict to the teacher's top-k ids (0 = full vocabulary)
        pointwise_clip: float | None = 0.05  # logit mode: cap on each vocabulary entry's term (null = none)
        is_clip: float | None = 2.0  # cap on the detached ratio π/π_old weighting each token (null = none)
        loss_agg_mode: LossAggMode = "token-mean"

        def __post_init__(self) -> None:
            if self.mode not in OPSD_MODES:
                raise ValueError(f"mode {self.mode!r}; valid: {', '.join(OPSD_MODES)}")
            if not 0.0 <= self.beta <= 1.0:
                raise ValueError(f"beta must be in [0, 1], got {self.beta}")
            if self.teacher_topk < 0:
                raise ValueError(f"teacher_topk must be >= 0, got {self.teacher_topk}")
            if self.pointwise_clip is not None and self.pointwise_clip <= 0:
                raise ValueError(f"pointwise_clip must be > 0 (or null), got {self.pointwise_clip}")
            if self.is_clip is not None and self.is_clip <= 0:
                raise ValueError(f"is_clip must be > 0 (or null), got {self.is_clip}")

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        self.teacher_signal = "full" if cfg.mode == "logit" else "sampled"

    def check_vocab(self, vocab_size: int) -> None:
        if self.cfg.mode == "logit" and self.cfg.teacher_topk > vocab_size:
            raise ValueError(f"{self.name}: teacher_topk {self.cfg.teacher_topk} exceeds the vocabulary size {vocab_size}")

    def vocab_loss(self, student_logprobs: torch.Tensor, teacher_logprobs: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        return logit_distillation_loss(student_logprobs, teacher_logprobs, cfg.beta, cfg.teacher_topk, cfg.pointwise_clip)

    def per_token_loss(self, mb: RolloutBatch, policy: PolicyOutput) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The (B, T) loss before aggregation, and metrics; shared with GRPO+OPSD."""
        cfg = self.cfg
        self.require(mb, "teacher_logp")
        if cfg.mode == "logit" and policy.vocab_loss is not None:
            per_token = policy.vocab_loss
        elif cfg.mode == "logit":
            self.require(mb, "teacher_logprobs")
            if policy.logprobs is None:
                raise ValueError(f"{self.name}: logit mode needs the policy's full log-probs (PolicyOutput.logprobs)")
            self.check_vocab(policy.logprobs.shape[-1])
            per_token = self.vocab_loss(policy.logprobs, mb.teacher_logprobs)
        else:
            per_token = sampled_token_reverse_kl(policy.logp, mb.teacher_logp)
        mask = mb.loss_mask
        metrics = {
            "distill_per_token": masked_mean(per_token.detach(), mask),
            # Teacher–student gap on the sampled tokens, the paper's KL-stagnation curve (Fig. 3c).
            "teacher_kl": masked_mean((policy.logp.detach() - mb.teacher_logp), mask),
        }
        ratio = truncated_importance_ratio(policy.logp, mb.old_logp, cfg.is_clip)
        if ratio is not None:
            per_token = per_token * ratio
            metrics["is_ratio_mean"] = masked_mean(ratio, mask)
        return per_token, metrics

    def loss(self, mb: RolloutBatch, policy: PolicyOutput) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        per_token, metrics = self.per_token_loss(mb, policy)
        loss = aggregate_loss(per_token, mb.loss_mask, self.cfg.loss_agg_mode, mb.num_tokens, mb.num_seqs, mb.max_len)
        return loss, metrics
