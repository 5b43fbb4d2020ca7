"""The config layer: hydra composition of the yaml groups beside this file, experiments and their arms,
budgets, and the errors a bad configuration raises. Everything that reads a configuration imports it from
here; nothing here imports the rest of the package.

The yaml groups (`algorithm/`, `model/`, `data/`, `rollout/`, `deepspeed/`, `experiment/`) live in this
folder, `train.yaml` is the root.
"""

from __future__ import annotations

import difflib
import functools
import itertools
import re
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


def group_file(group: str, choice: str) -> DictConfig:
    """A group file's own keys (`group_file("data", "embedded")`): where a key's default lives for a caller
    whose config chose another file of the group."""
    return OmegaConf.load(CONFIG_DIR / group / f"{choice}.yaml")


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


def nearest(word: str, valid: Any) -> str:
    """The valid entry closest to a misspelt `word` (difflib), for "did you mean" hints."""
    valid = [str(v) for v in valid]
    hit = difflib.get_close_matches(word, valid, n=1, cutoff=0.0)
    return hit[0] if hit else ""


def unknown_message(what: str, bad: str, valid: Any, where: str = "") -> str:
    """One line for an unknown key or choice: the bad one, the nearest valid one, every valid one."""
    valid = sorted(str(v) for v in valid)
    near = nearest(bad, valid)
    return f"unknown {what} {bad!r}{where}; valid: {', '.join(valid) or 'none'}" + (f"; nearest: {near}" if near else "")


# hydra's messages for an override of a key the config lacks; the key is quoted in each.
_HYDRA_BAD_KEY = re.compile(r"(?:Could not override|An item is already at|Could not delete from config\.) '([^']+)'")
_HYDRA_BAD_LINE = re.compile(r"Error merging override (\S+)")


def _group_overrides(overrides: list[str]) -> list[str]:
    """The group choices among `overrides` (`algorithm=rlsd`): they select yaml files and cannot name a
    missing key, so composing with them alone gives the tree the other overrides are checked against."""
    return [o for o in overrides if "=" in o and "." not in override_key(o) and (CONFIG_DIR / override_key(o)).is_dir()]


def _groups_with(key: str) -> list[str]:
    """`group=choice` for every yaml of the key's group that has the rest of the key (e.g. which algorithms
    have algorithm.params.eps_w)."""
    group, _, rest = key.partition(".")
    if not rest or not (CONFIG_DIR / group).is_dir():
        return []
    out = []
    for choice in group_choices(group):
        node = OmegaConf.load(CONFIG_DIR / group / f"{choice}.yaml")
        if OmegaConf.select(node, rest, default="<absent>", throw_on_missing=False) != "<absent>":
            out.append(f"{group}={choice}")
    return out


def _describe_bad_key(key: str, override: str, origin: str, base: DictConfig, choices: dict[str, str]) -> str:
    """One line for an override whose key is not in the composed tree `base`: where the path stops, the
    nearest valid key there, the valid keys, and which choices of the key's group do have it."""
    parts = key.split(".")
    group = parts[0] if parts[0] in choices and len(parts) > 1 else None
    chosen = f" for {group}={choices[group]}" if group else ""
    source = f" (set by {origin}: {override})" if origin != COMMAND_LINE else ""
    elsewhere = [g for g in _groups_with(key) if group is None or g != f"{group}={choices[group]}"]
    also = f"; {key} is a key of {', '.join(elsewhere)}" if elsewhere else ""
    node: Any = base
    for i, part in enumerate(parts):
        parent = ".".join(parts[:i])
        if not isinstance(node, DictConfig):
            shown = "null" if node is None else repr(node)
            return (f"config key {key!r}{source} cannot be set: {parent} is {shown}{chosen}, not a mapping of "
                    f"keys{also}")
        if part not in node:
            valid = sorted(str(k) for k in node.keys())
            return (f"unknown config key {key!r}{chosen}{source}; nearest: {'.'.join([*parts[:i], nearest(part, valid)])}"
                    f"{also}; valid keys under {parent or 'the top level'}: {', '.join(valid)}")
        node = None if OmegaConf.is_missing(node, part) else node[part]
    return f"config key {key!r}{source} cannot be set{chosen}"


