"""vLLM rollout engine (GPU only; `pip install -e '.[gpu]'`), behind the same `generate` as the HF engine.

Colocated with the trainer on the same GPUs: vLLM sleeps (level 1: weights to CPU, KV cache dropped — level 2
corrupted VLM rollouts in other frameworks) while the trainer updates, wakes for the weight sync, then for
generation. Images go in as `multi_modal_data`; each response's sampled-token log-prob comes back with it.
After every optimizer step `sync_weights` streams the trainer's parameters one at a time (gathered under
ZeRO-3, never the whole model at once) into vLLM's `load_weights`, then the prefix cache is reset so no
stale KV entry survives. vLLM is imported lazily: this module imports on a CPU machine, and
`pure` helpers (name mapping, request building) are tested there.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from rlsd_harness.dist import iter_full_parameters
from rlsd_harness.rollout.hf import Rollout, SamplingParams, encode_prompts, response_mask, user_messages

# Hugging Face module names (transformers 5 layout) -> the names vLLM's Qwen-VL models register. vLLM's own
# loader accepts checkpoint names too; mapping here keeps the sync independent of its loader's mapper and
# lets a CPU test check every parameter lands on a known vLLM prefix.
HF_TO_VLLM_PREFIXES = (
    ("model.language_model.", "language_model.model."),
    ("model.visual.", "visual."),
    ("lm_head.", "language_model.lm_head."),
)


def hf_to_vllm_name(name: str) -> str:
    for src, dst in HF_TO_VLLM_PREFIXES:
        if name.startswith(src):
            return dst + name[len(src) :]
    raise KeyError(f"parameter {name!r} has no vLLM counterpart (known prefixes: {[p for p, _ in HF_TO_VLLM_PREFIXES]})")


def vllm_sampling_kwargs(params: SamplingParams, seed: int) -> dict[str, Any]:
    """vLLM SamplingParams keywords for one response (n=1 per request so that every response has its seed)."""
    return dict(
        n=1, temperature=0.0 if params.greedy else params.temperature, top_p=params.top_p,
        top_k=params.top_k if params.top_k > 0 else -1, max_tokens=params.max_new_tokens,
        min_tokens=params.min_new_tokens, logprobs=0, seed=seed, skip_special_tokens=False,
    )


class VLLMRolloutEngine:
    def __init__(self, model_path: str, processor, gpu_memory_utilization: float = 0.5, max_model_len: int = 8192,
                 sleep_level: int = 1, seed: int = 0, dtype: str = "bfloat16") -> None:
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process engine: direct weight access
        from vllm import LLM

        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.eos_id = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.pad_id = self.tokenizer.pad_token_id
        self.sleep_level = sleep_level
        self.llm = LLM(model=model_path, gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
                       enable_sleep_mode=True, seed=seed, dtype=dtype, limit_mm_per_prompt={"image": 8})
        self.asleep = False

    def _model(self):
        return self.llm.llm_engine.model_executor.driver_worker.worker.model_runner.model

    def sleep(self) -> None:
        if not self.asleep:
            self.llm.sleep(level=self.sleep_level)
            self.asleep = True

    def wake(self, tags: list[str] | None = None) -> None:
        self.llm.wake_up(tags=tags)
        self.asleep = False

    @torch.no_grad()
    def sync_weights(self, module: torch.nn.Module, zero_stage: int) -> int:
        """Stream the trainer's weights into vLLM; returns the number of parameters sent."""
        if self.asleep:
            self.wake(["weights"])
        model, n = self._model(), 0
        for name, tensor in iter_full_parameters(module, zero_stage):
            model.load_weights([(hf_to_vllm_name(name), tensor)])
            n += 1
        self.llm.reset_prefix_cache()
        return n

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
