"""vLLM rollout engine, pinned to vLLM 0.33.0 (`pip install -e '.[gpu]'`; GPU only), behind the HF engine's `generate`.

Built the way colocated trainers build it (TRL's `vllm_mode="colocate"`, verl's hybrid engine): every trainer
rank constructs its own in-process `vllm.LLM(..., distributed_executor_backend="external_launcher")`, which
joins the process group the trainer (DeepSpeed) already opened instead of spawning workers, so each rank
generates its own prompts on its own GPU (tensor_parallel_size=1). vLLM sleeps (level 1: weights to CPU, KV
cache dropped; level 2 corrupted VLM rollouts in other frameworks) while the trainer updates, wakes its
weights for the sync, then everything for generation. Images go in as `multi_modal_data`; each response's
sampled-token log-prob comes back with it, under the sampling distribution (`logprobs_mode=
"processed_logprobs"`: after temperature and top-k/top-p, as the HF engine reports it; vLLM's default is
the raw logits' log-probs).

Weight sync (`sync_weights`, after every optimizer step) goes through vLLM's public API only:
`LLM.apply_model(fn)` runs `fn` on the worker's model, in this process under external_launcher, and `fn`
calls the model's `load_weights(weights=[(name, tensor), ...])`, the loader vLLM reads checkpoints with. The
trainer's parameters travel in buckets of at most `sync_bucket_mb` MiB (one `load_weights` call per bucket;
one tensor larger than a bucket travels alone), each bucket gathered as a whole under ZeRO-3 and released
before the next. Buckets are sized by each parameter's full size: a ZeRO-3 parameter between forwards has
`numel() == 0` and keeps its full count in `ds_numel` (sizing by `numel()` put the whole model in one bucket
in huggingface/trl PR #6386). The prefix cache is reset once, after the last bucket. Parameters are sent
under their Hugging Face checkpoint names (transformers 5: `model.language_model.*`, `model.visual.*`,
`lm_head.*`), which the pinned Qwen2.5-VL and Qwen3-VL loaders map to their own modules with their
`hf_to_vllm_mapper` (tables below, copied as data from vLLM 0.33.0's `model_executor/models/qwen2_5_vl.py`
and `qwen3_vl.py`).

A LoRA policy (`model.lora.enabled`) is sent as the plain model vLLM was built from: each adapted weight merged
on the fly, W + (alpha / r) * B A, in the bucket that holds W (its adapter gathered beside it under ZeRO-3),
under W's plain name; the adapters themselves are not sent, and vLLM's own LoRA support is not used. The
merged names and values are tested against the stand-in engine on CPU; on a GPU with vLLM it has not run.

vLLM 0.33.0 requires torch 2.14.0 and transformers >=5.16.1,<5.21, so a GPU install resolves transformers 5.20.x
(the project asks for >=5.20; the CPU install's constraints.txt pins 5.24.0 and torch 2.13.0, without vLLM).
vLLM is imported lazily: this module imports on a CPU machine, where the bucketing, the names and the sync
against a stand-in engine are tested; the engine itself has not been run here (no GPU, no vLLM).
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from rlsd_harness.models import lora_export_names, merge_delta
from rlsd_harness.rollout.hf import Rollout, SamplingParams, encode_prompts, response_mask, user_messages

VLLM_VERSION = "0.33.0"  # keep equal to pyproject's `gpu` extra: the engine refuses any other installed version
DEFAULT_SYNC_BUCKET_MB = 1024
MIB = 1024**2

# vLLM 0.33.0's `hf_to_vllm_mapper.orig_to_new_prefix` of the two model classes (checkpoint prefix -> vLLM
# module prefix). vLLM applies every matching rule in order, not only the first.
VLLM_LOADER_PREFIXES: dict[str, tuple[tuple[str, str], ...]] = {
    "qwen2_5_vl": (  # Qwen2_5_VLForConditionalGeneration
        ("model.language_model.", "language_model.model."),
        ("model.visual.", "visual."),
        ("lm_head.", "language_model.lm_head."),
        ("model.", "language_model.model."),  # checkpoints saved before transformers 4.52
    ),
    "qwen3_vl": (  # Qwen3VLForConditionalGeneration
        ("model.visual.", "visual."),
        ("lm_head.", "language_model.lm_head."),
        ("model.language_model.", "language_model.model."),
    ),
}
# The prefixes both loaders accept: the only names the sync sends, so one sync serves either architecture.
HF_TO_VLLM_PREFIXES: tuple[tuple[str, str], ...] = (
    ("model.language_model.", "language_model.model."),
    ("model.visual.", "visual."),
    ("lm_head.", "language_model.lm_head."),
)


def hf_to_vllm_name(name: str, arch: str | None = None) -> str:
    """The vLLM module name the pinned loader of `arch` (`qwen2_5_vl`, `qwen3_vl`; None: the prefixes both
    accept) gives a checkpoint parameter name. KeyError when that loader would not place it."""
    if arch is not None and arch not in VLLM_LOADER_PREFIXES:
        raise KeyError(f"unknown arch {arch!r}; valid: {', '.join(VLLM_LOADER_PREFIXES)}")
    rules = HF_TO_VLLM_PREFIXES if arch is None else VLLM_LOADER_PREFIXES[arch]
    out = name
    for src, dst in rules:  # in order, every match applied, as vLLM's WeightsMapper does
        if out.startswith(src):
            out = dst + out[len(src):]
    if out == name:
        raise KeyError(f"parameter {name!r} has no vLLM counterpart (known prefixes: {[p for p, _ in rules]})")
    return out


def vllm_load_name(name: str) -> str:
    """The name a trainer parameter is sent under: its checkpoint name, which both pinned loaders accept.
    Trainer modules (transformers 5) already carry checkpoint names, so this checks rather than renames;
    KeyError for a name neither loader would place."""
    hf_to_vllm_name(name)
    return name


def full_numel(param: torch.Tensor) -> int:
    """A parameter's element count before ZeRO-3 partitioned it (its `ds_numel`), else its `numel()`."""
    ds_numel = getattr(param, "ds_numel", None)
    return int(ds_numel) if ds_numel is not None else param.numel()


