"""RLSD (Self-Distilled RLVR, arXiv 2604.03128): GRPO whose sequence advantage is redistributed over tokens
by how much a privileged teacher (the same model shown the reference answer) agrees with each sampled token.

    Δ_t = sg(log P_T(y_t) − log P_S(y_t))                     privileged information gain (Eq. 13)
    w_t = exp(sign(A)·Δ_t)                                    direction-aware evidence weight (Eq. 14)
    Â_t = A·((1 − λ) + λ·clip(w_t, 1 − ε_w, 1 + ε_w))         clipped credit, warm-start mix (Eq. 15)

Â_t then replaces A in GRPO's clipped surrogate; there is no distillation loss (paper §4.2). Once λ has
decayed to 0, Â_t = A exactly: the teacher is not consulted (no forward, no compute charged), and the
w / Δ metrics are not reported for those steps. The released
code (github.com/iie-ycx/RLSD, verl/workers/actor/dp_opsd_actor.py, `_build_stgca_advantages`) clamps w_t
symmetrically and feeds Â_t to the standard clipped surrogate, as here.
"""

from __future__ import annotations

import dataclasses

import torch

from rlsd_harness.algorithms.batch import PolicyOutput, RolloutBatch
from rlsd_harness.algorithms.common import masked_mean
from rlsd_harness.algorithms.grpo import GRPO
from rlsd_harness.algorithms.registry import register_objective


def lambda_schedule(step: int, lam: float, warmup_steps: int, decay_steps: int) -> float:
    """The released code's λ schedule: linear ramp up over `warmup_steps`, then linear decay to 0 over
    `decay_steps` (0 = hold λ). Steps count from 1 at the first update. The paper: λ = 0.5, no warm-up, decay 50."""
    if step < warmup_steps:
        return lam * step / warmup_steps
    if decay_steps > 0:
        return lam * max(1.0 - (step - warmup_steps) / decay_steps, 0.0)
    return lam


def _broadcast_advantages(advantages: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return advantages[:, None].expand_as(like) if advantages.dim() == 1 else advantages


def evidence_weights(
    advantages: torch.Tensor, student_logp: torch.Tensor, teacher_logp: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Δ_t and the unclipped w_t = exp(sign(A)·Δ_t), both (B, T), detached; Δ = 0 and w = 1 off the mask
    (padding may hold any value, even −inf, and must not leak NaN into the batch)."""
    adv = _broadcast_advantages(advantages, mask)
    on_mask = mask > 0
    gain = (teacher_logp - student_logp).detach()
    delta = torch.where(on_mask, gain, torch.zeros_like(gain))
    return delta, torch.exp(torch.sign(adv).to(delta.dtype) * delta)


def token_advantages(
    advantages: torch.Tensor,
    student_logp: torch.Tensor,
    teacher_logp: torch.Tensor,
    mask: torch.Tensor,
    eps_w: float,
    lam: float,
) -> torch.Tensor:
    """RLSD's per-token advantage Â_t = A·((1 − λ) + λ·clip(w_t, 1 − ε_w, 1 + ε_w)), (B, T), zero off the mask.

    `advantages` is (B,) or (B, T); everything is detached (Â only rescales the advantage). Since w_t > 0 the
    sign of A is never flipped. ε_w = 0 is accepted here as the degenerate limit where the reweighting
    vanishes (Â = A); the objective's config requires ε_w in (0, 1).
    """
    if not 0.0 <= eps_w < 1.0:
        raise ValueError(f"eps_w must be in [0, 1) (the objective requires (0, 1)), got {eps_w}")
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    adv = _broadcast_advantages(advantages, mask).to(student_logp.dtype)
    _, w = evidence_weights(adv, student_logp, teacher_logp, mask)
    # 1 + λ(c − 1) is (1 − λ) + λc rearranged so that λ = 0 or c = 1 gives exactly 1 in floating point.
    reweight = 1.0 + lam * (w.clamp(1.0 - eps_w, 1.0 + eps_w) - 1.0)
    return (adv * reweight * mask).detach()


@register_objective("rlsd")
class RLSD(GRPO):
    teacher_signal = "sampled"
    teacher_context = "reference"

    @dataclasses.dataclass
    class Config(GRPO.Config):
        eps_w: float = 0.2  # symmetric clip of w_t: [1 − ε_w, 1 + ε_w]
        lam: float = 0.5  # λ's start value; λ ≡ 1 (decay 0) is the paper's Eq. 15 without warm-start mixing
        lam_warmup_steps: int = 0
        lam_decay_steps: int = 50  # paper 50, released script 60; 0 = constant λ
        negative_only: bool = False  # reweight only A < 0 sequences; A > 0 keeps the uniform GRPO advantage

        def __post_init__(self) -> None:
            super().__post_init__()
            if not 0.0 < self.eps_w < 1.0:
                raise ValueError(f"eps_w must be in (0, 1), got {self.eps_w}")
            if not 0.0 <= self.lam <= 1.0:
                raise ValueError(f"lam must be in [0, 1], got {self.lam}")
            if self.lam_warmup_steps < 0 or self.lam_decay_steps < 0:
                raise ValueError("lam_warmup_steps and lam_decay_steps must be >= 0")

    def current_lambda(self, step: int) -> float:
        cfg = self.cfg
        return lambda_schedule(step, cfg.lam, cfg.lam_warmup_steps, cfg.lam_decay_steps)

    def uses_teacher(self, step: int) -> bool:
        return self.current_lambda(step) > 0.0

    def token_advantages(self, mb: RolloutBatch, policy: PolicyOutput) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        self.require(mb, "advantages")
        cfg = self.cfg
        mask = mb.loss_mask.to(policy.logp.dtype)
        adv = _broadcast_advantages(mb.advantages, mask).to(policy.logp.dtype)
        lam = self.current_lambda(mb.step)
        if lam == 0.0 and mb.teacher_logp is None:  # the formula's value at λ = 0, bit for bit (A·1.0 = A)
            return (adv * mask).detach(), {"lambda": torch.tensor(0.0, device=mask.device)}
        self.require(mb, "teacher_logp")
        # The student side of Δ is the current policy, detached; with one update per rollout batch it is π_old.
        student_logp = policy.logp.detach()
        adv_hat = token_advantages(adv, student_logp, mb.teacher_logp, mask, cfg.eps_w, lam)
        if cfg.negative_only:
            adv_hat = torch.where(adv > 0, adv * mask, adv_hat)

        delta, w = evidence_weights(adv, student_logp, mb.teacher_logp, mask)
        delta_mean = masked_mean(delta, mask)
        metrics = {
            "w_clip_low_frac": masked_mean((w < 1.0 - cfg.eps_w).float(), mask),
            "w_clip_high_frac": masked_mean((w > 1.0 + cfg.eps_w).float(), mask),
            "delta_mean": delta_mean,
            "delta_std": (masked_mean(delta.square(), mask) - delta_mean.square()).clamp(min=0).sqrt(),
            "lambda": torch.tensor(lam, device=mask.device),
        }
        return adv_hat, metrics
