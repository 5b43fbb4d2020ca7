"""The schema of the composed training config: every key's type, its range or choices, and what it means.

`validate(cfg)` walks the composed config before a run touches the disk and raises one `ConfigError` listing
every problem, one line each: the key, the bad value, where it came from (the command line, an experiment,
a yaml file) and the valid values. The keys of the root config and its groups are declared in `KEYS`; the
objective's parameters (`algorithm.params`) are typed and checked by the objective's own `Config`
dataclass, the teacher's (`algorithm.teacher`) by the `TeacherConfig` dataclass that the caller passes in,
so a range lives in one place. Choices that belong to a higher layer (model architectures, verifiers,
decodings) are passed in by the caller too (`rlsd_harness.training.preflight` wires them), since this layer
imports nothing above it. docs/config.md is generated from the same declarations (`reference_markdown`), and
so is rlsd_harness/config/typed.py (`typed_source`): one frozen dataclass per section, which `typed(cfg)` fills
from a checked config, so that everything after the check reads typed fields.

Why an explicit walk rather than hydra structured configs: an OmegaConf type error is a multi-line block
that names neither the valid range nor who set the value, and structured configs check types only.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import pydantic
from omegaconf import DictConfig, OmegaConf
from pydantic_core import PydanticCustomError

from rlsd_harness.algorithms import build_objective, get_objective_class, objective_names
from rlsd_harness.benchmarks import EVAL_BENCHMARK_NAMES
from rlsd_harness.benchmarks.embedded import LEVELS, PRIVILEGED
from rlsd_harness.config import BUDGET_KEYS, HELDOUT_SPLITS, ConfigError, provenance, source_of
from rlsd_harness.trees import flatten

TYPE_WORDS = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
              "floats": "a list of numbers", "strs": "a list", "mapping": "a mapping"}

# A choice list supplied by the caller: a sequence, or a function of the config (model.size depends on arch).
Registry = Sequence[Any] | Callable[[Any], Sequence[Any]]


@dataclass(frozen=True)
class Key:
    """One config key. Bounds: `ge`/`gt` below, `le`/`lt` above; `choices` a tuple, or the name of a
    registry given to `validate`; `null`: may be null; `open`: a mapping whose contents are not checked."""

    path: str
    type: str
    doc: str = ""
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple | str | None = None
    null: bool = False
    length: int | None = None
    open: bool = False
    placeholder: str = "<value>"

    def choice_list(self, cfg: Any, registries: Mapping[str, Registry]) -> list | None:
        if self.choices is None:
            return None
        if isinstance(self.choices, tuple):
            return list(self.choices)
        reg = registries.get(self.choices)
        if reg is None:
            return None
        choices = reg(cfg) if callable(reg) else reg
        return None if choices is None else list(choices)

    def valid(self, cfg: Any = None, registries: Mapping[str, Registry] | None = None) -> str:
        """The valid values in words: "an integer >= 1", "one of flops, tokens (or null)"."""
        choices = self.choice_list(cfg, registries or {})
        if choices is not None and self.type == "strs":
            text = f"a list of any of {', '.join(_show(c) for c in choices)}"
        elif choices is not None:
            text = ", ".join(_show(c) for c in choices) or "none"
        elif self.choices is not None:
            text = f"a {self.choices}"
        else:
            bounds = [f"{op} {_show(v)}" for op, v in ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt))
                      if v is not None]
            text = TYPE_WORDS[self.type]
            if self.type == "floats":
                text = f"a list of {self.length} numbers" if self.length else text
                text += ", each" if bounds else ""
            text += (" " + " and ".join(bounds)) if bounds else ""
        return text + (" (or null)" if self.null else "")

    def problem(self, value: Any, cfg: Any = None, registries: Mapping[str, Registry] | None = None) -> str | None:
        """Why `value` is not valid here, or None. The type, range and fixed choices are checked by pydantic,
        with the annotation generated from this declaration (`annotation`); a registry's choices (known at run
        time) here."""
        if value is None:
            return None if self.null else "must not be null"
        choices = self.choice_list(cfg, registries or {})
        if self.type == "strs":
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                return "not a list of names"
            bad = [v for v in value if choices is not None and v not in choices]
            return f"{_show(bad[0])} is not one of the choices" if bad else None
        if choices is not None and not isinstance(self.choices, tuple):
            # by type as well as value: true == 1 in Python, and 1.0 is not the integer choice 1
            return None if any(type(value) is type(c) and value == c for c in choices) else "not one of the choices"
        try:
            keys_model().model_validate({self.path: value})
        except pydantic.ValidationError as e:
            return self._words({err["type"] for err in e.errors()}, value)
        return None

    def _words(self, kinds: set[str], value: Any) -> str:
        """pydantic's error types in the schema's words ("not an integer", "out of range")."""
        if self.choices is not None:
            return "not one of the choices"
        if self.type == "floats":
            if not isinstance(value, list) or kinds & {"float_type", "list_type"}:
                return f"not {TYPE_WORDS['floats']}"
            if kinds & {"too_short", "too_long"}:
                return f"has {len(value)} entries, not {self.length}"
        if any(k.endswith("_type") for k in kinds):
            return f"not {TYPE_WORDS[self.type]}"
        return "not a finite number" if "finite_number" in kinds else "out of range"

    def annotation(self) -> Any:
        """This key's type for pydantic: strict (true is not 1, 2.5 is not an integer), finite, with its bounds
        and fixed choices (a registry's are checked by `problem`, a mapping's contents by their own checks)."""
        bounds = {k: v for k, v in (("ge", self.ge), ("gt", self.gt), ("le", self.le), ("lt", self.lt)) if v is not None}
        scalar = {"int": int, "float": float, "bool": bool, "str": str}
        if self.type == "floats":
            item = Annotated[float, pydantic.Field(strict=True, allow_inf_nan=False, **bounds)]
            size = {"min_length": self.length, "max_length": self.length} if self.length else {}
            ann: Any = Annotated[list[item], pydantic.Field(strict=True, **size)]  # type: ignore[valid-type]
        elif self.type == "strs":
            ann = list[Annotated[str, pydantic.Field(strict=True)]]
        elif self.type == "mapping":
            ann = dict[str, Any]
        elif isinstance(self.choices, tuple) and self.type == "str":
            ann = Literal[self.choices]  # type: ignore[valid-type]
        elif isinstance(self.choices, tuple):  # integers: Literal[1, 2] would take true and 1.0
            ann = Annotated[scalar[self.type], pydantic.Field(strict=True), pydantic.AfterValidator(_member(self.choices))]
        else:
            finite = {"allow_inf_nan": False} if self.type == "float" else {}
            ann = Annotated[scalar[self.type], pydantic.Field(strict=True, **bounds, **finite)]
        return ann | None if self.null else ann


def _member(choices: tuple) -> Callable[[Any], Any]:
    def check(v: Any) -> Any:
        if v not in choices:
            raise PydanticCustomError("literal_error", "not one of the choices")
        return v
    return check


@functools.cache
def keys_model() -> type[pydantic.BaseModel]:
    """The typed model of the config's keys, generated from KEYS: one field per key (its dotted path as the
    alias), each with its type, bounds, fixed choices and meaning (`description`). A key left out is not
    checked (None); `Key.problem` validates one key at a time through it."""
    fields = {k.path.replace(".", "__"): (k.annotation(), pydantic.Field(None, alias=k.path, description=k.doc))
              for k in KEYS}
    return pydantic.create_model("ConfigKeys", **fields)  # type: ignore[call-overload]


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _has_type(v: Any, kind: str) -> bool:
    if kind == "int":
        return isinstance(v, int) and not isinstance(v, bool)
    if kind == "float":
        return _is_number(v)
    if kind == "bool":
        return isinstance(v, bool)
    if kind == "str":
        return isinstance(v, str)
    if kind == "mapping":
        return isinstance(v, Mapping)
    raise AssertionError(kind)


def _show(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, str):
        return repr(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_show(x) for x in v) + "]"
    return str(v)


def _bench_keys(section: str, kind: str, doc: str, names: Sequence[str] = EVAL_BENCHMARK_NAMES, **kw: Any) -> list[Key]:
    return [Key(f"eval.{section}.{n}", kind, doc, **kw) for n in names]


# Every key of train.yaml and of the group files. A key in a yaml file but not here is accepted at run time
# (tests/test_bad_input.py fails until it is declared); a `+key=value` that is not here is refused.
KEYS: list[Key] = [
    Key("seed", "int", "seed of the prompt stream, sampling and initialisation", ge=0),
    Key("run.name", "str", "run folder name under run.dir (default <algorithm>-s<seed>); no path separators", null=True),
    Key("run.dir", "str", "folder holding the run folders (relative: to the source checkout)"),
    Key("run.overwrite", "bool", "replace an existing run folder of the same name"),
    Key("run.resume", "bool", "continue the run in run.dir/run.name from its latest good checkpoint"),
    Key("run.resume_changed", "bool", "resume even when keys outside training/run.py's RESUMABLE_KEYS changed"),
    Key("run.trackers", "strs", "experiment trackers besides metrics.jsonl", choices="tracker"),
    Key("train.steps", "int", "rollout batches to train", ge=1),
    Key("train.prompts_per_step", "int", "prompts per rollout batch (all ranks together)", ge=1),
    Key("train.group_size", "int", "responses per prompt; >= 2 for objectives that compare a group's responses", ge=1),
    Key("train.micro_batch_size", "int", "rows per micro-batch per rank", ge=1),
    Key("train.token_budget", "int", "pack update micro-batches to at most this many padded tokens", ge=1, null=True),
    Key("train.forward_token_budget", "int", "the same for forward-only passes", ge=1, null=True),
    Key("train.gradient_checkpointing", "bool", "recompute activations in the backward pass"),
    Key("train.share_prompts", "bool", "forward-only passes run a prompt shared by G rows once"),
    Key("train.logits_chunk", "int", "response positions per chunk of the output head (null: by device and "
        "vocabulary; 0: the whole (B, T, V) log-softmax at once)", ge=0, null=True),
    Key("train.balance_ranks", "bool", "move rows between ranks to even out their tokens"),
    Key("train.mini_batches", "int", "optimizer steps per rollout batch; must divide the rows per rank", ge=1),
    Key("train.ppo_epochs", "int", "passes over each rollout batch", ge=1),
    Key("train.save_every", "int", "checkpoint every N steps and at the end (0 = never)", ge=0),
    Key("train.keep_last", "int", "checkpoints kept: the newest N (older ones are deleted once a newer one "
        "verifies; null = keep all)", ge=1, null=True),
    Key("train.keep_budget_points", "bool", "also keep every budget point's checkpoint (saved there even off the "
        "save_every grid)"),
    Key("train.save_budget_policies", "bool", "write the policy at step 0 and at each budget point as a Hugging Face "
        "folder <run>/budget_policies/<fraction:.2f>/ with budget.json"),
    Key("train.eval_every", "int", "held-out evaluation every N steps and at the end (0 = never)", ge=0),
    Key("train.progress", "bool", "show a progress bar"),
    Key("train.budget.kind", "str", "stop once this much is spent (null: train.steps decides)",
        choices=tuple(BUDGET_KEYS), null=True),
    Key("train.budget.value", "float", "the budget in the kind's unit (FLOPs, tokens, steps, seconds)", gt=0, null=True),
    Key("train.dynamic_sampling.enabled", "bool", "DAPO's dynamic sampling: drop groups whose rewards are all equal "
        "and refill the batch with more rollouts (every rollout, kept or dropped, is charged to the ledger)"),
    Key("train.dynamic_sampling.max_rounds", "int", "refill rounds per step at most, each sampling as many prompts as "
        "the batch still lacks", ge=1),
    Key("train.dynamic_sampling.on_short", "str", "when max_rounds leaves the batch short: fill (complete it with "
        "dropped groups) or error (stop, as verl does)", choices=("fill", "error")),
    Key("train.budget.stop_at", "float", "stop at this fraction of train.budget.value (a tuning rung; a resume with a "
        "larger one continues; null: the whole budget)", gt=0, le=1, null=True),
    Key("optim.lr", "float", "AdamW learning rate (algorithm.lr overrides it when set)", gt=0),
    Key("optim.betas", "floats", "AdamW betas", ge=0, lt=1, length=2),
    Key("optim.eps", "float", "AdamW epsilon", gt=0),
    Key("optim.weight_decay", "float", "AdamW weight decay", ge=0),
    Key("optim.grad_clip", "float", "gradient-norm clip (0 = off)", ge=0),
    Key("optim.warmup_steps", "int", "linear learning-rate warm-up, in optimizer steps (0 = none)", ge=0),
    Key("train.eval_benchmarks", "strs", "benchmarks also evaluated during training, each with its own scorer",
        choices=EVAL_BENCHMARK_NAMES),
    Key("eval.split", "str", "split of the routine evaluations (validation chooses hyperparameters, test reports)",
        choices=HELDOUT_SPLITS, null=True),
    Key("eval.n", "int", "held-out items for training-time evaluation (at least one per rank)", ge=1),
    Key("eval.decoding", "str", "greedy; paper (T 0.7, top-p 0.8, top-k 20); or sample (eval.sampling)", choices="decoding"),
    Key("eval.k", "int", "samples per item for mean@k (null: 1 for greedy, 4 otherwise)", ge=1, null=True),
    Key("eval.greedy", "bool", "also one greedy response per item (greedy pass@1)"),
    Key("eval.sampling.temperature", "float", "eval.decoding=sample: temperature", gt=0),
    Key("eval.sampling.top_p", "float", "eval.decoding=sample: nucleus mass", gt=0, le=1),
    Key("eval.sampling.top_k", "int", "eval.decoding=sample: top-k (0 = off)", ge=0),
    Key("eval.budget_points", "floats", "large evaluations at these fractions of the budget (and at steps 0 and last)",
        gt=0, le=1),
    Key("eval.budget_n", "int", "items of the budget-point evaluations", ge=1),
    Key("eval.budget_split", "str", "split of the budget-point evaluations", choices=HELDOUT_SPLITS),
    Key("eval.cache_base", "bool", "single-process runs reuse a cached step-0 evaluation of the same weights, items and decoding"),
    Key("eval.max_new_tokens", "int", "generation budget of training-time evaluation", ge=1),
    Key("eval.benchmark_max_new_tokens", "int", "generation budget of the benchmark runner", ge=1),
    Key("eval.batch", "int", "prompts per generate call of the benchmark runner", ge=1),
    Key("eval.progress", "bool", "show the benchmark runner's progress"),
    *_bench_keys("sources", "str", "local folder or hub id of the benchmark's data", null=True, placeholder="<folder>"),
    *_bench_keys("splits", "str", "the benchmark's split"),
    *_bench_keys("revisions", "str", "hub revision (local folders record their own)", null=True),
    *_bench_keys("variants", "str", "prompt variant", names=(*EVAL_BENCHMARK_NAMES, "embedded")),
    *_bench_keys("score_options", "mapping", "keyword arguments of the module's score()", open=True),
    *_bench_keys("metric_options", "mapping", "keyword arguments of the module's metrics()", open=True),
    Key("eval.mathvista_judge", "str", "null: rule-based answer extraction; self: the evaluated model extracts",
        choices=("self",), null=True),
    Key("dynamics.teacher_probe", "bool", "objectives without a teacher: a frozen teacher measures the KL (off budget)"),
    Key("algorithm.name", "str", "the objective", choices="algorithm"),
    Key("algorithm.params", "mapping", "the objective's parameters (its Config dataclass; see below)", open=True),
    Key("algorithm.teacher", "mapping", "the teacher (TeacherConfig; see below)", open=True),
    Key("algorithm.lr", "float", "this objective's learning rate (null: optim.lr)", gt=0, null=True),
    Key("algorithm.search_space", "mapping", "the tuner's ranges for this objective (analysis/tuning/search.py: "
        "key -> {low, high, log, int} or {choices}); training ignores it", open=True),
    Key("model.arch", "str", "model architecture", choices="model arch"),
    Key("model.size", "str", "a project-built size (null: load model.path)", choices="model size", null=True),
    Key("model.seed", "int", "initialisation seed of a project-built model", ge=0),
    Key("model.vocab_size", "int", "tokenizer size of a project-built model", ge=1, null=True),
    Key("model.head_vocab", "int", "embedding and output-head rows of a project-built model (null: the "
        "tokenizer's); ids past the tokenizer are never sampled", ge=1, null=True),
    Key("model.path", "str", "a local Hugging Face model folder instead of a built model", null=True,
        placeholder="<folder>"),
    Key("model.warmup", "mapping", "supervised warm-up of a project-built model (null: none)", null=True),
    Key("model.warmup.steps", "int", "warm-up steps", ge=1),
    Key("model.warmup.batch_size", "int", "warm-up batch size", ge=1),
    Key("model.warmup.lr", "float", "warm-up learning rate", gt=0),
    Key("model.warmup.hint_share", "float", "share of privileged-prompt examples in the warm-up mix", ge=0, le=1),
    Key("model.lora", "mapping", "LoRA adapters (peft) instead of full-parameter training (training/lora.py)"),
    Key("model.lora.enabled", "bool", "train LoRA adapters only; every other weight stays frozen"),
    Key("model.lora.rank", "int", "adapter rank r", ge=1),
    Key("model.lora.alpha", "float", "scaling numerator: the update is (alpha / rank) * B A", gt=0),
    Key("model.lora.dropout", "float", "dropout on the adapters' input", ge=0, lt=1),
    Key("model.lora.target_modules", "strs", "module names that get adapters (peft's suffix match)"),
    Key("model.lora.vision", "bool", "adapters in the vision tower too (else language model only)"),
    Key("model.lora.teacher", "str", "teacher weights: adapters (its own adapters on algorithm.teacher.weights' "
        "schedule) or base (the frozen base, adapters off); never a copy of the base", choices=("adapters", "base")),
    Key("data.name", "str", "embedded (generated) or local (files)", choices=("embedded", "local")),
    Key("data.level", "int", "embedded task difficulty", choices=LEVELS),
    Key("data.test_size", "int", "embedded held-out set size", ge=1),
    Key("data.privileged", "str", "embedded: the teacher's privileged context, text (the reference in words) or "
        "image_hint (an extra image showing the answer, which the student does not see)", choices=PRIVILEGED),
    Key("data.verifier", "str", "reward verifier", choices="verifier"),
    Key("data.path", "str", "training rows: a .jsonl/.json/.parquet/.arrow file, a folder of them, a save_to_disk "
        "folder, or a hub id in the local cache", placeholder="<file>"),
    Key("data.test_path", "str", "held-out rows, the same kinds; needed when train.eval_every > 0", null=True,
        placeholder="<file>"),
    Key("data.split", "str", "split of a folder or hub id (data.path)"),
    Key("data.test_split", "str", "the same for data.test_path"),
    Key("data.config", "str", "a hub dataset's config (its subfolder)", null=True),
    Key("data.revision", "str", "a hub dataset's cached revision", null=True),
    Key("data.cache_dir", "str", "where `datasets` keeps converted json/parquet", null=True),
    Key("data.image_root", "str", "where relative image paths start (default: the data file's folder)", null=True),
    Key("data.schema", "str", "which columns hold each field", choices="data schema"),
    Key("data.fields", "mapping", "per-field column overrides (id, question, images, answer, solution, options, "
        "teacher_images: images only the teacher sees)",
        open=True),
    Key("data.require_image", "bool", "refuse rows without an image"),
    Key("rollout.engine", "str", "rollout engine", choices=("hf", "vllm")),
    Key("rollout.temperature", "float", "sampling temperature", gt=0),
    Key("rollout.top_p", "float", "nucleus sampling mass", gt=0, le=1),
    Key("rollout.top_k", "int", "top-k sampling (0 = off)", ge=0),
    Key("rollout.max_new_tokens", "int", "response length limit", ge=1),
    Key("rollout.gpu_memory_utilization", "float", "vLLM: share of GPU memory", gt=0, le=1),
    Key("rollout.max_model_len", "int", "vLLM: prompt + response length limit", ge=1),
    Key("rollout.sleep_level", "int", "vLLM: sleep level between rollouts", choices=(1, 2)),
    Key("rollout.sync_bucket_mb", "float", "vLLM: MiB of trainer weights per load_weights call in the weight sync "
        "(a larger tensor goes alone; under ZeRO-3 one bucket is gathered at a time)", gt=0),
    Key("deepspeed.zero_stage", "int", "ZeRO stage", choices=(0, 1, 2, 3)),
    Key("deepspeed.bf16", "bool", "train in bf16"),
    Key("deepspeed.offload_optimizer", "bool", "optimizer state on the CPU"),
    Key("deepspeed.param_persistence_threshold", "int", "ZeRO-3: parameters this small stay gathered (null: 1e5)",
        ge=0, null=True),
]
BY_PATH = {k.path: k for k in KEYS}


class _Errors:
    """Collects one line per problem, each naming the key, its value and its source."""

    def __init__(self, cfg: Any) -> None:
        self.cfg, self.lines = cfg, []

    def value(self, key: str, value: Any, problem: str, valid: str | None = None) -> None:
        line = f"{key}={_show(value)} ({source_of(self.cfg, key)}): {problem}"
        self.lines.append(line + (f"; valid: {valid}" if valid else ""))

    def text(self, line: str) -> None:
        self.lines.append(line)

    def raise_if_any(self) -> None:
        if len(self.lines) == 1:
            raise ConfigError(self.lines[0])
        if self.lines:
            raise ConfigError(f"{len(self.lines)} config errors:\n  " + "\n  ".join(self.lines))


def _at(cfg: Any, key: str) -> str:
    """`key=value (source)` for a cross-key message."""
    return f"{key}={_show(OmegaConf.select(cfg, key))} ({source_of(cfg, key)})"


def _leaves(node: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """(key, value) of every key below `node`, not descending into open mappings or checked sections."""
    out = []
    for k in node:
        key = f"{prefix}{k}"
        if OmegaConf.is_missing(node, k):
            out.append((key, "???"))
            continue
        v = node[k]
        rule = BY_PATH.get(key)
        out.append((key, v))
        if isinstance(v, DictConfig) and not (rule is not None and rule.open):
            out.extend(_leaves(v, key + "."))
    return out


def _plain(v: Any) -> Any:
    return OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v


def check_keys(cfg: Any, errors: _Errors, registries: Mapping[str, Registry], only: Sequence[str] | None,
               allow_missing: bool = False) -> None:
    prov = provenance(cfg)
    for key, raw in _leaves(cfg):
        if only is not None and key.split(".", 1)[0] not in only:
            continue
        rule = BY_PATH.get(key)
        if rule is None:
            if prov is not None and prov.added(key):
                parent = key.rsplit(".", 1)[0] if "." in key else ""
                siblings = sorted(k.path.rsplit(".", 1)[-1] for k in KEYS if k.path.rsplit(".", 1)[0] == parent
                                  and "." in k.path) if parent else sorted({k.path.split(".")[0] for k in KEYS})
                errors.text(f"unknown config key {key!r} ({source_of(cfg, key)}); valid keys under "
                            f"{parent or 'the top level'}: {', '.join(siblings)}")
            continue
        if isinstance(raw, str) and raw == "???":
            if allow_missing:
                continue
            errors.text(f"{key} has no value ({source_of(cfg, key)} leaves it ???): set {key}={rule.placeholder}")
            continue
        value = _plain(raw)
        problem = rule.problem(value, cfg, registries)
        if problem is not None:
            errors.value(key, value, problem, rule.valid(cfg, registries))


# ----------------------------------------------------------------------------- dataclass sections


def _field_types(cls: type) -> dict[str, Any]:
    """Field name -> annotation, or the nested dataclass a field holds once built (GRPO+OPSD's parts)."""
    hints = typing.get_type_hints(cls)
    try:
        default = cls()
    except Exception:  # a dataclass without defaults for every field: annotations only
        default = None
    out = {}
    for f in dataclasses.fields(cls):
        held = getattr(default, f.name, None)
        out[f.name] = type(held) if dataclasses.is_dataclass(held) else hints.get(f.name, Any)
    return out


_KINDS = {bool: "bool", int: "int", float: "float", str: "str"}


def _unwrap(ann: Any) -> tuple[Any, bool]:
    """(the annotation without `| None`, whether null is allowed)."""
    args = typing.get_args(ann)
    if args and type(None) in args:
        inner = [a for a in args if a is not type(None)]
        return (inner[0] if len(inner) == 1 else Any), True
    return ann, False


def _ann_words(ann: Any) -> str:
    base, null = _unwrap(ann)
    kind = _KINDS.get(base)
    if typing.get_origin(base) is typing.Literal:  # checked by the objectives' make_config
        words = "one of " + ", ".join(_show(v) for v in typing.get_args(base))
    else:
        words = TYPE_WORDS[kind] if kind else "any value"
    return words + (" (or null)" if null else "")


def _annotation_ok(value: Any, ann: Any) -> bool:
    """Whether `value` fits a simple annotation (bool, int, float, str, X | None; anything else is not checked)."""
    base, null = _unwrap(ann)
    if value is None:
        return null or _KINDS.get(base) is None
    kind = _KINDS.get(base)
    return kind is None or _has_type(value, kind)


def check_dataclass(cfg: Any, errors: _Errors, section: str, cls: type, raw: Mapping[str, Any]) -> bool:
    """Unknown keys and field types of one mapping against a config dataclass (recursing into nested ones).
    True when the mapping is fit to be built."""
    types = _field_types(cls)
    ok = True
    for name, value in raw.items():
        key = f"{section}.{name}"
        if name not in types:
            errors.text(f"unknown key {key!r} ({source_of(cfg, key)}); valid keys under {section}: "
                        f"{', '.join(types)}")
            ok = False
            continue
        ann = types[name]
        if dataclasses.is_dataclass(ann):
            if value is not None and not isinstance(value, Mapping):
                errors.value(key, value, "not a mapping", f"a mapping of {', '.join(_field_types(ann))}")
                ok = False
            elif value is not None:
                ok &= check_dataclass(cfg, errors, key, ann, value)
            continue
        if not _annotation_ok(value, ann):
            words = _ann_words(ann)
            errors.value(key, value, "must not be null" if value is None else f"not {words.removesuffix(' (or null)')}",
                         words)
            ok = False
    return ok


def build_section(cfg: Any, errors: _Errors, section: str, raw: Mapping[str, Any], build: Callable[[], Any]) -> Any:
    """Build a section's dataclass; its own range checks become lines naming the key (the longest field name
    the dataclass's message mentions), the value and its source."""
    try:
        return build()
    except (ValueError, TypeError, KeyError) as e:
        message = str(e.args[0]) if e.args else str(e)
        flat = flatten(raw, f"{section}.")
        named = [k for k in flat if k.rsplit(".", 1)[-1] in message and not isinstance(flat[k], Mapping)]
        if named:
            # the longest field name the message mentions; between namesakes (grpo_opsd's grpo.loss_agg_mode and
            # opsd.loss_agg_mode), the one whose value the message quotes
            key = max(named, key=lambda k: (len(k.rsplit(".", 1)[-1]), repr(flat[k]) in message))
            errors.value(key, flat[key], message)
        else:
            errors.text(f"{section} ({source_of(cfg, section)}): {message}")
        return None


# ----------------------------------------------------------------------------- cross-key checks


def world_size() -> int:
    """Ranks of this launch: WORLD_SIZE as a launcher sets it, else one process."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def check_geometry(cfg: Any, errors: _Errors, world: int, min_group: int | None, algorithm: str) -> None:
    t = cfg.train
    counts = ("prompts_per_step", "group_size", "micro_batch_size", "mini_batches")
    if not all(_has_type(t.get(k), "int") and t.get(k) >= 1 for k in counts):
        return  # already reported key by key
    if min_group is not None and t.group_size < min_group:
        errors.text(f"{_at(cfg, 'train.group_size')}: algorithm {algorithm} compares each response with the "
                    f"others of its group; valid: an integer >= {min_group}")
    if t.prompts_per_step % world:
        errors.text(f"{_at(cfg, 'train.prompts_per_step')} does not split over the {world} ranks; valid: a multiple "
                    f"of {world}")
        return
    rows = t.prompts_per_step // world * t.group_size
    where = (f"{rows} rows per rank (train.prompts_per_step={t.prompts_per_step} / {world} rank"
             f"{'s' if world > 1 else ''} x train.group_size={t.group_size})")
    budget = t.get("token_budget")
    if budget:
        if rows % t.mini_batches:
            errors.text(f"{_at(cfg, 'train.mini_batches')} does not divide the {where}; valid: a divisor of {rows}")
    elif rows % (t.mini_batches * t.micro_batch_size):
        divisors = [d for d in range(1, rows + 1) if rows % (d * t.mini_batches) == 0]
        errors.text(f"the {where} do not split into {_at(cfg, 'train.mini_batches')} x micro-batches of "
                    f"{_at(cfg, 'train.micro_batch_size')}; valid train.micro_batch_size with these: "
                    f"{', '.join(map(str, divisors)) or 'none (change train.mini_batches)'}")


def check_cross(cfg: Any, errors: _Errors, world: int) -> None:
    t = cfg.train
    budget = t.get("budget") or {}
    kind, value = budget.get("kind"), budget.get("value")
    if kind is not None and value is None:
        errors.text(f"{_at(cfg, 'train.budget.kind')} needs train.budget.value (a positive amount in its unit)")
    if kind is None and value is not None:
        errors.text(f"{_at(cfg, 'train.budget.value')} has no train.budget.kind, so it would be ignored; valid "
                    f"kinds: {', '.join(BUDGET_KEYS)}")
    evaluating = _has_type(t.get("eval_every"), "int") and t.eval_every > 0
    n = cfg.eval.get("n")
    if evaluating and _has_type(n, "int") and 1 <= n < world:
        errors.text(f"{_at(cfg, 'eval.n')}: held-out evaluation is sharded over the {world} ranks; valid: an "
                    f"integer >= {world} (or train.eval_every=0)")
    data = cfg.get("data") or {}
    if evaluating and data.get("name") == "local" and not OmegaConf.is_missing(data, "test_path") \
            and data.get("test_path") is None:
        errors.text(f"{_at(cfg, 'data.test_path')}, but {_at(cfg, 'train.eval_every')} evaluates on the held-out "
                    f"rows: set data.test_path=<file> or train.eval_every=0")
    name = (cfg.get("run") or {}).get("name")
    if isinstance(name, str) and ("/" in name or os.sep in name or name in ("", ".", "..")):
        errors.value("run.name", name, "not a folder name", "a name without path separators")
    check_lora(cfg, errors)


def check_lora(cfg: Any, errors: _Errors) -> None:
    lora = (cfg.get("model") or {}).get("lora")
    if not isinstance(lora, Mapping) or lora.get("enabled") is not True:
        return
    if lora.get("target_modules") == []:
        errors.text(f"{_at(cfg, 'model.lora.target_modules')} with model.lora.enabled=true: no module would get an "
                    f"adapter; valid: module names such as q_proj, v_proj")
    weights = OmegaConf.select(cfg, "algorithm.teacher.weights", default=None)
    if lora.get("teacher") == "base" and isinstance(weights, str) and weights not in ("none", "frozen"):
        errors.text(f"{_at(cfg, 'model.lora.teacher')} is the frozen base model, but "
                    f"{_at(cfg, 'algorithm.teacher.weights')} updates the teacher; valid: model.lora.teacher=adapters, "
                    f"or algorithm.teacher.weights=frozen")


def check_eval(cfg: Any, errors: _Errors) -> None:
    """The eval section's rules between keys (also checked when a caller validates `only` the eval section)."""
    ev = cfg.get("eval") or {}
    k = ev.get("k")
    if ev.get("decoding") == "greedy" and _has_type(k, "int") and k != 1:
        errors.text(f"{_at(cfg, 'eval.k')} with {_at(cfg, 'eval.decoding')}: greedy responses are all the same; "
                    f"valid: eval.k=1 (or null), or eval.decoding=paper|sample to draw k samples")


# ----------------------------------------------------------------------------- entry points


def validate(cfg: Any, registries: Mapping[str, Registry] | None = None,
             sections: Mapping[str, tuple[type, Callable[[Mapping[str, Any]], Any]]] | None = None,
             world: int | None = None, only: Sequence[str] | None = None, allow_missing: bool = False) -> None:
    """Check `cfg` against the schema; raise one ConfigError naming every problem. `registries` supply the
    choice lists of higher layers ("model arch", "model size", "verifier", "decoding"); `sections` map a key
    to (dataclass, builder) for mappings typed by a dataclass (algorithm.teacher); `only` restricts the check
    to some top-level sections (the benchmark runner reads seed and eval only); `allow_missing` lets a
    mandatory value (`???`) stay unset (a dry run lists them); `world` defaults to this launch's ranks."""
    _collect(cfg, registries, sections, world, only, allow_missing).raise_if_any()


def problems(cfg: Any, registries: Mapping[str, Registry] | None = None, only: Sequence[str] | None = None) -> list[str]:
    """`validate`'s lines as a list, raising nothing (for a caller that reports them with problems of its own)."""
    return list(_collect(cfg, registries, None, None, only, False).lines)


def _collect(cfg: Any, registries: Mapping[str, Registry] | None,
             sections: Mapping[str, tuple[type, Callable[[Mapping[str, Any]], Any]]] | None,
             world: int | None, only: Sequence[str] | None, allow_missing: bool) -> _Errors:
    registries = _with_own(registries)
    sections = dict(sections or {})
    world = world_size() if world is None else world
    errors = _Errors(cfg)
    check_keys(cfg, errors, registries, only, allow_missing)
    if only is None or "eval" in only:
        check_eval(cfg, errors)
    if only is not None:
        return errors
    objective = None
    algo = cfg.get("algorithm") or {}
    name = algo.get("name")
    if name in objective_names():
        cls = get_objective_class(name)
        params = _plain(algo.get("params")) or {}
        if check_dataclass(cfg, errors, "algorithm.params", cls.Config, params):
            objective = build_section(cfg, errors, "algorithm.params", params, lambda: build_objective(name, params))
    for key, (cls, build) in sections.items():
        raw = _plain(OmegaConf.select(cfg, key))
        if raw is None:
            continue
        if check_dataclass(cfg, errors, key, cls, raw):
            built = build_section(cfg, errors, key, raw, lambda build=build, raw=raw: build(raw))
            if key == "algorithm.teacher" and built is not None and objective is not None \
                    and objective.teacher_signal != "none" and built.weights == "none":
                sources = [w for w in registries.get("teacher weights", ()) if w != "none"]
                errors.text(f"{_at(cfg, 'algorithm.teacher.weights')}: algorithm {name} needs a teacher signal "
                            f"({objective.teacher_signal}); valid: {', '.join(sources)}")
    if "algorithm.teacher" in sections and algo.get("teacher") is None and objective is not None \
            and objective.teacher_signal != "none":
        errors.text(f"algorithm {name} needs a teacher signal ({objective.teacher_signal}) but algorithm.teacher "
                    f"is not set ({source_of(cfg, 'algorithm')})")
    check_geometry(cfg, errors, world, objective.min_group_size if objective is not None else None, str(name))
    check_cross(cfg, errors, world)
    return errors


def _with_own(registries: Mapping[str, Registry] | None) -> dict[str, Registry]:
    """The caller's registries plus those of this layer (the objectives)."""
    return {"algorithm": objective_names(), **(registries or {})}


def reference_markdown(registries: Mapping[str, Registry], sections: Mapping[str, tuple[type, Any]], base: Any) -> str:
    """docs/config.md: every key with its type, valid values, default (in `base`, the default composed config)
    and meaning."""
    registries = _with_own(registries)
    lines = ["# Configuration keys", "",
             "Generated from `rlsd_harness/config/schema.py` (`make config-docs` rewrites it; a test checks it is",
             "current). Every command line takes these as `key=value` overrides (hydra syntax) after the group",
             "choices (`algorithm=rlsd model=tiny data=local ...`); a value is checked against this table before",
             "anything is written, and an error names the key, the value, who set it and the valid values.",
             "Defaults are those of `train.yaml` with its default groups; a group file (`algorithm/rlsd.yaml`,",
             "`rollout/vllm.yaml` ...) sets its own.", ""]
    current = None
    for k in KEYS:
        top = k.path.split(".", 1)[0]
        if top != current:
            current = top
            lines += ["", f"## {top}", "", "| key | valid | default | meaning |", "|---|---|---|---|"]
        default = OmegaConf.select(base, k.path, default="(group file)")
        shown = _show(_plain(default)) if default != "(group file)" else "(set by the group file)"
        if k.open and isinstance(_plain(default), dict):
            shown = "{}" if not _plain(default) else "(see below)"
        lines.append(f"| `{k.path}` | {k.valid(base, registries)} | {shown.replace('|', '/')} | {k.doc} |")
    lines += ["", "Also checked together: `train.group_size` against the objective's `min_group_size` (2 for",
              "grpo, rlsd, grpo_opsd and sdpo); the rows per rank (`prompts_per_step / ranks x group_size`) must",
              "split into `mini_batches` x `micro_batch_size` (into `mini_batches` alone with a token budget);",
              "`train.budget.kind` and `train.budget.value` come together; `eval.n` >= ranks and, for",
              "`data=local`, `data.test_path` when `train.eval_every > 0`; `eval.k` is 1 (or null) with",
              "`eval.decoding=greedy`; with `model.lora.enabled`, a non-empty `model.lora.target_modules`, and",
              "`model.lora.teacher=base` only with `algorithm.teacher.weights` none or frozen.", ""]
    lines += ["## algorithm.params", "",
              "Typed by each objective's `Config` dataclass (`rlsd_harness/algorithms/<name>.py`), whose",
              "`__post_init__` holds the ranges; an unknown key is refused with the valid ones. The algorithm's",
              "yaml file (`rlsd_harness/config/algorithm/<name>.yaml`) sets the values a run starts from.", ""]
    for name in objective_names():
        cls = get_objective_class(name)
        groups = f"; needs train.group_size >= {cls.min_group_size}" if cls.min_group_size > 1 else ""
        lines += [f"### {name}", "", f"`{cls.__module__}.{cls.__qualname__}.Config`{groups}.", "",
                  "| key | type | dataclass default |", "|---|---|---|"]
        lines += _dataclass_rows("algorithm.params", cls.Config)
        lines.append("")
    for key, (cls, _) in sections.items():
        lines += [f"## {key}", "", f"Typed and checked by `{cls.__module__}.{cls.__qualname__}`.", "",
                  "| key | type | dataclass default |", "|---|---|---|", *_dataclass_rows(key, cls), ""]
    return "\n".join(lines).replace("\n\n\n", "\n\n").strip() + "\n"


def _dataclass_rows(prefix: str, cls: type) -> list[str]:
    rows = []
    default = cls()
    for name, ann in _field_types(cls).items():
        if dataclasses.is_dataclass(ann):
            rows += _dataclass_rows(f"{prefix}.{name}", ann)
            continue
        rows.append(f"| `{prefix}.{name}` | {_ann_words(ann)} | {_show(getattr(default, name))} |")
    return rows


# ----------------------------------------------------------------------------- the typed config


def _class_name(path: str) -> str:
    return "".join(part.title().replace("_", "") for part in path.split(".")) + "Section" if path else "RunConfig"


def _group_specific(path: str) -> bool:
    """Whether some file of the key's group leaves the key out (data.path: only data=local sets it); such a field
    is None when the config's group file has no such key. Keys of train.yaml itself are always there."""
    import yaml

    from rlsd_harness.config import CONFIG_DIR

    group, _, rest = path.partition(".")
    for file in sorted((CONFIG_DIR / group).glob("*.yaml")) if rest and (CONFIG_DIR / group).is_dir() else []:
        node: Any = yaml.safe_load(file.read_text()) or {}
        for part in rest.split("."):
            if node is None:  # under a null mapping (model.warmup: null): the parent's field says so
                break
            if not isinstance(node, dict) or part not in node:
                return True
            node = node[part]
    return False


def _type_text(k: Key, sections: set[str], absent: bool) -> str:
    if k.path in sections:
        text = _class_name(k.path)
    elif k.type == "mapping":
        text = "dict[str, Any]"
    elif k.type in ("floats", "strs"):
        text = f"list[{'float' if k.type == 'floats' else 'str'}]"
    elif isinstance(k.choices, tuple) and k.type == "str":
        text = f"Literal[{', '.join(repr(c) for c in k.choices)}]"
    else:
        text = k.type
    return text + (" | None" if k.null or absent else "")


def _doc_lines(text: str, indent: str = "    ") -> list[str]:
    import textwrap

    return textwrap.wrap(f'"""{text}"""', 110, initial_indent=indent, subsequent_indent=indent,
                         break_long_words=False, break_on_hyphens=False)


TYPED_HEADER = '''"""The composed training config as typed objects: one frozen dataclass per section, each field with its type
and meaning. GENERATED from the declarations in rlsd_harness/config/schema.py (KEYS) by `make config-docs`;
do not edit (tests/test_bad_input.py checks that it is current).

`rlsd_harness.training.preflight.read_config` validates a composed config and returns a RunConfig; every
consumer after that check reads these fields. A field that may be None without its key allowing null is a key
some group file leaves out (data.path: only data=local has it). Mappings whose contents are checked elsewhere
stay dicts: algorithm.params (the objective's Config dataclass), algorithm.teacher (TeacherConfig), the
benchmarks' score and metric options (their modules).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal
'''


def typed_source() -> str:
    """rlsd_harness/config/typed.py: one frozen dataclass per section of KEYS (train, train.budget, eval.sampling
    ...), each field with its type and meaning, and the root RunConfig. `make config-docs` writes it; a test
    checks it is current."""
    paths = [k.path for k in KEYS]
    parent = lambda p: p.rsplit(".", 1)[0] if "." in p else ""  # noqa: E731
    sections = {parent(p) for p in paths} - {""}
    sections |= {parent(s) for s in sections} - {""}
    first = {s: min(i for i, p in enumerate(paths) if p.startswith(s + ".")) for s in sections}
    absent = {k.path for k in KEYS if _group_specific(k.path)}
    out = [TYPED_HEADER.rstrip("\n")]
    # the deepest sections first: a class is defined before the class that holds it
    for section in sorted(sections | {""}, key=lambda s: (-s.count(".") if s else 1, first.get(s, 0))):
        members = [(paths.index(k.path), k.path.rsplit(".", 1)[-1], _type_text(k, sections, k.path in absent), k.doc,
                    k.path in absent) for k in KEYS if parent(k.path) == section]
        members += [(first[s], s.rsplit(".", 1)[-1], _class_name(s), f"the {s} section", False)
                    for s in sections if parent(s) == section and s not in BY_PATH]
        out += ["", "", "@dataclass(frozen=True, kw_only=True)", f"class {_class_name(section)}:",
                *_doc_lines(f"{section or 'The whole config'}: its keys, each typed and with its meaning."), ""]
        for _, name, ann, doc, left_out in sorted(members):
            out.append(f"    {name}: {ann}" + (" = None" if left_out else ""))
            out += _doc_lines(doc) if doc else []
        if not section:
            out.append("    composed: Any = field(default=None, repr=False, compare=False)")
            out += _doc_lines("the composed DictConfig it was read from: written as config.yaml, and where each "
                              "value came from (the command line, an experiment, a yaml file)")
    return "\n".join(out) + "\n"


def typed(cfg: Any, section: str | None = None) -> Any:
    """The validated composed config as the typed objects of rlsd_harness/config/typed.py: a RunConfig (holding
    `cfg` as `composed`), or with `section` that section's dataclass alone (the benchmark runner reads `eval`).
    Values are kept as they are (validation has checked them); a key the schema does not declare is refused."""
    from rlsd_harness.config import typed as classes

    if section is None:
        root = _build(classes.RunConfig, _plain(cfg), "")
        return dataclasses.replace(root, composed=cfg)
    return _build(getattr(classes, _class_name(section)), _plain(OmegaConf.select(cfg, section)), f"{section}.")


def require_typed(cfg: Any, who: str) -> None:
    """A TypeError unless `cfg` is the checked, typed config (a composed DictConfig would be read unchecked)."""
    from rlsd_harness.config.typed import RunConfig

    if not isinstance(cfg, RunConfig):
        raise TypeError(f"{who} reads the checked, typed config, not a {type(cfg).__name__}: pass "
                        f"rlsd_harness.training.preflight.read_config(compose_config([...]))")


@functools.cache
def _section_fields(cls: type) -> dict[str, tuple[type | None, bool]]:
    """Field name -> (the section dataclass it holds or None for a plain value, whether the key must be there)."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        if f.name == "composed":
            continue
        held = [a for a in (typing.get_args(hints[f.name]) or (hints[f.name],)) if dataclasses.is_dataclass(a)]
        out[f.name] = (held[0] if held else None, f.default is dataclasses.MISSING)
    return out


def _build(cls: type, raw: Mapping[str, Any], prefix: str) -> Any:
    fields = _section_fields(cls)
    unknown = [k for k in raw if k not in fields]
    if unknown:
        raise ConfigError(f"config key {prefix}{unknown[0]} is not declared in rlsd_harness/config/schema.py (KEYS); "
                          f"declare its type, range and meaning there, then run `make config-docs`")
    missing = [k for k, (_, needed) in fields.items() if needed and k not in raw]
    if missing:  # e.g. a group file of a user's own that leaves out a key every shipped one sets
        raise ConfigError(f"config key {prefix}{missing[0]} has no value: every shipped group file sets it "
                          f"(docs/config.md lists it with its default); add it to your yaml file")
    return cls(**{name: _build(sub, raw[name], f"{prefix}{name}.") if sub is not None and raw[name] is not None
                  else raw[name] for name, (sub, _) in fields.items() if name in raw})


if __name__ == "__main__":  # python -m rlsd_harness.config.schema > rlsd_harness/config/typed.py
    print(typed_source(), end="")
