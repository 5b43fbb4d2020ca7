"""Pieces the five benchmark modules share: errors, lazy images, local/hub loading, breakdowns.

Loading returns plain dicts in the official Hugging Face schema. Image cells become `LazyImage`
objects that keep the encoded bytes (or a file path) and decode only when asked, so loading 10k rows
never decodes 10k images. Every loaded row also carries `row["_meta"]`:
`{"benchmark", "split", "source", "revision", "files"}`; `revision` is the hub commit sha when read
from the hub, else the `revision=` argument, a `REVISION` file in the folder, the snapshot sha of an
HF cache path, or a fingerprint of the data files (`local-<sha1 of names and sizes>`).

Image cells that hold only a path (the official repositories' json/jsonl layouts: MATH-V `image`,
MathVista `image`, We-Math `image_path`) are resolved at load time against the data file's folder,
then the folder above it (MATH-V keeps `data/` beside `images/`), then the folder passed as source.
A file found nowhere is a `BenchmarkError` naming the row and the path, so that a model is never
evaluated text-only by accident; `allow_missing_images=True` turns it into one warning with a count
and leaves those rows without an image (`_meta["missing_images"]` holds the count).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from rapidfuzz.distance import Levenshtein

from rlsd_harness.local_files import HUB_ID, find_image, read_rows, split_files


class BenchmarkError(ValueError):
    """A problem with a benchmark's data: names the benchmark, the split and the row."""

    def __init__(self, benchmark: str, split: str | None, row_id: Any, problem: str):
        self.benchmark, self.split, self.row_id, self.problem = benchmark, split, row_id, problem
        super().__init__(f"{benchmark}: split {split!r}, row {row_id!r}: {problem}")


class SplitNotFoundError(BenchmarkError):
    """A local source without a data file for the asked split; `present` lists the valid splits it does have."""

    def __init__(self, benchmark: str, split: str, source: str, present: list[str]):
        self.source, self.present = source, present
        has = f" (it has {', '.join(map(repr, present))})" if present else ""
        super().__init__(benchmark, split, None, f"no parquet/arrow/jsonl file for this split under {source}{has}")


class MissingImagesError(BenchmarkError):
    """Rows whose image file is missing; `detail` says which (first row and count) without the way out, so
    that a caller can name its own spelling of `allow_missing_images`."""

    def __init__(self, benchmark: str, split: str, row_id: Any, detail: str, count: int):
        self.detail, self.count = detail, count
        super().__init__(benchmark, split, row_id, f"{detail}; put the image files where the data file says, or "
                         "pass allow_missing_images=True to evaluate those rows without their image")


def row_split(row: dict) -> str | None:
    meta = row.get("_meta") if isinstance(row, dict) else None
    return meta.get("split") if isinstance(meta, dict) else None


def require(benchmark: str, row: Any, fields: Iterable[str], id_field: str) -> None:
    """Raise a BenchmarkError naming the first missing field (None counts as missing)."""
    if not isinstance(row, dict):
        raise BenchmarkError(benchmark, None, None, f"row is a {type(row).__name__}, not a dict")
    for name in fields:
        if row.get(name) is None:
            raise BenchmarkError(benchmark, row_split(row), row.get(id_field), f"missing field {name!r}")


def check_variant(benchmark: str, variant: str, valid: Iterable[str]) -> None:
    valid = list(valid)
    if variant not in valid:
        raise ValueError(f"{benchmark}: unknown prompt variant {variant!r}; valid: {', '.join(valid)}")


def check_mode(benchmark: str, mode: str) -> None:
    if mode not in ("official", "fixed"):
        raise ValueError(f"{benchmark}: unknown mode {mode!r}; valid: official, fixed")


# ----------------------------------------------------------------------------- images


class LazyImage:
    """An encoded image cell ({"bytes", "path"} in HF parquet) decoded on `.load()`."""

    __slots__ = ("data", "path", "benchmark", "split", "row_id")

    def __init__(self, data: bytes | None, path: str | None, benchmark: str, split: str | None, row_id: Any):
        self.data, self.path = data, path
        self.benchmark, self.split, self.row_id = benchmark, split, row_id

    def load(self):
        """Decode to an RGB-or-original-mode PIL image; raise BenchmarkError if it cannot be decoded."""
        from PIL import Image

        try:
            if self.data is not None:
                img = Image.open(io.BytesIO(self.data))
            elif self.path:
                img = Image.open(self.path)
            else:
                raise ValueError("image cell has neither bytes nor path")
            img.load()  # force the decode now so a corrupt file fails here, not in the model
            return img
        except Exception as exc:  # PIL raises several unrelated types for bad data
            raise BenchmarkError(self.benchmark, self.split, self.row_id, f"undecodable image: {exc}") from exc

    def __repr__(self) -> str:
        size = len(self.data) if self.data is not None else 0
        return f"LazyImage(bytes={size}, path={self.path!r})"


