"""The objective interface and its registry.

An objective is a small class over a `RolloutBatch`: it declares what it needs from the backbone (teacher
signal, privileged context, reference model) and implements two pure steps:

- `prepare(batch)`: on the whole rollout batch, before the update (group advantages need whole groups);
- `loss(mb, policy)`: on one micro-batch, given the current policy's forward; returns a scalar that the
  trainer backpropagates unchanged (aggregated with the whole-mini-batch counts carried by `mb`).

Register with `@register_objective("name")`; the trainer finds it by the config's `algorithm.name`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch

from algorithms.batch import TEACHER_SIGNALS, PolicyOutput, RolloutBatch

TEACHER_CONTEXTS = (None, "reference", "sibling")


class Objective:
    name: ClassVar[str] = ""
    # What the backbone must provide. Class-level defaults; an instance may refine them from its config.
    teacher_signal: str = "none"  # one of TEACHER_SIGNALS
    teacher_context: str | None = None  # "reference" (RLSD, OPSD) or "sibling" (SDPO)
    topk: int = 0  # size of the student's top-k support when teacher_signal == "topk"
    needs_ref: bool = False  # a frozen reference model's log-probs (KL penalty)

    @dataclasses.dataclass
    class Config:
        pass

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg

    def prepare(self, batch: RolloutBatch) -> dict[str, float]:
        return {}

    def loss(self, mb: RolloutBatch, policy: PolicyOutput) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError


_OBJECTIVES: dict[str, type[Objective]] = {}


def register_objective(name: str):
    def deco(cls: type[Objective]) -> type[Objective]:
        if name in _OBJECTIVES and _OBJECTIVES[name] is not cls:
            raise ValueError(f"objective {name!r} is already registered by {_OBJECTIVES[name].__module__}")
        cls.name = name
        _OBJECTIVES[name] = cls
        return cls

    return deco


def objective_names() -> list[str]:
    return sorted(_OBJECTIVES)


def get_objective_class(name: str) -> type[Objective]:
    if name not in _OBJECTIVES:
        raise KeyError(f"unknown algorithm {name!r}; valid: {', '.join(objective_names())}")
    return _OBJECTIVES[name]


def build_objective(name: str, params: dict[str, Any] | None = None) -> Objective:
    """Instantiate a registered objective from a flat dict of its config fields (unknown keys are errors)."""
    cls = get_objective_class(name)
    valid = {f.name for f in dataclasses.fields(cls.Config)}
    params = dict(params or {})
    unknown = sorted(set(params) - valid)
    if unknown:
        raise KeyError(f"unknown key(s) {unknown} for algorithm {name!r}; valid: {', '.join(sorted(valid))}")
    obj = cls(cls.Config(**params))
    if obj.teacher_signal not in TEACHER_SIGNALS:
        raise ValueError(f"{name}: teacher_signal {obj.teacher_signal!r} not in {TEACHER_SIGNALS}")
    if obj.teacher_context not in TEACHER_CONTEXTS:
        raise ValueError(f"{name}: teacher_context {obj.teacher_context!r} not in {TEACHER_CONTEXTS}")
    if obj.teacher_signal != "none" and obj.teacher_context is None:
        raise ValueError(f"{name}: asks for a teacher signal ({obj.teacher_signal}) but declares no teacher_context")
    return obj
