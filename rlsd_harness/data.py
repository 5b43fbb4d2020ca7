"""Training and held-out prompts: the embedded task, or a local dataset of (question, images, answer) rows.

A prompt stream is a pure function of (seed, step): `prompts(step, n)` always returns the same examples,
so a resumed run and a run sharded across ranks see exactly the prompts of an uninterrupted single run.

Local datasets are opened through Hugging Face `datasets` and stay memory mapped: `.arrow` files and
`save_to_disk` folders are mapped in place, `.jsonl` / `.json` / `.parquet` files are converted once into
the `datasets` cache (`data.cache_dir`) and mapped from there, and a hub id is read only from the local
Hugging Face caches (nothing is ever downloaded). Images stay encoded until a row is asked for. Which files
of a folder hold a split, how a file is read and where a relative image path points are local_files' rules,
the ones the evaluation benchmarks read their folders by.
"""

from __future__ import annotations

import ast
import contextlib
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from rlsd_harness.benchmarks import embedded
from rlsd_harness.config import ConfigError
from rlsd_harness.local_files import (
    DATA_SUFFIXES,
    HUB_ID,
    DataError,
    data_files,
    image_candidates,
    open_file,
    quiet_offline,
    split_files,
)
from rlsd_harness.rollout.hf import stable_seed

if TYPE_CHECKING:
    from rlsd_harness.config.typed import DataSection


@dataclass
class Example:
    id: str
    question: str
    images: list
    answer: str
    solution: str
    meta: dict = field(default_factory=dict)
    # Images only the teacher sees (the privileged context), after the student's; the student's prompt never holds them.
    teacher_images: list = field(default_factory=list)


class EmbeddedData:
    def __init__(self, level: int = 2, seed: int = 0, test_size: int = 256, test_seed: int = 0,
                 privileged: str = "text") -> None:
        if privileged not in embedded.PRIVILEGED:
            raise ConfigError(f"data.privileged={privileged!r}; valid: {', '.join(embedded.PRIVILEGED)}")
        self.level, self.seed, self.test_size, self.test_seed = level, seed, test_size, test_seed
        self.privileged = privileged

    def prompts(self, step: int, n: int) -> list:
        return embedded.generate("train", n, seed=stable_seed("train", self.seed, step), level=self.level,
                                 privileged=self.privileged)

    def refill_prompts(self, step: int, start: int, n: int, rank: int = 0, world: int = 1) -> list:
        """Prompts `start` .. `start + n - 1` of rank `rank`'s share of step `step`'s refill stream (dynamic
        sampling's extra rollouts), rank r taking items r, r + world, ...: the prompt stream of a step key that
        no training step has, so refilling changes no later step's prompts."""
        items = self.prompts(f"refill/{step}", (start + n) * world)  # type: ignore[arg-type]  # a seed key
        return [items[(start + j) * world + rank] for j in range(n)]

    def heldout_set(self, split: str, n: int | None = None) -> list:
        """The first `n` items of a held-out split: "validation" (to choose hyperparameters) or "test" (to
        report); a smaller n gives a prefix of a larger one."""
        if split not in ("validation", "test"):
            raise ValueError(f"embedded: unknown held-out split {split!r}; valid: validation, test")
        return embedded.generate(split, n or self.test_size, seed=self.test_seed, level=self.level,
                                 privileged=self.privileged)

    def test_set(self, n: int | None = None) -> list:
        return self.heldout_set("test", n)


# ----------------------------------------------------------------------------- field mapping

FIELDS = ("id", "question", "images", "answer", "solution", "options", "teacher_images")
REQUIRED = ("question", "answer")
IMAGE_FIELDS = ("images", "teacher_images")
# Columns every schema takes when present: `teacher_images` holds images only the teacher sees (the visual
# privileged context: an annotated figure, a hint image), one cell or a list per row, like `images`.
DEFAULT_COLUMNS: dict[str, Any] = {"teacher_images": "teacher_images"}

