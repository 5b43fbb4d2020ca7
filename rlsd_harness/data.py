"""Training and held-out prompts: the embedded task, or a local dataset of (question, images, answer) rows.

A prompt stream is a pure function of (seed, step): `prompts(step, n)` always returns the same examples,
so a resumed run and a run sharded across ranks see exactly the prompts of an uninterrupted single run.
"""

from __future__ import annotations

import io
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from rlsd_harness.benchmarks import embedded
from rlsd_harness.rollout.hf import stable_seed


@dataclass
class Example:
    id: str
    question: str
    images: list
    answer: str
    solution: str
    meta: dict = field(default_factory=dict)


class EmbeddedData:
    def __init__(self, level: int = 2, seed: int = 0, test_size: int = 256, test_seed: int = 0) -> None:
        self.level, self.seed, self.test_size, self.test_seed = level, seed, test_size, test_seed

    def prompts(self, step: int, n: int) -> list:
        return embedded.generate("train", n, seed=stable_seed("train", self.seed, step), level=self.level)

    def heldout_set(self, split: str, n: int | None = None) -> list:
        """The first `n` items of a held-out split: "validation" (to choose hyperparameters) or "test" (to
        report); a smaller n gives a prefix of a larger one."""
        if split not in ("validation", "test"):
            raise ValueError(f"embedded: unknown held-out split {split!r}; valid: validation, test")
        return embedded.generate(split, n or self.test_size, seed=self.test_seed, level=self.level)

    def test_set(self, n: int | None = None) -> list:
        return self.heldout_set("test", n)


def _load_rows(path: Path) -> list[dict]:
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if path.suffix == ".parquet":
        import pandas as pd

        return pd.read_parquet(path).to_dict("records")
    raise ValueError(f"unsupported data file {path} (use .jsonl or .parquet)")


def _image(value: Any, base: Path) -> Image.Image:
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict):  # the HF Image feature as stored in parquet: {"bytes": ..., "path": ...}
        return Image.open(io.BytesIO(value["bytes"])) if value.get("bytes") else Image.open(base / value["path"])
    return Image.open(base / str(value))


class LocalData:
    """Rows with `problem`/`question`, `answer` and `images` (MMFineReason's schema), from .jsonl or .parquet.
    Rows are validated up front: a row without an image or an answer is named in the error."""

    def __init__(self, path: str, seed: int = 0, test_path: str | None = None, require_image: bool = True) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"data.path {self.path} does not exist")
        self.rows = [self._example(i, r, require_image) for i, r in enumerate(_load_rows(self.path))]
        self.seed = seed
        self.test_path = test_path

    def _example(self, i: int, row: dict, require_image: bool) -> Example:
        rid = str(row.get("id", row.get("pid", i)))
        question = row.get("problem", row.get("question"))
        if not question:
            raise ValueError(f"{self.path}: row {rid} has no 'problem'/'question' text")
        if row.get("answer") in (None, ""):
            raise ValueError(f"{self.path}: row {rid} has no 'answer'")
        images = row.get("images") or ([row["image"]] if row.get("image") else [])
        if require_image and not images:
            raise ValueError(f"{self.path}: row {rid} has no image")
        question = question.replace("<image>", "").strip()
        return Example(rid, question, [_image(v, self.path.parent) for v in images], str(row["answer"]),
                       str(row.get("solution", row["answer"])))

    def prompts(self, step: int, n: int) -> list[Example]:
        order = list(range(len(self.rows)))
        out = []
        start = (step - 1) * n
        for k in range(start, start + n):
            epoch, pos = divmod(k, len(order))
            random.Random(stable_seed("epoch", self.seed, epoch)).shuffle(order)
            out.append(self.rows[order[pos]])
        return out

    def test_set(self, n: int | None = None) -> list[Example]:
        if self.test_path is None:
            raise ValueError("data.test_path is not set")
        return LocalData(self.test_path, self.seed).rows[:n]


def build_data(cfg: Any, seed: int):
    if cfg.name == "embedded":
        return EmbeddedData(level=cfg.level, seed=seed, test_size=cfg.test_size)
    if cfg.name == "local":
        return LocalData(cfg.path, seed=seed, test_path=cfg.get("test_path"))
    raise KeyError(f"unknown data {cfg.name!r}; valid: embedded, local")
