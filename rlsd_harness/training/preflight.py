"""What is checked before a run or an evaluation touches the disk: the config against its schema, the data
files, and the model folder. Each problem is a `ConfigError` (or FileNotFoundError) naming the key, the value,
where it came from and the valid values; nothing has been written when one is raised.

The schema lives in the config layer (`rlsd_harness.config.schema`); this module hands it the choice lists
and dataclasses that belong to higher layers: the model factory's architectures and sizes, the verifiers,
the evaluation decodings, and the teacher's `TeacherConfig`.
"""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf

from rlsd_harness.config import ConfigError, schema
from rlsd_harness.config.typed import RunConfig
from rlsd_harness.data import SCHEMAS
from rlsd_harness.evaluation.heldout import DECODINGS
from rlsd_harness.models import ARCHS, check_weights
from rlsd_harness.training.metrics import TRACKERS
from rlsd_harness.training.teacher import WEIGHT_SOURCES, TeacherConfig, teacher_config
from rlsd_harness.verifier import VERIFIERS

SECTIONS = {"algorithm.teacher": (TeacherConfig, teacher_config)}


def registries() -> dict[str, Any]:
    """The choice lists the schema names, read from the registries that own them (VERIFIERS may gain an
    entry at run time, e.g. a test's verifier)."""
    return {
        "model arch": list(ARCHS),
        # the sizes of the configured architecture; none to check against when the architecture is wrong
        "model size": lambda cfg: list(ARCHS[arch]) if (arch := OmegaConf.select(cfg, "model.arch")) in ARCHS else None,
        "verifier": list(VERIFIERS),
        "decoding": list(DECODINGS),
        "teacher weights": list(WEIGHT_SOURCES),
        "data schema": list(SCHEMAS),
        "tracker": list(TRACKERS),
    }


def check_config(cfg: Any, only: tuple[str, ...] | None = None, world: int | None = None,
                 allow_missing: bool = False) -> None:
    schema.validate(cfg, registries(), SECTIONS, world=world, only=only, allow_missing=allow_missing)


def read_config(cfg: Any, world: int | None = None) -> RunConfig:
    """The composed config, validated once, as the typed RunConfig every consumer reads afterwards."""
    check_config(cfg, world=world)
    return schema.typed(cfg)


def check_model(cfg: RunConfig) -> None:
    """A local model folder (model.path) loads completely and holds finite weights. Project-built models are
    made by this code and skip the scan."""
    if not cfg.model.path:
        return
    check_weights(cfg.model.path, "model.path")


def check_data(cfg: RunConfig) -> Any:
    """The training rows (and, when training evaluates, the held-out rows) load: readable files with the
    named fields, openable images. The data builder validates every row as it opens the files, and names
    data.path or data.test_path in its errors. Returns the data, for the run to train on (built once)."""
    from rlsd_harness.data import build_data

    evaluating = bool(cfg.train.eval_every)
    try:
        data = build_data(cfg.data, cfg.seed)
    except KeyError as e:  # an unknown data.name
        raise ConfigError(str(e.args[0]) if e.args else str(e)) from None
    if cfg.data.name == "local":
        data.prompts(1, 1)  # the prompt stream itself (an empty file would divide by zero here)
        if evaluating:
            data.test_set(cfg.eval.n)
    return data


def check_run(cfg: Any) -> tuple[RunConfig, Any]:
    """Everything a training run needs, before its folder exists: the config as the typed RunConfig, and its
    data, checked."""
    typed = read_config(cfg)
    check_model(typed)
    return typed, check_data(typed)


def check_evaluation(cfg: Any) -> None:
    """The keys the benchmark runner reads (seed, eval.*); the model folder is checked by the runner once it
    has resolved the checkpoint."""
    check_config(cfg, only=("seed", "eval"))


def reference_markdown() -> str:
    """docs/config.md, generated from the schema with this module's choice lists."""
    from rlsd_harness.config import compose_config

    return schema.reference_markdown(registries(), SECTIONS, compose_config([]))


if __name__ == "__main__":  # python -m rlsd_harness.training.preflight > docs/config.md
    print(reference_markdown(), end="")
