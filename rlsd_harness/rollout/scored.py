"""The one generate-and-score core: k seeded samples per item (and optionally a greedy one), each scored.

Held-out evaluation (`evaluation.heldout`), the benchmark runner (`evaluation.runner`) and the difficulty filter
(`evaluation.difficulty`) all draw their responses here, and differ only in the records they keep and where
they write them. Items go to the engine in batches of `batch` items, in the order given; sample j of the item
with seed uid `u` draws with `sample_seed(seed, step, u, j)`, so what an item gets does not depend on the
batching, the other items or the rank. Each batch is yielded once scored, so a caller can append its records
(an interruption then loses one batch at most) and report progress.

Scoring order is fixed (item by item, samples 0..k-1, then the greedy response) because a scorer may carry
state: MMMU's random fallback draws from a generator per sample index, so `scorers[j]` is the scorer of
sample j and a caller that resumes replays the items already done through the same scorers in the same order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from rlsd_harness.rollout.hf import SamplingParams, sample_seed

Scorer = Callable[[str, Any], Any]  # (response, item) -> the verdict the caller records


@dataclass
class Scored:
    """One item's responses and verdicts: `results[j]` is `scorers[j](texts[j], item)`."""

    index: int  # position of the item in the sequence given
    item: Any
    texts: list[str]  # the k sampled responses, in sample order
    results: list[Any]
    greedy_text: str | None = None  # with a greedy scorer only
    greedy_result: Any = None


def generate_and_score(engine: Any, items: Sequence[Any], uids: Sequence[str], params: SamplingParams,
                       scorers: Sequence[Scorer], *, seed: int, batch: int, step: int = -1,
                       prompt: Callable[[Any], Any] | None = None, greedy_scorer: Scorer | None = None,
                       progress: Callable[[int], None] | None = None) -> Iterator[list[Scored]]:
    """Yield the `Scored` items of each batch of `batch` items, in item order.

    `engine` is a rollout engine (`generate(prompts, params, seeds)` with `.texts`); `prompt(item)` is what it
    reads (default the item itself); `uids[i]` seeds item i's samples; `params.n` samples per item, scored by
    `scorers[j]` (one per sample index, `params.n` of them). With `greedy_scorer`, each item also gets one greedy
    response (seed 0, `params.max_new_tokens`), scored by it. `progress(done)` is called once the caller has
    taken a batch, with the number of items done so far."""
    k = params.n
    if len(scorers) != k:
        raise ValueError(f"{len(scorers)} scorers for {k} samples per item: give one scorer per sample index")
    if len(uids) != len(items):
        raise ValueError(f"{len(uids)} seed uids for {len(items)} items: give one per item")
    if batch < 1:
        raise ValueError(f"batch must be a positive number of items; got {batch!r}")
    prompt = prompt or (lambda it: it)
    greedy = SamplingParams(n=1, max_new_tokens=params.max_new_tokens, greedy=True) if greedy_scorer else None
    for start in range(0, len(items), batch):
        chunk = items[start : start + batch]
        shown = [prompt(it) for it in chunk]
        seeds = [sample_seed(seed, step, str(uid), j) for uid in uids[start : start + batch] for j in range(k)]
        texts = engine.generate(shown, params, seeds).texts
        greedy_texts = engine.generate(shown, greedy, [0] * len(shown)).texts if greedy is not None else None
        scored = []
        for n, item in enumerate(chunk):
            samples = list(texts[n * k : (n + 1) * k])
            results = [scorers[j](samples[j], item) for j in range(k)]
            out = Scored(start + n, item, samples, results)
            if greedy_scorer is not None:
                out.greedy_text = greedy_texts[n]
                out.greedy_result = greedy_scorer(out.greedy_text, item)
            scored.append(out)
        yield scored
        if progress is not None:
            progress(start + len(chunk))
