"""The config layer: hydra composition of the yaml groups beside this file, experiments and their arms,
budgets, and the errors a bad configuration raises. Everything that reads a configuration imports it from
here; nothing here imports the rest of the package.

The yaml groups (`algorithm/`, `model/`, `data/`, `rollout/`, `deepspeed/`, `experiment/`) live in this
folder, `train.yaml` is the root.
"""

from __future__ import annotations

import itertools
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

CONFIG_DIR = Path(__file__).resolve().parent


def _repo_root() -> Path:
    """Relative run folders live under the source checkout when the package runs from one, else the cwd."""
    root = CONFIG_DIR.parent.parent
    return root if (root / "pyproject.toml").exists() else Path.cwd()


REPO = _repo_root()


class ConfigError(ValueError):
    """A configuration a user wrote is wrong: the message names the key, the value and the valid ones."""


def group_choices(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


COMMAND_LINE = "the command line"


class Overrides(list):
    """Hydra overrides that remember where each came from ("the command line", "experiment smoke"), so that an
    error about a value can say who set it. Concatenation keeps the origins; a plain list is the command line."""

    def __init__(self, items: Any = (), origins: list[str] | None = None, origin: str = COMMAND_LINE) -> None:
        super().__init__(items)
        self.origins = list(origins) if origins is not None else [origin] * len(self)

    def __add__(self, other: Any) -> Overrides:
        return Overrides([*self, *other], [*self.origins, *origins_of(other)])

    def __radd__(self, other: Any) -> Overrides:
        return Overrides([*other, *self], [*origins_of(other), *self.origins])


def origins_of(overrides: Any) -> list[str]:
    return list(getattr(overrides, "origins", None) or [COMMAND_LINE] * len(overrides))


def override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def default_choices(config_name: str = "train") -> dict[str, str]:
    """The group choices of the root config's defaults list, e.g. {"algorithm": "grpo", ...}."""
    root = OmegaConf.load(CONFIG_DIR / f"{config_name}.yaml")
    out = {}
    for entry in root.get("defaults", []):
        if isinstance(entry, DictConfig):
            out.update({str(k): str(v) for k, v in entry.items()})
    return out


@dataclass
class Provenance:
    """Where each value of a composed config came from: the overrides in order, with their origins, and the
    yaml file each config group was read from."""

    overrides: list[str]
    origins: list[str]
    choices: dict[str, str] = field(default_factory=dict)

    def override_for(self, key: str) -> tuple[str, str] | None:
        """(override, origin) of the last override that set `key` or a mapping above it."""
        for o, origin in zip(reversed(self.overrides), reversed(self.origins)):
            if "=" not in o:
                continue
            k = override_key(o)
            if k in self.choices and "." not in k:  # a group choice selects a file; the file sets the keys
                continue
            if key == k or key.startswith(k + "."):
                return o, origin
        return None

    def source(self, key: str) -> str:
        hit = self.override_for(key)
        if hit is not None:
            o, origin = hit
            return f"set on {origin}" if origin == COMMAND_LINE else f"set by {origin} ({o})"
        group = key.split(".", 1)[0]
        package = CONFIG_DIR.parent.name
        if group in self.choices and (CONFIG_DIR / group / f"{self.choices[group]}.yaml").exists():
            return f"set in {package}/{CONFIG_DIR.name}/{group}/{self.choices[group]}.yaml"
        return f"set in {package}/{CONFIG_DIR.name}/train.yaml"

    def added(self, key: str) -> bool:
        """Whether `key` was added by a `+key=value` override (hydra refuses other unknown keys itself)."""
        hit = self.override_for(key)
        return hit is not None and hit[0].startswith("+")


# id(cfg) -> provenance of a config composed here, dropped when the config is garbage-collected.
_PROVENANCE: dict[int, Provenance] = {}


def provenance(cfg: Any) -> Provenance | None:
    return _PROVENANCE.get(id(cfg))


def source_of(cfg: Any, key: str) -> str:
    """"set on the command line", "set by experiment smoke (train.steps=3)", "set in .../algorithm/rlsd.yaml"."""
    prov = provenance(cfg)
    return prov.source(key) if prov is not None else "in the given config"


def compose_config(overrides: list[str], config_name: str = "train") -> DictConfig:
    """Hydra composition with errors that name the bad value and the valid ones. The result remembers where
    each value came from (`source_of`), for the schema's errors."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import ConfigCompositionException, MissingConfigException

    for o in overrides:
        key = o.lstrip("+~").split("=", 1)[0]
        if "." not in key and (CONFIG_DIR / key).is_dir() and "=" in o:
            choice = o.split("=", 1)[1]
            if choice not in group_choices(key) and choice != "null":
                raise ConfigError(f"unknown {key} {choice!r}; valid: {', '.join(group_choices(key))}")
    try:
        with initialize_config_dir(str(CONFIG_DIR), version_base=None):
            cfg = compose(config_name, overrides=overrides)
    except (ConfigCompositionException, MissingConfigException) as e:
        msg = str(e)
        cause = e.__cause__
        bad = next((o for o in overrides if o.split("=", 1)[0].lstrip("+~") in msg or (cause and o.split("=", 1)[0] in str(cause))), None)
        if bad is not None and "=" in bad:
            key = bad.split("=", 1)[0].lstrip("+~")
            parent = key.rsplit(".", 1)[0] if "." in key else ""
            with initialize_config_dir(str(CONFIG_DIR), version_base=None):
                base = compose(config_name, overrides=[o for o in overrides if o != bad])
            node = OmegaConf.select(base, parent) if parent else base
            if isinstance(node, DictConfig):
                raise ConfigError(f"unknown config key {key!r}; valid keys under {parent or 'the top level'}: "
                                  f"{', '.join(sorted(node.keys()))}") from e
        raise ConfigError(f"{msg} {cause or ''}") from e
    choices = default_choices(config_name)
    for o in overrides:
        key = override_key(o)
        if "=" in o and "." not in key and (CONFIG_DIR / key).is_dir():
            choices[key] = o.split("=", 1)[1]
    _PROVENANCE[id(cfg)] = Provenance(list(overrides), origins_of(overrides), choices)
    weakref.finalize(cfg, _PROVENANCE.pop, id(cfg), None)
    return cfg


def load_experiment(name: str) -> DictConfig:
    path = CONFIG_DIR / "experiment" / f"{name}.yaml"
    if not path.exists():
        raise ConfigError(f"unknown experiment {name!r}; valid: {', '.join(group_choices('experiment'))}")
    exp = OmegaConf.load(path)
    for key in ("methods", "seeds", "overrides"):
        if key not in exp:
            raise ConfigError(f"experiment {name}: missing key {key!r}")
    _EXPERIMENT_NAMES[id(exp)] = name
    weakref.finalize(exp, _EXPERIMENT_NAMES.pop, id(exp), None)
    return exp


_EXPERIMENT_NAMES: dict[int, str] = {}  # id(experiment config) -> its name, for the origin of its overrides


def arms(exp: DictConfig) -> dict[str, tuple[str, list[str]]]:
    """label -> (algorithm, overrides). Without a `grid`, one arm per method; with one (an ablation), one arm
    per method and grid point, e.g. {algorithm.params.eps_w: [0.1, 0.2]} -> rlsd-eps_w0.1, rlsd-eps_w0.2."""
    per_method = exp.get("method_overrides") or {}
    grid = dict(exp.get("grid") or {})
    out = {}
    for m in exp.methods:
        base = list(per_method.get(m, []))
        if not grid:
            out[m] = (m, base)
            continue
        for point in itertools.product(*grid.values()):
            label = m + "".join(f"-{k.rsplit('.', 1)[-1]}{v}" for k, v in zip(grid, point))
            out[label] = (m, base + [f"{k}={v}" for k, v in zip(grid, point)])
    return out


def run_overrides(exp: DictConfig, arm: str, seed: int, runs_dir: Path, extra: list[str]) -> list[str]:
    """The overrides of one run of a comparison: the experiment's, then the arm's, then the command line's."""
    algorithm, arm_overrides = arms(exp)[arm]
    label = f"experiment {_EXPERIMENT_NAMES.get(id(exp), 'of the comparison')}"
    own = [f"algorithm={algorithm}", f"seed={seed}", f"run.dir={runs_dir}", f"run.name={arm}-s{seed}",
           *exp.overrides, *arm_overrides]
    return Overrides(own, origin=label) + Overrides(extra)


def expand_experiment(overrides: list[str]) -> list[str]:
    """`experiment=NAME` on the training command line launches one method of a comparison as one run (what a
    cluster job does): the experiment's shared overrides and the method's own come first, the command line's
    after them, so they win. An ablation grid is not expanded here (the comparison does that)."""
    names = [o.split("=", 1)[1] for o in overrides if o.startswith("experiment=")]
    if not names:
        return overrides
    exp = load_experiment(names[-1])
    rest = [o for o in overrides if not o.startswith("experiment=")]
    algorithm = next((o.split("=", 1)[1] for o in reversed(rest) if o.startswith("algorithm=")), None)
    if algorithm is None:
        raise ConfigError(f"experiment={names[-1]} runs one method per launch: add algorithm=<one of "
                          f"{', '.join(exp.methods)}>")
    if algorithm not in exp.methods:
        raise ConfigError(f"experiment={names[-1]} has no method {algorithm!r}; valid: {', '.join(exp.methods)}")
    own = [*exp.overrides, *(exp.get("method_overrides") or {}).get(algorithm, [])]
    return Overrides(own, origin=f"experiment {names[-1]}") + Overrides(rest, origins_of(rest))


# The ledger's cumulative metric that each budget kind reads.
BUDGET_KEYS = {"flops": "ledger/cum/flops/total", "tokens": "ledger/cum/tokens/generated", "steps": "step",
               "seconds": "ledger/cum/time/step"}


def budget_spent(budget: Any, metrics: dict[str, float]) -> bool:
    if not budget or budget.get("kind") is None:
        return False
    if budget.kind not in BUDGET_KEYS:
        raise ConfigError(f"unknown train.budget.kind {budget.kind!r}; valid: {', '.join(BUDGET_KEYS)}")
    return metrics[BUDGET_KEYS[budget.kind]] >= float(budget.value)
