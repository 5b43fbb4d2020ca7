"""A stand-in for one training run in a pool process (tests/test_compare_signals.py): it marks that it started,
then waits for SIGTERM and stops the way a run does (raising Interrupted after its "checkpoint")."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from rlsd_harness.training.run import Interrupted


def run_until_signalled(started_dir: str, label: str) -> None:
    signals: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: signals.append(signum))  # before the mark: the test
    Path(started_dir, label).touch()  # signals only once every mark of the first cohort is there
    deadline = time.monotonic() + 120
    while not signals and time.monotonic() < deadline:
        time.sleep(0.05)
    if signals:
        raise Interrupted(signals[0], Path(started_dir), f"resume {label}")
