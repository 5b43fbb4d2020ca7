"""No DeepSpeed start hangs on a lock file left by a killed op build (torch's FileBaton spins on it forever):
a start removes a lock that no process holds, waits for one a live build holds, and names it when that
takes too long."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from rlsd_harness import dist

REPO = Path(__file__).resolve().parents[1]

# A build as torch runs one: FileBaton takes <op>/lock (O_CREAT | O_EXCL, the fd kept open), then compiles.
HOLD = textwrap.dedent("""
    import sys, time
    from torch.utils.file_baton import FileBaton
    assert FileBaton(sys.argv[1]).try_acquire()
    print("held", flush=True)
    time.sleep(600)
""")


def start_build(lock: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(lock)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def killed_build(lock: Path) -> None:
    """The lock exactly as a build killed midway leaves it."""
    proc = start_build(lock)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert lock.exists()


def test_stale_lock_is_removed(tmp_path):
    lock = tmp_path / "deepspeed_shm_comm" / "lock"
    lock.parent.mkdir()
    killed_build(lock)
    said = []
    assert dist.clear_stale_build_locks(tmp_path, wait_s=5, log=said.append) == [lock]
    assert not lock.exists()
    assert len(said) == 1 and str(lock) in said[0] and "no process holds" in said[0], said


def test_live_build_is_waited_for_then_named(tmp_path):
    lock = tmp_path / "deepspeed_shm_comm" / "lock"
    lock.parent.mkdir()
    proc = start_build(lock)
    try:
        assert dist.lock_holders(lock) == [proc.pid]
        with pytest.raises(FileExistsError, match=rf"{lock}: process {proc.pid} has held .*kill {proc.pid}"):
            dist.clear_stale_build_locks(tmp_path, wait_s=1, log=lambda msg: None)
        assert lock.exists()  # a live build's lock is never touched
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert dist.clear_stale_build_locks(tmp_path, wait_s=5, log=lambda msg: None) == [lock]


def _built_op() -> Path | None:
    for root in (Path(sys.prefix) / "torch_extensions", dist._default_extensions_root()):
        if (root / "deepspeed_shm_comm" / "deepspeed_shm_comm.so").is_file():
            return root / "deepspeed_shm_comm"
    return None


@pytest.mark.slow
@pytest.mark.skipif(torch_cuda := __import__("torch").cuda.is_available(), reason="the shm comm op is built on CPU starts")
@pytest.mark.skipif(_built_op() is None, reason="no built deepspeed_shm_comm op to copy (a first CPU start builds it)")
def test_start_after_a_killed_build_proceeds(tmp_path):
    """A copy of the built op (timestamps kept: ninja finds it up to date) with the lock a killed build leaves:
    the old code's start spun on it until the timeout; now it removes the lock and initialises."""
    shutil.copytree(_built_op(), tmp_path / "deepspeed_shm_comm", symlinks=True)
    killed_build(tmp_path / "deepspeed_shm_comm" / "lock")
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path)}
    started = time.time()
    try:
        out = subprocess.run([sys.executable, "-c", "from rlsd_harness import dist; print(dist.init_distributed())"],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the start waited {time.time() - started:.0f} s on the stale lock")
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("(0, 1)"), out.stdout
    assert "no process holds" in out.stderr
