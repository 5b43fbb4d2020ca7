"""Files that are either complete or absent, and the named kill points the kill-and-resume fuzzer uses.

The atomic writes live in `rlsd_harness.io` (the lowest layer, so that evaluation writes its records the same
way); they are re-exported here for the training code that imports them from this module.

`HARNESS_KILL_AT=<point>:<n>` makes the process SIGKILL itself the n-th time (1-based) it reaches the named
point. It exists only to test recovery from kills at the dangerous moments (bench/kill_fuzz.py); unset, it
costs one dictionary lookup per point.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

from rlsd_harness.io import atomic_path, atomic_write_text, replace_folder

__all__ = ["KILL_POINTS", "atomic_path", "atomic_write_text", "kill_point", "replace_folder"]

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
