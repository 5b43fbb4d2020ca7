"""Held-out accuracy of a policy: what a training run measures on a held-out split (or a benchmark) during
training, and the `embedded` suite of the benchmark runner.

An evaluation draws k responses per item with the configured decoding and, optionally, one greedy response,
scores each with a scorer (the run's verifier, or a benchmark's own `score`), and keeps one record per item:

    {"id": str, "correct": [0/1 per sample, k entries], "greedy": 0/1 or null}

from which `summarise` gives mean@k (the mean over items of the fraction of correct samples; the papers'
avg@k), greedy pass@1 and, for k > 1, the unbiased pass@k estimator of Chen et al. 2021.

Decodings (`eval.decoding`): `greedy` (one response, k must be 1), `paper` (the RLSD paper's validation
decoding: temperature 0.7, top-p 0.8, top-k 20; 4 samples unless eval.k says otherwise) and `sample` (the
temperature / top_p / top_k of `eval.sampling`). Response j of item `id` is drawn with seed
sample_seed(seed, -1, id, j), the same at every step and in every run, so two runs or two steps are compared
on the same random numbers.

Prompt variants (`evaluate_items`, the runner's `embedded:<variant>`) probe the policy: `hint` shows the
teacher's privileged context, `blank` a white image, `shuffled` another item's picture.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from rlsd_harness.benchmarks import embedded, pass_at_k
from rlsd_harness.config import HELDOUT_SPLITS, ConfigError
from rlsd_harness.config.typed import EvalSection
from rlsd_harness.data import Example
from rlsd_harness.io import atomic_write_text, read_jsonl
from rlsd_harness.prompts import REFERENCE_TEMPLATE
from rlsd_harness.rollout.hf import HFRolloutEngine, SamplingParams
from rlsd_harness.rollout.scored import generate_and_score

VARIANTS = ("plain", "hint", "blank", "shuffled")
SPLITS = HELDOUT_SPLITS
PAPER_SAMPLING = {"temperature": 0.7, "top_p": 0.8, "top_k": 20}
# The named decodings with their default sample counts (the benchmark runner reads this too).
DECODING = {
    "greedy": dict(greedy=True, samples=1),
    "paper": dict(greedy=False, samples=4, **PAPER_SAMPLING),
}
DECODINGS = (*DECODING, "sample")
DEFAULT_K = {"greedy": 1, "paper": 4, "sample": 4}  # eval.k: null

Scorer = Callable[[str, Any], Any]  # (response, item) -> truthy when correct, or a dict with "correct"
Record = dict[str, Any]


# ----------------------------------------------------------------------------- estimators


def summarise(records: Sequence[Record]) -> dict[str, float]:
    """mean@k, greedy pass@1 (when every record has a greedy verdict), unbiased pass@k (k > 1), n and k."""
    if not records:
        raise ValueError("no evaluation records to summarise (the held-out set is empty)")
    k = len(records[0]["correct"])
    if any(len(r["correct"]) != k for r in records):
        raise ValueError(f"records disagree on the number of samples (first has {k})")
    out: dict[str, float] = {"mean@k": sum(sum(r["correct"]) / k for r in records) / len(records)}
    if all(r["greedy"] is not None for r in records):
        out["pass@1"] = sum(r["greedy"] for r in records) / len(records)
    if k > 1:
        out[f"pass@{k}"] = sum(pass_at_k(k, sum(r["correct"]), k) for r in records) / len(records)
    out["n"], out["k"] = len(records), k
    return out


# ----------------------------------------------------------------------------- decoding


@dataclass(frozen=True)
class Decoding:
    """How an evaluation samples: k responses per item with `sampling`, plus a greedy one when `greedy`."""

    name: str
    k: int
    sampling: dict  # SamplingParams fields besides n and max_new_tokens
    greedy: bool  # also record greedy pass@1 (free when the decoding itself is greedy)

    @property
    def is_greedy(self) -> bool:
        return bool(self.sampling.get("greedy"))

    def identity(self) -> dict:
        """What results depend on: for a named decoding at its default k, its DECODING entry."""
        if self.name in DECODING and self.k == DEFAULT_K[self.name]:
            return dict(DECODING[self.name])
        return {"greedy": self.is_greedy, "samples": self.k, **{k: v for k, v in self.sampling.items() if k != "greedy"}}

    def params(self, max_new_tokens: int) -> SamplingParams:
        return SamplingParams(n=self.k, max_new_tokens=max_new_tokens, **self.sampling)


def decoding_from_config(ecfg: EvalSection) -> Decoding:
    """The `eval` config's decoding: eval.decoding, eval.k (null: the decoding's default), eval.greedy and,
    for decoding=sample, eval.sampling.{temperature,top_p,top_k}. `ecfg` is a validated eval section
    (rlsd_harness.config.schema: the choices, ranges and eval.k=1 with greedy are checked there), complete as
    train.yaml composes it."""
    name = ecfg.decoding
    k = DEFAULT_K[name] if ecfg.k is None else ecfg.k
    if name == "greedy":
        sampling: dict = {"greedy": True}
    elif name == "paper":
        sampling = dict(PAPER_SAMPLING)
    else:
        s = ecfg.sampling
        sampling = {"temperature": float(s.temperature), "top_p": float(s.top_p), "top_k": int(s.top_k)}
    return Decoding(name, k, sampling, bool(ecfg.greedy) or name == "greedy")


# ----------------------------------------------------------------------------- items and scorers


def heldout_items(data: Any, split: str, n: int | None, key: str = "eval.split") -> list:
    """`n` items of a held-out split (one of SPLITS, as the schema checks eval.split and eval.budget_split) of
    the training data; `key` names the config key the split came from."""
    if hasattr(data, "heldout_set"):
        return data.heldout_set(split, n)
    if split == "test":
        return data.test_set(n)
    raise ConfigError(f"{key}={split}: {type(data).__name__} has no {split} split; valid here: test "
                      f"({key}=test), or null with train.eval_benchmarks=[...] for benchmarks only")


def verifier_scorer(verifier: Callable[[str, Any], Any]) -> Callable[[], Scorer]:
    """Score with a run's verifier: a response is correct when it earns the full reward (1.0)."""
    return lambda: (lambda response, item: verifier(response, item.answer).reward >= 1.0)


