"""lm-eval bridge: any lm-eval task on a harness checkpoint, generating with the project's rollout engine.

    import rlsd_harness.evaluation.lm_eval_bridge  # registers the model name "harness"
    lm_eval.simple_evaluate(model="harness", model_args={"checkpoint": "<model or run folder>"},
                            tasks=[...], apply_chat_template=True)

or `lm_eval.simple_evaluate(model=HarnessLM(model=..., processor=...), ...)` with a model already loaded.

- `generate_until`: the project's `HFRolloutEngine` (seeded per request, vision tokens banned, stop at
  `<|im_end|>`), cut at the first `until` string; `max_gen_toks` is the token budget. lm-eval contexts
  arrive as finished strings (with or without our chat template), so the engine is fed token ids and its
  own chat wrapping is skipped.
- `loglikelihood` and `loglikelihood_rolling`: one forward pass per batch (right padding), log-probs of
  the continuation tokens; an empty context is conditioned on the end-of-text token, as lm-eval's HF model does.
- Multimodal tasks (`doc_to_image`): each `<image>` placeholder becomes our vision block and the images
  go through the processor; with no placeholder, the images come first in the user turn (Qwen-VL order).
- Chat templates: `apply_chat_template`, `chat_template` and `tokenizer_name` use the checkpoint's template.

lm-eval's registry quirk (lm-eval 0.4.13, lm_eval/api/registry.py: `get_model` imports `lm_eval.models`
only while the registry is empty): registering a model before the built-in ones are imported leaves "hf"
& co. unregistered, so this module imports `lm_eval.models` first.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lm_eval.models  # noqa: F401  (fills the built-in registry before ours is added; see the docstring)
import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm.auto import tqdm

from rlsd_harness.algorithms.batch import PromptInputs, VisionInputs
from rlsd_harness.rollout.hf import HFRolloutEngine, SamplingParams, response_mask, sample_seed

NAME = "harness"
IMAGE_PLACEHOLDER = "<image>"  # how lm-eval's multimodal tasks mark an image in the text
DEFAULT_MAX_GEN_TOKS = 256


class EncodedEngine(HFRolloutEngine):
    """The project's rollout engine fed prompts that are already token ids."""

    @torch.no_grad()
    def generate_encoded(self, prompt: PromptInputs, vision: VisionInputs | None, params: SamplingParams,
                         seeds: list[int]) -> tuple[list[str], list[int]]:
        """(texts, generated token counts), one per prompt row (params.n must be 1)."""
        if params.n != 1 or len(seeds) != prompt.ids.shape[0]:
            raise ValueError("generate_encoded takes one response per prompt row and one seed per row")
        rows = torch.arange(prompt.ids.shape[0])
        # `_generate_chunk` is the engine's whole sampling path (seeded sampler, banned vision tokens, EOS);
        # only its prompt encoding (chat wrapping) is bypassed here.
        ids, _ = self._generate_chunk(prompt, vision, rows, slice(0, len(rows)), params, seeds)
        mask = response_mask(ids, self.eos_id).long()
        texts = self.tokenizer.batch_decode(ids * mask + self.pad_id * (1 - mask), skip_special_tokens=True)
        return texts, mask.sum(-1).tolist()


