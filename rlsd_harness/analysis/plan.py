"""Compute, time, memory and disk plan of an experiment, without running it (`rlsd-compare ... dry_run=true`).

Everything is read from each method's composed config: the model (its dimensions from the config actually
composed: a tiny model's built config, a local folder's config.json, else Qwen3-VL-8B-Instruct's published
architecture when model.path is not on this machine, said so in the output), train.gradient_checkpointing,
train.micro_batch_size / train.token_budget, deepspeed.zero_stage / offload_optimizer / bf16, the rollout
engine (vLLM's gpu_memory_utilization), train.save_every / keep_last / keep_budget_points /
save_budget_policies, and the experiment's world size and `plan:` section (PLAN_KEYS: mean lengths, MFU, peak,
GPU memory). Full fine-tuning: the schema has no LoRA option, so every parameter is trainable.

Compute: the ledger's analytic FLOPs (training/ledger.py) applied to the batch shape at the assumed mean
lengths: rollout (generation), the update (forward + backward = 3 forwards per PPO epoch), the old-policy
forward (only with several mini-batches or epochs), the reference and the teacher forwards (the teacher only
at the steps whose loss reads it: RLSD's stops when its lambda reaches 0). Forward-only passes and an update
without gradient checkpointing run a prompt shared by its G responses once when train.share_prompts, as the
ledger charges them. Time per step = FLOPs / (world x plan.peak_tflops x plan.mfu), MFU counted on these
model FLOPs (the forward that gradient checkpointing recomputes is not in them: it lowers the MFU reached).

Memory per GPU, mixed precision with AdamW (Psi trainable parameters, N data-parallel ranks): bf16 weights 2 Psi,
bf16 gradients 2 Psi, fp32 master weights + Adam moments 12 Psi (without bf16: fp32 weights 4, gradients 4,
moments 8), partitioned as in the ZeRO paper (Rajbhandari et al. 2020, arXiv 1910.02054, Fig. 1):
  ZeRO-0: 16 Psi   ZeRO-1: 4 Psi + 12 Psi/N   ZeRO-2: 2 Psi + 14 Psi/N   ZeRO-3: 16 Psi/N
  ZeRO-3 + optimizer offload: 4 Psi/N on the GPU (the 12 Psi/N optimizer state lives in CPU memory).
A frozen / synced teacher or a reference model adds bf16 weights, 2 Psi: a full replica on every GPU under
ZeRO-0/1/2, partitioned like the policy (2 Psi/N) under ZeRO-3 (training/teacher.py); an EMA teacher is kept
in fp32 (4 Psi, or 4 Psi/N) so that tau = 0.05 updates are not lost to bf16 rounding; a live teacher adds
nothing. Activations: `layer_units` (per token and layer, after Korthikanti et al. 2022) for one micro-batch
of sequences of the assumed prompt + image tokens + rollout.max_new_tokens (the longest response the rollout
allows: memory must fit the longest batch, not the mean), with or without gradient checkpointing, plus the
output head's memory (HEAD_BYTES_PER_TOKEN_PER_VOCAB). The update and the rollout are two phases: the peak is
the larger of (states + activations) and (states + the rollout's memory: vLLM's gpu_memory_utilization x GPU
memory, colocated and asleep during the update; the HF rollout's KV cache).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rlsd_harness.config import ConfigError
from rlsd_harness.training.ledger import ModelShape

GIB = 1024**3

# Qwen3-VL-8B-Instruct's published architecture (its config.json on the Hugging Face hub), used when the
# weights are not on this machine.
QWEN3_VL_8B = {
    "text": dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
                 num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=False,
                 rope_parameters={"rope_type": "default", "rope_theta": 5e6, "mrope_section": [24, 20, 20],
                                  "mrope_interleaved": True}),
    "vision": dict(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, patch_size=16,
                   spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=4096, num_position_embeddings=2304,
                   deepstack_visual_indexes=[8, 16, 24]),
}

# The experiment's `plan:` keys, their defaults and meaning.
PLAN_KEYS: dict[str, tuple[float, str]] = {
    "prompt_tokens": (400, "mean prompt length in text tokens (data-dependent)"),
    "image_patches": (1024, "mean image patches per prompt (merged 2x2 into visual tokens)"),
    "response_tokens": (1024, "mean response length for the compute estimate (memory uses rollout.max_new_tokens)"),
    "mfu": (0.3, "model FLOPs utilisation assumed for the time estimate, in (0, 1]"),
    # NVIDIA H100 SXM datasheet: 989 TFLOPS dense BF16 tensor core (1,979 with sparsity); the H200 SXM is the same
    "peak_tflops": (989.0, "the GPU's dense bf16 peak (H100 / H200 SXM: 989)"),
    # an "80 GB" H100 shows 81,559 MiB in nvidia-smi (79.6 GiB)
    "gpu_memory_gib": (79.6, "memory of one GPU, GiB"),
}


def plan_settings(section: Any) -> dict[str, float]:
    """The experiment's `plan:` mapping with defaults filled in; an unknown key or a value out of range is an
    error naming it and the valid ones."""
    given = dict(section or {})
    unknown = sorted(set(given) - set(PLAN_KEYS))
    if unknown:
        raise ConfigError(f"unknown plan key(s) {', '.join(unknown)}; valid: {', '.join(PLAN_KEYS)}")
    out = {k: float(given.get(k, default)) for k, (default, _) in PLAN_KEYS.items()}
    for key in ("prompt_tokens", "image_patches", "response_tokens"):
        if out[key] < 0 or out[key] != int(out[key]):
            raise ConfigError(f"plan.{key}={given[key]!r}; valid: a whole number >= 0")
    if not 0 < out["mfu"] <= 1:
        raise ConfigError(f"plan.mfu={given['mfu']!r}; valid: a fraction in (0, 1]")
    for key in ("peak_tflops", "gpu_memory_gib"):
        if out[key] <= 0:
            raise ConfigError(f"plan.{key}={given[key]!r}; valid: a positive number")
    return out


@dataclass
class Shape:
    """What the plan needs of a model: the ledger's shape, the parameter count and the layer dimensions."""

    model: ModelShape
    params: int
    vocab: int
    source: str  # where the dimensions come from, printed
    ffn: int
    kv_dim: int  # key/value width (GQA: fewer heads than the queries)
    qk_norm: bool  # Qwen3's per-head RMSNorm of q and k
    v_ffn: int
    v_gated: bool  # the vision MLP is gated (Qwen2.5-VL) or not (Qwen3-VL)