def _composition_error(e: Exception, overrides: list[str], config_name: str) -> ConfigError:
    """hydra's composition error as one line naming the override, the nearest valid key and the valid keys."""
    from hydra import compose, initialize_config_dir

    text = f"{e} {e.__cause__ or ''}"
    key = None
    hit = _HYDRA_BAD_KEY.search(text)
    if hit:
        key = hit.group(1)
    elif (line := _HYDRA_BAD_LINE.search(text)) is not None:
        key = override_key(line.group(1))
    matching = [(o, origin) for o, origin in zip(overrides, origins_of(overrides)) if key and override_key(o) == key]
    if key is None or not matching:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        cause = str(e.__cause__).strip().splitlines()[0] if e.__cause__ is not None and str(e.__cause__).strip() else ""
        return ConfigError(f"{first}{f' ({cause})' if cause else ''}")
    if "An item is already at" in text:  # the `+key=value` that added an existing key, not a plain one beside it
        matching = [m for m in matching if m[0].startswith("+")] or matching
    override, origin = matching[-1]
    if "An item is already at" in text and override.startswith("+"):
        return ConfigError(f"{override}: config key {key!r} exists already; set it without the '+': "
                           f"{override.lstrip('+')}")
    groups = _group_overrides(overrides)
    with initialize_config_dir(str(CONFIG_DIR), version_base=None):
        base = compose(config_name, overrides=groups)
    choices = default_choices(config_name)
    choices.update({override_key(o): o.split("=", 1)[1] for o in groups})
    return ConfigError(_describe_bad_key(key, override, origin, base, choices))


@functools.lru_cache(maxsize=64)
def _yaml(path: Path) -> DictConfig:
    return OmegaConf.load(path)


def _check_mappings_kept(cfg: DictConfig, overrides: list[str], choices: dict[str, str], config_name: str) -> None:
    """An override that replaces a mapping of the yaml files with a value (`train.budget=5`) would reach the
    code as a value where it reads keys; refused naming the mapping's keys. Read from the yaml files, not a
    second composition (which costs a quarter second)."""
    for o in overrides:
        key = override_key(o)
        if "=" not in o or o.startswith("~") or ("." not in key and (CONFIG_DIR / key).is_dir()):
            continue
        head, _, rest = key.partition(".")
        if head in choices and rest and (CONFIG_DIR / head / f"{choices[head]}.yaml").is_file():
            before = OmegaConf.select(_yaml(CONFIG_DIR / head / f"{choices[head]}.yaml"), rest, default=None)
        else:
            before = OmegaConf.select(_yaml(CONFIG_DIR / f"{config_name}.yaml"), key, default=None)
        after = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
        if isinstance(before, DictConfig) and after is not None and not isinstance(after, DictConfig):
            keys = ", ".join(f"{key}.{k}" for k in before.keys())
            raise ConfigError(f"{o}: {key} is a mapping of keys, not a value; set its keys instead: {keys}")