def _batches(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _int_or(value: Any, default: int) -> int:
    """lm-eval hands batch sizes over as ints or strings ("8", "auto")."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


@register_model(NAME)
class HarnessLM(LM):
    MULTIMODAL = True  # lm-eval only hands image tasks to models that say so

    def __init__(self, checkpoint: str | None = None, pretrained: str | None = None, batch_size: int | str = 8,
                 max_length: int | None = None, seed: int = 0, device: str | None = None, model=None,
                 processor=None, **kwargs: Any) -> None:
        """`checkpoint` (or lm-eval's usual `pretrained`): a model folder or a run folder; or pass `model` and
        `processor` already loaded. Other lm-eval arguments (max_batch_size, ...) are accepted and unused."""
        super().__init__()
        if model is None:
            from rlsd_harness.evaluation.runner import resolve_checkpoint
            from rlsd_harness.models import load_model, load_processor

            path = checkpoint or pretrained
            if path is None:
                raise ValueError(f"{NAME}: pass checkpoint=<model or run folder> (or model= and processor=)")
            model_dir = resolve_checkpoint(path)
            model, processor = load_model(model_dir), load_processor(model_dir)
            self._name = str(model_dir.resolve())
        else:
            if processor is None:
                raise ValueError(f"{NAME}: a model passed in needs its processor too")
            self._name = str(checkpoint or getattr(model, "name_or_path", "") or "in-memory")
        if device is not None:
            model = model.to(device)
        self.model = model.eval()
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.engine = EncodedEngine(self.model, processor)
        self.batch_size = max(1, _int_or(batch_size, 8))
        self.seed = int(seed)
        text_config = getattr(model.config, "text_config", model.config)
        self._max_length = int(max_length or getattr(text_config, "max_position_embeddings", 2048))
        cfg = model.config
        self.vision_block = "".join(self.tokenizer.convert_ids_to_tokens(
            [cfg.vision_start_token_id, cfg.image_token_id, cfg.vision_end_token_id]))

    # ------------------------------------------------------------------ lm-eval's model face

    @property
    def eot_token_id(self) -> int:
        return self.engine.eos_id

    @property
    def prefix_token_id(self) -> int:
        """What an empty context is conditioned on: the end-of-text token (lm-eval's HF convention)."""
        vocab = self.tokenizer.get_vocab()
        return vocab["<|endoftext|>"] if "<|endoftext|>" in vocab else self.eot_token_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def tokenizer_name(self) -> str:
        # lm-eval puts it in cache file names
        return f"{NAME}-{self._name}".replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return self.tokenizer.chat_template

    def apply_chat_template(self, chat_history: list[dict[str, Any]], add_generation_prompt: bool = True) -> str:
        """Render lm-eval's messages with our template; `<image>` placeholders become image parts in place."""
        messages = []
        for message in chat_history:
            content = message["content"]
            if isinstance(content, str) and IMAGE_PLACEHOLDER in content:
                parts: list[dict] = []
                for i, text in enumerate(content.split(IMAGE_PLACEHOLDER)):
                    if i:
                        parts.append({"type": "image"})
                    if text:
                        parts.append({"type": "text", "text": text})
                content = parts
            messages.append({**message, "content": content})
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    # ------------------------------------------------------------------ encoding

    def _with_vision(self, text: str, n_images: int) -> str:
        """Mark one vision block per image: placeholders in place, else all at the start of the user turn."""
        text = text.replace(IMAGE_PLACEHOLDER, self.vision_block)
        marked = text.count(self.vision_block)
        if marked == n_images:
            return text
        if marked:
            raise ValueError(f"{NAME}: a request has {n_images} images but its text marks {marked}")
        head = "<|im_start|>user\n"
        blocks = self.vision_block * n_images
        at = text.find(head)
        return text[: at + len(head)] + blocks + text[at + len(head) :] if at >= 0 else blocks + text

    def _encode(self, text: str, images: list) -> tuple[list[int], dict[str, torch.Tensor]]:
        """Token ids of a finished string (no chat wrapping; each image's pad token expanded)."""
        if not images:
            return self.tokenizer(text, add_special_tokens=False)["input_ids"], {}
        enc = self.processor(text=[self._with_vision(text, len(images))], images=[im.convert("RGB") for im in images],
                             return_tensors="pt")
        return enc["input_ids"][0].tolist(), {"pixel_values": enc["pixel_values"], "image_grid_thw": enc["image_grid_thw"]}

    @staticmethod
    def _images(request) -> list:
        aux = request.args[2] if len(request.args) > 2 and isinstance(request.args[2], dict) else {}
        visual = aux.get("visual") or []
        return list(visual) if isinstance(visual, list | tuple) else [visual]

    # ------------------------------------------------------------------ generation

    def _sampling(self, kwargs: dict) -> tuple[list[str], SamplingParams]:
        """lm-eval's generation kwargs as (stop strings, the engine's sampling parameters)."""
        kwargs = dict(kwargs)
        until = kwargs.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        eos_text = self.tokenizer.convert_ids_to_tokens(self.eot_token_id)
        until = [s for s in until if s] + ([eos_text] if eos_text not in until else [])
        max_gen = int(kwargs.pop("max_gen_toks", kwargs.pop("max_new_tokens", DEFAULT_MAX_GEN_TOKS)))
        temperature = float(kwargs.get("temperature", 0.0) or 0.0)
        do_sample = kwargs.get("do_sample")
        sample = bool(do_sample) if do_sample is not None else temperature > 0
        if not sample:
            return until, SamplingParams(n=1, greedy=True, max_new_tokens=max_gen)
        return until, SamplingParams(n=1, temperature=temperature if temperature > 0 else 1.0,
                                     top_p=float(kwargs.get("top_p") or 1.0), top_k=int(kwargs.get("top_k") or 0),
                                     max_new_tokens=max_gen)

    def _request_seeds(self, requests: list) -> list[int]:
        """One seed per request from (task, document, request index, repeat): independent of batching, and
        distinct for the repeats of one request (lm-eval lists the same instance `repeats` times)."""
        seen: dict[tuple, int] = {}
        seeds = []
        for r in requests:
            key = (r.task_name, r.doc_id, r.idx)
            j = seen.get(key, 0)
            seen[key] = j + 1
            seeds.append(sample_seed(self.seed, -1, json.dumps(key, default=str), j))
        return seeds

    def _left_padded(self, encoded: list[tuple[list[int], dict]], keep: int) -> tuple[PromptInputs, VisionInputs | None]:
        """Left-pad a batch; text-only prompts keep their last `keep` tokens (image prompts are not cut:
        a cut could split an image's tokens)."""
        rows = [ids if extra else ids[-keep:] for ids, extra in encoded]
        width = max(len(r) for r in rows)
        pad = self.engine.pad_id
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], dtype=torch.long)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=torch.long)
        with_images = [extra for _, extra in encoded if extra]
        vision = None
        if with_images:
            vision = VisionInputs(
                pixel_values=torch.cat([e["pixel_values"] for e in with_images]),
                image_grid_thw=torch.cat([e["image_grid_thw"] for e in with_images]),
                images_per_row=torch.tensor([len(e["image_grid_thw"]) if e else 0 for _, e in encoded]),
            )
        return PromptInputs(ids=ids, mask=mask), vision

    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        out: list[str | None] = [None] * len(requests)
        seeds = self._request_seeds(requests)
        groups: dict[str, list[int]] = {}  # requests with the same generation kwargs share batches
        for i, r in enumerate(requests):
            groups.setdefault(json.dumps(r.args[1], sort_keys=True, default=str), []).append(i)
        bar = tqdm(total=len(requests), desc=f"{NAME} generate_until", disable=disable_tqdm)
        for idxs in groups.values():
            until, params = self._sampling(requests[idxs[0]].args[1])
            keep = max(1, self.max_length - params.max_new_tokens)
            for chunk in _batches(idxs, self.batch_size):
                encoded = [self._encode(requests[i].args[0], self._images(requests[i])) for i in chunk]
                prompt, vision = self._left_padded(encoded, keep)
                texts, _ = self.engine.generate_encoded(prompt, vision, params, [seeds[i] for i in chunk])
                for i, text in zip(chunk, texts):
                    for stop in until:
                        text = text.split(stop, 1)[0]
                    out[i] = text
                    self.cache_hook.add_partial("generate_until", requests[i].args, text)
                bar.update(len(chunk))
        bar.close()
        return out  # type: ignore[return-value]

    # ------------------------------------------------------------------ log-likelihoods

    def _split(self, context: str, continuation: str, images: list) -> tuple[list[int], list[int], dict]:
        """(context ids, continuation ids, vision inputs). Trailing spaces of the context move to the
        continuation, and the continuation's ids are read off the joint encoding, so that the tokens scored
        are those the model would see for context + continuation."""
        if not context:
            ids, extra = self._encode(continuation, images)
            return [self.prefix_token_id], ids, extra
        stripped = context.rstrip(" ")
        continuation = context[len(stripped) :] + continuation
        whole, extra = self._encode(stripped + continuation, images)
        ctx, _ = self._encode(stripped, images)
        return whole[: len(ctx)], whole[len(ctx) :], extra

    @torch.no_grad()
    def _score(self, pairs: list[tuple[list[int], list[int], dict]], desc: str, disable_tqdm: bool) -> list[tuple[float, bool]]:
        """(sum of the continuation's log-probs, whether greedy decoding gives it) per (context, continuation)."""
        results = []
        bar = tqdm(total=len(pairs), desc=f"{NAME} {desc}", disable=disable_tqdm)
        for chunk in _batches(pairs, self.batch_size):
            rows, spans = [], []
            for ctx, cont, extra in chunk:
                if len(cont) > self.max_length:
                    raise ValueError(f"{NAME}: a continuation of {len(cont)} tokens exceeds max_length {self.max_length}")
                full = ctx + cont
                # Keep the whole continuation and as much context as fits (text only: images are never cut).
                inputs = full[:-1] if extra else full[-(self.max_length + 1) :][:-1]
                rows.append(inputs)
                spans.append((len(inputs) - len(cont), len(cont)))
            width = max(len(r) for r in rows)
            pad = self.engine.pad_id
            ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=self.device)
            mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=self.device)
            inputs = dict(input_ids=ids, attention_mask=mask, mm_token_type_ids=(ids == self.model.config.image_token_id).int())
            extras = [e for _, _, e in chunk if e]
            if extras:
                inputs.update(pixel_values=torch.cat([e["pixel_values"] for e in extras]).to(self.device),
                              image_grid_thw=torch.cat([e["image_grid_thw"] for e in extras]).to(self.device))
            logp = torch.log_softmax(self.model(**inputs).logits.float(), -1)
            for b, ((_, cont, _), (start, n)) in enumerate(zip(chunk, spans)):
                target = torch.tensor(cont, device=self.device)
                # input position t predicts token t + 1, so the last n inputs predict the n continuation tokens
                lp = logp[b, start : start + n]
                total = lp.gather(-1, target[:, None])[:, 0].sum().item()
                results.append((float(total), bool((lp.argmax(-1) == target).all().item())))
            bar.update(len(chunk))
        bar.close()
        return results

    def loglikelihood(self, requests: list, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = [self._split(r.args[0], r.args[1], self._images(r)) for r in requests]
        results = self._score(pairs, "loglikelihood", disable_tqdm)
        for r, res in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", r.args, res)
        return results

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
        """Whole-string log-likelihood in disjoint windows of `max_length` tokens (text only)."""
        out = []
        for r in tqdm(requests, desc=f"{NAME} loglikelihood_rolling", disable=disable_tqdm):
            ids, _ = self._encode(r.args[0], [])
            windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
                token_list=ids, prefix_token=self.prefix_token_id, max_seq_len=self.max_length, context_len=1)]
            total = sum(lp for lp, _ in self._score([(c, t, {}) for c, t in windows], "rolling", True))
            out.append(total)
            self.cache_hook.add_partial("loglikelihood_rolling", r.args, total)
        return out


def load(checkpoint: str | Path, **kwargs: Any) -> HarnessLM:
    """A bridge over a saved checkpoint (a model folder or a run folder)."""
    return HarnessLM(checkpoint=str(checkpoint), **kwargs)
