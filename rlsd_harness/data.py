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
from rlsd_harness.config import ConfigError
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

    def test_set(self, n: int | None = None) -> list:
        return embedded.generate("test", n or self.test_size, seed=self.test_seed, level=self.level)


class DataError(ConfigError):
    """A problem with the user's data: names the file, and the row and field when there is one."""


def _load_rows(path: Path, key: str = "data.path") -> list[dict]:
    if path.suffix == ".jsonl":
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{key}={path} is not UTF-8 text (byte {e.start})") from None
        rows = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{key}={path} line {lineno} is not valid JSON ({e.msg}, column {e.colno})") from None
            if not isinstance(row, dict):
                raise DataError(f"{key}={path} line {lineno} is a JSON {type(row).__name__}, not an object (one row per line)")
            rows.append(row)
        return rows
    if path.suffix == ".parquet":
        import pandas as pd

        try:
            return pd.read_parquet(path).to_dict("records")
        except Exception as e:  # pyarrow raises several types for a file that is not parquet
            raise DataError(f"{key}={path} is not a readable parquet file ({e})") from None
    raise DataError(f"{key}={path}: unsupported data file; valid: .jsonl, .parquet")


def _image(value: Any, base: Path) -> Image.Image:
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict):  # the HF Image feature as stored in parquet: {"bytes": ..., "path": ...}
        return Image.open(io.BytesIO(value["bytes"])) if value.get("bytes") else Image.open(base / value["path"])
    return Image.open(base / str(value))


def _scalar_text(value: Any) -> str | None:
    """A gold answer as text; None for a value that cannot be one answer (a list, a mapping)."""
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        return str(value)
    return None


class LocalData:
    """Rows with `problem`/`question`, `answer` and `images` (MMFineReason's schema), from .jsonl or .parquet.
    Rows are validated up front: a row without an image or an answer is named in the error."""

    def __init__(self, path: str, seed: int = 0, test_path: str | None = None, require_image: bool = True,
                 key: str = "data.path") -> None:
        self.path, self.key = Path(path), key
        if not self.path.exists():
            raise FileNotFoundError(f"{key} {self.path} does not exist")
        self.rows = [self._example(i, r, require_image) for i, r in enumerate(_load_rows(self.path, key))]
        if not self.rows:
            raise DataError(f"{key}={self.path} has no rows")
        self.seed = seed
        self.test_path = test_path

    def _example(self, i: int, row: dict, require_image: bool) -> Example:
        rid = str(row.get("id", row.get("pid", i)))
        question = row.get("problem", row.get("question"))
        where = f"{self.key}={self.path} row {rid}"
        if not question or not isinstance(question, str):
            raise DataError(f"{where} has no 'problem'/'question' text")
        if row.get("answer") in (None, ""):
            raise DataError(f"{where} has no 'answer'")
        answer = _scalar_text(row["answer"])
        if answer is None:
            raise DataError(f"{where}: answer {row['answer']!r} is a {type(row['answer']).__name__}; valid: one "
                            f"string or number")
        images = row.get("images") or ([row["image"]] if row.get("image") else [])
        if isinstance(images, str | dict):  # one image given without its list: not a list of characters
            images = [images]
        if require_image and not len(images):
            raise DataError(f"{where} has no image")
        question = question.replace("<image>", "").strip()
        opened = []
        for v in images:
            try:
                opened.append(_image(v, self.path.parent))
            except (OSError, KeyError, TypeError) as e:  # missing file, not an image, a cell without bytes/path
                raise DataError(f"{where}: image {str(v)[:80]!r} cannot be opened ({type(e).__name__}: {e})") from None
        return Example(rid, question, opened, answer, str(row.get("solution", answer)))

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
            raise DataError("data.test_path is not set: held-out evaluation of data=local needs it")
        return LocalData(self.test_path, self.seed, key="data.test_path").rows[:n]


def build_data(cfg: Any, seed: int):
    if cfg.name == "embedded":
        return EmbeddedData(level=cfg.level, seed=seed, test_size=cfg.test_size)
    if cfg.name == "local":
        return LocalData(cfg.path, seed=seed, test_path=cfg.get("test_path"))
    raise KeyError(f"unknown data {cfg.name!r}; valid: embedded, local")
