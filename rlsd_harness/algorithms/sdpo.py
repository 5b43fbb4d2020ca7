"""SDPO (Reinforcement Learning via Self-Distillation, arXiv 2601.20802): distil the student toward the same
model re-prompted with a successful sibling rollout from its group. The distillation loss replaces the policy
gradient (github.com/lasgroup/SDPO: verl/trainer/ppo/ray_trainer.py builds the teacher context,
verl/trainer/ppo/core_algos.py `compute_self_distillation_loss` the loss).

- "logit" mode: generalized JSD α between student and teacher on the student's top-k ids plus one tail
  bucket holding the remaining mass, log(1 − Σ_topk p) (teacher_signal "topk"); `topk: 0` uses the whole
  vocabulary instead (teacher_signal "full").
- "sampled" mode: reverse KL on the sampled token as a policy gradient, sg(log P_S − log P_T)·log P_S; only
  with α = 1, the reverse KL it estimates (any other α is refused rather than ignored).
Each token's loss is weighted by the detached ratio π/π_old clamped at `is_clip` (2.0). Rows without a
successful sibling carry no loss: the backbone zeroes them in `teacher_mask`, hence in `mb.loss_mask`.
"""

from __future__ import annotations

import dataclasses
import math

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

SDPO_MODES = ("logit", "sampled")

