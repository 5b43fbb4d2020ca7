"""Rollout engines: prompts in, G sampled responses per prompt out (token ids, masks, sampling log-probs).

The HF `generate` backend (CPU or GPU) lives here; the vLLM backend (GPU only) implements the same
`generate` signature. Sampling is seeded per response: response j of prompt `uid` at step s draws its random
numbers from its own generator, so the samples do not depend on how prompts are batched or sharded across
ranks (a 2-rank run sees exactly the responses of a 1-rank run), and a resumed run repeats them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from rlsd_harness.algorithms.batch import PromptInputs, VisionInputs


@dataclass
class SamplingParams:
    n: int = 1  # responses per prompt (the group size G)
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    max_new_tokens: int = 64
    min_new_tokens: int = 0
    greedy: bool = False

    def __post_init__(self) -> None:
        if self.temperature <= 0 and not self.greedy:
            raise ValueError(f"temperature must be > 0 when sampling, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


@dataclass
class Rollout:
    """Row r = response r % n of prompt r // n (group by group)."""

    prompt: PromptInputs
    vision: VisionInputs | None
    response_ids: torch.Tensor  # (B, T) right-padded
    response_mask: torch.Tensor  # (B, T) float: 1 up to and including the end-of-turn token
    logp: torch.Tensor  # (B, T) log-prob of each token under the sampling distribution
    texts: list[str]


class RolloutEngine(Protocol):
    def generate(self, prompts: list[Any], params: SamplingParams, seeds: list[int]) -> Rollout: ...


def user_messages(question: str, n_images: int) -> list[dict]:
    """One user turn, images first (Qwen-VL order)."""
    content = [{"type": "image"}] * n_images + [{"type": "text", "text": question}]
    return [{"role": "user", "content": content}]