def _model_config(model_cfg: Any) -> tuple[Any, str]:
    from omegaconf import OmegaConf
    from transformers import AutoConfig, Qwen3VLConfig

    path = None if OmegaConf.is_missing(model_cfg, "path") else model_cfg.get("path")
    if path and (Path(path) / "config.json").exists():
        return AutoConfig.from_pretrained(path), f"{path}/config.json"
    if not path and model_cfg.get("size"):
        from rlsd_harness.models import resolve_model

        # the folder the run would build (cached): its config is the model trained, head_vocab included
        folder = resolve_model(model_cfg)
        return AutoConfig.from_pretrained(folder), f"built from config (model.arch={model_cfg.arch}, model.size={model_cfg.size})"
    if model_cfg.get("arch") == "qwen3_vl":
        where = "unset" if not path else f"{path} has no config.json here"
        return (Qwen3VLConfig(text_config=QWEN3_VL_8B["text"], vision_config=QWEN3_VL_8B["vision"], tie_word_embeddings=False),
                f"Qwen3-VL-8B-Instruct's published architecture (model.path {where})")
    raise ConfigError(f"the plan cannot size model.arch={model_cfg.get('arch')!r} with model.path={path!r}: valid: a "
                      f"model.path with a config.json, a model.size (tiny models), or model.arch=qwen3_vl (Qwen3-VL-8B)")


def shape_of(model_cfg: Any) -> Shape:
    """Dimensions and parameter counts of the configured model, built on the meta device (no memory, no weights)."""
    from transformers import AutoModelForImageTextToText

    config, source = _model_config(model_cfg)
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    text, vision = config.text_config, config.vision_config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    names = [n for n, _ in model.named_parameters()]
    return Shape(
        ModelShape.of(model), sum(p.numel() for p in model.parameters()), text.vocab_size, source,
        ffn=text.intermediate_size, kv_dim=text.num_key_value_heads * head_dim,
        qk_norm=any(n.endswith("q_norm.weight") for n in names), v_ffn=vision.intermediate_size,
        v_gated=any(".visual." in f".{n}" and "gate_proj" in n for n in names))


