"""Pieces every objective shares: masked reductions, loss aggregation, the clipped surrogate, KL estimators.

Pure tensor code. Shapes: B rows (one per response), T response positions; masks are 0/1 floats.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch

# The objectives' `loss_agg_mode` field: a Literal, checked once for every objective by the registry's
# make_config (and shown with its choices in docs/config.md).
LossAggMode = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-over-max-len"]
LOSS_AGG_MODES: tuple[str, ...] = get_args(LossAggMode)


def _masked(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x where the mask is set, else 0: a `where`, not a product, so a NaN or inf in padding stays out."""
    return torch.where(mask > 0, x, torch.zeros_like(x))


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (_masked(x, mask) * mask).sum() / mask.sum().clamp(min=1)


def aggregate_loss(
    loss_mat: torch.Tensor,
    mask: torch.Tensor,
    mode: str,
    num_tokens: float | None = None,
    num_seqs: float | None = None,
    max_len: int | None = None,
) -> torch.Tensor:
    """Reduce a (B, T) per-token loss to a scalar: verl's token-mean, seq-mean-token-mean and seq-mean-token-sum,
    and TRL's `loss_type="dr_grpo"` (Dr. GRPO's constant normaliser).

    Without the optional counts, the batch is normalised by itself. With them (the token count and the
    sequence count of the *whole* optimizer mini-batch, across micro-batches and ranks), the micro-batch
    results add up to exactly the whole-batch value, so a split into micro-batches and ranks changes nothing.

    - token-mean:              sum(l*m) / tokens
    - seq-mean-token-mean:     sum_i [sum_t l*m / |y_i|] / seqs      (the GRPO paper's Eq. 2)
    - seq-mean-token-sum:      sum_i [sum_t l*m] / seqs
    - seq-mean-token-sum-over-max-len: sum_i [sum_t l*m] / (seqs * max_len)  (TRL's dr_grpo; max_len a
      constant, the generation limit, default T)

    verl's `seq-mean-token-sum-norm` is not this: it divides the token sum by its `loss_scale_factor` alone, with
    no sequence count, so its scale follows the batch size and the way verl splits it; it is not offered.
    """
    mask = mask.to(loss_mat.dtype)
    seq_has_tokens = mask.sum(-1) > 0
    if num_tokens is None:
        num_tokens = mask.sum().clamp(min=1)
    if num_seqs is None:
        num_seqs = seq_has_tokens.sum().clamp(min=1)
    masked_loss = _masked(loss_mat, mask) * mask
    if mode == "token-mean":
        return masked_loss.sum() / num_tokens
    token_sums = masked_loss.sum(-1)
    if mode == "seq-mean-token-mean":
        return (token_sums / mask.sum(-1).clamp(min=1)).sum() / num_seqs
    if mode == "seq-mean-token-sum":
        return token_sums.sum() / num_seqs
    if mode == "seq-mean-token-sum-over-max-len":
        return token_sums.sum() / (num_seqs * (max_len or mask.shape[-1]))
    raise ValueError(f"unknown loss aggregation mode {mode!r}; valid: {', '.join(LOSS_AGG_MODES)}")


