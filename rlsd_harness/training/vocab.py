"""Log-probs, entropies and teacher signals over the vocabulary, computed from the last hidden states.

A full (N, V) fp32 log-softmax over N response positions costs 4 V bytes per position (0.6 MB at Qwen3-VL's
V = 151,936), and autograd keeps it, plus the entropy's temporaries, until the backward. Here the output head
runs over `rows` positions at a time: each chunk's logits are made, reduced to what the caller asked for (the
sampled token's log-prob, the entropy, a top-k support, log-probs at given ids, a per-position loss over the
whole vocabulary), and dropped. The backward makes each chunk's logits again from the saved hidden states and
the head weight (the same matmul on the same rows), so what is kept between forward and backward is the (N, H)
hidden states, never an (N, V) tensor. The numbers are those of the whole-tensor computation up to float order.

`HeadConfig(mode="full")` is the whole-tensor path (kept for measurement and as the reference in tests); the
"floor" mode is a measurement aid only: it computes the head on the sampled tokens alone (no normaliser, wrong
log-probs), the least any head can cost.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

HEAD_MODES = ("chunked", "full", "floor")
# Logit elements (rows x V) per chunk when `chunk` is "auto". A chunk holds 2-3 fp32 tensors of this size at a
# time (forward and backward alike): on CPU 2^22 elements keep that under 50 MB, small next to even the tiny
# model's step at V = 151,936, and at V = 512 still cover 8,192 positions (one chunk per micro-batch). Smaller
# chunks cost time on CPU: every chunk reads the whole (V, H) head weight three times. A GPU's step is dominated
# by the model's own weights and activations, and wider matmuls run closer to peak: 2^26 elements (256 MiB
# each, ~400 positions at V = 151,936).
AUTO_CHUNK_ELEMENTS = {"cpu": 1 << 22, "cuda": 1 << 26}
VocabLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (n, V) student, (n, V) teacher -> (n,)


@dataclass(frozen=True)
class HeadConfig:
    """How the output head is evaluated: `mode` one of HEAD_MODES; `chunk` positions per chunk ("auto": by
    device and vocabulary size, see AUTO_CHUNK_ELEMENTS)."""

    mode: str = "chunked"
    chunk: int | str | None = "auto"

    def __post_init__(self) -> None:
        if self.mode not in HEAD_MODES:
            raise ValueError(f"head mode {self.mode!r}; valid: {', '.join(HEAD_MODES)}")
        if not (self.chunk in (None, "auto") or (isinstance(self.chunk, int) and self.chunk >= 0)):
            raise ValueError(f"train.logits_chunk={self.chunk!r}; valid: null (by device), 0 (the whole (B, T, V) "
                             f"tensor at once) or a positive number of response positions per chunk")

    @staticmethod
    def from_setting(chunk: Any) -> HeadConfig:
        """From the config value `train.logits_chunk`: null (or "auto") by device, 0 the whole tensor, N rows."""
        if chunk is None or chunk == "auto":
            return HeadConfig("chunked", "auto")
        if chunk == 0:
            return HeadConfig("full", None)
        return HeadConfig("chunked", chunk)

    def rows(self, vocab: int, device: torch.device) -> int:
        if isinstance(self.chunk, int) and self.chunk > 0:
            return self.chunk
        budget = AUTO_CHUNK_ELEMENTS["cuda" if device.type == "cuda" else "cpu"]
        return max(1, budget // max(vocab, 1))


@dataclass
class HeadOutput:
    """Per response position (leading dims as the hidden states'): what `head_signals` was asked for."""

    logp: torch.Tensor  # log-prob of each target token, with gradient
    entropy: torch.Tensor  # entropy of the distribution, detached
    topk_ids: torch.Tensor | None = None  # (…, k) most likely ids (detached selection)
    topk_logp: torch.Tensor | None = None  # (…, k) their log-probs, with gradient
    gathered: torch.Tensor | None = None  # (…, m) log-probs at the requested ids, with gradient
    logprobs: torch.Tensor | None = None  # (…, V) the whole distribution, detached (forward-only callers)
    vocab_loss: torch.Tensor | None = None  # per-position loss over the whole vocabulary, with gradient


def log_softmax_head(logits: torch.Tensor, banned: torch.Tensor, temperature: float) -> torch.Tensor:
    """Logits (float32) -> log-probs at the sampling temperature, with the banned ids at -inf (probability 0)."""
    return torch.log_softmax(logits.index_fill(-1, banned, float("-inf")) / temperature, dim=-1)


def entropy(logprobs: torch.Tensor) -> torch.Tensor:
    p = logprobs.exp()
    return -torch.where(p > 0, p * logprobs, torch.zeros_like(p)).sum(-1)  # banned tokens: 0 * -inf is 0 here


@dataclass
class _Request:
    banned: torch.Tensor
    temperature: float
    topk: int
    full: bool
    vocab_loss: VocabLoss | None


def _chunk_values(lp: torch.Tensor, req: _Request, targets, topk_ids, gather_ids, teacher) -> list[torch.Tensor | None]:
    """The differentiable outputs of one chunk, from its log-probs (forward and recompute share this)."""
    return [
        lp.gather(-1, targets[:, None])[:, 0],
        None if topk_ids is None else lp.gather(-1, topk_ids),
        None if gather_ids is None else lp.gather(-1, gather_ids),
        None if req.vocab_loss is None else req.vocab_loss(lp, teacher),
    ]


def _chunk_logprobs(h: torch.Tensor, weight: torch.Tensor, req: _Request) -> torch.Tensor:
    """log_softmax_head of one chunk, in place on its fresh logits (one (n, V) tensor fewer at a time)."""
    z = F.linear(h, weight).float()
    z.index_fill_(-1, req.banned, float("-inf"))
    return torch.log_softmax(z.div_(req.temperature), dim=-1)


def _lean_entropy(lp: torch.Tensor, keep: bool) -> torch.Tensor:
    """entropy(lp) holding one more (n, V) tensor; `lp` is clobbered (its -inf clamped) unless `keep`."""
    finite = lp.clamp(min=torch.finfo(lp.dtype).min) if keep else lp.clamp_(min=torch.finfo(lp.dtype).min)
    p = finite.exp()  # banned ids: exp(finite min) = 0, and 0 * (finite min) = 0, as 0 log 0 = 0
    return -torch.einsum("nv,nv->n", p, finite)


def _gather_chunk_grad(h, weight, req: _Request, ids: list, grads: list) -> torch.Tensor:  # noqa: ANN001
    """d/d(logits) of sum(g * log-probs gathered at ids): (scatter(g) - softmax * sum(g)) / temperature, zero at
    the banned ids (the index_fill's backward); the log_softmax backward, written out to hold one (n, V) tensor."""
    lp = _chunk_logprobs(h, weight, req)
    total = sum(g.sum(-1) for g in grads if g is not None)
    g_logits = lp.exp_().mul_(-total[:, None])
    for i, g in zip(ids, grads):
        if g is not None:
            g_logits.scatter_add_(-1, i, g.to(g_logits.dtype))
    return g_logits.index_fill_(-1, req.banned, 0.0).div_(req.temperature)


def _autograd_chunk_grad(h, weight, req: _Request, ids: list, grads: list, teacher, g_vloss) -> torch.Tensor:  # noqa: ANN001
    """d/d(logits) through autograd, for a per-position vocabulary loss (any function of the distribution)."""
    with torch.no_grad():
        logits = F.linear(h, weight).float()
    logits.requires_grad_(True)
    with torch.enable_grad():
        lp = log_softmax_head(logits, req.banned, req.temperature)
        outs = [(req.vocab_loss(lp, teacher), g_vloss)]
        outs += [(lp.gather(-1, i), g) for i, g in zip(ids, grads) if g is not None]
        (g_logits,) = torch.autograd.grad([v for v, _ in outs], logits, [g for _, g in outs])
    return g_logits


class _ChunkedHead(torch.autograd.Function):
    """hidden (N, H), weight (V, H) -> (logp (N,), entropy (N,), topk ids, topk logp, gathered, logprobs,
    vocab loss), chunk by chunk over N, recomputing each chunk's logits in the backward."""

    @staticmethod
    def forward(ctx, hidden, weight, req: _Request, rows: int, targets, gather_ids, teacher):  # noqa: ANN001
        n = hidden.shape[0]
        parts: list[list[torch.Tensor | None]] = []
        for s in range(0, n, rows):
            e = min(s + rows, n)
            lp = _chunk_logprobs(hidden[s:e], weight, req)
            ids = lp.topk(req.topk, dim=-1).indices if req.topk else None
            vals = _chunk_values(lp, req, targets[s:e], ids, None if gather_ids is None else gather_ids[s:e],
                                 None if teacher is None else teacher[s:e])
            parts.append([*vals, _lean_entropy(lp, keep=req.full), ids, lp if req.full else None])
            del lp
        cat = [None if p[0] is None else torch.cat(p) for p in zip(*parts)] if parts else [None] * 7
        if not parts:  # no positions: empty outputs of the right shapes
            cat[0] = cat[4] = hidden.new_zeros(0, dtype=torch.float32)
        logp, topk_logp, gathered, vloss, ent, topk_ids, full = cat
        ctx.req, ctx.rows = req, rows
        ctx.save_for_backward(hidden, weight, targets, topk_ids, gather_ids, teacher)
        ctx.set_materialize_grads(False)
        ctx.mark_non_differentiable(*[t for t in (ent, topk_ids, full) if t is not None])
        return logp, ent, topk_ids, topk_logp, gathered, full, vloss

    @staticmethod
    def backward(ctx, g_logp, g_ent, g_ids, g_topk, g_gath, g_full, g_vloss):  # noqa: ANN001
        hidden, weight, targets, topk_ids, gather_ids, teacher = ctx.saved_tensors
        req, rows = ctx.req, ctx.rows
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.zeros_like(hidden) if need_h else None
        # accumulated in fp32 over chunks and rounded once, as one matmul over all rows would
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        n = hidden.shape[0]
        for s in range(0, n, rows):
            e = min(s + rows, n)
            h = hidden[s:e]
            chunk_ids = [targets[s:e, None], None if topk_ids is None else topk_ids[s:e],
                         None if gather_ids is None else gather_ids[s:e]]
            chunk_grads = [None if g_logp is None else g_logp[s:e, None], None if g_topk is None else g_topk[s:e],
                           None if g_gath is None else g_gath[s:e]]
            if req.vocab_loss is not None and g_vloss is not None:
                g_logits = _autograd_chunk_grad(h, weight, req, chunk_ids, chunk_grads, teacher[s:e], g_vloss[s:e])
            elif any(g is not None for g in chunk_grads):
                g_logits = _gather_chunk_grad(h, weight, req, chunk_ids, chunk_grads)
            else:
                continue
            g_logits = g_logits.to(weight.dtype)
            if need_h:
                grad_h[s:e] = g_logits @ weight
            if need_w:
                grad_w.addmm_(g_logits.t().float(), h.float())
        return grad_h, None if grad_w is None else grad_w.to(weight.dtype), None, None, None, None, None


def _full_signals(logits: torch.Tensor, req: _Request, targets, gather_ids, teacher) -> HeadOutput:
    """The whole-tensor path: the (N, V) log-softmax is kept for the backward."""
    lp = log_softmax_head(logits.float(), req.banned, req.temperature)
    detached = lp.detach()
    topk_ids = detached.topk(req.topk, dim=-1).indices if req.topk else None
    logp, topk_logp, gathered, vloss = _chunk_values(lp, req, targets, topk_ids, gather_ids, teacher)
    return HeadOutput(logp, entropy(detached), topk_ids, topk_logp, gathered, detached if req.full else None, vloss)


def _floor_signals(hidden: torch.Tensor, weight: torch.Tensor, req: _Request, targets, gather_ids) -> HeadOutput:
    """Measurement only: the head's output cut to the sampled tokens (and requested ids); no normaliser."""
    logp = (hidden * weight[targets]).sum(-1).float() / req.temperature
    gathered = None if gather_ids is None else (hidden[:, None] * weight[gather_ids]).sum(-1).float()
    topk_ids = targets[:, None].expand(-1, req.topk) if req.topk else None
    topk_logp = None if topk_ids is None else logp[:, None].expand(-1, req.topk)
    vloss = None if req.vocab_loss is None else logp * 0
    return HeadOutput(logp, torch.zeros_like(logp.detach()), topk_ids, topk_logp, gathered, None, vloss)


def keep_large_frees_off_the_heap(threshold: int = 1 << 20) -> bool:
    """Fix glibc's mmap threshold at `threshold` bytes (process-wide; Linux glibc only; returns whether it
    applied). glibc raises the threshold after each large free (up to 32 MiB), after which the chunked head's
    tens-of-MB chunk tensors come from the heap, which keeps freed ones resident and grows with the response
    length: one RLSD step of 2 x 1,024 tokens at V = 151,936 peaked at 1,003 MiB above its start against 287
    MiB with the threshold fixed (`python -m bench.memory`). Allocations above it are mmapped and returned on
    free."""
    import ctypes
    import platform

    if platform.system() != "Linux":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_mmap_threshold = -3  # glibc's <malloc.h> M_MMAP_THRESHOLD
    return bool(libc.mallopt(m_mmap_threshold, int(threshold)))


@contextmanager
def swapped_forward(module: torch.nn.Module, fn: Callable) -> Any:
    """Run `module(...)` as `fn(...)` inside the block. Going through the module (rather than calling `fn` on
    its weight) keeps framework hooks on it working: under ZeRO-3 they gather the weight for the forward and
    again for the backward."""
    had = "forward" in module.__dict__
    previous = module.__dict__.get("forward")
    module.forward = fn
    try:
        yield
    finally:
        if had:
            module.forward = previous
        else:
            del module.forward


def head_signals(
    head: torch.nn.Module,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    banned: list[int],
    temperature: float,
    cfg: HeadConfig,
    topk: int = 0,
    gather_ids: torch.Tensor | None = None,
    full: bool = False,
    vocab_loss: VocabLoss | None = None,
    teacher: torch.Tensor | None = None,
) -> HeadOutput:
    """Signals of `head` (a bias-free linear layer, weight (V, H)) over hidden states (…, H) with target ids (…).

    topk: also return the k most likely ids and their log-probs; gather_ids (…, m): log-probs at these ids;
    full: the whole detached distribution (…, V) (forward-only callers); vocab_loss with teacher (…, V): the
    per-position `vocab_loss(student log-probs, teacher log-probs)`, with gradient, one chunk at a time."""
    if getattr(head, "bias", None) is not None:
        raise ValueError("the output head has a bias; the chunked log-probs support bias-free heads (Qwen-VL's)")
    lead = hidden.shape[:-1]
    h = hidden.reshape(-1, hidden.shape[-1])
    t = targets.reshape(-1)
    g = None if gather_ids is None else gather_ids.reshape(-1, gather_ids.shape[-1])
    tt = None if teacher is None else teacher.reshape(-1, teacher.shape[-1])
    if vocab_loss is not None and teacher is None:
        raise ValueError("vocab_loss needs the teacher's log-probs")
    req = _Request(torch.tensor(banned, dtype=torch.long, device=h.device), temperature, topk, full, vocab_loss)
    box: list[HeadOutput] = []

    def run(x: torch.Tensor) -> torch.Tensor:
        weight = head.weight
        if cfg.mode == "full":
            out = _full_signals(F.linear(x, weight), req, t, g, tt)
        elif cfg.mode == "floor":
            out = _floor_signals(x, weight, req, t, g)
        else:
            logp, ent, ids, topk_logp, gathered, lps, vloss = _ChunkedHead.apply(
                x, weight, req, cfg.rows(weight.shape[0], x.device), t, g, tt)
            out = HeadOutput(logp, ent, ids, topk_logp, gathered, lps, vloss)
        box.append(out)
        # the differentiable outputs pass through the module's return, where framework backward hooks see them
        return tuple(v for v in (out.logp, out.topk_logp, out.gathered, out.vocab_loss) if v is not None)

    with swapped_forward(head, run):
        returned = list(head(h))
    out = box[0]
    for name in ("logp", "topk_logp", "gathered", "vocab_loss"):  # the module's outputs, hooks included
        if getattr(out, name) is not None:
            setattr(out, name, returned.pop(0))

    def shape(x: torch.Tensor | None) -> torch.Tensor | None:
        return None if x is None else x.reshape(*lead, *x.shape[1:])

    return HeadOutput(*(shape(getattr(out, f)) for f in
                        ("logp", "entropy", "topk_ids", "topk_logp", "gathered", "logprobs", "vocab_loss")))
