"""`neg_fixed`: a teacher-free control arm, GRPO whose advantage is shifted (or replaced) by a fixed negative
constant, after the "fixed negative advantage" of arXiv 2608.31046.

What the paper says (its abstract only; the body was not read): its authors ("Does On-Policy Distillation
Really Distill? From Noisy Teacher to Self-Improvement", arXiv 2608.31046, huggingface.co/papers/2608.31046)
study on-policy distillation (OPD: a teacher scores the student's own samples token by token, and those per-token
scores are the advantages). They find that learning concentrates on low log-probability tokens and that "a
single fixed negative advantage matches the performance of teacher-provided ones", i.e. the teacher's per-token
advantages replaced by one negative constant on every sampled token, with no teacher and no reward; and they
propose OPSA, which makes that negative advantage entropy-adaptive (stronger on high-entropy tokens). The
abstract gives neither the constant's value nor the surrogate it goes through.

What is implemented, exactly:

    mode "replace"  Ã_i = −c             every token of every response, the reward unused: the abstract's
                                          form (a fixed negative advantage in place of the per-token ones)
    mode "add"      Ã_i = A_i − c        A_i GRPO's group-normalised advantage; every response, groups whose
                                          rewards are all equal included (those get −c). NOT the paper's: this
                                          harness's RL-anchored variant, the default and what experiment=controls
                                          runs, because its question is whether a uniform push-down on top of
                                          GRPO explains RLSD's gain over GRPO

Ã_i then goes through GRPO's clipped surrogate, dual clip, rollout IS correction, KL term and aggregation
unchanged (`neg_adv` is c > 0, default 0.1, a tenth of the group advantage's unit std: this harness's choice).
OPSA's entropy-adaptive form is not implemented.
"""

from __future__ import annotations

import dataclasses

import torch

from rlsd_harness.algorithms.batch import RolloutBatch
from rlsd_harness.algorithms.grpo import GRPO
from rlsd_harness.algorithms.registry import register_objective

NEG_FIXED_MODES = ("add", "replace")


def fixed_negative_advantages(group_adv: torch.Tensor, neg_adv: float, mode: str) -> torch.Tensor:
    """(B,) advantages: `group_adv − neg_adv` ("add") or `−neg_adv` on every row ("replace")."""
    if neg_adv <= 0:
        raise ValueError(f"neg_adv must be > 0 (the advantage is −neg_adv), got {neg_adv}")
    if mode == "add":
        return group_adv - neg_adv
    if mode == "replace":
        return torch.full_like(group_adv, -neg_adv)
    raise ValueError(f"mode {mode!r}; valid: {', '.join(NEG_FIXED_MODES)}")


@register_objective("neg_fixed")
class NegFixed(GRPO):
    @dataclasses.dataclass
    class Config(GRPO.Config):
        neg_adv: float = 0.1  # c: a tenth of the group advantage's unit std (norm_adv_by_std); not the paper's
        mode: str = "add"  # add: A − c; replace: −c

        def __post_init__(self) -> None:
            super().__post_init__()
            if not self.neg_adv > 0:
                raise ValueError(f"neg_adv must be > 0 (the advantage is −neg_adv), got {self.neg_adv}")
            if self.mode not in NEG_FIXED_MODES:
                raise ValueError(f"mode {self.mode!r}; valid: {', '.join(NEG_FIXED_MODES)}")

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        # "replace" never compares a response with its group, so a group of one is enough to learn from.
        self.min_group_size = 1 if cfg.mode == "replace" else 2

    def prepare(self, batch: RolloutBatch) -> dict[str, float]:
        metrics = super().prepare(batch)
        batch.advantages = fixed_negative_advantages(batch.advantages, self.cfg.neg_adv, self.cfg.mode)
        return metrics
