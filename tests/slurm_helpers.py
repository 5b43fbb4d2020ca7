"""Test-only code that Slurm jobs import (the job's Python starts in the repository root, where `tests` is a
package): the comparison's run function with the parity verifier registered first, so that a job's runs see
mixed rewards as the in-process ones do (conftest registers it only in the test process)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig

from rlsd_harness.analysis import compare

_train = compare._train  # the real one, kept before a test replaces compare._train with `train_with_parity`


def train_with_parity(run_dir: Path, cfg: DictConfig, log: Callable[[str], None], command: str) -> None:
    from rlsd_harness import verifier
    from tests.ds_worker import Parity

    verifier.VERIFIERS["parity"] = Parity
    _train(run_dir, cfg, log, command)