def encode_prompts(processor, conversations: list[list[dict]], images: list[list]) -> tuple[PromptInputs, VisionInputs | None]:
    """Chat template + processor, left-padded, images expanded into their pad tokens."""
    texts = [processor.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
    flat_images = [im for ims in images for im in ims]
    enc = processor(
        text=texts, images=flat_images or None, padding=True, padding_side="left", return_tensors="pt"
    )
    prompt = PromptInputs(ids=enc["input_ids"], mask=enc["attention_mask"])
    if not flat_images:
        return prompt, None
    vision = VisionInputs(
        pixel_values=enc["pixel_values"],
        image_grid_thw=enc["image_grid_thw"],
        images_per_row=torch.tensor([len(ims) for ims in images], dtype=torch.long),
    )
    return prompt, vision


def stable_seed(*parts: object) -> int:
    """A 63-bit seed derived from `parts`, the same in every process (Python's hash() of a str is salted
    per process, so it must never derive a seed)."""
    key = "/".join(map(str, parts)).encode()
    return int.from_bytes(hashlib.sha1(key).digest()[:8], "little") & (2**63 - 1)


def sample_seed(seed: int, step: int, uid: str, j: int) -> int:
    """The seed of response j to prompt `uid` at `step`: independent of batching and rank."""
    return stable_seed(seed, step, uid, j)


def filter_logits(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Temperature, then top-k, then nucleus filtering; removed entries become -inf."""
    logits = logits.float() / temperature
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(sorted_logits, -1)
        # drop a token when the mass strictly before it already reaches top_p (the top token always stays)
        drop_sorted = (probs.cumsum(-1) - probs) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


class _SeededSampler:
    """A logits processor that samples (Gumbel-max with one generator per row) and records the log-prob of
    the chosen token; it returns a one-hot score so that greedy `generate` emits exactly that token."""

    def __init__(self, params: SamplingParams, seeds: list[int], banned: list[int]) -> None:
        self.params = params
        self.banned = banned
        self.generators = [torch.Generator().manual_seed(s) for s in seeds]
        self.logps: list[torch.Tensor] = []
        self._noise: torch.Tensor | None = None

    def _uniforms(self, vocab: int, chunk: int = 32) -> torch.Tensor:
        """(B, V) uniforms for this step; drawn `chunk` steps at a time, one generator call per row."""
        t = len(self.logps) % chunk
        if t == 0:
            self._noise = torch.stack([torch.rand(chunk, vocab, generator=g) for g in self.generators])
        return self._noise[:, t]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        p = self.params
        scores = scores.float().index_fill(-1, torch.tensor(self.banned, device=scores.device), float("-inf"))
        if p.greedy:
            choice = scores.argmax(-1)
            logp = torch.log_softmax(scores.float(), -1).gather(-1, choice[:, None])[:, 0]
        else:
            logp_all = torch.log_softmax(filter_logits(scores, p.temperature, p.top_k, p.top_p), -1)
            u = self._uniforms(scores.shape[-1]).to(scores.device)
            gumbel = -torch.log(-torch.log(u.clamp(1e-20, 1.0)))
            choice = (logp_all + gumbel).argmax(-1)
            logp = logp_all.gather(-1, choice[:, None])[:, 0]
        self.logps.append(logp)
        out = torch.full_like(scores, float("-inf"))
        return out.scatter(-1, choice[:, None], 0.0)


def vision_token_ids(config) -> list[int]:
    """Tokens a policy must never emit: they would be read back as image placeholders."""
    names = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
    return [int(getattr(config, n)) for n in names if getattr(config, n, None) is not None]


def response_mask(response_ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """1 up to and including the first end-of-turn token, 0 after it."""
    is_eos = (response_ids == eos_id).int()
    after_eos = (is_eos.cumsum(-1) - is_eos) > 0
    return (~after_eos).float()


class HFRolloutEngine:
    """Batched `model.generate` with the KV cache, on whatever device the model is on."""

    def __init__(self, model, processor, max_batch: int = 256, synced: bool = False) -> None:
        self.model = model
        # ZeRO-3 over several ranks: every rank must run as many forwards as the slowest one (each gathers the
        # weights collectively), so a rank whose responses all ended keeps stepping until every rank is done.
        self.synced = synced
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.eos_id = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.pad_id = self.tokenizer.pad_token_id
        self.max_batch = max_batch

    @torch.no_grad()
    def generate(self, prompts: list[Any], params: SamplingParams, seeds: list[int]) -> Rollout:
        """`prompts`: objects with `.question` and `.images`; `seeds`: one per response (len = n * prompts)."""
        if len(seeds) != len(prompts) * params.n:
            raise ValueError(f"need {len(prompts) * params.n} seeds (n={params.n} per prompt), got {len(seeds)}")
        prompt, vision = encode_prompts(
            self.processor, [user_messages(p.question, len(p.images)) for p in prompts], [p.images for p in prompts]
        )
        rows = torch.arange(len(prompts)).repeat_interleave(params.n)
        prompt = prompt.rows(rows)
        vision = vision.select(rows) if vision is not None else None
        chunks = []
        for start in range(0, len(rows), self.max_batch):
            sl = slice(start, start + self.max_batch)
            chunks.append(self._generate_chunk(prompt, vision, rows[sl], sl, params, seeds[sl]))
        width = max(c[0].shape[1] for c in chunks)
        pad = lambda t, v: torch.nn.functional.pad(t, (0, width - t.shape[1]), value=v)  # noqa: E731
        response_ids = torch.cat([pad(c[0], self.pad_id) for c in chunks])
        logp = torch.cat([pad(c[1], 0.0) for c in chunks])
        mask = response_mask(response_ids, self.eos_id)
        texts = self.tokenizer.batch_decode(response_ids * mask.long() + self.pad_id * (1 - mask.long()), skip_special_tokens=True)
        return Rollout(prompt, vision, response_ids, mask, logp * mask, texts)

    def _generate_chunk(self, prompt: PromptInputs, vision, rows, sl: slice, params: SamplingParams, seeds):
        device = next(self.model.parameters()).device
        ids, attn = prompt.ids[sl].to(device), prompt.mask[sl].to(device)
        inputs = dict(input_ids=ids, attention_mask=attn, mm_token_type_ids=(ids == self.model.config.image_token_id).int())
        if vision is not None:
            sub = vision.select(torch.arange(sl.start, sl.start + len(ids)))
            inputs.update(pixel_values=sub.pixel_values.to(device), image_grid_thw=sub.image_grid_thw.to(device))
        sampler = _SeededSampler(params, seeds, vision_token_ids(self.model.config))
        out = self.model.generate(
            **inputs,
            do_sample=False,
            logits_processor=[sampler],
            max_new_tokens=params.max_new_tokens,
            min_new_tokens=params.min_new_tokens or None,
            eos_token_id=self.eos_id,
            pad_token_id=self.pad_id,
            use_cache=True,
            synced_gpus=self.synced,
            temperature=None,
            top_p=None,
            top_k=None,
        )
        response = out[:, ids.shape[1] :].cpu()
        logp = torch.stack(sampler.logps, 1).cpu()[:, : response.shape[1]]
        return response, logp
