"""Files that are either complete or absent, and the named kill points the kill-and-resume fuzzer uses.

Every file a later step trusts (a run's config, its final/ folder, result tables, completion markers) is written
under a temporary name in the same folder and renamed over the target: a rename within one filesystem is
atomic (POSIX rename(2)), so a process killed at any moment leaves either the old file or the new one.

`HARNESS_KILL_AT=<point>:<n>` makes the process SIGKILL itself the n-th time (1-based) it reaches the named
point. It exists only to test recovery from kills at the dangerous moments (bench/kill_fuzz.py); unset, it
costs one dictionary lookup per point.
"""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

KILL_POINTS = {
    "checkpoint": "inside a checkpoint's write: its weights are on disk, its manifest is not",
    "final": "inside final/'s write: its config.json is on disk, its weights are not",
    "metrics": "inside a metrics.jsonl append: half of the line is on disk",
    "run_done": "after a run's final/ is complete, before its completion marker",
    "prune": "inside retention's delete of an old checkpoint: renamed aside, its files not yet removed",
    "budget_policy": "inside a budget-point policy's write: its config.json is on disk, its weights are not",
    "matrix": "in the comparison matrix, after a run finished and before the next one starts",
    "report": "in the comparison's report: its tables and credit picture written, meta.json not yet marked finished",
}
_hits: dict[str, int] = {}


def kill_point(name: str, before: Callable[[], None] | None = None) -> None:
    """SIGKILL this process at its n-th arrival here when HARNESS_KILL_AT=<name>:<n> (see the module doc);
    `before` runs first (e.g. writing half a line, to leave what a kill mid-write leaves)."""
    spec = os.environ.get("HARNESS_KILL_AT")
    if not spec:
        return
    point, _, n = spec.partition(":")
    if point != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] == int(n or 1):
        if before is not None:
            before()
        os.kill(os.getpid(), signal.SIGKILL)


def _tmp_name(path: Path) -> Path:
    # the suffix stays last: writers that pick a format by it (matplotlib's savefig) still can
    return path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path beside `path`; when the block ends without an error, it replaces `path`."""
    path = Path(path)
    tmp = _tmp_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def replace_folder(tmp: Path, folder: Path) -> None:
    """Move the complete folder `tmp` to `folder`, replacing an older one (whose removal comes first: a
    kill between the two leaves no `folder`, never a half-written one)."""
    if folder.exists():
        old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
        os.replace(folder, old)
        shutil.rmtree(old)
    os.replace(tmp, folder)
