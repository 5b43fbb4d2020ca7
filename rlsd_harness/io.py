"""Files the harness writes and reads back: one atomic write, one JSONL reader, one repair before an append.

The lowest layer: every other layer (evaluation, training, analysis) imports these, so none keeps its own.

**Atomic writes.** Every file a later step trusts (a run's config, its final/ folder, result tables, records,
completion markers) is written under a temporary name in the same folder and renamed over the target: a rename
within one filesystem is atomic (POSIX rename(2)), so a process killed at any moment leaves either the old
file or the new one.

**JSONL and a cut last line.** The harness appends its records (metrics.jsonl, a benchmark's `<key>.jsonl`)
one whole line per write, so the one damage a kill can leave is a last line cut short. The policy, everywhere:
a last line that does not parse is dropped by the reader (and reported to `warn` when one is given); an
unparseable line anywhere else is an error naming the file and the line. Reading never writes: a writer
that appends to a file which may hold a cut last line calls `drop_cut_last_line` first, so that its new
lines do not run on from the cut one.

Data sets are not records: the data loaders read their input files strictly (a cut data file is an error).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _tmp_name(path: Path) -> Path:
    # the suffix stays last: writers that pick a format by it (matplotlib's savefig) still can
    return path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path beside `path`; when the block ends without an error, it replaces `path`.
    On an error the temporary file is removed and `path` is left as it was."""
    path = Path(path)
    tmp = _tmp_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | Path, text: str, encoding: str | None = None) -> None:
    """Write `text` to `path` so that a reader (or a kill) sees the old file or the new one, never a part."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding=encoding)


def replace_folder(tmp: Path, folder: Path) -> None:
    """Move the complete folder `tmp` to `folder`, replacing an older one (whose removal comes first: a
    kill between the two leaves no `folder`, never a half-written one)."""
    if folder.exists():
        old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
        os.replace(folder, old)
        shutil.rmtree(old)
    os.replace(tmp, folder)


def parse_jsonl(text: str, where: str | Path, warn: Callable[[str], Any] | None = None) -> list[Any]:
    """The values of the JSON lines in `text` (blank lines skipped), under the module's cut-last-line policy;
    `where` names the source in messages."""
    lines = text.split("\n")
    out = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as e:
            if any(x.strip() for x in lines[i + 1:]):
                raise ValueError(f"{where}: line {i + 1} is not JSON ({e}); only a cut last line is "
                                 "dropped") from None
            if warn is not None:
                warn(f"warning: {where}: dropped its cut last line ({len(line)} characters, a write that was "
                     "killed)")
    return out


def read_jsonl(path: str | Path, *, missing_ok: bool = False, warn: Callable[[str], Any] | None = None) -> list[Any]:
    """The values of the JSON lines of the file `path` (see `parse_jsonl`); [] for a missing file when
    `missing_ok`, else FileNotFoundError."""
    path = Path(path)
    if missing_ok and not path.exists():
        return []
    return parse_jsonl(path.read_text(encoding="utf-8"), path, warn)


def drop_cut_last_line(path: str | Path) -> bool:
    """Before appending to the JSONL file `path`: end it at its last complete line. A cut last line (one that
    does not parse) is truncated away; a whole JSON value missing only its newline gets one. Returns whether
    the file changed; a missing file is left missing."""
    path = Path(path)
    if not path.exists():
        return False
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return False
    start = data.rfind(b"\n") + 1  # 0 when the file is one unfinished line
    try:
        json.loads(data[start:])
        ok = True
    except (json.JSONDecodeError, UnicodeDecodeError):
        ok = False
    if ok:
        with path.open("ab") as f:
            f.write(b"\n")
    else:
        with path.open("r+b") as f:
            f.truncate(start)
    return True