def compose_config(overrides: list[str], config_name: str = "train") -> DictConfig:
    """Hydra composition with errors that name the bad value and the valid ones. The result remembers where
    each value came from (`source_of`), for the schema's errors."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException

    for o in overrides:
        key = o.lstrip("+~").split("=", 1)[0]
        if "." not in key and (CONFIG_DIR / key).is_dir() and "=" in o:
            choice = o.split("=", 1)[1]
            if choice not in group_choices(key) and choice != "null":
                raise ConfigError(unknown_message(key, choice, group_choices(key)))
    try:
        with initialize_config_dir(str(CONFIG_DIR), version_base=None):
            cfg = compose(config_name, overrides=overrides)
    except OverrideParseException as e:
        bad = getattr(e, "override", None) or next((o for o in overrides if o in str(e)), "")
        first = str(e).strip().splitlines()[0]
        raise ConfigError(f"cannot parse the override {bad!r}: {first} (hydra syntax: key=value, "
                          f"lists as key=[a,b], quoted strings as key='a b')") from None
    except (ConfigCompositionException, MissingConfigException) as e:
        raise _composition_error(e, overrides, config_name) from e
    choices = default_choices(config_name)
    for o in overrides:
        key = override_key(o)
        if "=" in o and "." not in key and (CONFIG_DIR / key).is_dir():
            choices[key] = o.split("=", 1)[1]
    _check_mappings_kept(cfg, overrides, choices, config_name)
    _PROVENANCE[id(cfg)] = Provenance(list(overrides), origins_of(overrides), choices)
    weakref.finalize(cfg, _PROVENANCE.pop, id(cfg), None)
    return cfg


# Keys an experiment file may have (config/experiment/*.yaml); anything else is a typo.
EXPERIMENT_KEYS = {
    "methods": "objectives compared (algorithm configs)",
    "seeds": "seeds of the reported (test) runs; the same seed pairs runs of two methods",
    "overrides": "training overrides every run shares",
    "method_overrides": "per-method training overrides ({method: [key=value, ...]})",
    "grid": "an ablation grid ({key: [values]}); every method runs at every point",
    "factors": "a factorial ablation ({key: [levels]}): arms as `grid`, and the report gives each factor's main "
               "effect and their interactions (analysis/factorial.py); not with `grid`",
    "budget_kind": "flops | tokens | steps | seconds: what the budget points are fractions of",
    "budget_points": "fractions of train.budget.value where the large test evaluations happen and the tables read",
    "baseline": "the arm every other arm is compared with (default grpo, else the first arm)",
    "pairs": "extra comparisons, [[method, baseline], ...]",
    "delta_points": "the difference (points) the power line sizes the study for (default 3)",
    "last_k": "the last-K summary: mean of each run's last K budget points (default min(3, points))",
    "tuning": "fair tuning before the test runs (analysis/tuning/grid.py: TUNING_KEYS, tuning_grid)",
    "world_size": "GPUs the dry-run plan assumes",
    "plan": "mean lengths the dry-run plan assumes",
}


def experiment_path(name: str) -> Path:
    """An experiment of config/experiment/, or a path to one's yaml file (its name is the file's stem)."""
    if name.endswith((".yaml", ".yml")) and Path(name).is_file():
        return Path(name)
    path = CONFIG_DIR / "experiment" / f"{name}.yaml"
    if not path.exists():
        raise ConfigError(unknown_message("experiment", name, group_choices("experiment"))
                          + " (or a path to an experiment .yaml file)")
    return path


def experiment_name(name: str) -> str:
    return experiment_path(name).stem


def load_experiment(name: str) -> DictConfig:
    path = experiment_path(name)
    exp = OmegaConf.load(path)
    for key in ("methods", "seeds", "overrides"):
        if key not in exp:
            raise ConfigError(f"experiment {name}: missing key {key!r}")
    unknown = sorted(set(exp.keys()) - set(EXPERIMENT_KEYS))
    if unknown:
        raise ConfigError(f"experiment {name}: " + unknown_message("key", str(unknown[0]), EXPERIMENT_KEYS))
    _EXPERIMENT_NAMES[id(exp)] = experiment_name(name)
    weakref.finalize(exp, _EXPERIMENT_NAMES.pop, id(exp), None)
    check_experiment(exp, name)
    return exp


_EXPERIMENT_NAMES: dict[int, str] = {}  # id(experiment config) -> its name, for the origin of its overrides


def experiment_origin(exp: DictConfig) -> str:
    """Where an experiment's overrides come from, as error messages name it ("experiment <name>")."""
    return f"experiment {_EXPERIMENT_NAMES.get(id(exp), 'of the comparison')}"


