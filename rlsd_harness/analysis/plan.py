"""Compute and memory plan of an experiment, without running it (`harness.compare ... dry_run=true`).

Compute: the ledger's analytic FLOPs formulas (harness/ledger.py) applied to the experiment's batch shape,
with the mean prompt, image and response lengths stated as assumptions (they are data-dependent).
Memory per GPU under each ZeRO stage, mixed precision with AdamW (Psi trainable parameters, N data-parallel
ranks): bf16 weights 2 Psi, bf16 gradients 2 Psi, fp32 master weights + Adam moments 12 Psi, partitioned as
  ZeRO-0: 16 Psi   ZeRO-1: 4 Psi + 12 Psi/N   ZeRO-2: 2 Psi + 14 Psi/N   ZeRO-3: 16 Psi/N
  ZeRO-3 + optimizer offload: 4 Psi/N on the GPU (the 12 Psi/N optimizer state lives in CPU memory).
A frozen / synced teacher or a reference model adds bf16 weights, 2 Psi: a full replica on every GPU under
ZeRO-0/1/2, partitioned like the policy (2 Psi/N) under ZeRO-3 (harness/teacher.py); an EMA teacher is kept
in fp32 (4 Psi, or 4 Psi/N) so that tau = 0.05 updates are not lost to bf16 rounding; a live teacher adds
nothing. Activations: with gradient checkpointing, one micro-batch of one sequence keeps
L x S x d bf16 layer inputs plus one layer's working set, and the output head's memory per response token,
measured (HEAD_BYTES_PER_TOKEN_PER_VOCAB): with the chunked head (rlsd_harness/training/vocab.py) one chunk's
logits at a time instead of the whole fp32 (S_resp x V) log-softmax, which dominated at 4K responses and a 152K
vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rlsd_harness.training.ledger import ModelShape

GIB = 1024**3

# Qwen3-VL-8B-Instruct's published architecture, used when the weights are not on this machine.
QWEN3_VL_8B = {
    "text": dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
                 num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=False,
                 rope_parameters={"rope_type": "default", "rope_theta": 5e6, "mrope_section": [24, 20, 20],
                                  "mrope_interleaved": True}),
    "vision": dict(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, patch_size=16,
                   spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=4096, num_position_embeddings=2304,
                   deepstack_visual_indexes=[8, 16, 24]),
}


@dataclass
class Shape:
    model: ModelShape
    params: int
    vocab: int


def shape_of(model_cfg: Any) -> Shape:
    """Parameter counts of the configured model, built on the meta device (no memory, no weights)."""
    from omegaconf import OmegaConf
    from transformers import AutoConfig, AutoModelForImageTextToText, Qwen3VLConfig

    path = None if OmegaConf.is_missing(model_cfg, "path") else model_cfg.get("path")
    if path and (Path(path) / "config.json").exists():
        config = AutoConfig.from_pretrained(path)
    else:
        config = Qwen3VLConfig(text_config=QWEN3_VL_8B["text"], vision_config=QWEN3_VL_8B["vision"], tie_word_embeddings=False)
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    return Shape(ModelShape.of(model), sum(p.numel() for p in model.parameters()), config.text_config.vocab_size)


def extra_models(algorithm_cfg: Any, needs_ref: bool) -> list[str]:
    teacher = (algorithm_cfg.get("teacher") or {}).get("weights", "none")
    extras = [] if teacher in ("none", "live") else [f"teacher:{teacher}"]
    return extras + (["reference"] if needs_ref else [])


def memory_per_gpu(params: int, stage: int, world: int, extras: list[str], offload: bool = False) -> dict[str, float]:
    P, N = float(params), float(world)
    policy = {0: 16 * P, 1: 4 * P + 12 * P / N, 2: 2 * P + 14 * P / N, 3: 16 * P / N}[stage]
    if offload and stage == 3:
        policy = 4 * P / N
    copies = P / N if stage == 3 else P  # partitioned like the policy under ZeRO-3, else full replicas
    others = sum((4 if e == "teacher:ema" else 2) * copies for e in extras)
    return {"policy_gib": policy / GIB, "teacher_ref_gib": others / GIB}


# Output-head memory per response token and vocabulary entry, per micro-batch row of one RLSD step (the
# teacher's forward, the update's forward and backward): measured by `python -m bench.memory` (bench/memory.json,
# CPU, tiny Qwen3-VL widened to V = 151,936, fp32 logits): the least-squares slope of the step's peak memory over
# response lengths 512 / 1,024 / 2,048 at V = 151,936 minus the slope at V = 512, over the 151,424 entries between.
# "full": the whole (B, T, V) log-softmax path, about 3.6 fp32 tensors of (T, V) at the peak;
# "chunked": the chunked head, whose per-token cost does not grow with V (measured -0.11: noise).
HEAD_BYTES_PER_TOKEN_PER_VOCAB = {"full": 14.49, "chunked": 0.0}
CHUNK_TENSORS = 3  # fp32 (rows x V) tensors one chunk holds at a time (forward and backward alike)


def activation_gib(shape: Shape, seq: int, resp: int, micro_batch: int = 1, head: str = "chunked",
                   full_signal: bool = False, device: str = "cuda") -> float:
    """Activations of one micro-batch with gradient checkpointing. `head`: "chunked" or "full" (the whole-tensor
    path, train.logits_chunk=0); `full_signal`: the objective reads the teacher's whole distribution (OPSD's
    logit mode, SDPO with topk 0), one fp32 (T, V) tensor that stays."""
    from rlsd_harness.training.vocab import AUTO_CHUNK_ELEMENTS

    if head not in HEAD_BYTES_PER_TOKEN_PER_VOCAB:
        raise ValueError(f"head {head!r}; valid: {', '.join(HEAD_BYTES_PER_TOKEN_PER_VOCAB)}")
    m = shape.model
    layer_inputs = m.layers * seq * m.d_model * 2
    working = seq * m.d_model * 2 * 16  # one layer's recomputed activations (attention + MLP), bf16
    per_row = layer_inputs + working + resp * shape.vocab * max(HEAD_BYTES_PER_TOKEN_PER_VOCAB[head], 0.0)
    if full_signal:
        per_row += resp * shape.vocab * 4
    transient = CHUNK_TENSORS * 4 * AUTO_CHUNK_ELEMENTS[device] if head == "chunked" else 0
    return (micro_batch * per_row + transient) / GIB


def plan(cfgs: dict[str, Any], needs_ref: dict[str, bool], needs_teacher: dict[str, bool], world: int,
         prompt_tokens: int, image_patches: int, response_tokens: int) -> str:
    """A printable plan: per method, the compute of one step, and the memory per GPU under every ZeRO stage."""
    any_cfg = next(iter(cfgs.values()))
    shape = shape_of(any_cfg.model)
    t = any_cfg.train
    rows = t.prompts_per_step * t.group_size
    n_vis = image_patches // 4  # merged 2x2 into visual tokens
    seq = prompt_tokens + n_vis + response_tokens
    patches = torch.full((t.prompts_per_step,), float(image_patches))
    gen = shape.model.generate_flops(torch.full((rows,), float(prompt_tokens + n_vis)), torch.full((rows,), float(response_tokens)))
    gen += shape.model.forward_flops(torch.zeros(0), patches)
    fwd = shape.model.forward_flops(torch.full((rows,), float(seq)), patches.repeat(t.group_size))
    lines = [
        f"model: {shape.params / 1e9:.2f} B parameters ({shape.model.n_vision / 1e6:.0f} M vision), vocabulary {shape.vocab}",
        f"batch: {t.prompts_per_step} prompts x {t.group_size} responses = {rows} sequences per step on {world} GPUs",
        f"assumed mean lengths: prompt {prompt_tokens} text tokens + {n_vis} visual tokens ({image_patches} patches), "
        f"response {response_tokens} tokens (max {any_cfg.rollout.max_new_tokens})",
        "",
        "| method | steps | PFLOP / step (rollout + update + teacher/ref) | PFLOP total | extra models |",
        "|---|---|---|---|---|",
    ]
    for name, cfg in cfgs.items():
        extra = (fwd if needs_teacher[name] else 0.0) + (fwd if needs_ref[name] else 0.0)
        step = gen + 3 * fwd + extra
        extras = extra_models(cfg.algorithm, needs_ref[name])
        lines.append(f"| {name} | {cfg.train.steps} | {step / 1e15:.1f} ({gen / 1e15:.1f} + {3 * fwd / 1e15:.1f} + "
                     f"{extra / 1e15:.1f}) | {step * cfg.train.steps / 1e15:.0f} | {', '.join(extras) or '-'} |")
    act = activation_gib(shape, seq, response_tokens)
    whole = activation_gib(shape, seq, response_tokens, head="full")
    teacher_full = activation_gib(shape, seq, response_tokens, full_signal=True) - act
    lines += ["", f"Memory per GPU (GiB), {world} data-parallel ranks; + activations ~{act:.1f} GiB per micro-batch "
              f"sequence with gradient checkpointing and the chunked output head ({whole:.1f} GiB with the whole "
              f"(T, V) log-softmax, train.logits_chunk=0; + {teacher_full:.1f} GiB where the loss reads the teacher's "
              f"whole distribution: OPSD logit mode, SDPO topk=0); vLLM (colocated, asleep during the update) takes "
              f"gpu_memory_utilization x GPU memory while it generates.", "",
              "| method | ZeRO-0 | ZeRO-1 | ZeRO-2 | ZeRO-3 | ZeRO-3 + offload |", "|---|---|---|---|---|---|"]
    for name, cfg in cfgs.items():
        extras = extra_models(cfg.algorithm, needs_ref[name])
        cells = []
        for stage, off in ((0, False), (1, False), (2, False), (3, False), (3, True)):
            m = memory_per_gpu(shape.params, stage, world, extras, off)
            cells.append(f"{m['policy_gib'] + m['teacher_ref_gib']:.1f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
