"""The compute ledger: what each step spent, per model role, in tokens, FLOPs and wall seconds.

FLOPs estimate (documented, analytic, dense decoder + ViT):
  forward of S tokens through the language model   2 * N_text * S + 2 * L * d * S^2   (the attention term
      counts QK^T and AV under a causal mask: 4*L*d per (query, key) pair, S^2/2 pairs)
  forward of P image patches through the vision tower   2 * N_vision * P + 4 * L_v * d_v * P^2 (full attention)
  backward                                                2 x the forward, less what frozen weights skip:
      a matmul's backward is two matmuls of its forward's size, the activation gradient dX = dY W^T and the
      weight gradient dW = X^T dY (Kaplan et al. 2020, "Scaling Laws for Neural Language Models", sec. 2.1:
      training ~ 6N FLOPs per token = forward 2N + backward 4N). A frozen weight (LoRA's base, which needs no
      gradient: Hu et al. 2021, arXiv 2106.09685, sec. 4.2 on LoRA's training speed-up) still passes the
      activation gradient down but computes no dW: 1 x its forward, 2 * N_frozen per token. The
      attention products (no weights) keep 2 x. A vision tower with nothing trainable in it gets no backward
      at all (autograd does not enter it). So backward = 2 x forward - 2 * N_text_frozen * S
      - (2 * N_vision_frozen * P, or the whole vision forward when none of it trains).
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
    n_text_frozen: int = 0  # of n_text, weights that get no gradient (LoRA's base): backward 1 x their forward
    n_vision_frozen: int = 0
    vision_trains: bool = True  # False: no backward through the vision tower at all

    @classmethod
    def of(cls, model: torch.nn.Module, idle: frozenset[str] = frozenset()) -> ModelShape:
        """The shape of `model`'s forward; parameters named in `idle` are not run by it (a LoRA teacher's
        adapter set) and are not counted. Frozen parameters (requires_grad False) are counted as such."""
        cfg = model.config
        text, vision = cfg.text_config, cfg.vision_config
        named = [(n, p) for n, p in model.named_parameters() if n not in idle]
        n_vision = sum(p.numel() for n, p in named if ".visual." in f".{n}")
        n_vision_frozen = sum(p.numel() for n, p in named if ".visual." in f".{n}" and not p.requires_grad)
        embed = model.get_input_embeddings().weight
        n_embed = embed.numel()
        n_total = sum(p.numel() for _, p in named)
        tied = getattr(cfg, "tie_word_embeddings", False) or getattr(text, "tie_word_embeddings", False)
        # embeddings are a lookup; a tied output head still costs its matmul, an untied one is in n_total
        n_text = n_total - n_vision - n_embed + (n_embed if tied else 0)
        frozen = sum(p.numel() for n, p in named if ".visual." not in f".{n}" and not p.requires_grad)
        n_text_frozen = frozen - (0 if embed.requires_grad else n_embed) + (n_embed if tied and not embed.requires_grad else 0)
        return cls(n_text, n_vision, text.num_hidden_layers, text.hidden_size, vision.depth, vision.hidden_size,
                   n_text_frozen, n_vision_frozen, n_vision_frozen < n_vision)

    def vision_flops(self, patches_per_image: torch.Tensor | None) -> float:
        if patches_per_image is None or not patches_per_image.numel():
            return 0.0
        p = patches_per_image.double()
        return float((2 * self.n_vision * p + 4 * self.v_layers * self.v_d_model * p * p).sum())

    def backward_flops(self, forward: float, tokens: float, patches_per_image: torch.Tensor | None) -> float:
        """The backward of a forward that cost `forward` FLOPs over `tokens` language-model tokens and images of
        `patches_per_image` patches (module docstring): 2 x forward without frozen weights."""
        backward = 2 * forward - 2 * self.n_text_frozen * tokens
        if not self.vision_trains:
            return backward - 2 * self.vision_flops(patches_per_image)
        n_patches = 0.0 if patches_per_image is None else float(patches_per_image.double().sum())
        return backward - 2 * self.n_vision_frozen * n_patches

    def forward_flops(self, seq_lens: torch.Tensor, patches_per_image: torch.Tensor | None) -> float:
        s = seq_lens.double()
        return float((2 * self.n_text * s + 2 * self.layers * self.d_model * s * s).sum()) + self.vision_flops(patches_per_image)

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