# Which columns hold each field, per row schema. "a|b" takes the first column that exists; a list of
# columns (images only) takes every listed column that exists, in order, skipping empty cells. A schema
# may list alternatives, tried in order: the first whose required columns all exist is used.
SCHEMAS: dict[str, list[dict[str, Any]]] = {
    # MMFineReason (and the usual question/answer/images layout): several images per row, optional solution.
    "mmfinereason": [{"id": "id|pid", "question": "problem|question", "images": "images|image",
                      "answer": "answer", "solution": "solution", "options": None}],
    "mmmu": [{"id": "id", "question": "question", "images": [f"image_{k}" for k in range(1, 8)],
              "answer": "answer", "solution": "explanation", "options": "options"}],
    # The hub parquet carries the official prompt (`query`, options included); the repository's json does not.
    "mathvista": [{"id": "pid", "question": "query", "images": "decoded_image|image", "answer": "answer",
                   "solution": None, "options": None},
                  {"id": "pid", "question": "question", "images": "decoded_image|image", "answer": "answer",
                   "solution": None, "options": "choices"}],
    "mathvision": [{"id": "id", "question": "question", "images": "decoded_image|image", "answer": "answer",
                    "solution": "solution", "options": "options"}],
    "zerobench": [{"id": "question_id", "question": "question_text", "images": "question_images_decoded",
                   "answer": "question_answer", "solution": None, "options": None}],
    "wemath": [{"id": "ID", "question": "question", "images": "image_path", "answer": "answer",
                "solution": None, "options": "option"}],
}

_IMAGE_TAG = re.compile(r"<image\s*\d*>")
KEY_COLUMN = "__key__"  # a {key: row} json file's keys; the id of last resort


def _resolve_fields(columns: list[str], schema: str, overrides: dict[str, Any], where: str) -> dict[str, Any]:
    """Map each field to the column(s) that hold it, or None; fail naming the missing columns."""
    if schema not in SCHEMAS:
        raise DataError(f"unknown data.schema {schema!r}; valid: {', '.join(SCHEMAS)}")
    bad = sorted(set(overrides) - set(FIELDS))
    if bad:
        raise DataError(f"unknown data.fields key(s) {bad}; valid: {', '.join(FIELDS)}")
    have = set(columns)

    def pick(spec: Any) -> Any:
        if spec is None:
            return None
        if isinstance(spec, list | tuple):
            found = [c for c in (pick(s) for s in spec) if c is not None]
            return found or None
        return next((c for c in str(spec).split("|") if c in have), None)

    problems = []
    for alt in SCHEMAS[schema]:
        spec = {**DEFAULT_COLUMNS, **alt, **{k: v for k, v in overrides.items() if v is not None}}
        fields = {k: pick(spec[k]) for k in FIELDS}
        if fields["id"] is None and KEY_COLUMN in have:
            fields["id"] = KEY_COLUMN
        missing = [k for k in REQUIRED if fields[k] is None]
        # A field the user named must exist: silently falling back would train on the wrong column.
        missing += [k for k in overrides if overrides[k] is not None and fields[k] is None and k not in missing]
        if not missing:
            return fields
        problems.append(", ".join(f"{k} (column {spec[k]!r})" for k in missing))
    raise DataError(f"{where}: no column for {' / '.join(problems)} under data.schema={schema}; the file's "
                    f"columns are {', '.join(columns)}; name the right ones with data.fields.<field>=<column>")


# ----------------------------------------------------------------------------- opening files


def _hub_files(repo: str, split: str, config: str | None, revision: str | None, cache_dir: str | None,
               where: str) -> tuple[list[Path], Any]:
    """A hub dataset from the local caches only: the hub download cache (`local_files_only`), else the
    `datasets` cache of an earlier `load_dataset`. Returns (data files, None) or ([], the cached Dataset)."""
    import datasets
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    looked = []
    try:
        root = Path(snapshot_download(repo, repo_type="dataset", revision=revision, local_files_only=True))
        if config:
            if not (root / config).is_dir():
                subs = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
                raise DataError(f"{where}: data.config {config!r} is not a folder of the cached {repo} ({root}); "
                                f"valid: {', '.join(subs) or 'none (leave data.config unset)'}")
            root = root / config
        files = split_files(root, split)
        if files:
            return files, None
        looked.append(f"{root} (no file of split {split!r})")
    except LocalEntryNotFoundError:
        looked.append("the hub download cache")
    from datasets.naming import camelcase_to_snakecase

    owner, name = repo.split("/")
    base = Path(cache_dir or datasets.config.HF_DATASETS_CACHE) / f"{owner}___{camelcase_to_snakecase(name)}" / (config or "default")
    looked.append(str(base))
    shards = sorted(base.glob(f"*/*/*-{split}.arrow")) + sorted(base.glob(f"*/*/*-{split}-[0-9]*-of-[0-9]*.arrow"))
    if shards:
        newest = max(shards, key=lambda p: p.stat().st_mtime).parent
        parts = [open_file(p, where, cache_dir, KEY_COLUMN) for p in shards if p.parent == newest]
        return [], parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
    raise DataError(f"{where}: {repo!r} is not a local path and split {split!r} is not in the local Hugging Face "
                    f"caches (looked in {'; '.join(looked)}); nothing is downloaded: fetch it first (for example "
                    f"`hf download --repo-type dataset {repo}`) or point {where} at a local file or folder")


