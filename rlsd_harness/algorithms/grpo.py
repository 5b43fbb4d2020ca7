"""GRPO with verl's semantics: group-normalised outcome advantage, PPO clipped surrogate (DAPO clip-higher,
dual clip), four loss aggregations, optional k3 KL to a reference model."""

from __future__ import annotations

import dataclasses

import torch

from rlsd_harness.algorithms.batch import PolicyOutput, RolloutBatch
from rlsd_harness.algorithms.common import (
    LossAggMode,
    aggregate_loss,
    clipped_surrogate,
    k3_kl,
    masked_mean,
    token_log_ratio,
    truncated_importance_ratio,
)
from rlsd_harness.algorithms.registry import Objective, register_objective


def group_advantages(rewards: torch.Tensor, group_size: int, norm_by_std: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """(r - mean_group) / (std_group + eps), unbiased std, rows ordered group by group; (B,) in, (B,) out.

    norm_by_std=False is Dr. GRPO (r - mean). A group of one gets mean 0 and std 1, as in verl. A group whose
    rewards are all equal gets exactly 0: the float32 mean of equal values need not equal them (eight 0.9s
    average to 0.9 + 6e-8), and divided by std + eps ~ 1e-6 that rounding alone would be an advantage of 0.06.
    """
    if rewards.dim() != 1 or rewards.shape[0] % group_size:
        raise ValueError(f"rewards must be (B,) with B a multiple of group_size={group_size}, got {tuple(rewards.shape)}")
    groups = rewards.float().view(-1, group_size)
    if group_size == 1:
        mean, std = torch.zeros_like(groups), torch.ones_like(groups)
    else:
        mean = groups.mean(-1, keepdim=True)
        std = groups.std(-1, keepdim=True)
    adv = groups - mean
    if norm_by_std:
        adv = adv / (std + eps)
    if group_size > 1:
        adv = torch.where(equal_reward_groups(groups)[:, None], torch.zeros_like(adv), adv)
    return adv.reshape(-1)


def equal_reward_groups(groups: torch.Tensor) -> torch.Tensor:
    """(num_groups, G) rewards -> (num_groups,) bool: every reward of the group is the same (no learning signal)."""
    return groups.amax(-1) == groups.amin(-1)


@register_objective("grpo")
class GRPO(Objective):
    min_group_size = 2  # a group of one has advantage 0: nothing to learn

    @dataclasses.dataclass
    class Config:
        norm_adv_by_std: bool = True
        clip_low: float = 0.2
        clip_high: float = 0.28
        clip_dual: float | None = 3.0
        loss_agg_mode: LossAggMode = "token-mean"
        kl_coef: float = 0.0  # k3 KL to the frozen initial policy; 0 = none (the paper's setting)
        # Truncated importance sampling against the rollout engine's own log-probs (vLLM and the trainer
        # disagree slightly on the same tokens): per-token loss x min(pi_old / pi_rollout, cap). null = off.
        rollout_is_cap: float | None = None

        def __post_init__(self) -> None:
            if self.clip_dual is not None and self.clip_dual <= 1.0:
                raise ValueError(f"clip_dual must be > 1 (or null), got {self.clip_dual}")

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        self.needs_ref = cfg.kl_coef > 0

    def prepare(self, batch: RolloutBatch) -> dict[str, float]:
        batch.advantages = group_advantages(batch.rewards, batch.group_size, self.cfg.norm_adv_by_std)
        groups = batch.rewards.view(-1, batch.group_size)
        return {"zero_std_groups": equal_reward_groups(groups).float().mean().item() if batch.group_size > 1 else 1.0}

    def token_advantages(self, mb: RolloutBatch, policy: PolicyOutput) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The per-token advantage fed to the surrogate: GRPO broadcasts the sequence advantage."""
        adv = mb.advantages
        adv = adv[:, None].expand_as(mb.response_mask) if adv.dim() == 1 else adv
        return adv * mb.response_mask, {}

    def importance_log_ratio(self, logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The (B, T) log importance ratio the clipped surrogate uses: token-level here. An objective overrides
        this alone to change the ratio (GSPO's sequence-level one, `algorithms/gspo.py`); the clip, dual clip,
        rollout IS correction, KL term and aggregation stay GRPO's."""
        return token_log_ratio(logp, old_logp, mask)

    def loss(self, mb: RolloutBatch, policy: PolicyOutput) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg = self.cfg
        old_logp = mb.old_logp if mb.old_logp is not None else policy.logp.detach()
        adv, metrics = self.token_advantages(mb, policy)
        mask = mb.loss_mask
        log_ratio = self.importance_log_ratio(policy.logp, old_logp, mask)
        per_token, info = clipped_surrogate(policy.logp, old_logp, adv, cfg.clip_low, cfg.clip_high, cfg.clip_dual,
                                            log_ratio=log_ratio)
        if cfg.rollout_is_cap is not None:
            is_weight = truncated_importance_ratio(old_logp, mb.rollout_logp, cfg.rollout_is_cap)
            per_token = per_token * is_weight
            metrics["rollout_is_weight_mean"] = masked_mean(is_weight, mask)
        if cfg.kl_coef > 0:
            kl = k3_kl(policy.logp, mb.ref_logp)
            per_token = per_token + cfg.kl_coef * kl
            metrics["kl_ref"] = masked_mean(kl.detach(), mask)
        loss = aggregate_loss(per_token, mask, cfg.loss_agg_mode, mb.num_tokens, mb.num_seqs, mb.max_len)
        metrics.update(
            pg_clipfrac=masked_mean(info["clipped"], mask),
            pg_clipfrac_dual=masked_mean(info["dual_clipped"], mask),
            ratio_mean=masked_mean(info["ratio"], mask),
        )
        return loss, metrics
