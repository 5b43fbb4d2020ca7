"""Local data files, for the training data (`data=local`) and the evaluation benchmarks alike: which files of
a folder hold a split, reading a file's rows in any supported format, and where a relative image path points.

**The split rule** (`split_files`), the one both read folders by. The files of split S under a folder are
`S.<ext>`, the shards `S-00000-of-00002<anything>.<ext>`, and every data file directly inside a folder named S
(the `save_to_disk` / `refs/convert/parquet` layout); `<ext>` is one of DATA_SUFFIXES, `datasets`' metadata
files are never rows, and the files are sorted (a fixed row order). The name must match exactly, as the
benchmarks' official files need it: split "test" is not MathVista's "testmini-*" files, split "zerobench" is
not ZeroBench's "zerobench_subquestions-*". A folder with no file of S is an error naming the splits it has;
it is never read whole in S's place (a folder of test files is not a training set).

**Reading rows.** `read_rows` gives a file's rows as plain Python values, as the file holds them (the
benchmarks' sets, thousands of rows); `open_file` gives them memory mapped as a `datasets.Dataset` (training
sets of any size: `.arrow` mapped in place, `.jsonl` / `.json` / `.parquet` converted once into the `datasets`
cache). A `.json` file holds a list of rows or a `{key: row}` mapping (MathVista's `testmini.json`), whose key
each row keeps in a field (`keyed_rows`).

**Image paths** (`image_candidates`, `find_image`). A relative image path is looked for under each of the
caller's base folders in order, and the first file that exists is the image; an absolute path is itself. The
benchmarks try the data file's folder, the folder above it (MATH-V keeps `data/` beside `images/`) and the
folder passed as source; `data=local` tries one: `data.image_root` when set, else the data file's folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from rlsd_harness.config import ConfigError
from rlsd_harness.io import atomic_path

DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".arrow")
METADATA_FILES = ("dataset_info.json", "state.json", "dataset_dict.json")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class DataError(ConfigError):
    """A problem with the user's data: names the config key, the file, and the row and field when there is one."""


# ----------------------------------------------------------------------------- the split rule


def split_files(root: Path, split: str) -> list[Path]:
    """The data files of `split` under the folder `root`, sorted (the rule: see the module docstring)."""
    name_re = re.compile(rf"^{re.escape(split)}(-\d+-of-\d+[^/]*)?\.(parquet|arrow|jsonl|json)$")
    return [p for p in data_files(root) if name_re.match(p.name) or (p.parent != root and p.parent.name == split)]


def data_files(root: Path) -> list[Path]:
    """Every data file under the folder `root` (of any split), sorted: for naming what a folder holds."""
    return [p for p in sorted(root.rglob("*"))
            if p.is_file() and p.name.endswith(DATA_SUFFIXES) and p.name not in METADATA_FILES]


# ----------------------------------------------------------------------------- reading rows


def keyed_rows(data: dict, key_field: str) -> list[dict]:
    """The rows of a `{key: row}` JSON object, each keeping its key in `key_field` unless it has that field."""
    if not all(isinstance(v, dict) for v in data.values()):
        raise ValueError("a JSON object whose values are not all rows (objects); expected a list of rows or "
                         "a {id: row} mapping")
    return [v if key_field in v else {**v, key_field: k} for k, v in data.items()]


