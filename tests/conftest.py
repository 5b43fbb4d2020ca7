"""Shared fixtures: a cache folder per test session, the tiny model built once, a test config."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@pytest.fixture(autouse=True)
def single_torch_thread():
    """One intra-op thread per test: the tensors and models here are tiny, and on 2 shared cores a thread
    pool's wake-ups cost far more than the work (seconds instead of milliseconds per generate call)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("harness-cache")
    os.environ["HARNESS_CACHE"] = str(d)
    return d


@pytest.fixture(scope="session")
def tiny_dir(cache_dir) -> Path:
    from rlsd_harness.models import build_tiny

    return build_tiny("qwen2_5_vl", "tiny", seed=0)


@pytest.fixture(scope="session")
def tiny(tiny_dir):
    from rlsd_harness.models import load_model, load_processor

    return load_model(tiny_dir).eval(), load_processor(tiny_dir)


@pytest.fixture(scope="session", autouse=True)
def keep_the_process_group():
    """Commands called in-process (`rlsd-train`'s main, `compare`) end with dist.shutdown(), which destroys the
    one-rank process group every later in-process run of the session shares (DeepSpeed keeps the group object,
    so later runs fail with "Group ... is not registered"). Subprocesses shut down as usual."""
    from rlsd_harness import dist

    patch = pytest.MonkeyPatch()
    patch.setattr(dist, "shutdown", lambda: None)
    yield
    patch.undo()


@pytest.fixture(scope="session", autouse=True)
def parity_verifier():
    """A test-only verifier with mixed rewards even for an untrained model, so advantages are non-zero."""
    from rlsd_harness import verifier
    from tests.ds_worker import Parity

    verifier.VERIFIERS["parity"] = Parity
    yield
    verifier.VERIFIERS.pop("parity", None)


def small_overrides(tmp_path: Path, *extra: str) -> list[str]:
    """A run of a random-init tiny model: 4 prompts x 4 samples, 12 new tokens, no warm-up, no eval."""
    return [
        "model.warmup=null", "data.verifier=parity", "train.steps=2", "train.prompts_per_step=4",
        "train.group_size=4", "train.micro_batch_size=16", "train.eval_every=0", "eval.budget_points=[]",
        "train.save_every=0",
        "train.progress=false", "rollout.max_new_tokens=12", f"run.dir={tmp_path}", "optim.lr=1e-3", *extra,
    ]


_REAL_DATA_REPORT = pytest.StashKey[list]()


@pytest.fixture
def real_data_report(request):
    """Append a line to the figures printed at the end of the run (agreement with official verdicts on
    the real benchmark files), so they show in a plain `pytest -q` without `-s`."""
    lines = request.config.stash.setdefault(_REAL_DATA_REPORT, [])

    def add(line: str) -> None:
        print(line)
        lines.append(line)

    return add


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    lines = config.stash.get(_REAL_DATA_REPORT, [])
    if lines:
        terminalreporter.section("real benchmark files: re-scored vs. official verdicts")
        for line in lines:
            terminalreporter.write_line(line)


def typed_config(*overrides: str) -> Any:
    """The composed config of `overrides` as the typed RunConfig the trainer and evaluator read (not validated:
    a test that wants the check calls preflight.read_config)."""
    from rlsd_harness.config import compose_config, schema

    return schema.typed(compose_config(list(overrides)))
