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
import typing
from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from rlsd_harness.algorithms.batch import TEACHER_SIGNALS, PolicyOutput, RolloutBatch

TEACHER_CONTEXTS = (None, "reference", "sibling")


class Objective:
    name: ClassVar[str] = ""
    # What the backbone must provide. Class-level defaults; an instance may refine them from its config.
    teacher_signal: str = "none"  # one of TEACHER_SIGNALS
    teacher_context: str | None = None  # "reference" (RLSD, OPSD) or "sibling" (SDPO)
    topk: int = 0  # size of the student's top-k support when teacher_signal == "topk"
    needs_ref: bool = False  # a frozen reference model's log-probs (KL penalty)
    # The smallest train.group_size the objective can learn from: 2 for one that compares a response with the
    # others of its group (a group-relative advantage, a sibling demonstration); the config schema reads it.
    min_group_size: int = 1

    @dataclasses.dataclass
    class Config:
        pass

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg

    def prepare(self, batch: RolloutBatch) -> dict[str, float]:
        return {}

    def check_vocab(self, vocab_size: int) -> None:
        """Fail early on a configuration the model cannot serve (the backbone may call this once at start-up;
        `loss` checks again on every micro-batch)."""
        if self.teacher_signal == "topk" and not 0 < self.topk <= vocab_size:
            raise ValueError(f"{self.name}: top-k {self.topk} must be in [1, vocabulary size {vocab_size}]")

    def uses_teacher(self, step: int) -> bool:
        """Whether the loss of optimizer step `step` (from 1) reads the teacher's signal. Where it does not, the
        backbone runs no teacher forward and the budget is charged none."""
        return self.teacher_signal != "none"

    def vocab_loss(self, student_logprobs: torch.Tensor, teacher_logprobs: torch.Tensor) -> torch.Tensor:
        """Per-position loss over the whole vocabulary, (…, V) log-probs in, (…) out, for teacher_signal "full":
        the backbone evaluates it a chunk of positions at a time and hands the result over as
        `PolicyOutput.vocab_loss`, so it must treat positions independently."""
        raise NotImplementedError(f"{self.name}: teacher_signal {self.teacher_signal!r} declares no vocab_loss")

    def require(self, mb: RolloutBatch, *fields: str) -> None:
        """Raise a clear error when the backbone did not fill a signal this objective needs."""
        missing = [f for f in fields if getattr(mb, f) is None]
        if missing:
            raise ValueError(
                f"{self.name}: the micro-batch lacks {missing}; this objective declares "
                f"teacher_signal={self.teacher_signal!r}, teacher_context={self.teacher_context!r} "
                "and the backbone must provide them"
            )

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


def make_config(config_cls: type, params: Mapping[str, Any] | None, owner: str) -> Any:
    """Build a config dataclass from a mapping, naming the owner and the valid keys on an unknown key. A field
    annotated with a `Literal` (loss_agg_mode) takes one of its values: checked here, for every config class,
    so that no `__post_init__` repeats it."""
    valid = {f.name for f in dataclasses.fields(config_cls)}
    params = dict(params or {})
    unknown = sorted(set(params) - valid)
    if unknown:
        raise KeyError(f"unknown key(s) {unknown} for {owner}; valid: {', '.join(sorted(valid))}")
    hints = typing.get_type_hints(config_cls)
    for name, value in params.items():
        choices = literal_choices(hints.get(name))
        if choices is not None and value not in choices:
            raise ValueError(f"{name} {value!r}; valid: {', '.join(map(str, choices))}")
    return config_cls(**params)


def literal_choices(annotation: Any) -> tuple | None:
    """The values of a `Literal[...]` annotation, else None."""
    return typing.get_args(annotation) if typing.get_origin(annotation) is typing.Literal else None


def build_objective(name: str, params: Mapping[str, Any] | None = None) -> Objective:
    """Instantiate a registered objective from a flat dict of its config fields (unknown keys are errors)."""
    cls = get_objective_class(name)
    obj = cls(make_config(cls.Config, params, f"algorithm {name!r}"))
    if obj.teacher_signal not in TEACHER_SIGNALS:
        raise ValueError(f"{name}: teacher_signal {obj.teacher_signal!r} not in {TEACHER_SIGNALS}")
    if obj.teacher_context not in TEACHER_CONTEXTS:
        raise ValueError(f"{name}: teacher_context {obj.teacher_context!r} not in {TEACHER_CONTEXTS}")
    if obj.teacher_signal == "topk" and obj.topk <= 0:
        raise ValueError(f"{name}: asks for a top-k teacher signal but declares topk={obj.topk}")
    if obj.teacher_signal != "none" and obj.teacher_context is None:
        raise ValueError(f"{name}: asks for a teacher signal ({obj.teacher_signal}) but declares no teacher_context")
    return obj
