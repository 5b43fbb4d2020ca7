"""`rlsd_shuffled`: a control arm for RLSD (arXiv 2604.03128). Each response's evidence weights w_t are permuted
among that response's own tokens before they rescale the advantage:

    w_t = exp(sign(A)·Δ_t)                         as RLSD (Eq. 14)
    Â_t = A·((1 − λ) + λ·clip(w_π(t), 1 − ε_w, 1 + ε_w))   π a random permutation of the response's positions

Same clip, same λ schedule, the same multiset of weights per response (so the same distribution, the same
w-clip fractions and the same Δ metrics as RLSD), but the teacher's token-level information is gone: which
token gets which weight is chance. If RLSD's gain over GRPO survives this shuffle, it does not come from
credit assignment. The teacher still runs (and is charged) wherever RLSD's does.

The permutation is reproducible: it is drawn from a generator seeded by (`shuffle_seed`, the optimizer step,
the response's own token ids), so it depends on the row alone, not on where it sits in a micro-batch or on
which rank; micro-batch splits and rank moves change nothing. Two identical responses in a step get the same
permutation, which is still independent of their teacher signal.
"""

from __future__ import annotations

import dataclasses
import hashlib

import torch

from rlsd_harness.algorithms.batch import PolicyOutput, RolloutBatch
from rlsd_harness.algorithms.registry import register_objective
from rlsd_harness.algorithms.rlsd import RLSD, evidence_weights


def shuffle_index(response_ids: torch.Tensor, mask: torch.Tensor, step: int, seed: int) -> torch.Tensor:
    """(B, T) long: for each row, a permutation of its masked positions (unmasked positions map to themselves),
    drawn from a generator seeded by (seed, step, the row's masked token ids)."""
    index = torch.arange(mask.shape[1], device=mask.device).expand_as(mask).clone()
    for row in range(mask.shape[0]):
        positions = (mask[row] > 0).nonzero().squeeze(-1)
        tokens = response_ids[row, positions].to(torch.int64).cpu().numpy().tobytes()
        digest = hashlib.blake2b(f"{seed}:{step}:".encode() + tokens, digest_size=8).digest()
        gen = torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)  # manual_seed takes < 2**63
        perm = torch.randperm(len(positions), generator=gen).to(positions.device)
        index[row, positions] = positions[perm]
    return index


def shuffled_token_advantages(
    advantages: torch.Tensor,
    student_logp: torch.Tensor,
    teacher_logp: torch.Tensor,
    mask: torch.Tensor,
    index: torch.Tensor,
    eps_w: float,
    lam: float,
) -> torch.Tensor:
    """Â_t = A·(1 + λ·(clip(w_index[t], 1 − ε_w, 1 + ε_w) − 1)), (B, T), detached, zero off the mask: RLSD's
    token advantage with each row's weights read through `index` (`shuffle_index`). The identity index gives
    RLSD's `token_advantages` exactly."""
    if not 0.0 <= eps_w < 1.0:
        raise ValueError(f"eps_w must be in [0, 1), got {eps_w}")
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    adv = (advantages[:, None].expand_as(mask) if advantages.dim() == 1 else advantages).to(student_logp.dtype)
    _, w = evidence_weights(adv, student_logp, teacher_logp, mask)
    # RLSD's own rearrangement of (1 − λ) + λc, so that λ = 0 or c = 1 gives exactly 1 in floating point.
    reweight = 1.0 + lam * (w.gather(1, index).clamp(1.0 - eps_w, 1.0 + eps_w) - 1.0)
    return (adv * reweight * mask).detach()


@register_objective("rlsd_shuffled")
class RLSDShuffled(RLSD):
    @dataclasses.dataclass
    class Config(RLSD.Config):
        shuffle_seed: int = 0  # with the step and the response's tokens, seeds each row's permutation

    def token_advantages(self, mb: RolloutBatch, policy: PolicyOutput) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        # RLSD's checks, λ and metrics (the weights' multiset per row, hence every metric, is the shuffle's too).
        adv_hat, metrics = super().token_advantages(mb, policy)
        lam = self.current_lambda(mb.step)
        if lam == 0.0:  # Â = A: there is nothing to shuffle
            return adv_hat, metrics
        cfg = self.cfg
        mask = mb.loss_mask.to(policy.logp.dtype)
        adv = mb.advantages[:, None].expand_as(mask) if mb.advantages.dim() == 1 else mb.advantages
        adv = adv.to(policy.logp.dtype)
        index = shuffle_index(mb.response_ids, mask, mb.step, cfg.shuffle_seed)
        adv_hat = shuffled_token_advantages(adv, policy.logp.detach(), mb.teacher_logp, mask, index, cfg.eps_w, lam)
        if cfg.negative_only:
            adv_hat = torch.where(adv > 0, adv * mask, adv_hat)
        return adv_hat, metrics