@dataclass
class _Part:
    """One opened file (or dataset) and where its relative image paths start."""
    ds: Any
    base: Path | None
    label: str
    start: int


def _no_split_files(folder: Path, split: str, where: str) -> None:
    """Raise the DataError of a folder without a file of `split` (local_files.split_files: its rule)."""
    present = data_files(folder)
    if not present:
        raise DataError(f"{where}: {folder} holds no {'/'.join(DATA_SUFFIXES)} file")
    key = {"data.path": "data.split", "data.test_path": "data.test_split"}.get(where, "the split")
    listed = ", ".join(str(p.relative_to(folder)) for p in present[:5]) + (" ..." if len(present) > 5 else "")
    if folder.name == split:
        raise DataError(f"{where}: {folder} is the folder of split {split!r} of {folder.parent} (its files are that "
                        f"split's there, not here): point {where} at {folder.parent}")
    raise DataError(f"{where}: {folder} has no file of split {split!r} ({key}): a split's files are "
                    f"{split}.<ext>, its shards {split}-00000-of-00002.<ext>, or the files of a folder named "
                    f"{split}; the folder holds {listed}; point {where} at one file, or set {key} to the split "
                    "those files are named for")


def _open_source(source: Any, where: str, split: str, config: str | None, revision: str | None,
                 cache_dir: str | None) -> list[_Part]:
    import datasets

    if isinstance(source, datasets.Dataset):
        return [_Part(source, None, "<in-memory dataset>", 0)]
    src = str(source)
    path = Path(src).expanduser()
    parts: list[_Part] = []
    if path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file()):
        with quiet_offline():
            try:
                ds = datasets.load_from_disk(str(path))
            except Exception as exc:
                raise DataError(f"{where}: {path} is a damaged save_to_disk folder ({exc})") from None
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise DataError(f"{where}: {path} has no split {split!r}; valid: {', '.join(ds)}")
            ds = ds[split]
        return [_Part(ds, path, str(path), 0)]
    if path.exists():
        if path.is_file() and path.suffix not in DATA_SUFFIXES:
            raise DataError(f"{where}: {path} has an unsupported suffix; valid: {', '.join(DATA_SUFFIXES)}, "
                            "a folder of such files, or a save_to_disk folder")
        files = [path] if path.is_file() else split_files(path, split)
        if not files:
            _no_split_files(path, split, where)
    elif HUB_ID.match(src):
        files, cached = _hub_files(src, split, config, revision, cache_dir, where)
        if cached is not None:
            return [_Part(cached, None, f"{src} (datasets cache)", 0)]
    else:
        raise DataError(f"{where}: {src} does not exist (a local file or folder, or a hub id owner/name in the local cache)")
    start = 0
    for f in files:
        ds = open_file(f, where, cache_dir, KEY_COLUMN)
        parts.append(_Part(ds, f.parent, str(f), start))
        start += len(ds)
    return parts


# ----------------------------------------------------------------------------- images


def decode_image(cell: Any, base: Path | None) -> Image.Image:
    """One image cell: a PIL image, encoded bytes, {"bytes", "path"} (the HF Image feature), or a path
    (relative paths start at the data file's folder). Decoded now, so a corrupt image fails here."""
    if isinstance(cell, Image.Image):
        return cell
    data, path = None, None
    if isinstance(cell, dict):
        data, path = cell.get("bytes"), cell.get("path")
    elif isinstance(cell, bytes | bytearray):
        data = bytes(cell)
    elif isinstance(cell, str):
        path = cell
    else:
        raise ValueError(f"an image cell is a {type(cell).__name__}; expected a path, bytes or {{'bytes', 'path'}}")
    if data:
        img = Image.open(io.BytesIO(data))
    elif path:
        img = Image.open(image_candidates(path, [base])[0])
    else:
        raise ValueError("an image cell has neither bytes nor a path")
    img.load()
    return img


