"""Held-out accuracy of a policy on embedded-task items: what a training run measures every
`train.eval_every` steps, and the `embedded` suite of the benchmark runner. Prompt variants probe the policy:
`hint` shows the teacher's privileged context, `blank` a white image, `shuffled` another item's picture."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from PIL import Image

from rlsd_harness.benchmarks import embedded
from rlsd_harness.data import Example
from rlsd_harness.prompts import REFERENCE_TEMPLATE
from rlsd_harness.rollout.hf import HFRolloutEngine, SamplingParams, sample_seed

VARIANTS = ("plain", "hint", "blank", "shuffled")
DECODING = {
    "greedy": dict(greedy=True, samples=1),
    # The RLSD paper's validation decoding: temperature 0.7, top-p 0.8, top-k 20, mean over 4 samples.
    "paper": dict(greedy=False, samples=4, temperature=0.7, top_p=0.8, top_k=20),
}


def _variant(items: list, variant: str) -> list:
    if variant == "plain":
        return items
    if variant == "hint":  # the privileged context the teacher reads
        return [replace(it, question=REFERENCE_TEMPLATE.format(question=it.question, hint=it.answer)) for it in items]
    if variant == "blank":
        blank = Image.new("RGB", (embedded.IMAGE_SIZE, embedded.IMAGE_SIZE), "white")
        return [_with_images(it, [blank]) for it in items]
    if variant == "shuffled":  # each item gets the next item's picture
        return [_with_images(it, items[(i + 1) % len(items)].images) for i, it in enumerate(items)]
    raise ValueError(f"unknown evaluation variant {variant!r}; valid: {', '.join(VARIANTS)}")


def _with_images(item, images: list):
    return Example(item.id, item.question, images, item.answer, item.solution)


@torch.no_grad()
def evaluate_items(model, processor, items: list, variant: str = "plain", decoding: str = "greedy",
                   max_new_tokens: int = 40, seed: int = 0, batch: int = 128, synced: bool = False) -> dict[str, Any]:
    if decoding not in DECODING:
        raise ValueError(f"unknown decoding {decoding!r}; valid: {', '.join(DECODING)}")
    d = dict(DECODING[decoding])
    samples = d.pop("samples")
    engine = HFRolloutEngine(model, processor, max_batch=batch, synced=synced)
    params = SamplingParams(n=samples, max_new_tokens=max_new_tokens, **d)
    shown = _variant(items, variant)
    was_training = model.training
    model.eval()
    records = []
    for start in range(0, len(shown), batch):
        chunk = shown[start : start + batch]
        seeds = [sample_seed(seed, -1, str(it.id), j) for it in chunk for j in range(samples)]
        ro = engine.generate(chunk, params, seeds)
        for i, text in enumerate(ro.texts):
            item = chunk[i // samples]
            records.append({"id": item.id, "variant": variant, "response": text, **embedded.score(text, item)})
    model.train(was_training)
    acc = sum(r["correct"] for r in records) / max(len(records), 1)
    return {"accuracy": acc, "n": len(items), "samples": samples, "records": records}