def full_nbytes(param: torch.Tensor) -> int:
    """Bytes the gathered (full) parameter takes in the trainer's dtype."""
    return full_numel(param) * param.element_size()


@dataclass
class Bucket:
    """Parameters sent together in one `load_weights` call; `nbytes` is their gathered size."""

    params: list[tuple[str, torch.Tensor]] = field(default_factory=list)
    nbytes: int = 0


def plan_buckets(named_params: Iterable[tuple[str, torch.Tensor]], bucket_bytes: int) -> list[Bucket]:
    """Consecutive parameters packed into buckets of at most `bucket_bytes` gathered bytes, in the given order
    (every ZeRO-3 rank plans the same buckets, so their gathers match); a parameter larger than a bucket goes
    alone. Pure: reads only each parameter's size and dtype."""
    if not isinstance(bucket_bytes, int) or bucket_bytes < 1:
        raise ValueError(f"bucket size must be a positive number of bytes, got {bucket_bytes!r}")
    buckets: list[Bucket] = []
    current = Bucket()
    for name, param in named_params:
        size = full_nbytes(param)
        if current.params and current.nbytes + size > bucket_bytes:
            buckets.append(current)
            current = Bucket()
        current.params.append((name, param))
        current.nbytes += size
    if current.params:
        buckets.append(current)
    return buckets


def zero3_gather(params: list[torch.nn.Parameter]) -> contextlib.AbstractContextManager:
    """DeepSpeed's read-only gather of whole ZeRO-3 parameters on every rank (released on exit)."""
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=None)


@dataclass
class SyncStats:
    """One sync: parameters sent, `load_weights` calls (buckets), gathered bytes in all and in the largest."""

    params: int
    buckets: int
    nbytes: int
    largest_bucket_nbytes: int