# What Qwen-VL's image processors take (transformers' Qwen2-VL `smart_resize`, shared by Qwen2.5-VL and
# Qwen3-VL): it raises "absolute aspect ratio must be smaller than 200" when the long side over the short one
# exceeds MAX_ASPECT_RATIO; and a side thinner than the spatial merge size (2 patches merged per side) leaves
# nothing to merge. Checked from each image's header at data-open time, so such a row is refused before a run
# writes anything instead of failing in step 1.
MAX_ASPECT_RATIO = 200
MIN_IMAGE_SIDE = 2


def image_size_problem(width: int, height: int) -> str:
    """Why Qwen-VL's processors cannot take a width x height image ('' when they can)."""
    if min(width, height) < MIN_IMAGE_SIDE:
        return (f"image is {width} x {height} pixels (width x height): a side is under {MIN_IMAGE_SIDE} pixels, "
                f"the processors' merge size; pad or resize it, or remove the row")
    if max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
        return (f"image is {width} x {height} pixels (width x height): aspect ratio "
                f"{max(width, height) / min(width, height):.0f} is over {MAX_ASPECT_RATIO}, the most Qwen-VL's "
                f"processors take; crop or pad it, or remove the row")
    return ""


def _header_size_problem(source: Any) -> str:
    """image_size_problem of an encoded image or file, read from its header (PIL decodes no pixels until
    asked). An unreadable header is left to the row's own decoding, which names it when the row is read."""
    try:
        with Image.open(source) as img:
            return image_size_problem(*img.size)
    except Exception:  # PIL raises several unrelated types for bad data
        return ""


def _image_list(cells: Any) -> list:
    """The images of one row from its image column(s): one cell, a list of cells, or None."""
    if cells is None:
        return []
    if isinstance(cells, list | tuple):
        return list(cells)
    return [cells]


def _has_binary(t: Any) -> bool:
    import pyarrow as pa

    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return True
    if pa.types.is_struct(t):
        return any(_has_binary(t.field(i).type) for i in range(t.num_fields))
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return _has_binary(t.value_type)
    return False


def _scan_images(part: _Part, col: str) -> Iterator[tuple[int, int, str | None, str]]:
    """(row, number of images, path, problem) for rows whose images can be checked without decoding: the
    count per row, and every image that is a path only. Encoded bytes are not read (they stay mapped)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    table = part.ds.data
    if not _has_binary(table.schema.field(col).type):  # paths only: small, read through datasets (json decoded)
        for i, cells in enumerate(part.ds.select_columns([col])[col]):
            items = _image_list(cells)
            yield i, len(items), None, ""
            for c in items:
                p = c.get("path") if isinstance(c, dict) else c
                if not isinstance(p, str) or not p:
                    yield i, -1, None, f"an image entry is {c!r}, not a path"
                else:
                    yield i, -1, p, ""
        return
    offset = 0
    for chunk in table.column(col).chunks:
        if pa.types.is_list(chunk.type) or pa.types.is_large_list(chunk.type):
            counts = pc.fill_null(pc.list_value_length(chunk), 0).to_pylist()
            parents = np.asarray(pc.list_parent_indices(chunk))
            values = pc.list_flatten(chunk)
        else:
            counts = np.asarray(chunk.is_valid()).astype(int).tolist()
            parents = np.flatnonzero(np.asarray(chunk.is_valid()))
            values = chunk.drop_null()
        for i, k in enumerate(counts):
            yield offset + i, k, None, ""
        if pa.types.is_struct(values.type):
            names = [values.type.field(j).name for j in range(values.type.num_fields)]
            no_bytes = np.asarray(pc.is_null(pc.struct_field(values, "bytes"))) if "bytes" in names else np.ones(len(values), bool)
            paths = pc.struct_field(values, "path") if "path" in names else pa.nulls(len(values), pa.string())
            idx = np.flatnonzero(no_bytes)
            for j, p in zip(idx, pc.take(paths, pa.array(idx, pa.int64())).to_pylist()):
                yield offset + int(parents[j]), -1, p, "" if p else "an image entry has neither bytes nor a path"
            encoded = pc.struct_field(values, "bytes") if "bytes" in names else None
            for j in np.flatnonzero(~no_bytes):  # the header only: the mapped bytes are not copied or decoded
                problem = _header_size_problem(pa.BufferReader(encoded[int(j)].as_buffer()))
                if problem:
                    yield offset + int(parents[j]), -1, None, problem
        else:
            for j in np.flatnonzero(np.asarray(values.is_null())):
                yield offset + int(parents[j]), -1, None, "an image entry is empty (null)"
            for j in np.flatnonzero(np.asarray(values.is_valid())):
                problem = _header_size_problem(pa.BufferReader(values[int(j)].as_buffer()))
                if problem:
                    yield offset + int(parents[j]), -1, None, problem
        offset += len(chunk)


# ----------------------------------------------------------------------------- the dataset


def _format_options(value: Any) -> str:
    """Multiple-choice options appended to the question: a list (or its Python/JSON repr, as MMMU stores
    it) becomes lettered lines; any other text is appended as it is."""
    if value is None:
        return ""
    if isinstance(value, str) and value.strip().startswith("["):
        with contextlib.suppress(ValueError, SyntaxError):
            value = ast.literal_eval(value.strip())
    if isinstance(value, list | tuple):
        opts = [str(v) for v in value]
        if not opts:
            return ""
        if all(len(o) == 1 and o.isupper() for o in opts):  # options drawn in the image (MATH-V): letters only
            return "\nChoices: " + ", ".join(opts)
        return "\nChoices:\n" + "\n".join(f"{chr(65 + k)}. {o}" for k, o in enumerate(opts))
    text = str(value).strip()
    return f"\nChoices: {text}" if text else ""


def _answer_text(value: Any) -> str | None:
    """The gold answer as text; None when the value cannot be one answer (missing, empty, a list, ...)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return value.strip() or None
    return None