def _correct(result: Any) -> int:
    return int(bool(result["correct"] if isinstance(result, dict) else result))


@torch.no_grad()
def sample_records(engine: Any, items: Sequence, ids: Sequence[str], decoding: Decoding, max_new_tokens: int,
                   new_scorer: Callable[[], Scorer], prompt: Callable[[Any], Any] | None = None, seed: int = 0,
                   batch: int = 64, seed_uid: Callable[[str], str] | None = None,
                   progress: Callable[[int], None] | None = None) -> list[Record]:
    """One record per item (in item order): k sampled verdicts and, when asked, a greedy one. `progress(done)`
    is called after each batch with the number of items done (a 1,200-item evaluation is minutes on a CPU).

    `engine` is a rollout engine (`generate(prompts, params, seeds)` with `.texts`); `prompt(item)` gives what
    it reads (objects with .question and .images; default the item itself); `new_scorer()` makes one scorer
    per sample index (a stateful scorer, like MMMU's random fallback, then draws per sample)."""
    seed_uid = seed_uid or str
    scorers = [new_scorer() for _ in range(decoding.k)]  # (made before the greedy one: a scorer may be seeded)
    # the greedy response is free when the decoding itself is greedy: its one sample is it
    greedy_scorer = new_scorer() if decoding.greedy and not decoding.is_greedy else None
    ids = [str(i) for i in ids]
    records: list[Record] = []
    for scored in generate_and_score(engine, items, [seed_uid(i) for i in ids], decoding.params(max_new_tokens),
                                     scorers, seed=seed, batch=batch, prompt=prompt,
                                     greedy_scorer=greedy_scorer, progress=progress):
        for s in scored:
            correct = [_correct(r) for r in s.results]
            if greedy_scorer is not None:
                g: int | None = _correct(s.greedy_result)
            else:
                g = correct[0] if decoding.is_greedy else None
            records.append({"id": ids[s.index], "correct": correct, "greedy": g})
    return records


