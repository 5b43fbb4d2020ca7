"""Sampled-token on-policy distillation in the style of Thinking Machines' "On-Policy Distillation"
(thinkingmachines.ai/blog/on-policy-distillation; code: github.com/thinking-machines-lab/tinker-cookbook,
tinker_cookbook/distillation/train_on_policy.py), here with the harness's privileged self-teacher.

    r_t = −kl_coef·(log P_S(y_t) − log P_T(y_t))              per-token reverse KL as a reward
    A_t = Σ_{s≥t} γ^{s−t}·r_s                                 γ = `discount` (0: A_t = r_t, the recipe's default)
    loss_t = −(π(y_t)/π_old(y_t))·A_t                         importance-sampling policy loss, no clipping

log P_S is the behaviour policy's (π_old, or the current policy detached when nothing has changed since the
rollout). The worked example of docs/adding-an-objective.md: one file, one config, one test.
"""

from __future__ import annotations

import dataclasses

import torch

from rlsd_harness.algorithms.batch import PolicyOutput, RolloutBatch
from rlsd_harness.algorithms.common import LossAggMode, aggregate_loss, masked_mean
from rlsd_harness.algorithms.registry import Objective, register_objective


def discounted_future_sum(rewards: torch.Tensor, mask: torch.Tensor, discount: float) -> torch.Tensor:
    """(B, T) → (B, T): Σ_{s≥t} discount^{s−t}·rewards_s over masked positions, 0 off the mask."""
    rewards = torch.where(mask > 0, rewards, torch.zeros_like(rewards))
    if discount == 0.0:
        return rewards
    out = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in range(rewards.shape[1] - 1, -1, -1):  # T sequential steps of (B,) work; only used when γ > 0
        running = rewards[:, t] + discount * running
        out[:, t] = running
    return out * mask


def distillation_advantages(
    behaviour_logp: torch.Tensor, teacher_logp: torch.Tensor, mask: torch.Tensor, kl_coef: float, discount: float
) -> torch.Tensor:
    """Per-token advantage from the negative sampled-token reverse KL, (B, T), detached."""
    reverse_kl = (behaviour_logp - teacher_logp).detach()
    return discounted_future_sum(-kl_coef * reverse_kl, mask, discount)


def importance_sampling_loss(logp: torch.Tensor, behaviour_logp: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """−(π/π_old)·A per token; its gradient at π = π_old is −A·∇log π."""
    return -torch.exp(logp - behaviour_logp.detach()) * advantages


@register_objective("opd")
class OnPolicyDistillation(Objective):
    teacher_signal = "sampled"
    teacher_context = "reference"

    @dataclasses.dataclass
    class Config:
        kl_coef: float = 1.0
        discount: float = 0.0
        loss_agg_mode: LossAggMode = "token-mean"

        def __post_init__(self) -> None:
            if self.kl_coef <= 0:
                raise ValueError(f"kl_coef must be > 0, got {self.kl_coef}")
            if not 0.0 <= self.discount <= 1.0:
                raise ValueError(f"discount must be in [0, 1], got {self.discount}")

    def loss(self, mb: RolloutBatch, policy: PolicyOutput) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        self.require(mb, "teacher_logp")
        cfg = self.cfg
        mask = mb.loss_mask
        behaviour_logp = mb.old_logp if mb.old_logp is not None else policy.logp.detach()
        advantages = distillation_advantages(behaviour_logp, mb.teacher_logp, mask, cfg.kl_coef, cfg.discount)
        per_token = importance_sampling_loss(policy.logp, behaviour_logp, advantages)
        loss = aggregate_loss(per_token, mask, cfg.loss_agg_mode, mb.num_tokens, mb.num_seqs, mb.max_len)
        metrics = {
            "teacher_kl": masked_mean(policy.logp.detach() - mb.teacher_logp, mask),
            "advantage_mean": masked_mean(advantages, mask),
        }
        return loss, metrics