# The top-k mass is capped just below 1 before taking log(1 − mass): float32 cannot resolve a tail lighter
# than this, and a tail of exactly 0 would give log 0 = −inf and NaN gradients.
_MAX_TOPK_LOG_MASS = -1e-7


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 − exp(x)) for x < 0, accurate at both ends (Mächler's two-branch evaluation)."""
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def append_tail_bucket(topk_logp: torch.Tensor) -> torch.Tensor:
    """(…, k) log-probs of k vocabulary entries → (…, k + 1): the same entries plus log(1 − Σ p), the mass of
    every other entry lumped into one bucket, so the result is a distribution again. Computed in float32."""
    topk_logp = topk_logp.float()
    log_mass = torch.logsumexp(topk_logp, dim=-1, keepdim=True).clamp(max=_MAX_TOPK_LOG_MASS)
    return torch.cat([topk_logp, log1mexp(log_mass)], dim=-1)


def topk_tail_distillation_loss(
    student_topk_logp: torch.Tensor, teacher_topk_logp: torch.Tensor, alpha: float
) -> torch.Tensor:
    """Generalized JSD α on (top-k + tail) for both sides: (B, T, k) log-probs on the same ids in, (B, T) out."""
    student = append_tail_bucket(student_topk_logp)
    teacher = append_tail_bucket(teacher_topk_logp.detach())
    return generalized_jsd(student, teacher, alpha)


@register_objective("sdpo")
class SDPO(Objective):
    teacher_context = "sibling"
    min_group_size = 2  # the teacher reads a successful sibling of the same group

    @dataclasses.dataclass
    class Config:
        mode: str = "logit"  # "logit" (top-k + tail, or full vocabulary) or "sampled" (sampled-token reverse KL)
        alpha: float = 0.5  # logit mode: 0 forward KL(T‖S), 1 reverse KL(S‖T), between: generalized JSD
        topk: int = 100  # logit mode: size of the student's top-k support (0 = full vocabulary, no tail)
        is_clip: float | None = 2.0  # cap on the detached ratio π/π_old weighting each token (null = none)
        rollout_is_clip: float | None = None  # cap on π_old/π_rollout (verl's token-level rollout IS; null = off)
        loss_agg_mode: LossAggMode = "token-mean"

        def __post_init__(self) -> None:
            if self.mode not in SDPO_MODES:
                raise ValueError(f"mode {self.mode!r}; valid: {', '.join(SDPO_MODES)}")
            if not 0.0 <= self.alpha <= 1.0:
                raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
            if self.mode == "sampled" and self.alpha != 1.0:
                raise ValueError(
                    f"alpha {self.alpha} with mode 'sampled': the sampled-token loss is the reverse KL(S‖T) on the "
                    "sampled token, which is alpha = 1; it has no forward or mixed form, so any other alpha would be "
                    "ignored. Set alpha: 1.0, or mode: logit for the generalized JSD"
                )
            if self.topk < 0:
                raise ValueError(f"topk must be >= 0, got {self.topk}")
            for name in ("is_clip", "rollout_is_clip"):
                value = getattr(self, name)
                if value is not None and value <= 0:
                    raise ValueError(f"{name} must be > 0 (or null), got {value}")

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        if cfg.mode == "sampled":
            self.teacher_signal = "sampled"
        elif cfg.topk > 0:
            self.teacher_signal, self.topk = "topk", cfg.topk
        else:
            self.teacher_signal = "full"

    def per_token_loss(self, mb: RolloutBatch, policy: PolicyOutput) -> torch.Tensor:
        cfg = self.cfg
        if self.teacher_signal == "sampled":
            self.require(mb, "teacher_logp")
            return sampled_token_reverse_kl(policy.logp, mb.teacher_logp)
        if self.teacher_signal == "full" and policy.vocab_loss is not None:
            return policy.vocab_loss
        if self.teacher_signal == "topk" and policy.topk_logp is not None:
            student_topk_logp = policy.topk_logp
        elif policy.logprobs is None:
            raise ValueError(f"{self.name}: logit mode needs the policy's full log-probs (PolicyOutput.logprobs) or "
                             f"its chunked signal (PolicyOutput.topk_logp / vocab_loss)")
        else:
            self.check_vocab(policy.logprobs.shape[-1])
            if self.teacher_signal == "full":
                self.require(mb, "teacher_logprobs")
                return self.vocab_loss(policy.logprobs, mb.teacher_logprobs)
            student_topk_logp = None
        self.require(mb, "topk_idx", "teacher_topk_logp")
        if mb.topk_idx.shape[-1] != self.topk or mb.teacher_topk_logp.shape != mb.topk_idx.shape:
            raise ValueError(
                f"{self.name}: expected top-k support of size {self.topk}, got topk_idx "
                f"{tuple(mb.topk_idx.shape)} and teacher_topk_logp {tuple(mb.teacher_topk_logp.shape)}"
            )
        if student_topk_logp is None:
            student_topk_logp = policy.logprobs.gather(-1, mb.topk_idx)
        return topk_tail_distillation_loss(student_topk_logp, mb.teacher_topk_logp, cfg.alpha)

    def vocab_loss(self, student_logprobs: torch.Tensor, teacher_logprobs: torch.Tensor) -> torch.Tensor:
        return generalized_jsd(student_logprobs, teacher_logprobs.detach(), self.cfg.alpha)

    def loss(self, mb: RolloutBatch, policy: PolicyOutput) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg = self.cfg
        mask = mb.loss_mask
        per_token = self.per_token_loss(mb, policy)
        metrics = {
            "distill_per_token": masked_mean(per_token.detach(), mask),
            # Share of rows that got a demonstration (rows without one are masked out of the loss).
            "rows_with_teacher": (mask.sum(-1) > 0).float().mean(),
        }
        if mb.teacher_logp is not None:
            metrics["teacher_kl"] = masked_mean(policy.logp.detach() - mb.teacher_logp, mask)
        ratio = truncated_importance_ratio(policy.logp, mb.old_logp, cfg.is_clip)
        if ratio is not None:
            per_token = per_token * ratio
            metrics["is_ratio_mean"] = masked_mean(ratio, mask)
        if cfg.rollout_is_clip is not None:
            behaviour_logp = mb.old_logp if mb.old_logp is not None else policy.logp.detach()
            rollout_weight = truncated_importance_ratio(behaviour_logp, mb.rollout_logp, cfg.rollout_is_clip)
            per_token = per_token * rollout_weight
            metrics["rollout_is_weight_mean"] = masked_mean(rollout_weight, mask)
        loss = aggregate_loss(per_token, mask, cfg.loss_agg_mode, mb.num_tokens, mb.num_seqs, mb.max_len)
        return loss, metrics