@torch.no_grad()
def evaluate_model(model, processor, items: Sequence, ids: Sequence[str], decoding: Decoding, max_new_tokens: int,
                   new_scorer: Callable[[], Scorer], prompt: Callable[[Any], Any] | None = None, seed: int = 0,
                   batch: int = 64, synced: bool = False, seed_uid: Callable[[str], str] | None = None,
                   progress: Callable[[int], None] | None = None) -> list[Record]:
    """`sample_records` with the project's rollout engine on `model`, in eval mode (restored afterwards)."""
    engine = HFRolloutEngine(model, processor, max_batch=batch * decoding.k, synced=synced)
    was_training = model.training
    model.eval()
    try:
        return sample_records(engine, items, ids, decoding, max_new_tokens, new_scorer, prompt, seed, batch, seed_uid,
                              progress)
    finally:
        model.train(was_training)


def metric_entries(name: str, summary: dict[str, float], file: str | None = None,
                   budget_point: float | None = None) -> dict[str, Any]:
    """The metrics.jsonl keys of one evaluation: eval/<name>/{mean@k, pass@1, pass@<k>, n, k, file,
    budget_point}."""
    out: dict[str, Any] = {f"eval/{name}/{key}": value for key, value in summary.items()}
    if file is not None:
        out[f"eval/{name}/file"] = file
    if budget_point is not None:
        out[f"eval/{name}/budget_point"] = budget_point
    return out


def write_records(path: Path, records: Sequence[Record]) -> None:
    """One JSON line per item; written whole, so a reader never sees half an evaluation."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(json.dumps({"id": r["id"], "correct": r["correct"], "greedy": r["greedy"]})
                                    + "\n" for r in records))


def read_records(path: Path) -> list[Record]:
    return read_jsonl(path)


# ----------------------------------------------------------------------------- prompt variants (per response)


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
                   max_new_tokens: int = 40, seed: int = 0, batch: int = 128, synced: bool = False,
                   verifier: Callable[[str, Any], Any] | None = None) -> dict[str, Any]:
    """Accuracy over every response of a named decoding, one record per response (with its text). Scored with
    `verifier` when given (the reward must be 1.0), else with the embedded task's integer match."""
    if decoding not in DECODING:
        raise ValueError(f"unknown decoding {decoding!r}; valid: {', '.join(DECODING)}")
    d = dict(DECODING[decoding])
    samples = d.pop("samples")
    engine = HFRolloutEngine(model, processor, max_batch=batch, synced=synced)
    params = SamplingParams(n=samples, max_new_tokens=max_new_tokens, **d)
    shown = _variant(items, variant)

    def score(text: str, item: Any) -> dict[str, Any]:
        if verifier is None:
            return embedded.score(text, item)
        verdict = verifier(text, item.answer)
        return {"parsed": verdict.parsed, "correct": verdict.reward >= 1.0}

    was_training = model.training
    model.eval()
    records = []
    try:
        for scored in generate_and_score(engine, shown, [str(it.id) for it in shown], params, [score] * samples,
                                         seed=seed, batch=batch):
            records += [{"id": s.item.id, "variant": variant, "response": text, **result}
                        for s in scored for text, result in zip(s.texts, s.results)]
    finally:
        model.train(was_training)
    acc = sum(r["correct"] for r in records) / max(len(records), 1)
    return {"accuracy": acc, "n": len(items), "samples": samples, "records": records}
