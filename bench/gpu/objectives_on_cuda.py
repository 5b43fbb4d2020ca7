"""pytest plugin (`-p bench.gpu.objectives_on_cuda`): every registered objective's `loss` runs on CUDA.

The objective tests build their batches on the CPU and assert on the CPU; with this plugin each `loss` call
moves its micro-batch and policy output to CUDA, computes there, and hands the loss and metrics back on the
CPU (gradients flow back through the copies). The number of such calls per objective is written to
$GPU_CHECK_WORK/objectives_on_cuda.json, so a run that computed nothing on CUDA shows as such.
Without CUDA the plugin changes nothing.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

CALLS: Counter = Counter()
_depth = [0]


def _to(x: Any, device: str) -> Any:
    import torch

    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, dict):
        return {k: _to(v, device) for k, v in x.items()}
    if isinstance(x, tuple):
        return tuple(_to(v, device) for v in x)
    return x


def _wrap(name: str, loss):
    @functools.wraps(loss)
    def on_cuda(self, mb, policy, *args, **kwargs):
        if _depth[0]:  # a subclass's loss calling its parent's: already on CUDA
            return loss(self, mb, policy, *args, **kwargs)
        _depth[0] += 1
        try:
            moved = dataclasses.replace(policy, **{f.name: _to(getattr(policy, f.name), "cuda")
                                                   for f in dataclasses.fields(policy)})
            out = loss(self, mb.to("cuda"), moved, *args, **kwargs)
        finally:
            _depth[0] -= 1
        CALLS[name] += 1
        return _to(out, "cpu")

    return on_cuda


def pytest_configure(config) -> None:
    import torch

    if not torch.cuda.is_available():
        return
    from rlsd_harness.algorithms import get_objective_class, objective_names

    for name in objective_names():
        cls = get_objective_class(name)
        for klass in cls.__mro__:
            if "loss" in klass.__dict__ and not getattr(klass.__dict__["loss"], "_on_cuda", False):
                wrapped = _wrap(name, klass.__dict__["loss"])
                wrapped._on_cuda = True
                klass.loss = wrapped


def pytest_unconfigure(config) -> None:
    work = os.environ.get("GPU_CHECK_WORK")
    if work and CALLS:
        (Path(work) / "objectives_on_cuda.json").write_text(json.dumps(dict(CALLS)))