def extra_models(algorithm_cfg: Any, needs_ref: bool, probe: bool = False) -> list[str]:
    """The model copies besides the policy; `probe`: a frozen teacher that only measures GRPO's teacher-student
    KL (dynamics.teacher_probe), off the budget but in memory."""
    teacher = (algorithm_cfg.get("teacher") or {}).get("weights", "none")
    extras = [] if teacher in ("none", "live") else [f"teacher:{teacher}"]
    return extras + (["teacher:frozen (probe)"] if probe else []) + (["reference"] if needs_ref else [])


def _probe(cfg: Any, objective: Any) -> bool:
    return objective.teacher_signal == "none" and bool((cfg.get("dynamics") or {}).get("teacher_probe", False))


ZERO3_MAX_LIVE_PARAMETERS = 1e9  # DeepSpeed's default stage3_max_live_parameters


def memory_per_gpu(params: int, stage: int, world: int, extras: list[str], offload: bool = False,
                   bf16: bool = True) -> dict[str, float]:
    """Model states per GPU, GiB: the policy's (weights, gradients, optimizer) and the teacher's / reference's."""
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"deepspeed.zero_stage={stage}; valid: 0, 1, 2, 3")
    P, N = float(params), float(world)
    w, g, o = (2, 2, 12) if bf16 else (4, 4, 8)
    policy = {0: (w + g + o) * P, 1: (w + g) * P + o * P / N, 2: w * P + (g + o) * P / N, 3: (w + g + o) * P / N}[stage]
    if offload and stage == 3:
        policy = (w + g) * P / N
    copies = P / N if stage == 3 else P  # partitioned like the policy under ZeRO-3, else full replicas
    others = sum((4 if e == "teacher:ema" else w) * copies for e in extras)
    return {"policy_gib": policy / GIB, "teacher_ref_gib": others / GIB}


def layer_units(hidden: int, ffn: int, kv_dim: int, gated: bool, qk_norm: bool = False) -> int:
    """Activation elements (2-byte units) autograd keeps per token in one transformer layer for its backward.

    The accounting of Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models",
    arXiv 2205.05198, Section 4.1: 34 s b h + 5 a s^2 b bytes per layer for GPT with dropout and GeLU), redone
    for these layers (no dropout, SwiGLU or GeLU MLP, GQA, RMSNorm, SDPA attention):
      2 RMSNorms: each keeps its input in fp32 (HF Qwen upcasts: 2 units) and its normalised output, the next
        matmul's input (1)                                                                  6 h
      attention: q, k, v as SDPA saves them (h + 2 kv) and its output plus the contiguous copy the output
        projection reads (2 h); SDPA (flash / memory-efficient kernels) keeps no s x s scores, only a
        logsumexp per head and query (negligible): Korthikanti's 5 a s / h term is gone   3 h + 2 kv
      Qwen3's q / k RMSNorm: fp32 input and normalised output of each                       3 h + 3 kv
      MLP: gated: gate and up outputs, the activation's output and the product (4 f); GeLU: fc1's output
        and the activation's output (2 f)                                                   4 f | 2 f
    Residual additions keep nothing. Eager attention would add about 2.5 a s units per token (the fp32
    softmax and its bf16 copy)."""
    units = 6 * hidden + 3 * hidden + 2 * kv_dim + (4 * ffn if gated else 2 * ffn)
    return units + (3 * hidden + 3 * kv_dim if qk_norm else 0)


# Output-head memory per response token and vocabulary entry, per micro-batch row of one RLSD step (the
# teacher's forward, the update's forward and backward): measured by `python -m bench.memory` (bench/memory.json,
# CPU, tiny Qwen3-VL widened to V = 151,936, fp32 logits): the least-squares slope of the step's peak memory over
# response lengths 512 / 1,024 / 2,048 at V = 151,936 minus the slope at V = 512, over the 151,424 entries between.
# "full": the whole (B, T, V) log-softmax path, about 3.6 fp32 tensors of (T, V) at the peak;
# "chunked": the chunked head, whose per-token cost does not grow with V (measured -0.11: noise).
HEAD_BYTES_PER_TOKEN_PER_VOCAB = {"full": 14.49, "chunked": 0.0}
CHUNK_TENSORS = 3  # fp32 (rows x V) tensors one chunk holds at a time (forward and backward alike)