def to_lazy(cell: Any, base_dir: Path | None, benchmark: str, split: str | None, row_id: Any) -> Any:
    """Wrap one image cell; None stays None; a bare string is a path (joined to `base_dir` when
    relative and a base is given)."""
    if cell is None or isinstance(cell, LazyImage):
        return cell
    if isinstance(cell, dict):
        data, path = cell.get("bytes"), cell.get("path")
    elif isinstance(cell, str):
        data, path = None, cell
    elif isinstance(cell, bytes | bytearray):
        data, path = bytes(cell), None
    else:
        # A PIL image (e.g. from a `datasets` object handed in directly): keep it, it is already decoded.
        return cell
    if data is None and path and base_dir is not None and not os.path.isabs(path):
        # Only where the cell is read later without `load_rows` resolving it (that one does its own).
        path = str(base_dir / path)
    return LazyImage(data, path, benchmark, split, row_id)


def decode(img: Any):
    """Decode a LazyImage; pass PIL images through."""
    return img.load() if isinstance(img, LazyImage) else img


# ----------------------------------------------------------------------------- loading

def _local_revision(root: Path, files: list[Path]) -> str:
    marker = root / "REVISION"
    if marker.is_file():
        return marker.read_text().strip()
    m = re.search(r"/snapshots/([0-9a-f]{40})(/|$)", str(root.resolve()))
    if m:
        return m.group(1)
    digest = hashlib.sha1()
    for f in files:
        digest.update(f"{f.relative_to(root)}:{f.stat().st_size}\n".encode())
    return "local-" + digest.hexdigest()[:16]


def _hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the hub cannot be reached (None if it can): fail in seconds, not after minutes of retries."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
    except OSError as exc:
        return f"cannot connect to {url.hostname}: {exc}"
    return None


def _load_hub(benchmark: str, source: str, split: str, revision: str | None, configs: list[str] | None):
    reason = _hub_unreachable()
    if reason:
        raise BenchmarkError(
            benchmark, split, None,
            f"source {source!r} is not a local folder and the hub is unreachable ({reason}); offline is the "
            "normal case: pass a local folder of parquet/arrow/jsonl files",
        )
    try:
        import datasets

        parts = []
        for config in configs or [None]:
            ds = datasets.load_dataset(source, config, split=split, revision=revision)
            # Keep images encoded so that decoding stays lazy, as with local files.
            for name, feat in ds.features.items():
                if isinstance(feat, datasets.Image):
                    ds = ds.cast_column(name, datasets.Image(decode=False))
                elif isinstance(feat, datasets.Sequence | datasets.List) and isinstance(
                    getattr(feat, "feature", None), datasets.Image
                ):
                    ds = ds.cast_column(name, datasets.List(datasets.Image(decode=False)))
            parts.append(ds.to_list())
        sha = revision
        try:
            from huggingface_hub import HfApi

            sha = HfApi().dataset_info(source, revision=revision).sha or revision
        except Exception:  # the sha is a record, not a requirement
            pass
        return [r for part in parts for r in part], sha
    except Exception as exc:
        raise BenchmarkError(
            benchmark, split, None,
            f"source {source!r} is not a local folder and reading it from the hub failed "
            f"(offline is the normal case: pass a local folder of parquet/arrow/jsonl files): {exc}",
        ) from exc


def _resolve_path_image(img: LazyImage, raw_path: str, base: Path | None, root: Path | None) -> list[Path] | None:
    """Point a path-only LazyImage at the first existing candidate (under the data file's folder, the folder
    above it, the source folder); the candidates tried if none exists."""
    found, candidates = find_image(raw_path, (base, base.parent if base is not None else None, root))
    if found is None:
        return candidates
    img.path = str(found)
    return None