def token_log_ratio(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """PPO's / GRPO's token-level importance log-ratio log π(y_t) − log π_old(y_t), (B, T). `mask` is unused: it
    is part of the signature every importance ratio shares (a sequence-level ratio needs it)."""
    return logp - old_logp


def sequence_log_ratio(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """GSPO's sequence-level importance log-ratio (Zheng et al. 2025, "Group Sequence Policy Optimization",
    arXiv 2507.18071: the sequence ratio and its GSPO-token form), (B, T): every token of a response carries
    the value

        log s_i = (1/|y_i|) Σ_t (log π(y_t) − log π_old(y_t))     (the length-normalised sequence ratio)

    and the gradient of the token form, s_i·∇log π(y_t): the value is detached and log π(y_t) − sg(log π(y_t))
    added, which is 0 but carries the token's own gradient. With equal advantages over a response and
    seq-mean-token-mean aggregation this is exactly sequence-level GSPO's gradient (s_i·A_i·∇ mean_t log π(y_t)).
    Padding (mask 0) never enters the mean; a row without tokens gets 0."""
    mask = mask.to(logp.dtype)
    diff = _masked(logp - old_logp, mask)
    seq = (diff * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1)
    return logp - logp.detach() + seq.detach()


def clipped_surrogate(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    clip_low: float,
    clip_high: float,
    clip_dual: float | None,
    log_ratio: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped policy loss per token (verl's `compute_policy_loss_vanilla` semantics).

    Returns the (B, T) loss and per-token indicator tensors for metrics. `advantages` is (B, T). `log_ratio`,
    when given, replaces the token-level log π − log π_old (an objective's own importance ratio, e.g. GSPO's
    `sequence_log_ratio`); the clip, the dual clip and the metrics then apply to it unchanged.
    """
    if log_ratio is None:
        log_ratio = token_log_ratio(logp, old_logp, torch.ones_like(logp))
    log_ratio = log_ratio.clamp(-20.0, 20.0)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    loss = torch.maximum(unclipped, clipped)
    is_clipped = (clipped > unclipped).float()
    if clip_dual is not None:
        # Dual clip bounds the loss of a negative-advantage token whose ratio has run away (ratio > clip_dual).
        dual = torch.minimum(loss, -advantages * clip_dual)
        is_dual = ((advantages < 0) & (dual < loss)).float()
        loss = torch.where(advantages < 0, dual, loss)
    else:
        is_dual = torch.zeros_like(loss)
    return loss, {"ratio": ratio.detach(), "clipped": is_clipped, "dual_clipped": is_dual}


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """verl's `low_var_kl` (Schulman's k3) estimator of KL(pi || ref) per token, clamped as verl does."""
    kl = (ref_logp - logp).clamp(-20.0, 20.0)
    return (torch.exp(kl) - kl - 1.0).clamp(-10.0, 10.0)


def _kl_terms(p_logp: torch.Tensor, q_logp: torch.Tensor) -> torch.Tensor:
    """Per-entry p·(log p − log q), with 0·log 0 = 0.

    Entries where p is exactly 0 are masked on the *inputs* too, not only on the output: a `where` on the
    output alone still back-propagates 0·(−inf) = NaN through the unselected branch.
    """
    p_present = p_logp > -float("inf")
    safe_p_logp = torch.where(p_present, p_logp, torch.zeros_like(p_logp))
    safe_q_logp = torch.where(p_present, q_logp, torch.zeros_like(q_logp))
    terms = safe_p_logp.exp() * (safe_p_logp - safe_q_logp)
    return torch.where(p_present, terms, torch.zeros_like(terms))


def kl_divergence(p_logp: torch.Tensor, q_logp: torch.Tensor) -> torch.Tensor:
    """KL(p || q) over the last axis, from log-probabilities; 0·log 0 counts as 0."""
    return _kl_terms(p_logp, q_logp).sum(-1)


def truncated_importance_ratio(
    logp: torch.Tensor, old_logp: torch.Tensor | None, max_ratio: float | None
) -> torch.Tensor | None:
    """exp(logp − old_logp), detached and clamped from above (SDPO's / TRL-OPSD's `is_clip`).

    None when there is nothing to correct: no old policy (the batch is on-policy) or no clip configured.
    """
    if old_logp is None or max_ratio is None:
        return None
    return torch.exp((logp.detach() - old_logp).clamp(-20.0, 20.0)).clamp(max=max_ratio)


def generalized_jsd(
    student_logp: torch.Tensor, teacher_logp: torch.Tensor, beta: float, pointwise_clip: float | None = None
) -> torch.Tensor:
    """GKD's generalized Jensen-Shannon divergence per position, over the last (vocabulary) axis.

    M = (1-beta) S + beta T;  JSD_beta = beta KL(T||M) + (1-beta) KL(S||M).
    beta = 0 is the forward KL(T||S), beta = 1 the reverse KL(S||T) (the limits are returned exactly).
    `pointwise_clip` clamps each vocabulary entry's term from above before the sum (OPSD's official setting).
    For 0 < beta < 1 the clamped term is the entry's mixed one, beta k_T + (1-beta) k_S, as in the official
    OPSD trainer and TRL's port of it: each of k_T, k_S alone can be negative, their mix cannot at beta = 1/2,
    so clamping them apart can flip the loss's sign.
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    if beta == 0.0:
        per_entry = _kl_terms(teacher_logp, student_logp)
    elif beta == 1.0:
        per_entry = _kl_terms(student_logp, teacher_logp)
    else:
        # An entry with probability 0 on both sides (a banned token) has mixture probability 0; logaddexp of
        # two -inf has a NaN gradient, so those entries are set aside before it and put back as -inf after.
        absent = (student_logp == -float("inf")) & (teacher_logp == -float("inf"))
        zero = torch.zeros((), dtype=student_logp.dtype, device=student_logp.device)
        mix_logp = torch.logaddexp(torch.where(absent, zero, student_logp) + math.log1p(-beta),
                                   torch.where(absent, zero, teacher_logp) + math.log(beta))
        mix_logp = torch.where(absent, -float("inf"), mix_logp)
        per_entry = beta * _kl_terms(teacher_logp, mix_logp) + (1.0 - beta) * _kl_terms(student_logp, mix_logp)
    if pointwise_clip is not None:
        per_entry = per_entry.clamp(max=pointwise_clip)
    return per_entry.sum(-1)


def sampled_token_reverse_kl(student_logp: torch.Tensor, teacher_logp: torch.Tensor) -> torch.Tensor:
    """sg(log P_S − log P_T)·log P_S per token: a policy gradient whose advantage is the information gain
    Δ_t = log P_T − log P_S; its gradient is the reverse KL's on the sampled token (OPSD's and SDPO's
    sampled-token modes)."""
    return (student_logp - teacher_logp).detach() * student_logp
