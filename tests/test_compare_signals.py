"""One SIGTERM to `rlsd-compare workers=2` stops the study: the runs in flight get the signal (and checkpoint),
no queued run starts afterwards, and Interrupted reaches the command line (exit 128 + the signal)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from rlsd_harness.analysis.compare import _run_in_pool
from rlsd_harness.training.run import Interrupted
from tests.pool_helpers import run_until_signalled


class _Bar:
    def __init__(self) -> None:
        self.n = 0

    def set_postfix(self, **kw) -> None:
        pass

    def update(self, n: int) -> None:
        self.n += n


def test_a_signal_stops_the_runs_in_flight_and_starts_no_queued_one(tmp_path):
    started = tmp_path / "started"
    started.mkdir()
    labels = [f"run{i}" for i in range(5)]
    tasks = [(label, (str(started), label)) for label in labels]
    logged: list[str] = []

    def signal_when_both_started() -> None:
        deadline = time.monotonic() + 120
        while len(list(started.iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    sender = threading.Thread(target=signal_when_both_started, daemon=True)
    sender.start()
    bar = _Bar()
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted) as stopped:
        _run_in_pool(tasks, 2, run_until_signalled, logged.append, bar, tmp_path, "rlsd-compare experiment=x")
    sender.join()
    assert sorted(p.name for p in started.iterdir()) == ["run0", "run1"]  # run2..run4 never started
    assert stopped.value.signum == signal.SIGTERM and stopped.value.exit_code == 128 + signal.SIGTERM
    assert stopped.value.command == "rlsd-compare experiment=x"
    assert sorted(line.split(":")[0] for line in logged) == ["run0", "run1"]
    assert all("interrupted by SIGTERM" in line and "worker failed" not in line for line in logged), logged
    assert bar.n == 2
    assert signal.getsignal(signal.SIGTERM) is before  # the study's handlers are removed again
    assert not any(Path(p).name.startswith("rlsd-compare-") and (Path(p) / "stop").exists()
                   for p in Path(os.environ.get("TMPDIR", "/tmp")).glob("rlsd-compare-*"))