def load_rows(
    benchmark: str,
    source: str | os.PathLike,
    split: str,
    revision: str | None,
    *,
    valid_splits: Iterable[str],
    id_field: str,
    image_fields: Iterable[str] = (),
    list_image_fields: Iterable[str] = (),
    hub_configs: list[str] | None = None,
    image_paths: Mapping[str, str] | None = None,
    require_image: str | None = None,
    allow_missing_images: bool = False,
) -> list[dict]:
    """Rows of one split, from a local folder/file or a hub id; image cells wrapped lazily.

    `image_paths` maps an image field to a path field read when the image field is absent or empty
    (`{"decoded_image": "image"}`: the hub parquet has the bytes, the official jsonl only the path).
    `require_image` names a field every row must have an image in. Path-only images must exist on
    disk (see the module docstring); `allow_missing_images` makes a missing one a warning."""
    valid_splits = list(valid_splits)
    if split not in valid_splits:
        raise BenchmarkError(benchmark, split, None, f"unknown split; valid: {', '.join(valid_splits)}")
    src = str(source)
    path = Path(src).expanduser()
    base_dirs: list[Path | None]
    root: Path | None = None
    if path.exists():
        files = [path] if path.is_file() else split_files(path, split)
        if not files:
            present = [s for s in valid_splits if path.is_dir() and split_files(path, s)]
            raise SplitNotFoundError(benchmark, split, src, present)
        root = path if path.is_dir() else path.parent
        rev = revision or _local_revision(root, files)
        raw, base_dirs = [], []
        for f in files:
            rows = read_rows(f, "pid")  # a {pid: row} json: MathVista's testmini.json
            raw.extend(rows)
            base_dirs.extend([f.parent] * len(rows))
        file_names = [str(f.relative_to(root)) for f in files]
    elif HUB_ID.match(src) and not src.startswith((".", "~")):
        raw, rev = _load_hub(benchmark, src, split, revision, hub_configs)
        base_dirs, file_names = [None] * len(raw), []
    else:
        raise BenchmarkError(benchmark, split, None, f"local path {src!r} does not exist")

    meta = {"benchmark": benchmark, "split": split, "source": src, "revision": rev, "files": file_names}
    image_paths = dict(image_paths or {})
    missing: list[tuple[Any, str, str]] = []  # (row id, field, what was looked for)
    out = []
    for row, base in zip(raw, base_dirs):
        if not isinstance(row, dict):
            raise BenchmarkError(benchmark, split, None, f"a row is a {type(row).__name__}, not a dict")
        rid = row.get(id_field)
        if rid is None:
            raise BenchmarkError(benchmark, split, None, f"a row has no {id_field!r} field")
        for name, path_field in image_paths.items():
            cell = row.get(name)
            empty = cell is None or (isinstance(cell, dict) and cell.get("bytes") is None and not cell.get("path"))
            if empty and isinstance(row.get(path_field), str) and row[path_field].strip():
                row[name] = row[path_field].strip()
        for name in image_fields:
            if name in row:
                row[name] = to_lazy(row[name], None, benchmark, split, rid)
        for name in list_image_fields:
            if row.get(name) is not None:
                row[name] = [to_lazy(c, None, benchmark, split, rid) for c in row[name]]
        row_missing = False
        for name in (*image_fields, *list_image_fields):
            cells = row.get(name)
            for cell in cells if isinstance(cells, list) else [cells]:
                if isinstance(cell, LazyImage) and cell.data is None and cell.path:
                    tried = _resolve_path_image(cell, cell.path, base, root)
                    if tried is not None:
                        missing.append((rid, name, "no file at " + " or ".join(str(t) for t in tried)))
                        row[name] = [] if isinstance(cells, list) else None
                        row_missing = True
                        break
        if require_image is not None and row.get(require_image) is None and not row_missing:
            fields = [require_image, *(p for n, p in image_paths.items() if n == require_image)]
            missing.append((rid, require_image, f"the row has no {' or '.join(map(repr, fields))} field"))
        row["_meta"] = meta
        out.append(row)
    if missing:
        rid, name, what = missing[0]
        more = f" ({len(missing) - 1} more row(s) too)" if len(missing) > 1 else ""
        if not allow_missing_images:
            raise MissingImagesError(benchmark, split, rid, f"image {name!r} missing: {what}{more}", len(missing))
        warnings.warn(
            f"{benchmark}: split {split!r}: {len(missing)} of {len(out)} rows have no image and are prompted "
            f"text-only (allow_missing_images=True); first: row {rid!r}, {name!r}: {what}",
            stacklevel=3,
        )
    meta["missing_images"] = len(missing)
    return out


# ----------------------------------------------------------------------------- metrics helpers


def acc_entry(correct: int, total: int) -> dict:
    return {"accuracy": correct / total if total else 0.0, "correct": correct, "total": total}


def breakdown(keys_and_flags: Iterable[tuple[Any, bool]]) -> dict:
    """{key: {"accuracy", "correct", "total"}} over (key, correct) pairs, keys sorted for a fixed order."""
    counts: dict[Any, list[int]] = {}
    for key, ok in keys_and_flags:
        c = counts.setdefault(key, [0, 0])
        c[0] += bool(ok)
        c[1] += 1
    return {k: acc_entry(*counts[k]) for k in sorted(counts, key=str)}


def check_aligned(benchmark: str, rows: list, results: list) -> None:
    if len(rows) != len(results):
        raise ValueError(f"{benchmark}: metrics got {len(rows)} rows but {len(results)} results")


def is_correct(result: Any) -> bool:
    """A result is a score() dict or a bare bool."""
    if isinstance(result, dict):
        return bool(result.get("correct"))
    return bool(result)


# ----------------------------------------------------------------------------- edit distance


def levenshtein(a: str, b: str) -> int:
    """Plain unit-cost edit distance (what python-Levenshtein's `distance` returns)."""
    return Levenshtein.distance(a, b)


def first_of(items: list, key: Callable[[Any], Any]):
    """The first item with the smallest key (list.index(min(...)) semantics)."""
    keys = [key(x) for x in items]
    return items[keys.index(min(keys))]
