"""GRPO+OPSD, the RLSD paper's interpolation baseline: (1 − c)·GRPO loss + c·OPSD loss on the same batch
("inspired by MOPD in MiMo-V2-Flash"; specs/algorithms.md §1.6). The paper's coefficient and divergence were
not recovered; the config exposes both.

Config: `distill_coef` is c; `grpo` and `opsd` are nested mappings holding the fields of `GRPO.Config` and
`OPSD.Config` (unknown keys are errors, omitted keys take those classes' defaults). Each part aggregates its
own per-token loss with its own `loss_agg_mode` and the whole-mini-batch counts, so micro-batch splits add up.
The teacher signal is the OPSD part's ("full" in logit mode, "sampled" in sampled mode).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch

from rlsd_harness.algorithms.batch import PolicyOutput, RolloutBatch
from rlsd_harness.algorithms.common import aggregate_loss
from rlsd_harness.algorithms.grpo import GRPO
from rlsd_harness.algorithms.opsd import OPSD
from rlsd_harness.algorithms.registry import Objective, make_config, register_objective


@register_objective("grpo_opsd")
class GRPOPlusOPSD(Objective):
    teacher_context = "reference"
    min_group_size = 2  # the GRPO part's group-relative advantage

    @dataclasses.dataclass
    class Config:
        distill_coef: float = 0.5  # c in (1 − c)·GRPO + c·OPSD
        grpo: Any = dataclasses.field(default_factory=dict)  # GRPO.Config fields
        opsd: Any = dataclasses.field(default_factory=dict)  # OPSD.Config fields

        def __post_init__(self) -> None:
            if not 0.0 <= self.distill_coef <= 1.0:
                raise ValueError(f"distill_coef must be in [0, 1], got {self.distill_coef}")
            if isinstance(self.grpo, Mapping):
                self.grpo = make_config(GRPO.Config, self.grpo, "grpo_opsd.grpo")
            if isinstance(self.opsd, Mapping):
                self.opsd = make_config(OPSD.Config, self.opsd, "grpo_opsd.opsd")

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        self.grpo = GRPO(cfg.grpo)
        self.opsd = OPSD(cfg.opsd)
        self.opsd.name = self.grpo.name = self.name  # error messages name the objective the user chose
        self.teacher_signal = self.opsd.teacher_signal
        self.needs_ref = self.grpo.needs_ref

    def check_vocab(self, vocab_size: int) -> None:
        self.opsd.check_vocab(vocab_size)

    def prepare(self, batch: RolloutBatch) -> dict[str, float]:
        return self.grpo.prepare(batch)

    def loss(self, mb: RolloutBatch, policy: PolicyOutput) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        c = self.cfg.distill_coef
        grpo_loss, grpo_metrics = self.grpo.loss(mb, policy)
        distill_per_token, opsd_metrics = self.opsd.per_token_loss(mb, policy)
        opsd_loss = aggregate_loss(
            distill_per_token, mb.loss_mask, self.cfg.opsd.loss_agg_mode, mb.num_tokens, mb.num_seqs, mb.max_len
        )
        # The parts' metrics keep the names GRPO and OPSD log them under (their key sets are disjoint), so a
        # cross-method plot finds one quantity under one name.
        metrics = {**grpo_metrics, **opsd_metrics, "grpo_loss": grpo_loss.detach(), "opsd_loss": opsd_loss.detach()}
        return (1.0 - c) * grpo_loss + c * opsd_loss, metrics
