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
from transformers.cache_utils import DynamicLayer

from rlsd_harness import dist
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
    the chosen token; it returns a one-hot score so that greedy `generate` emits exactly that token, and keeps
    the chosen tokens in `choice` for a decode loop."""

    def __init__(self, params: SamplingParams, seeds: list[int], banned: list[int]) -> None:
        self.params = params
        self.banned = banned
        self._banned: torch.Tensor | None = None
        self.choice: torch.Tensor | None = None
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
        if self._banned is None or self._banned.device != scores.device:
            self._banned = torch.tensor(self.banned, dtype=torch.long, device=scores.device)
        scores = scores.float().index_fill(-1, self._banned, float("-inf"))
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
        self.choice = choice
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


class _PreallocatedLayer(DynamicLayer):
    """One layer's KV cache in a buffer sized for the whole generation: a decode step writes its keys and values
    in place and attends over a view of the filled part, where a `DynamicLayer` concatenates (copies) the whole
    cache at every step. Built from a prefilled layer whose rows are indexed by `rows` (a prompt's cache is copied
    to each of its samples)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, rows: torch.Tensor, capacity: int) -> None:
        super().__init__()
        length = keys.shape[-2]
        self._keys = keys.new_empty((len(rows), keys.shape[1], capacity, keys.shape[3]))
        self._values = values.new_empty((len(rows), values.shape[1], capacity, values.shape[3]))
        self._keys[:, :, :length] = keys.index_select(0, rows)
        self._values[:, :, :length] = values.index_select(0, rows)
        self.length = length
        self.keys, self.values = self._keys[:, :, :length], self._values[:, :, :length]
        self.device, self.is_initialized = keys.device, True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.length + key_states.shape[-2]
        if end > self._keys.shape[-2]:
            raise RuntimeError(f"KV cache of {self._keys.shape[-2]} positions cannot take position {end - 1}")
        self._keys[:, :, self.length : end] = key_states
        self._values[:, :, self.length : end] = value_states
        self.length = end
        self.keys, self.values = self._keys[:, :, :end], self._values[:, :, :end]
        return self.keys, self.values


DECODE_MODES = ("shared", "generate")