def _check_arm_sections(exp: DictConfig, name: str) -> None:
    """The shape of `method_overrides`, `grid` and `factors`: one line naming the bad entry."""
    methods = [str(m) for m in exp.methods]
    per_method = exp.get("method_overrides") or {}
    if not OmegaConf.is_dict(per_method) and not isinstance(per_method, dict):
        raise ConfigError(f"experiment {name}: method_overrides must be {{method: [key=value, ...]}}; got {per_method!r}")
    for m, overrides in per_method.items():
        if str(m) not in methods:
            raise ConfigError(f"experiment {name}: method_overrides: " + unknown_message("method", str(m), methods))
        if not OmegaConf.is_list(overrides) or any(not isinstance(o, str) or "=" not in o for o in overrides):
            raise ConfigError(f"experiment {name}: method_overrides.{m} must be a list of key=value overrides; "
                              f"got {overrides}")
    if exp.get("grid") and exp.get("factors"):
        raise ConfigError(f"experiment {name}: grid and factors cannot be combined (factors is a grid whose report "
                          f"is factorial); keep one of them")
    for section in ("grid", "factors"):
        spec = exp.get(section)
        if spec is None:
            continue
        if not OmegaConf.is_dict(spec) or not spec:
            raise ConfigError(f"experiment {name}: {section} must be {{config key: [values]}} with at least one key; "
                              f"got {spec!r}")
        for key, values in spec.items():
            if "." not in str(key):
                raise ConfigError(f"experiment {name}: {section} key {key!r} must be a dotted config key, e.g. "
                                  f"algorithm.params.eps_w")
            values = list(values) if OmegaConf.is_list(values) else None
            least = 2 if section == "factors" else 1
            if (values is None or len(values) < least or len(set(map(str, values))) != len(values)
                    or any(OmegaConf.is_config(v) for v in values)):
                raise ConfigError(f"experiment {name}: {section}.{key} must be a list of at least {least} distinct "
                                  f"scalar values; got {spec[key]!r}")


def factor_levels(exp: DictConfig) -> dict[str, dict[str, Any]]:
    """label -> {factor: level} of a factorial experiment's arms (`factors`), the labels those of `arms`;
    `algorithm` is a factor too when the experiment has more than one method. {} without `factors`."""
    factors = dict(exp.get("factors") or {})
    if not factors:
        return {}
    out = {}
    for m in exp.methods:
        for point in itertools.product(*factors.values()):
            levels = {str(k): v for k, v in zip(factors, point)}
            out[_arm_label(str(m), factors, point)] = ({"algorithm": str(m)} if len(exp.methods) > 1 else {}) | levels
    return out


def _arm_label(method: str, grid: dict, point: tuple) -> str:
    return method + "".join(f"-{k.rsplit('.', 1)[-1]}{v}" for k, v in zip(grid, point))


def check_experiment(exp: DictConfig, name: str = "experiment") -> None:
    """The report keys of an experiment, checked before any compute is spent. The tuning section is checked
    by analysis/tuning/ (tuning_grid, and settings_of in tuning.mode optuna), which rlsd-compare and rlsd-report
    call before anything runs; only its overrides are read here."""
    _check_arm_sections(exp, name)
    labels = list(arms(exp))
    baseline_of(exp, name)
    for pair in exp.get("pairs") or []:
        if len(pair) != 2 or any(p not in labels for p in pair):
            raise ConfigError(f"experiment {name}: pairs entry {list(pair)} must be [method, baseline] of the arms "
                              f"{labels}")
    if float(exp.get("delta_points", 3.0)) <= 0:
        raise ConfigError(f"experiment {name}: delta_points must be > 0 points; got {exp.delta_points}")
    points = budget_points_of(exp, name)
    k = exp.get("last_k")
    if k is not None and not 1 <= int(k) <= len(points):
        raise ConfigError(f"experiment {name}: last_k must be between 1 and the {len(points)} budget points "
                          f"{points}; got {k}")
    for o in [*exp.overrides, *((exp.get("tuning") or {}).get("overrides") or [])]:
        if o.lstrip("+~").split("=", 1)[0] in ("eval.budget_points", "eval.budget_split"):
            raise ConfigError(f"experiment {name}: {o!r} in overrides; the experiment's budget_points (and the "
                              f"tuning split) set it, so that the runs evaluate where the tables read")


def budget_points_of(exp: DictConfig, name: str = "experiment") -> list[float]:
    points = [float(p) for p in exp.get("budget_points", [0.25, 0.5, 0.75, 1.0])]
    if not points or any(not 0 < p <= 1 for p in points) or points != sorted(set(points)):
        raise ConfigError(f"experiment {name}: budget_points must be increasing fractions in (0, 1]; got {points}")
    return points


