"""Score a policy on the embedded benchmark's held-out split.

`evaluate_items` is what training runs call every `train.eval_every` steps; `python -m harness.evaluate
checkpoint=<folder>` scores a saved checkpoint (a run's `checkpoints/step-N` or any model folder).
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from benchmarks import embedded
from harness.rollout import HFRolloutEngine, SamplingParams, sample_seed
from harness.teacher import REFERENCE_TEMPLATE

VARIANTS = ("plain", "hint", "blank", "shuffled")
DECODING = {
    "greedy": dict(greedy=True, samples=1),
    # The paper's validation decoding (specs/algorithms.md §1.5): T 0.7, top-p 0.8, top-k 20, mean@4.
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
    from harness.data import Example

    return Example(item.id, item.question, images, item.answer, item.solution)


@torch.no_grad()
def evaluate_items(model, processor, items: list, variant: str = "plain", decoding: str = "greedy",
                   max_new_tokens: int = 40, seed: int = 0, batch: int = 128) -> dict[str, Any]:
    if decoding not in DECODING:
        raise ValueError(f"unknown decoding {decoding!r}; valid: {', '.join(DECODING)}")
    d = dict(DECODING[decoding])
    samples = d.pop("samples")
    engine = HFRolloutEngine(model, processor, max_batch=batch)
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


def main(argv: list[str] | None = None) -> None:
    from hydra import compose, initialize_config_dir

    from harness.data import build_data
    from harness.models import load_model, load_processor
    from harness.train import CONFIG_DIR

    overrides = list(sys.argv[1:] if argv is None else argv)
    ckpt = next((o.split("=", 1)[1] for o in overrides if o.startswith("checkpoint=")), None)
    if ckpt is None:
        raise SystemExit("usage: python -m harness.evaluate checkpoint=<model or checkpoint folder> [eval.decoding=paper]")
    overrides = [o for o in overrides if not o.startswith("checkpoint=")]
    with initialize_config_dir(str(CONFIG_DIR), version_base=None):
        cfg = compose("train", overrides=overrides)
    path = Path(ckpt)
    model_dir = path / "policy" if (path / "policy" / "config.json").exists() else path
    model, processor = load_model(model_dir).eval(), load_processor(model_dir)
    items = build_data(cfg.data, cfg.seed).test_set(cfg.eval.n)
    result = {v: evaluate_items(model, processor, items, v, cfg.eval.decoding, cfg.eval.max_new_tokens)["accuracy"]
              for v in ("plain", "hint", "blank")}
    print(json.dumps({"checkpoint": str(path), "decoding": cfg.eval.decoding, **result}, indent=1))


if __name__ == "__main__":
    main()