class HFRolloutEngine:
    """Sampling on whatever device the model is on, with the KV cache.

    `decode="shared"` (the default): each distinct prompt, images included, is prefilled once; its KV cache is
    copied to its n samples, which are then decoded by a loop over the model's forward with a preallocated cache.
    `decode="generate"`: every row runs its own prompt through Hugging Face `generate`. Both sample the same
    tokens for the same seeds (the same sampler, positions, masks and stopping rule); the first does the prompt's
    work once per prompt instead of once per sample and skips `generate`'s per-step bookkeeping.
    Only the sampling semantics of `SamplingParams` apply: no generation-config extras (repetition penalty, ...)."""

    def __init__(self, model, processor, max_batch: int = 256, synced: bool = False, decode: str = "shared") -> None:
        if decode not in DECODE_MODES:
            raise ValueError(f"unknown rollout decode mode {decode!r}; valid: {', '.join(DECODE_MODES)}")
        self.model = model
        # ZeRO-3 over several ranks: every rank must run as many forwards as the slowest one (each gathers the
        # weights collectively), so a rank whose responses all ended keeps stepping until every rank is done.
        self.synced = synced
        self.decode = decode
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.eos_id = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.pad_id = self.tokenizer.pad_token_id
        self.max_batch = max_batch

    @torch.no_grad()
    def generate(self, prompts: list[Any], params: SamplingParams, seeds: list[int]) -> Rollout:
        """`prompts`: objects with `.question` and `.images`; `seeds`: one per response (len = n * prompts).
        At most `max_batch` rows (but at least one prompt's n) are decoded together."""
        if len(seeds) != len(prompts) * params.n:
            raise ValueError(f"need {len(prompts) * params.n} seeds (n={params.n} per prompt), got {len(seeds)}")
        heads, heads_vision = encode_prompts(
            self.processor, [user_messages(p.question, len(p.images)) for p in prompts], [p.images for p in prompts]
        )
        n = params.n
        rows = torch.arange(len(prompts)).repeat_interleave(n)
        prompt = heads.rows(rows)
        vision = heads_vision.select(rows) if heads_vision is not None else None
        chunks = []
        if self.decode == "generate":
            for start in range(0, len(rows), self.max_batch):
                sl = slice(start, start + self.max_batch)
                chunks.append(self._generate_chunk(prompt, vision, rows[sl], sl, params, seeds[sl]))
        else:
            per = max(1, self.max_batch // n)
            for start in range(0, len(prompts), per):
                idx = torch.arange(start, min(start + per, len(prompts)))
                sub = heads_vision.select(idx) if heads_vision is not None else None
                chunks.append(self._decode(heads.rows(idx), sub, n, params, seeds[start * n : (start + per) * n]))
        width = max(c[0].shape[1] for c in chunks)
        pad = lambda t, v: torch.nn.functional.pad(t, (0, width - t.shape[1]), value=v)  # noqa: E731
        response_ids = torch.cat([pad(c[0], self.pad_id) for c in chunks])
        logp = torch.cat([pad(c[1], 0.0) for c in chunks])
        mask = response_mask(response_ids, self.eos_id)
        texts = self.tokenizer.batch_decode(response_ids * mask.long() + self.pad_id * (1 - mask.long()), skip_special_tokens=True)
        return Rollout(prompt, vision, response_ids, mask, logp * mask, texts)

    def _generate_chunk(self, prompt: PromptInputs, vision, rows, sl: slice, params: SamplingParams, seeds):
        """One response for each of the rows `sl` of `prompt` (rows taken as they are, shared or not):
        (response ids, sampling log-probs), as wide as the longest response."""
        device = next(self.model.parameters()).device
        ids, attn = prompt.ids[sl].to(device), prompt.mask[sl].to(device)
        sub = vision.select(torch.arange(sl.start, sl.start + len(ids))) if vision is not None else None
        if self.decode == "shared":
            return self._decode(PromptInputs(ids, attn), sub, 1, params, seeds)
        inputs = dict(input_ids=ids, attention_mask=attn, mm_token_type_ids=(ids == self.model.config.image_token_id).int())
        if sub is not None:
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

    def _positions(self, ids: torch.Tensor, attn: torch.Tensor, mm_types: torch.Tensor, vision) -> torch.Tensor:
        """(4, B, L) prompt positions as `generate` numbers them: the text position (count of real tokens before,
        so left padding does not shift it) on top of the three multimodal RoPE rows (the text position again for
        text-only prompts)."""
        text = (attn.long().cumsum(-1) - 1).masked_fill(attn == 0, 0)
        if vision is None:
            rope = text[None].expand(3, -1, -1)
        else:
            base = getattr(self.model, "module", self.model).model
            rope = base.get_rope_index(ids, mm_types, image_grid_thw=vision.image_grid_thw.to(ids.device), attention_mask=attn)[0]
        return torch.cat([text[None], rope], 0)

    def _decode(self, heads: PromptInputs, vision, n: int, params: SamplingParams, seeds: list[int]):
        """n responses to each row of `heads` (rows prompt-major: response j of prompt i is row i * n + j):
        (response ids, sampling log-probs), as wide as the longest response.

        The sampling rule is `generate`'s with `_SeededSampler` as its only logits processor: end-of-turn is
        banned until `min_new_tokens`, a finished row emits padding, and decoding stops when every row (every
        rank's, when synced) has finished or after `max_new_tokens`."""
        model = self.model
        device = next(model.parameters()).device
        ids, attn = heads.ids.to(device), heads.mask.to(device)
        mm_types = (ids == model.config.image_token_id).int()
        positions = self._positions(ids, attn, mm_types, vision)
        inputs = dict(input_ids=ids, attention_mask=attn, position_ids=positions, mm_token_type_ids=mm_types)
        if vision is not None:
            inputs.update(pixel_values=vision.pixel_values.to(device), image_grid_thw=vision.image_grid_thw.to(device))
        out = model(**inputs, use_cache=True, logits_to_keep=1)
        rows = torch.arange(len(ids), device=device).repeat_interleave(n)
        max_new, width = params.max_new_tokens, ids.shape[1]
        cache = out.cache
        cache.layers = [_PreallocatedLayer(layer.keys, layer.values, rows, width + max_new) for layer in cache.layers]
        attn = torch.cat([attn[rows], attn.new_ones(len(rows), max_new)], 1)
        last = positions[:, rows, -1:]
        logits = out.logits[rows, -1].float()
        sampler = _SeededSampler(params, seeds, vision_token_ids(model.config))
        unfinished = torch.ones(len(rows), dtype=torch.bool, device=device)
        # A decode step holds no image and its positions are given: the multimodal wrapper would only look up the
        # embeddings, so the steps call the language model and the output head directly (fewer calls per token).
        base = getattr(model, "module", model)
        text_model, head = base.model.language_model, base.lm_head
        tokens: list[torch.Tensor] = []
        done, forwards = max_new == 0, 0
        while True:
            if not done:
                if len(tokens) < params.min_new_tokens:
                    logits[:, self.eos_id] = float("-inf")
                sampler(None, logits)
                token = torch.where(unfinished, sampler.choice, self.pad_id)
                tokens.append(token)
                unfinished &= token != self.eos_id
                done = len(tokens) == max_new or not bool(unfinished.any())
            if (dist.all_reduce_max(int(not done)) == 0) if self.synced else done:
                break
            forwards += 1  # a finished rank keeps stepping on its last tokens while another still decodes
            hidden = text_model(input_ids=tokens[-1][:, None], attention_mask=attn[:, : width + forwards],
                                position_ids=last + forwards, cache=cache, use_cache=True).last_hidden_state
            logits = head(hidden[:, -1]).float()
        response = torch.stack(tokens, 1).cpu() if tokens else torch.zeros(len(rows), 0, dtype=torch.long)
        logp = torch.stack(sampler.logps, 1).cpu() if tokens else torch.zeros(len(rows), 0)
        return response, logp