def baseline_of(exp: DictConfig, name: str = "experiment") -> str:
    """The arm the others are compared with: the experiment's `baseline`, else grpo, else the first arm."""
    labels = list(arms(exp))
    base = exp.get("baseline")
    if base is None:
        return "grpo" if "grpo" in labels else labels[0]
    if base not in labels:
        raise ConfigError(f"experiment {name}: baseline {base!r} is not one of its arms {labels}")
    return str(base)


def pairs_of(exp: DictConfig) -> list[tuple[str, str]]:
    return [(str(a), str(b)) for a, b in (exp.get("pairs") or [])]


def format_value(v: Any) -> str:
    """A value as an override writes it (floats in %g)."""
    return f"{v:g}" if isinstance(v, float) else str(v)


def budget_eval_overrides(exp: DictConfig, split: str | None = None) -> list[str]:
    """The held-out evaluation's budget points follow the experiment's; tuning runs evaluate the validation
    split at them instead of the test split."""
    out = []
    if "budget_points" in exp:
        out.append(f"eval.budget_points=[{','.join(format_value(float(p)) for p in exp.budget_points)}]")
    if split is not None:
        out.append(f"eval.budget_split={split}")
    return out


def arms(exp: DictConfig) -> dict[str, tuple[str, list[str]]]:
    """label -> (algorithm, overrides). Without a `grid` (or `factors`), one arm per method; with one (an
    ablation), one arm per method and grid point, e.g. {algorithm.params.eps_w: [0.1, 0.2]} -> rlsd-eps_w0.1,
    rlsd-eps_w0.2."""
    per_method = exp.get("method_overrides") or {}
    grid = dict(exp.get("grid") or exp.get("factors") or {})
    out = {}
    for m in exp.methods:
        base = list(per_method.get(m, []))
        if not grid:
            out[m] = (m, base)
            continue
        for point in itertools.product(*grid.values()):
            label = _arm_label(str(m), grid, point)
            if label in out:
                raise ConfigError(f"two arms share the label {label!r}: two grid keys end in the same name with the "
                                  f"same values; {list(grid)}")
            out[label] = (m, base + [f"{k}={v}" for k, v in zip(grid, point)])
    return out


def run_overrides(exp: DictConfig, arm: str, seed: int, runs_dir: Path, extra: list[str],
                  picked: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The overrides of one run of a comparison: the experiment's, then the arm's, then the tuning pick's
    (`picked`), then the command line's."""
    algorithm, arm_overrides = arms(exp)[arm]
    own = [f"algorithm={algorithm}", f"seed={seed}", f"run.dir={runs_dir}", f"run.name={arm}-s{seed}",
           *exp.overrides, *budget_eval_overrides(exp), *arm_overrides]
    origin = experiment_origin(exp)
    return (Overrides(own, origin=origin) + Overrides(list(picked), origin=f"{origin} tuning pick")
            + Overrides(extra))


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
        raise ConfigError(f"experiment={names[-1]}: " + unknown_message("method", algorithm, exp.methods))
    # The budget points too, as in run_overrides: a run launched by hand evaluates (and keeps its policies)
    # where the study's tables read.
    own = [*exp.overrides, *budget_eval_overrides(exp), *(exp.get("method_overrides") or {}).get(algorithm, [])]
    return Overrides(own, origin=f"experiment {names[-1]}") + Overrides(rest, origins_of(rest))


# The held-out splits of the training data that evaluations read: validation chooses hyperparameters, test reports.
HELDOUT_SPLITS = ("validation", "test")

# The ledger's cumulative metric that each budget kind reads.
BUDGET_KEYS = {"flops": "ledger/cum/flops/total", "tokens": "ledger/cum/tokens/generated", "steps": "step",
               "seconds": "ledger/cum/time/step"}


def budget_spent(budget: Any, metrics: dict[str, float]) -> bool:
    """Whether the run has spent `budget` (a checked train.budget section) by the ledger's totals in `metrics`."""
    if budget.kind is None:
        return False
    # stop_at: a tuning rung (a fraction of the budget): the run stops there and a resume continues it
    return metrics[BUDGET_KEYS[budget.kind]] >= budget.value * (budget.stop_at or 1.0)
