"""GSPO (Group Sequence Policy Optimization; Zheng et al. 2025, arXiv 2507.18071): GRPO with the importance
ratio taken per sequence, not per token.

    s_i(θ) = (π_θ(y_i|x) / π_old(y_i|x))^(1/|y_i|) = exp((1/|y_i|) Σ_t log π_θ(y_t) − log π_old(y_t))
    loss_i = −min(s_i·A_i, clip(s_i, 1 − ε_low, 1 + ε_high)·A_i)

The ratio is `common.sequence_log_ratio` in its GSPO-token form (value s_i on every token, gradient
s_i·∇log π(y_t)); with GRPO's sequence advantage and seq-mean-token-mean aggregation (this config's default)
the loss and gradient are sequence-level GSPO's. Everything else is GRPO's through `GRPO.importance_log_ratio`,
the only method overridden here: group-normalised advantage, the clip and the dual clip (now on s_i), the
truncated rollout IS correction, the k3 KL term and the four aggregations. The paper clips s_i to
[1 − 3e-4, 1 + 4e-4]; GRPO's token-level 0.2 / 0.28 would almost never bite on a length-normalised ratio.
"""

from __future__ import annotations

import dataclasses

import torch

from rlsd_harness.algorithms.common import LossAggMode, sequence_log_ratio
from rlsd_harness.algorithms.grpo import GRPO
from rlsd_harness.algorithms.registry import register_objective


@register_objective("gspo")
class GSPO(GRPO):
    @dataclasses.dataclass
    class Config(GRPO.Config):
        clip_low: float = 3e-4  # the GSPO paper's clipping range (its §5.1 experiments)
        clip_high: float = 4e-4
        loss_agg_mode: LossAggMode = "seq-mean-token-mean"  # the paper's objective is a mean over sequences

    def importance_log_ratio(self, logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return sequence_log_ratio(logp, old_logp, mask)