def sequence_activation_bytes(shape: Shape, seq: int, patches: int, checkpointing: bool, bf16: bool = True) -> float:
    """Activation bytes of one sequence (seq text + visual tokens, one image of `patches` patches) through the
    decoder and the vision tower, without the output head. With gradient checkpointing (HF: every layer) the
    backward keeps each layer's input (h per token) and recomputes one layer at a time, whose full set
    (`layer_units`) is alive during its backward; without it every layer keeps its full set."""
    m, unit = shape.model, 2 if bf16 else 4
    text = layer_units(m.d_model, shape.ffn, shape.kv_dim, True, shape.qk_norm)
    vis = layer_units(m.v_d_model, shape.v_ffn, m.v_d_model, shape.v_gated)
    if checkpointing:
        kept = m.layers * seq * m.d_model + m.v_layers * patches * m.v_d_model
        return unit * (kept + max(seq * text, patches * vis))
    return unit * (m.layers * seq * text + m.v_layers * patches * vis)


def activation_gib(shape: Shape, seq: int, resp: int, micro_batch: float = 1, head: str = "chunked",
                   full_signal: bool = False, device: str = "cuda", checkpointing: bool = True,
                   patches: int = 0, bf16: bool = True) -> float:
    """Activations of one micro-batch of `micro_batch` sequences. `head`: "chunked" or "full" (the whole-tensor
    path, train.logits_chunk=0); `full_signal`: the objective reads the teacher's whole distribution (OPSD's
    logit mode, SDPO with topk 0), one fp32 (T, V) tensor that stays."""
    from rlsd_harness.training.vocab import AUTO_CHUNK_ELEMENTS

    if head not in HEAD_BYTES_PER_TOKEN_PER_VOCAB:
        raise ValueError(f"head {head!r}; valid: {', '.join(HEAD_BYTES_PER_TOKEN_PER_VOCAB)}")
    per_row = sequence_activation_bytes(shape, seq, patches, checkpointing, bf16)
    per_row += resp * shape.vocab * HEAD_BYTES_PER_TOKEN_PER_VOCAB[head]
    if full_signal:
        per_row += resp * shape.vocab * 4
    transient = CHUNK_TENSORS * 4 * AUTO_CHUNK_ELEMENTS[device] if head == "chunked" else 0
    return (micro_batch * per_row + transient) / GIB


@dataclass
class MethodPlan:
    """One method's numbers (GiB, FLOPs, seconds, bytes)."""

    step_flops: float
    parts: dict[str, float]  # rollout, update, teacher, ref, old
    probe_flops: float  # GRPO's KL probe: time, not budget
    teacher_steps: int
    seconds_per_step: float
    gpu_hours: float
    states_gib: float
    activations_gib: float
    rollout_gib: float
    peak_gib: float
    checkpoint_bytes: float
    retained: int
    policies: int
    disk_bytes: float


def _save_steps(steps: int, save_every: int, budget_steps: list[int], keep_points: bool) -> list[int]:
    if not save_every:
        return []
    saved = set(range(save_every, steps + 1, save_every)) | {steps}
    return sorted(saved | (set(budget_steps) if keep_points else set()))


def budget_steps(cfg: Any, step_flops: float, step_seconds: float, tokens_per_step: float) -> list[int]:
    """The steps at which the run reaches eval.budget_points (the last step included), by the plan's estimates
    of what a step spends."""
    t = cfg.train
    steps = int(t.steps)
    budget = t.get("budget") or {}
    per_step = {"flops": step_flops, "seconds": step_seconds, "tokens": tokens_per_step, "steps": 1.0}
    kind = budget.get("kind")
    if kind is None:
        total, per = float(steps), 1.0
    else:
        total, per = float(budget.value), per_step[kind]
    last = min(steps, math.ceil(total / per - 1e-9))
    points = {min(last, max(1, math.ceil(f * total / per - 1e-9))) for f in (cfg.eval.get("budget_points") or [])}
    return sorted(points | {last}) if points else []