def push_weights(module: torch.nn.Module, zero_stage: int, load: Callable[[list[tuple[str, torch.Tensor]]], Any],
                 bucket_bytes: int, gather: Callable[[list], contextlib.AbstractContextManager] | None = None) -> SyncStats:
    """Send `module`'s parameters to `load` (vLLM's `load_weights` contract: a list of (name, tensor)), one call
    per bucket of at most `bucket_bytes`. Under ZeRO-3 each bucket is gathered by `gather` (DeepSpeed's by
    default). Every name is checked before the first bucket goes, so a bad name leaves the engine untouched."""
    if zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"unknown ZeRO stage {zero_stage!r}; valid: 0, 1, 2, 3")
    # A LoRA policy goes as the plain model vLLM loads: each adapted weight merged (W + scaling * B A, computed
    # per bucket with the adapter gathered beside its weight), under the plain name; adapters are not sent.
    export = lora_export_names(module)
    params = dict(module.named_parameters())
    named = [(name, p) for name, p in params.items() if export[name] is not None]
    names = {name: vllm_load_name(export[name][0]) for name, _ in named}
    adapters = {name: [params[f"{export[name][1]}.lora_{part}.default.weight"] for part in "AB"]
                for name, _ in named if export[name][1]}
    buckets = plan_buckets(named, bucket_bytes)
    if zero_stage == 3 and gather is None:
        gather = zero3_gather
    elif zero_stage != 3:
        gather = None  # parameters are whole on every rank below stage 3

    def value(name: str, p: torch.Tensor) -> torch.Tensor:
        if name not in adapters:
            return p.data
        a, b = adapters[name]
        return merge_delta(p.data, a.data, b.data, export[name][2])

    for bucket in buckets:
        # the gather is left (and the full copies freed) before the next bucket is gathered, also when
        # `load` raises, so at most one bucket is ever held whole
        held = [p for _, p in bucket.params] + [t for name, _ in bucket.params for t in adapters.get(name, ())]
        with gather(held) if gather is not None else contextlib.nullcontext():
            load([(names[name], value(name, p)) for name, p in bucket.params])
    return SyncStats(len(named), len(buckets), sum(b.nbytes for b in buckets),
                     max((b.nbytes for b in buckets), default=0))


def vllm_sampling_kwargs(params: SamplingParams, seed: int) -> dict[str, Any]:
    """vLLM SamplingParams keywords for one response (n=1 per request so that every response has its seed)."""
    return dict(
        n=1, temperature=0.0 if params.greedy else params.temperature, top_p=params.top_p,
        top_k=params.top_k if params.top_k > 0 else -1, max_tokens=params.max_new_tokens,
        min_tokens=params.min_new_tokens, logprobs=0, seed=seed, skip_special_tokens=False,
    )


def _launcher_env() -> None:
    """external_launcher reads the torchrun variables (RANK, LOCAL_RANK, MASTER_ADDR/PORT); a process started
    without a launcher (evaluation, one GPU) gets a world of one, as `rlsd_harness.dist` gives the trainer."""
    if "RANK" in os.environ:
        return
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])


def build_llm(model_path: str, gpu_memory_utilization: float, max_model_len: int, seed: int, dtype: str) -> Any:
    """One rank's colocated vLLM engine (the pinned version only: the weight path and the names were read
    from its source)."""
    import vllm

    if vllm.__version__ != VLLM_VERSION:
        raise RuntimeError(f"vllm {vllm.__version__} is installed; this engine is written for vllm=={VLLM_VERSION} "
                           "(pip install -e '.[gpu]')")
    _launcher_env()
    return vllm.LLM(
        model=model_path, dtype=dtype, seed=seed, gpu_memory_utilization=gpu_memory_utilization,
        max_model_len=max_model_len, tensor_parallel_size=1, distributed_executor_backend="external_launcher",
        enable_sleep_mode=True, limit_mm_per_prompt={"image": 8}, logprobs_mode="processed_logprobs",
    )


