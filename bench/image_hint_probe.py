"""Can a base policy use the embedded task's privileged context? Greedy accuracy on test items with the student's
prompt ("plain"), the answer in words (the text reference the teacher reads by default) and the image hint
(data.privileged=image_hint: the image-hint text and one more image showing the answer).

    .venv/bin/python -m bench.image_hint_probe [--n 128] [--model rlsd_harness/bases/qwen2_5_vl_tiny_warmup143_level1]

A teacher that scores below "plain" with its privileged context is a worse teacher than the student: the shipped
bases were warmed up on text references only (model.warmup.hint_share), never on a hint image.
"""

from __future__ import annotations

import argparse
from types import SimpleNamespace

from rlsd_harness.benchmarks import embedded
from rlsd_harness.models import load_model, load_processor
from rlsd_harness.prompts import IMAGE_HINT_TEMPLATE, REFERENCE_TEMPLATE
from rlsd_harness.rollout.hf import HFRolloutEngine, SamplingParams

DEFAULT_MODEL = "rlsd_harness/bases/qwen2_5_vl_tiny_warmup143_level1"


def variants(items: list[embedded.Item]) -> dict[str, list[SimpleNamespace]]:
    """The three prompts of each item, as the rollout engine reads them (.question, .images)."""
    return {
        "plain": [SimpleNamespace(question=it.question, images=it.images) for it in items],
        "text hint": [SimpleNamespace(question=REFERENCE_TEMPLATE.format(question=it.question, hint=it.answer),
                                      images=it.images) for it in items],
        "image hint": [SimpleNamespace(question=IMAGE_HINT_TEMPLATE.format(question=it.question),
                                       images=[*it.images, *it.teacher_images]) for it in items],
    }


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=128, help="test items (level 1, seed 0)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="a model folder")
    args = parser.parse_args(argv)
    model, processor = load_model(args.model).eval(), load_processor(args.model)
    items = embedded.generate("test", args.n, seed=0, level=1, privileged="image_hint")
    engine = HFRolloutEngine(model, processor)
    params = SamplingParams(n=1, greedy=True, max_new_tokens=64)
    out = {}
    for name, prompts in variants(items).items():
        texts = engine.generate(prompts, params, list(range(len(prompts)))).texts
        correct = sum(embedded.score(t, it)["correct"] for t, it in zip(texts, items))
        out[name] = 100 * correct / args.n
        print(f"{name:>10}: {correct}/{args.n} = {out[name]:.1f} % greedy", flush=True)
    return out


if __name__ == "__main__":
    main()