def method_plan(cfg: Any, objective: Any, shape: Shape, world: int, settings: dict[str, float]) -> MethodPlan:
    """Compute, time, memory and disk of one method's run under its config."""
    from rlsd_harness.training.checkpoint import kept_steps

    t, ds = cfg.train, cfg.deepspeed
    rows = t.prompts_per_step * t.group_size
    prompt, n_img = int(settings["prompt_tokens"]), int(settings["image_patches"])
    n_vis, resp = n_img // 4, min(int(settings["response_tokens"]), int(cfg.rollout.max_new_tokens))
    ctx = prompt + n_vis
    m = shape.model
    patches = torch.full((t.prompts_per_step,), float(n_img))
    gen = m.generate_flops(torch.full((rows,), float(ctx)), torch.full((rows,), float(resp)))
    gen += m.forward_flops(torch.zeros(0), patches)
    unshared = m.forward_flops(torch.full((rows,), float(ctx + resp)), patches.repeat(t.group_size))
    # a prompt shared by its G responses: the prompt and its image once, each response over its cache
    shared = m.forward_flops(torch.full((t.prompts_per_step,), float(ctx)), patches) + \
        m.generate_flops(torch.full((rows,), float(ctx)), torch.full((rows,), float(resp)))
    fwd_only = shared if t.share_prompts else unshared
    fwd_update = shared if t.share_prompts and not t.gradient_checkpointing else unshared
    steps, epochs = int(t.steps), int(t.ppo_epochs)
    optimizer_steps = epochs * int(t.mini_batches)
    teacher_steps = sum(objective.teacher_signal != "none" and objective.uses_teacher(s * optimizer_steps + 1)
                        for s in range(steps))
    parts = {"rollout": gen, "update": 3 * fwd_update * epochs,
             "old": fwd_only if optimizer_steps > 1 else 0.0,
             "ref": fwd_only if objective.needs_ref else 0.0,
             "teacher": fwd_only * teacher_steps / steps}
    step_flops = sum(parts.values())  # what the budget counts
    probe = fwd_only if _probe(cfg, objective) else 0.0  # off the budget, not off the clock
    peak = settings["peak_tflops"] * 1e12 * settings["mfu"]
    seconds = (step_flops + probe) / (world * peak)
    bf16 = bool(ds.get("bf16", False))
    stage, offload = int(ds.zero_stage), bool(ds.get("offload_optimizer", False))
    extras = extra_models(cfg.algorithm, objective.needs_ref, _probe(cfg, objective))
    states = memory_per_gpu(shape.params, stage, world, extras, offload, bf16)
    states_gib = states["policy_gib"] + states["teacher_ref_gib"]
    if stage == 3:  # parameters gathered for the layers in flight: at most DeepSpeed's default
        states_gib += (2 if bf16 else 4) * min(shape.params, ZERO3_MAX_LIVE_PARAMETERS) / GIB  # (dist.py keeps it)
    # memory must hold the longest sequence the rollout allows
    seq = ctx + int(cfg.rollout.max_new_tokens)
    budget = t.get("token_budget")
    rows_mb = max(1.0, budget / seq) if budget else float(t.micro_batch_size)
    head = "full" if t.get("logits_chunk") == 0 else "chunked"
    full_signal = objective.teacher_signal == "full"
    acts = activation_gib(shape, seq, int(cfg.rollout.max_new_tokens), rows_mb, head, full_signal,
                          checkpointing=bool(t.gradient_checkpointing), patches=n_img, bf16=bf16)
    if cfg.rollout.engine == "vllm":
        rollout = float(cfg.rollout.gpu_memory_utilization) * settings["gpu_memory_gib"]
    else:  # the HF rollout's KV cache for this rank's rows
        rollout = (rows / world) * seq * m.layers * 2 * shape.kv_dim * (2 if bf16 else 4) / GIB
    peak_gib = states_gib + max(acts, rollout)
    # checkpoint: the policy's weights, the teacher's / reference's, the optimizer (fp32 master + moments,
    # split over the ranks under ZeRO-1/2/3; every rank writes its whole copy under ZeRO-0)
    w = 2 if bf16 else 4
    opt = (12 if bf16 else 8) * shape.params * (world if stage == 0 else 1)
    saved = [e for e in extras if "probe" not in e]  # the probe is the frozen base: not checkpointed
    ckpt = w * shape.params + sum((4 if e == "teacher:ema" else w) * shape.params for e in saved) + opt
    points = budget_steps(cfg, step_flops, seconds, rows * resp)
    saves = _save_steps(steps, int(t.save_every), points, bool(t.get("keep_budget_points", True)))
    retained = len(kept_steps(saves, points, t.get("keep_last"), bool(t.get("keep_budget_points", True)))) if saves else 0
    policies = (len(points) + 1) if t.get("save_budget_policies") and points else 0
    disk = retained * ckpt + (policies + 1) * w * shape.params  # + final/
    return MethodPlan(step_flops, parts, probe, teacher_steps, seconds, steps * seconds * world / 3600, states_gib,
                      acts, rollout, peak_gib, ckpt, retained, policies, disk)


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.2f} s"