class LocalData:
    """Rows of (question, images, answer[, solution]) from a local dataset, memory mapped.

    `path`: a .jsonl / .json / .parquet / .arrow file, a folder of them (only those of `split` when they are
    named for splits), a `save_to_disk` folder, a hub id `owner/name` already in the local Hugging Face cache
    (never downloaded), or a `datasets.Dataset`. `schema` names which columns hold each field (see SCHEMAS)
    and `fields` overrides single ones; a `teacher_images` column (or data.fields.teacher_images), when present,
    holds images only the teacher sees (Example.teacher_images). Every row's question, answer and image paths
    (the teacher's too) are checked when the data is opened, and every bad row is reported with its index, id
    and field; images are decoded only when a row is read. Epoch e visits every row once, in a permutation seeded by (seed, e)."""

    def __init__(self, path: Any, seed: int = 0, test_path: Any = None, require_image: bool = True, *,
                 schema: str = "mmfinereason", fields: dict[str, Any] | None = None, split: str = "train",
                 test_split: str = "test", config: str | None = None, revision: str | None = None,
                 cache_dir: str | None = None, image_root: str | None = None, where: str = "data.path") -> None:
        self.seed, self.where, self.require_image = seed, where, require_image
        self.source = path
        parts = _open_source(path, where, split, config, revision, cache_dir)
        if image_root is not None:
            if not Path(image_root).is_dir():
                raise DataError(f"data.image_root {image_root} is not a folder")
            for p in parts:
                p.base = Path(image_root)
        columns = list(parts[0].ds.column_names)
        for p in parts[1:]:
            if list(p.ds.column_names) != columns:
                raise DataError(f"{where}: {p.label} has columns {p.ds.column_names}, {parts[0].label} has "
                                f"{columns}; every file of one dataset must have the same columns")
        self.fields = _resolve_fields(columns, schema, dict(fields or {}), f"{where} {parts[0].label}")
        if require_image and self.fields["images"] is None:
            raise DataError(f"{where} {parts[0].label}: no image column ({SCHEMAS[schema][0]['images']!r}) and "
                            f"data.require_image=true; name it with data.fields.images=<column>, or set "
                            f"data.require_image=false for text-only rows")
        shared = sorted(set(_image_list(self.fields["images"])) & set(_image_list(self.fields["teacher_images"])))
        if shared:
            raise DataError(f"{where} {parts[0].label}: column(s) {shared} hold both the student's images and the "
                            f"teacher's (data.fields.images / data.fields.teacher_images): the teacher's privileged "
                            f"images must be columns the student does not see")
        used = [c for k in FIELDS for c in _image_list(self.fields[k])]
        self._parts = [_Part(p.ds.select_columns(list(dict.fromkeys(used))), p.base, p.label, p.start) for p in parts]
        # Image columns holding encoded bytes are read from the mapped arrow table, one row at a time (never
        # through `datasets`' Image decoding); path-only columns are small and read through `datasets`.
        self._raw = {c for k in IMAGE_FIELDS for c in _image_list(self.fields[k])
                     if _has_binary(parts[0].ds.data.schema.field(c).type)}
        self._views = [p.ds.select_columns([c for c in p.ds.column_names if c not in self._raw]) for p in self._parts]
        self._starts = np.array([p.start for p in self._parts])
        self._len = sum(len(p.ds) for p in self._parts)
        if self._len == 0:
            raise DataError(f"{where}: {', '.join(p.label for p in parts)} has no rows")
        self._validate()
        self._perm: dict[int, np.ndarray] = {}
        self.test = None
        if test_path is not None:
            self.test = LocalData(test_path, seed, None, require_image, schema=schema, fields=fields,
                                  split=test_split, config=config, revision=revision, cache_dir=cache_dir,
                                  image_root=image_root, where="data.test_path")

    def __len__(self) -> int:
        return self._len

    def _locate(self, index: int) -> tuple[int, int]:
        k = int(np.searchsorted(self._starts, index, side="right")) - 1
        return k, index - self._parts[k].start

    def _validate(self, max_listed: int = 10) -> None:
        """Every row's text fields and image paths, before training starts; all problems counted, the
        first `max_listed` named."""
        f = self.fields
        problems: list[tuple[int, str]] = []
        total, missing_files = 0, 0

        def bad(index: int, rid: Any, field_: str, what: str, label: str) -> None:
            nonlocal total
            total += 1
            if len(problems) < 100 * max_listed:
                column = "" if field_ in IMAGE_FIELDS else f" (column {f[field_]!r})"
                problems.append((index, f"row {index} (id {rid!r}, {label}): {field_}{column} {what}"))

        img_cols = [(k, c) for k in IMAGE_FIELDS for c in _image_list(f[k])]
        for part in self._parts:
            text_cols = [c for c in dict.fromkeys([f["id"], f["question"], f["answer"]]) if c is not None]
            ids: list = []
            for batch in part.ds.select_columns(text_cols).iter(batch_size=4096):
                n = len(batch[text_cols[0]])
                for j in range(n):
                    i = len(ids)
                    rid = batch[f["id"]][j] if f["id"] else part.start + i
                    ids.append(rid)
                    q = batch[f["question"]][j]
                    if q is not None and not isinstance(q, str):
                        bad(part.start + i, rid, "question", f"is a {type(q).__name__}, not text", part.label)
                    elif not q or not _IMAGE_TAG.sub("", q).strip():
                        bad(part.start + i, rid, "question", "is missing or empty", part.label)
                    a = batch[f["answer"]][j]
                    if _answer_text(a) is None:
                        if isinstance(a, list | tuple):
                            what = (f"is a list {a!r}: the verifier compares one gold answer, so keep one answer "
                                    "per row (join them into one string if the task asks for all of them)")
                        elif a is None or (isinstance(a, str) and not a.strip()):
                            what = "is missing or empty"
                        else:
                            what = f"is a {type(a).__name__} ({a!r}), not a text or number answer"
                        bad(part.start + i, rid, "answer", what, part.label)
            n_images = np.zeros(len(part.ds), int)
            for field_, col in img_cols:
                for i, count, path, problem in _scan_images(part, col):
                    if count >= 0:
                        if field_ == "images":  # require_image asks for an image the student sees
                            n_images[i] += count
                    elif problem:
                        bad(part.start + i, ids[i], field_, f"(column {col!r}): {problem}", part.label)
                    elif path is not None:
                        full = image_candidates(path, [part.base])[0]
                        if not full.is_file():
                            missing_files += 1
                            bad(part.start + i, ids[i], field_, f"(column {col!r}): image file {full} does not exist", part.label)
                        elif size_problem := _header_size_problem(full):
                            bad(part.start + i, ids[i], field_, f"(column {col!r}): {full.name}: {size_problem}", part.label)
            if self.require_image and f["images"] is not None:
                for i in np.flatnonzero(n_images == 0):
                    bad(part.start + int(i), ids[i], "images", "has no image (data.require_image=true)", part.label)
        if total:
            listed = [msg for _, msg in sorted(problems)[:max_listed]]
            more = f"\n  ... and {total - len(listed)} more" if total > len(listed) else ""
            if missing_files:
                more += ("\n  (relative image paths start at the data file's folder, or at data.image_root when "
                         "it is set)")
            raise DataError(f"{self.where}: {total} bad row(s); nothing is dropped silently, fix or remove them:\n  "
                            + "\n  ".join(listed) + more)

    def __getitem__(self, index: int) -> Example:
        """Row `index` (0-based, over all files in order), images decoded."""
        if not 0 <= index < self._len:
            raise IndexError(f"row {index} out of range for {self._len} rows")
        k, i = self._locate(index)
        part, f = self._parts[k], self.fields
        row = self._views[k][i]
        for col in self._raw:
            row[col] = part.ds.data.slice(i, 1).column(col)[0].as_py()
        rid = str(row[f["id"]]) if f["id"] else str(index)
        question = _IMAGE_TAG.sub("", row[f["question"]]).strip()
        if f["options"]:
            question += _format_options(row[f["options"]])
        answer = _answer_text(row[f["answer"]])
        solution = row.get(f["solution"]) if f["solution"] else None
        decoded: dict[str, list] = {}
        for field_ in IMAGE_FIELDS:
            decoded[field_] = []
            for col in _image_list(f[field_]):
                for cell in _image_list(row[col]):
                    try:
                        decoded[field_].append(decode_image(cell, part.base))
                    except Exception as exc:  # PIL raises several unrelated types for bad data
                        raise DataError(f"{self.where}: row {index} (id {rid!r}, {part.label}): {field_} (column "
                                        f"{col!r}) cannot be decoded: {exc}") from None
        return Example(rid, question, decoded["images"], answer, str(solution) if solution not in (None, "") else answer,
                       {"index": index, "source": part.label}, teacher_images=decoded["teacher_images"])

    def order(self, epoch: int) -> np.ndarray:
        """The row order of `epoch`: a permutation of all rows, seeded by (seed, epoch) alone."""
        if epoch not in self._perm:
            if len(self._perm) > 2:  # a stream only moves forward: keep the current and next epoch
                self._perm.pop(min(self._perm))
            rng = np.random.default_rng(stable_seed("epoch", self.seed, epoch))
            self._perm[epoch] = rng.permutation(self._len)
        return self._perm[epoch]

    def at(self, start: int, n: int) -> list[Example]:
        """Prompts `start` .. `start + n - 1` of the stream (epoch after epoch, each a permutation)."""
        out = []
        for k in range(start, start + n):
            epoch, pos = divmod(k, self._len)
            out.append(self[int(self.order(epoch)[pos])])
        return out

    def prompts(self, step: int, n: int) -> list[Example]:
        """The `n` prompts of rollout step `step` (1-based): global prompts (step - 1) * n onward."""
        return self.at((step - 1) * n, n)

    def refill_prompts(self, step: int, start: int, n: int, rank: int = 0, world: int = 1) -> list[Example]:
        """Prompts `start` .. `start + n - 1` of rank `rank`'s share of step `step`'s refill stream (dynamic
        sampling's extra rollouts): a permutation of all rows seeded by (seed, step), apart from the main stream
        so that refilling changes no later step's prompts; rank r takes positions r, r + world, ..."""
        order = np.random.default_rng(stable_seed("refill", self.seed, step)).permutation(self._len)
        return [self[int(order[((start + j) * world + rank) % self._len])] for j in range(n)]

    def test_set(self, n: int | None = None) -> list[Example]:
        if self.test is None:
            raise DataError("data.test_path is not set: held-out evaluation of data=local needs it")
        return [self.test[i] for i in range(len(self.test) if n is None else min(n, len(self.test)))]


def build_data(cfg: DataSection, seed: int):
    """The data of a checked config's `data` section (every key present: the schema has checked it)."""
    if cfg.name == "embedded":
        return EmbeddedData(level=cfg.level, seed=seed, test_size=cfg.test_size, privileged=cfg.privileged)
    if cfg.name == "local":
        return LocalData(cfg.path, seed=seed, test_path=cfg.test_path, require_image=cfg.require_image,
                         schema=cfg.schema, fields=dict(cfg.fields), split=cfg.split, test_split=cfg.test_split,
                         config=cfg.config, revision=cfg.revision, cache_dir=cfg.cache_dir, image_root=cfg.image_root)
    raise KeyError(f"unknown data {cfg.name!r}; valid: embedded, local")