def read_rows(path: Path, key_field: str) -> list[dict]:
    """Every row of one data file as plain Python values; a `{key: row}` json keeps its keys in `key_field`."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if path.suffix == ".arrow":
        import pyarrow as pa

        # `datasets` writes IPC streams; other tools write IPC files. Try both.
        try:
            with pa.memory_map(str(path)) as src:
                return pa.ipc.open_stream(src).read_all().to_pylist()
        except pa.ArrowInvalid:
            with pa.memory_map(str(path)) as src:
                return pa.ipc.open_file(src).read_all().to_pylist()
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    data = json.loads(text)
    return keyed_rows(data, key_field) if isinstance(data, dict) else data


@contextlib.contextmanager
def quiet_offline() -> Iterator[None]:
    """No network and no progress bars while `datasets` opens local files."""
    import datasets

    bars = datasets.utils.logging.is_progress_bar_enabled()
    offline = datasets.config.HF_HUB_OFFLINE
    datasets.utils.logging.disable_progress_bar()
    datasets.config.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE = offline
        if bars:
            datasets.utils.logging.enable_progress_bar()


def _diagnose_json(path: Path, where: str) -> None:
    """Raise a DataError naming the file and the line of the first undecodable byte or broken JSON."""
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"{where}: {path} is not UTF-8 text (line {lineno}, byte {exc.start}: "
                                f"{raw[exc.start:exc.start + 4]!r})") from None
            if path.suffix == ".jsonl" and line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{where}: {path} line {lineno} is not valid JSON ({exc.msg}, column {exc.colno})") from None
                if not isinstance(row, dict):
                    raise DataError(f"{where}: {path} line {lineno} is a JSON {type(row).__name__}, not an object (one row per line)")
    if path.suffix == ".json":
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: {path} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None


def _parquet_as_arrow(path: Path, where: str, cache_dir: str | None) -> Path:
    """The parquet file as an Arrow stream in the cache, written once (keyed by path, size and mtime) and
    memory mapped from then on. Converted one batch of rows at a time: `datasets`' own parquet conversion
    peaked at 1.2x the file's size in memory on a 600 MiB file of images; this stays near one batch."""
    import hashlib

    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    st = path.stat()
    key = hashlib.sha1(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
    out = Path(cache_dir or datasets.config.HF_DATASETS_CACHE) / "local-parquet" / f"{path.stem}-{key}.arrow"
    if out.is_file():
        return out
    try:
        pf = pq.ParquetFile(path, pre_buffer=False)  # reads the footer: a cut or foreign file fails here, named
        out.parent.mkdir(parents=True, exist_ok=True)
        # atomic: a killed conversion leaves a hidden temporary file, never a cut cache file
        with atomic_path(out) as tmp, pa.OSFile(str(tmp), "wb") as sink, \
                pa.ipc.new_stream(sink, pf.schema_arrow) as writer:
            for batch in pf.iter_batches(batch_size=256, use_threads=False):
                writer.write_batch(batch)
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise DataError(f"{where}: {path} is not a readable parquet file ({exc})") from None
    return out


def _starts_with_object(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4096).lstrip().startswith(b"{")


def open_file(path: Path, where: str, cache_dir: str | None, key_field: str):
    """One data file as a memory-mapped `datasets.Dataset`; errors name the file (and `where`, the config key)."""
    import datasets

    if not os.access(path, os.R_OK):
        raise DataError(f"{where}: {path} is not readable")
    if path.stat().st_size == 0:
        raise DataError(f"{where}: {path} is empty")
    with quiet_offline():
        if path.suffix == ".arrow":
            try:
                return datasets.Dataset.from_file(str(path))
            except Exception as exc:  # pyarrow raises several types for a bad file
                raise DataError(f"{where}: {path} is not an Arrow IPC stream file as `datasets` writes it ({exc})") from None
        if path.suffix == ".parquet":
            return datasets.Dataset.from_file(str(_parquet_as_arrow(path, where, cache_dir)))
        if path.suffix in (".jsonl", ".json"):
            # pyarrow's json reader neither checks UTF-8 nor rejects a line that is not an object, so the
            # text is checked first (one streaming pass), and a bad line is named with its number.
            _diagnose_json(path, where)
            if path.suffix == ".json" and _starts_with_object(path):
                # a {key: row} mapping, which the `datasets` json reader would take as one row
                try:
                    rows = keyed_rows(json.loads(path.read_text(encoding="utf-8")), key_field)
                except ValueError as exc:
                    raise DataError(f"{where}: {path} is {exc}") from None
                names = list(dict.fromkeys(k for r in rows for k in r))  # rows may lack optional keys
                return datasets.Dataset.from_dict({k: [r.get(k) for r in rows] for k in names},
                                                  on_mixed_types="use_json")
        try:
            return datasets.load_dataset("json", data_files=[str(path)], split="train", cache_dir=cache_dir)
        except Exception as exc:
            raise DataError(f"{where}: {path} could not be read as json ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''})") from None


# ----------------------------------------------------------------------------- image paths


def image_candidates(path: str, bases: Iterable[Path | None]) -> list[Path]:
    """Where an image path may be: an absolute path is itself; a relative one is under each base folder, in
    order (None and repeats skipped), or itself when there is no base."""
    if os.path.isabs(path):
        return [Path(path)]
    dirs: list[Path] = []
    for d in bases:
        if d is not None and d not in dirs:
            dirs.append(d)
    return [d / path for d in dirs] or [Path(path)]


def find_image(path: str, bases: Iterable[Path | None]) -> tuple[Path | None, list[Path]]:
    """(the first candidate that is a file, or None; every candidate tried)."""
    candidates = image_candidates(path, bases)
    return next((c for c in candidates if c.is_file()), None), candidates