def _flop(n: float) -> str:
    for unit, size in (("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} "


def _gib(n: float) -> str:
    return f"{n:.1f}" if n >= 0.1 else f"{n * 1024:.1f} MiB" if n > 0 else "0"


def _gib_unit(n: float) -> str:
    """_gib with its unit in prose, where no column header says GiB."""
    text = _gib(n)
    return text if text.endswith(" MiB") else f"{text} GiB"


def _bytes(n: float) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n / 1e3:.1f} kB"


def plan(cfgs: dict[str, Any], objectives: dict[str, Any], world: int, plan_section: Any = None) -> str:
    """A printable plan: per method, the compute and time of a step and of the run, the memory per GPU under
    its ZeRO stage (and the others), and the disk a run keeps."""
    settings = plan_settings(plan_section)
    any_cfg = next(iter(cfgs.values()))
    shape = shape_of(any_cfg.model)
    for name, cfg in cfgs.items():  # one model for every method (the plan sizes it once)
        if cfg.model != any_cfg.model:
            raise ConfigError(f"method {name} trains another model than {next(iter(cfgs))}; the plan sizes one model")
    t, ds = any_cfg.train, any_cfg.deepspeed
    rows = t.prompts_per_step * t.group_size
    n_vis = int(settings["image_patches"]) // 4
    seq_max = int(settings["prompt_tokens"]) + n_vis + int(any_cfg.rollout.max_new_tokens)
    plans = {name: method_plan(cfg, objectives[name], shape, world, settings) for name, cfg in cfgs.items()}
    ckpt_on = bool(t.gradient_checkpointing)
    budget = t.get("token_budget")
    mb = f"train.token_budget={budget} tokens" if budget else f"train.micro_batch_size={t.micro_batch_size} sequences"
    lines = [
        f"model: {shape.params / 1e9:.3g} B parameters ({shape.model.n_vision / 1e6:.3g} M vision), vocabulary "
        f"{shape.vocab}, {shape.model.layers} layers x {shape.model.d_model} wide; from {shape.source}; all "
        f"parameters trained",
        f"batch: {t.prompts_per_step} prompts x {t.group_size} responses = {rows} sequences per step on {world} GPUs",
        f"assumed mean lengths (plan:): prompt {int(settings['prompt_tokens'])} text tokens + {n_vis} visual tokens "
        f"({int(settings['image_patches'])} patches), response "
        f"{min(int(settings['response_tokens']), int(any_cfg.rollout.max_new_tokens))} tokens "
        f"(max {any_cfg.rollout.max_new_tokens})",
        f"time at plan.mfu={settings['mfu']:g} of plan.peak_tflops={settings['peak_tflops']:g} TFLOPS bf16 dense per "
        f"GPU (H100 / H200 SXM: 989), on the ledger's model FLOPs (one MFU for every phase: vLLM's generation, "
        f"memory-bound, usually runs well below the update's)",
        "",
        "| method | steps | FLOP / step (rollout + update + teacher/ref/old) | time / step | run time | GPU-hours "
        "| extra models |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, cfg in cfgs.items():
        p = plans[name]
        pf = p.parts
        teach = "" if p.teacher_steps in (0, cfg.train.steps) else f"; teacher at {p.teacher_steps} steps"
        teach += f"; + {_flop(p.probe_flops)} KL probe, off budget" if p.probe_flops else ""
        lines.append(
            f"| {name} | {cfg.train.steps} | {_flop(p.step_flops)} ({_flop(pf['rollout'])} + {_flop(pf['update'])} + "
            f"{_flop(pf['teacher'] + pf['ref'] + pf['old'])}{teach}) | {_hours(p.seconds_per_step)} | "
            f"{_hours(p.seconds_per_step * cfg.train.steps)} | {p.gpu_hours:,.3g} | "
            f"{', '.join(extra_models(cfg.algorithm, objectives[name].needs_ref, _probe(cfg, objectives[name]))) or '-'} |")
    stage, offload = int(ds.zero_stage), bool(ds.get("offload_optimizer", False))
    gpu = settings["gpu_memory_gib"]
    per_seq = {c: sequence_activation_bytes(shape, seq_max, int(settings["image_patches"]), c, bool(ds.get("bf16")))
               / GIB for c in (True, False)}
    engine = any_cfg.rollout.engine
    lines += [
        "",
        f"Memory per GPU (GiB) under the configured deepspeed.zero_stage={stage}"
        f"{' + optimizer offload' if offload else ''}, {world} ranks, bf16={bool(ds.get('bf16'))}, "
        f"train.gradient_checkpointing={str(ckpt_on).lower()}, one micro-batch of {mb} of up to {seq_max} tokens: "
        f"activations {_gib_unit(per_seq[ckpt_on])} per sequence ({_gib_unit(per_seq[not ckpt_on])} "
        f"{'without' if ckpt_on else 'with'} gradient checkpointing; per-layer estimate after Korthikanti et al. "
        f"2022, SDPA attention), plus the output head's. The rollout phase holds "
        + ("vLLM's rollout.gpu_memory_utilization x GPU memory (colocated, asleep during the update)"
           if engine == "vllm" else "the HF rollout's KV cache") + f" beside the model states. GPU: {gpu:g} GiB.",
        "",
        "| method | model states (ZeRO-3: + gathered layers) | activations (update) | rollout | peak | fits |",
        "|---|---|---|---|---|---|",
    ]
    for name, p in plans.items():
        fits = "yes" if p.peak_gib <= gpu else f"**no** (over {gpu:g})"
        lines.append(f"| {name} | {_gib(p.states_gib)} | {_gib(p.activations_gib)} | {_gib(p.rollout_gib)} | "
                     f"{_gib(p.peak_gib)} | {fits} |")
    lines += ["", "Model states per GPU (GiB) under every ZeRO stage, for another deepspeed= choice:", "",
              "| method | ZeRO-0 | ZeRO-1 | ZeRO-2 | ZeRO-3 | ZeRO-3 + offload |", "|---|---|---|---|---|---|"]
    for name, cfg in cfgs.items():
        extras = extra_models(cfg.algorithm, objectives[name].needs_ref, _probe(cfg, objectives[name]))
        cells = []
        for s, off in ((0, False), (1, False), (2, False), (3, False), (3, True)):
            mem = memory_per_gpu(shape.params, s, world, extras, off, bool(ds.get("bf16")))
            cells.append(_gib(mem["policy_gib"] + mem["teacher_ref_gib"]))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"Disk per run: a checkpoint holds the weights, the teacher's / reference's and the optimizer state; "
              f"train.save_every={t.save_every}, train.keep_last={t.get('keep_last')}, "
              f"train.keep_budget_points={str(bool(t.get('keep_budget_points', True))).lower()}, "
              f"train.save_budget_policies={str(bool(t.get('save_budget_policies', False))).lower()} "
              f"(+ final/).", "",
              "| method | checkpoint | retained | budget policies | disk per run |", "|---|---|---|---|---|"]
    for name, p in plans.items():
        lines.append(f"| {name} | {_bytes(p.checkpoint_bytes)} | {p.retained} | {p.policies} | {_bytes(p.disk_bytes)} |")
    return "\n".join(lines)