class VLLMRolloutEngine:
    """Colocated vLLM rollouts for one trainer rank. `llm`: an already-built engine with `vllm.LLM`'s
    interface (`generate`, `apply_model`, `sleep`, `wake_up`, `reset_prefix_cache`); None builds the pinned
    vLLM one with external_launcher."""

    def __init__(self, model_path: str, processor, gpu_memory_utilization: float = 0.5, max_model_len: int = 8192,
                 sleep_level: int = 1, seed: int = 0, dtype: str = "bfloat16", *,
                 sync_bucket_mb: float = DEFAULT_SYNC_BUCKET_MB, llm: Any = None) -> None:
        if sleep_level not in (1, 2):
            raise ValueError(f"unknown vLLM sleep level {sleep_level!r}; valid: 1, 2")
        if not sync_bucket_mb > 0:
            raise ValueError(f"rollout.sync_bucket_mb must be > 0 (MiB per weight-sync bucket), got {sync_bucket_mb!r}")
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.eos_id = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.pad_id = self.tokenizer.pad_token_id
        self.sleep_level = sleep_level
        self.sync_bucket_bytes = max(1, int(sync_bucket_mb * MIB))
        self.llm = llm if llm is not None else build_llm(model_path, gpu_memory_utilization, max_model_len, seed, dtype)
        self.asleep = False
        self.last_sync: SyncStats | None = None

    def sleep(self) -> None:
        if not self.asleep:
            self.llm.sleep(level=self.sleep_level)
            self.asleep = True

    def wake(self, tags: list[str] | None = None) -> None:
        self.llm.wake_up(tags=tags)
        self.asleep = False

    def _load(self, weights: list[tuple[str, torch.Tensor]]) -> None:
        # apply_model runs the function on the worker's model; under external_launcher that worker lives in
        # this process, so the tensors are handed over by reference, not serialised.
        self.llm.apply_model(lambda model: model.load_weights(weights=weights))

    @torch.no_grad()
    def sync_weights(self, module: torch.nn.Module, zero_stage: int) -> int:
        """Send the trainer's weights to vLLM in buckets; returns the number of parameters sent."""
        if self.asleep:
            self.wake(["weights"])
        self.last_sync = push_weights(module, zero_stage, self._load, self.sync_bucket_bytes)
        self.llm.reset_prefix_cache()  # KV entries computed with the old weights must not be reused
        return self.last_sync.params

    @torch.no_grad()
    def generate(self, prompts: list[Any], params: SamplingParams, seeds: list[int]) -> Rollout:
        from vllm import SamplingParams as VSamplingParams

        if self.asleep:
            self.wake()
        convs = [user_messages(p.question, len(p.images)) for p in prompts]
        texts = [self.processor.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in convs]
        requests, sps = [], []
        for i, (p, text) in enumerate(zip(prompts, texts)):
            for j in range(params.n):
                req = {"prompt": text}
                if p.images:
                    req["multi_modal_data"] = {"image": list(p.images)}
                requests.append(req)
                sps.append(VSamplingParams(**vllm_sampling_kwargs(params, seeds[i * params.n + j])))
        outputs = self.llm.generate(requests, sps, use_tqdm=False)
        width = max(len(o.outputs[0].token_ids) for o in outputs)
        ids = torch.full((len(outputs), width), self.pad_id)
        logp = torch.zeros(len(outputs), width)
        for r, o in enumerate(outputs):
            out = o.outputs[0]
            ids[r, : len(out.token_ids)] = torch.tensor(out.token_ids)
            logp[r, : len(out.token_ids)] = torch.tensor([lp[t].logprob for t, lp in zip(out.token_ids, out.logprobs)])
        mask = response_mask(ids, self.eos_id)
        # the trainer reads the same processor output vLLM saw (never re-tokenised with another padding side)
        rows = torch.arange(len(prompts)).repeat_interleave(params.n)
        prompt, vision = encode_prompts(self.processor, convs, [p.images for p in prompts])
        prompt = prompt.rows(rows)
        vision = vision.select(rows) if vision is not None else None
        decoded = self.tokenizer.batch_decode(ids * mask.long() + self.pad_id * (1 - mask.long()), skip_special_tokens=True)
        self.sleep()
        return Rollout(prompt, vision, ids, mask, logp * mask, decoded)
