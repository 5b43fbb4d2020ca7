"""The config layer: hydra composition of the yaml groups beside this file, experiments and their arms,
budgets, and the errors a bad configuration raises. Everything that reads a configuration imports it from
here; nothing here imports the rest of the package.

The yaml groups (`algorithm/`, `model/`, `data/`, `rollout/`, `deepspeed/`, `experiment/`) live in this
folder, `train.yaml` is the root.
"""

from __future__ import annotations

import itertools
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


def compose_config(overrides: list[str], config_name: str = "train") -> DictConfig:
    """Hydra composition with errors that name the bad value and the valid ones."""
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
    return cfg


def load_experiment(name: str) -> DictConfig:
    path = CONFIG_DIR / "experiment" / f"{name}.yaml"
    if not path.exists():
        raise ConfigError(f"unknown experiment {name!r}; valid: {', '.join(group_choices('experiment'))}")
    exp = OmegaConf.load(path)
    for key in ("methods", "seeds", "overrides"):
        if key not in exp:
            raise ConfigError(f"experiment {name}: missing key {key!r}")
    return exp


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
    return [f"algorithm={algorithm}", f"seed={seed}", f"run.dir={runs_dir}", f"run.name={arm}-s{seed}",
            *exp.overrides, *arm_overrides, *extra]


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
    return [*exp.overrides, *(exp.get("method_overrides") or {}).get(algorithm, []), *rest]


# The ledger's cumulative metric that each budget kind reads.
BUDGET_KEYS = {"flops": "ledger/cum/flops/total", "tokens": "ledger/cum/tokens/generated", "steps": "step",
               "seconds": "ledger/cum/time/step"}


def budget_spent(budget: Any, metrics: dict[str, float]) -> bool:
    if not budget or budget.get("kind") is None:
        return False
    if budget.kind not in BUDGET_KEYS:
        raise ConfigError(f"unknown train.budget.kind {budget.kind!r}; valid: {', '.join(BUDGET_KEYS)}")
    return metrics[BUDGET_KEYS[budget.kind]] >= float(budget.value)
