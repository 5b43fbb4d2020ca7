"""The compute ledger: what each step spent, per model role, in tokens, FLOPs and wall seconds.

FLOPs estimate (documented, analytic, dense decoder + ViT):
  forward of S tokens through the language model   2 * N_text * S + 2 * L * d * S^2   (the attention term
      counts QK^T and AV under a causal mask: 4*L*d per (query, key) pair, S^2/2 pairs)
  forward of P image patches through the vision tower   2 * N_vision * P + 4 * L_v * d_v * P^2 (full attention)
  backward                                                2 x the forward
  generation of T new tokens after a prompt of S0           2 * N_text * T + 4 * L * d * sum_t (S0 + t)
      (the KV cache makes each step one token's worth of matmuls plus attention over the context).
N_text excludes the embedding table (a lookup), but includes the (tied) output projection.
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass

import torch


@dataclass
class ModelShape:
    n_text: int  # language-model parameters that do matmuls per token (incl. the output projection)
    n_vision: int
    layers: int
    d_model: int
    v_layers: int
    v_d_model: int

    @classmethod
    def of(cls, model: torch.nn.Module) -> ModelShape:
        cfg = model.config
        text, vision = cfg.text_config, cfg.vision_config
        n_vision = sum(p.numel() for n, p in model.named_parameters() if ".visual." in f".{n}")
        n_embed = model.get_input_embeddings().weight.numel()
        n_total = sum(p.numel() for p in model.parameters())
        tied = getattr(cfg, "tie_word_embeddings", False) or getattr(text, "tie_word_embeddings", False)
        # embeddings are a lookup; a tied output head still costs its matmul, an untied one is in n_total
        n_text = n_total - n_vision - n_embed + (n_embed if tied else 0)
        return cls(n_text, n_vision, text.num_hidden_layers, text.hidden_size, vision.depth, vision.hidden_size)

    def forward_flops(self, seq_lens: torch.Tensor, patches_per_image: torch.Tensor | None) -> float:
        s = seq_lens.double()
        flops = float((2 * self.n_text * s + 2 * self.layers * self.d_model * s * s).sum())
        if patches_per_image is not None and patches_per_image.numel():
            p = patches_per_image.double()
            flops += float((2 * self.n_vision * p + 4 * self.v_layers * self.v_d_model * p * p).sum())
        return flops

    def generate_flops(self, prompt_lens: torch.Tensor, new_tokens: torch.Tensor) -> float:
        s0, t = prompt_lens.double(), new_tokens.double()
        context_sum = t * s0 + t * (t + 1) / 2
        return float((2 * self.n_text * t + 4 * self.layers * self.d_model * context_sum).sum())


class Ledger:
    """Per-step counters; `close_step` returns them and adds them to the running totals."""

    def __init__(self) -> None:
        self.step: dict[str, float] = defaultdict(float)
        self.total: dict[str, float] = defaultdict(float)

    @contextmanager
    def phase(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.step[f"time/{name}"] += time.perf_counter() - t0

    def add(self, **counts: float) -> None:
        for k, v in counts.items():
            self.step[k] += float(v)

    def close_step(self) -> dict[str, float]:
        out = dict(self.step)
        out["flops/total"] = sum(v for k, v in out.items() if k.startswith("flops/") and not k.startswith("flops/probe"))
        # The probe (a teacher forward run only to measure GRPO's teacher-student KL) is off the budget.
        out["time/step"] = sum(v for k, v in out.items() if k.startswith("time/") and k != "time/probe")
        for k, v in out.items():
            self.total[k] += v
        self.step = defaultdict(float)
        return {**{f"step/{k}": v for k, v in out.items()}, **{f"cum/{k}": v for k, v in self.total.items()}}

    def state_dict(self) -> dict[str, float]:
        return dict(self.total)

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.total = defaultdict(float, state)
