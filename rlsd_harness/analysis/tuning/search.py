"""Multi-fidelity tuning on Optuna (`tuning.mode: optuna` of an experiment): the search spaces, the settings,
the pruner and the loop (rlsd-compare's tuning phase that trains it is analysis/tuning/phase.py).

Protocol (`rlsd-compare experiment=<one with tuning.mode: optuna>`):
- Every method has its own search space, declared beside its config: the `search_space:` block of
  config/algorithm/<name>.yaml (a key under `algorithm` -> {low, high[, log][, int]} or {choices: [...]}). The
  tuner reads it from the method's composed config, so a new objective is tuned by writing that block.
- Synchronous successive halving (Jamieson & Talwalkar 2016, "Non-stochastic best arm identification and
  hyperparameter optimization", AISTATS) in brackets: each bracket asks `trials` configurations of every
  method from its Optuna study, trains each at every tuning seed to the first rung, keeps the best
  1/reduction_factor by mean validation mean@k, continues those (from their checkpoints) to the next rung, and
  so on. The rungs are fractions of the TEST budget (train.budget.value of the test runs) and the last rung is
  1.0: a pick is judged where the test reads it. The validation split scores every rung (eval.budget_points =
  the rungs, eval.budget_split = validation). Optuna's own SuccessiveHalvingPruner is asynchronous (ASHA, Li et
  al. 2020): which trials it promotes depends on the order in which they report, and it promotes its first
  trials unconditionally (optuna/pruners/_successive_halving.py: "Optuna does not support suspending or
  resuming ongoing trials"); here runs are suspended and resumed at every rung, so each rung's whole cohort
  reports before the pruner (HalvingPruner, an Optuna BasePruner) decides, and every method gets the same
  number of trials at every rung, the same seeds and the same FLOPs.
- Sampler: Optuna's TPESampler (Bergstra et al. 2011), its first `trials` asks random (n_startup_trials), then
  fitted to the earlier brackets' results; seeded per trial number (sampler_seed, trial number), so a tuning
  killed anywhere and rerun asks the same configurations and reaches the same picks.
- Storage: <out>/tuning/optuna.journal (Optuna's JournalStorage file), one Optuna study per method; the runs in <out>/tuning/runs/
  <method>-t<trial>-s<seed>/ resume from their checkpoints. The journal is the record: a trial whose score at a
  rung is in it is neither trained nor scored again at that rung, so a study continued from its committed journal
  without its run folders (checkpoints are too large to commit) trains only the trials still alive, each from
  step 0 to its rung; a run is seeded, so that run equals the resumed one on the same CPU. The budget read from
  the ledgers is the protocol's either way; the wall-clock cost of the earlier rungs is paid again.
- Budget: every method spends seeds x sum over rungs of (trials at the rung x the rung's increment) x the test
  budget per bracket, in the ledger's FLOPs (teacher passes charged, as in the test runs); the spend read from
  the runs' ledgers is in picks.json and tuning.md.
- Pick rule (OPTUNA_PICK_RULE): the highest mean validation mean@k over the tuning seeds at the last rung (1.0 of the
  test budget); ties go to the smaller learning rate, then to the earlier trial. A pick in the outer EDGE of a
  knob's range is flagged.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from rlsd_harness.config import ConfigError, Overrides, compose_config

OPTUNA_PICK_RULE = ("highest mean validation mean@k over the tuning seeds at the last rung (the full test budget); "
                    "ties go to the smaller learning rate, then to the earlier trial")
EDGE = 0.1  # a pick within this fraction of its range's width (log scale for log knobs) of an end is flagged
OPTUNA_KEYS = {
    "trials": "configurations per method per bracket at the first rung",
    "reduction_factor": "each rung keeps the best 1/reduction_factor of the previous one",
    "rungs": "fractions of the test budget where the runs are scored and halved; the last is 1.0",
    "brackets": "successive-halving brackets run one after another (TPE learns from the earlier ones)",
    "sampler": "tpe | random",
    "sampler_seed": "seed of the sampler (with each trial's number)",
}
SAMPLERS = ("tpe", "random")
FAILED_SCORE = -1.0  # a rung score of a trial one of whose runs failed (scores are in [0, 1]): pruned, never picked


# ---------------------------------------------------------------- search space


@dataclass(frozen=True)
class Knob:
    """One tuned key: `key` under `algorithm` (lr, params.eps_w, teacher.ema_rate), its range or choices."""

    key: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    choices: tuple = ()

    @property
    def override(self) -> str:
        return f"algorithm.{self.key}"

    def distribution(self) -> Any:
        import optuna

        if self.choices:
            return optuna.distributions.CategoricalDistribution(list(self.choices))
        if self.integer:
            return optuna.distributions.IntDistribution(int(self.low), int(self.high), log=self.log)
        return optuna.distributions.FloatDistribution(float(self.low), float(self.high), log=self.log)

    def position(self, value: Any) -> float | None:
        """Where `value` lies in the range, 0 (low) to 1 (high), on the log scale for log knobs; None for
        choices that are not numbers."""
        if self.choices:
            numbers = [c for c in self.choices if isinstance(c, int | float) and not isinstance(c, bool)]
            if len(numbers) != len(self.choices) or len(numbers) < 2:
                return None
            lo, hi, v = min(numbers), max(numbers), value
        else:
            lo, hi, v = self.low, self.high, value
        if self.log:
            lo, hi, v = math.log(lo), math.log(hi), math.log(v)
        return 0.5 if hi == lo else (float(v) - lo) / (hi - lo)


def search_space(cfg: DictConfig) -> list[Knob]:
    """The knobs of the objective in a composed config (its algorithm yaml's `search_space:` block); a
    ConfigError naming the objective and the bad entry otherwise."""
    name = cfg.algorithm.name
    block = cfg.algorithm.get("search_space")
    where = f"algorithm {name}: search_space"
    if not block:
        raise ConfigError(f"{where} is empty: the tuner needs the objective's ranges beside its config "
                          f"(config/algorithm/<name>.yaml: search_space: {{lr: {{low: 5.0e-6, high: 2.0e-4, log: true}}, ...}})")
    knobs = []
    algo = OmegaConf.to_container(cfg.algorithm, resolve=True)
    for key, spec in OmegaConf.to_container(block, resolve=True).items():
        if not isinstance(spec, dict):
            raise ConfigError(f"{where}.{key} must be {{low, high[, log][, int]}} or {{choices: [...]}}; got {spec!r}")
        node: Any = algo
        for part in str(key).split("."):
            if not isinstance(node, dict) or part not in node:
                raise ConfigError(f"{where}.{key}: algorithm.{key} is not a key of {name}'s config; valid: lr, "
                                  f"params.<a key of its params>, teacher.<a key of its teacher>")
            node = node[part]
        unknown = sorted(set(spec) - {"low", "high", "log", "int", "choices"})
        if unknown:
            raise ConfigError(f"{where}.{key}: unknown field(s) {unknown}; valid: low, high, log, int, choices")
        if "choices" in spec:
            choices = tuple(spec["choices"] or ())
            if len(choices) < 2 or set(spec) != {"choices"}:
                raise ConfigError(f"{where}.{key}: choices needs at least two values and nothing else; got {spec!r}")
            knobs.append(Knob(str(key), choices=choices))
            continue
        low, high = spec.get("low"), spec.get("high")
        log, integer = bool(spec.get("log", False)), bool(spec.get("int", False))
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (low, high)) or not low < high \
                or (log and low <= 0):
            raise ConfigError(f"{where}.{key}: needs numbers low < high (low > 0 with log: true); got {spec!r}")
        if integer and (low != int(low) or high != int(high)):
            raise ConfigError(f"{where}.{key}: int: true needs whole-number ends; got {spec!r}")
        knobs.append(Knob(str(key), float(low), float(high), log, integer))
    if not any(k.key == "lr" for k in knobs):
        raise ConfigError(f"{where} has no lr: every method tunes its learning rate (valid keys: "
                          f"{', '.join(k.key for k in knobs)} + lr)")
    return knobs


def _format(v: Any) -> str:
    return repr(float(v)) if isinstance(v, float) else str(v)


def overrides_of(params: dict[str, Any]) -> list[str]:
    """A trial's parameters (keys under `algorithm`) as training overrides."""
    return [f"algorithm.{k}={_format(v)}" for k, v in sorted(params.items())]


def edges(knobs: Sequence[Knob], params: dict[str, Any]) -> list[str]:
    """The picked values within EDGE of their range's ends, described."""
    out = []
    for knob in knobs:
        if knob.key not in params:
            continue
        u = knob.position(params[knob.key])
        if u is not None and (u < EDGE or u > 1 - EDGE):
            side = "low" if u < EDGE else "high"
            ends = (min(knob.choices), max(knob.choices)) if knob.choices else (knob.low, knob.high)
            end = ends[0] if side == "low" else ends[1]
            out.append(f"{knob.key}={params[knob.key]:.4g} is at the {side} edge of its range (end {end:g})")
    return out


# ---------------------------------------------------------------- settings


@dataclass(frozen=True)
class Settings:
    trials: int
    reduction_factor: int
    rungs: tuple[float, ...]
    brackets: int
    sampler: str
    sampler_seed: int
    seeds: tuple[int, ...]

    def sizes(self) -> list[int]:
        """Trials at each rung of a bracket."""
        out = [self.trials]
        for _ in self.rungs[1:]:
            out.append(max(1, out[-1] // self.reduction_factor))
        return out

    def runs_per_method(self) -> float:
        """Full-budget run equivalents one method spends (every bracket, every seed)."""
        steps = np.diff([0.0, *self.rungs])
        return self.brackets * len(self.seeds) * float(sum(n * d for n, d in zip(self.sizes(), steps)))


def is_optuna(exp: DictConfig) -> bool:
    t = exp.get("tuning") or {}
    return bool(t) and str(t.get("mode", "grid")) == "optuna"


def settings_of(exp: DictConfig, name: str = "experiment") -> Settings:
    """The experiment's `tuning.optuna` section, checked; a ConfigError naming the bad key and the valid ones."""
    t = exp.tuning
    where = f"experiment {name}: tuning.optuna"
    given = dict(t.get("optuna") or {})
    unknown = sorted(set(given) - set(OPTUNA_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; valid: {', '.join(OPTUNA_KEYS)}")
    for o in t.get("overrides") or []:
        if o.lstrip("+~").split("=", 1)[0].startswith("train.budget."):
            raise ConfigError(f"experiment {name}: tuning.overrides sets {o!r}; in tuning.mode optuna the rungs are "
                              f"fractions of the test budget (tuning.optuna.rungs), which the last rung spends whole")
    rungs = tuple(float(r) for r in given.get("rungs", [0.25, 0.5, 1.0]))
    if not rungs or list(rungs) != sorted(set(rungs)) or rungs[-1] != 1.0 or rungs[0] <= 0:
        raise ConfigError(f"{where}.rungs must be increasing fractions in (0, 1] ending at 1.0 (the full test budget); "
                          f"got {list(rungs)}")
    s = Settings(int(given.get("trials", 8)), int(given.get("reduction_factor", 2)), rungs,
                 int(given.get("brackets", 1)), str(given.get("sampler", "tpe")), int(given.get("sampler_seed", 0)),
                 tuple(int(x) for x in t.seeds))
    if s.reduction_factor < 2:
        raise ConfigError(f"{where}.reduction_factor must be >= 2; got {s.reduction_factor}")
    if s.sizes()[-1] < 2:
        raise ConfigError(f"{where}: {s.trials} trials halved by {s.reduction_factor} over {len(rungs)} rungs leave "
                          f"{s.sizes()[-1]} at the last rung; the pick compares at least 2 there: give trials >= "
                          f"{2 * s.reduction_factor ** (len(rungs) - 1)}")
    if s.brackets < 1:
        raise ConfigError(f"{where}.brackets must be >= 1; got {s.brackets}")
    if s.sampler not in SAMPLERS:
        raise ConfigError(f"{where}.sampler={s.sampler!r}; valid: {', '.join(SAMPLERS)}")
    if len(s.seeds) < 3:
        raise ConfigError(f"experiment {name}: tuning.seeds {list(s.seeds)}: the last rung needs at least 3 tuning "
                          f"seeds per configuration")
    if set(s.seeds) & {int(x) for x in exp.seeds}:
        raise ConfigError(f"experiment {name}: tuning.seeds {list(s.seeds)} share "
                          f"{sorted(set(s.seeds) & {int(x) for x in exp.seeds})} with the test seeds; give disjoint ones")
    return s


def plan_text(exp: DictConfig, name: str, budget: float) -> str:
    """The tuning phase of a dry run: trials per rung, runs, and the FLOPs every method spends."""
    s = settings_of(exp, name)
    sizes = s.sizes()
    runs = s.brackets * len(s.seeds) * s.trials
    return (f"tuning first (Optuna, {s.sampler} sampler seed {s.sampler_seed}, synchronous successive halving): per "
            f"method {s.brackets} bracket(s) of {' -> '.join(map(str, sizes))} trials at rungs "
            f"{', '.join(f'{r:g}' for r in s.rungs)} of the test budget, {len(s.seeds)} seeds {list(s.seeds)} each: "
            f"{runs} runs per method, {len(exp.methods) * runs} in all; every method spends "
            f"{s.runs_per_method():g} full-budget runs = {s.runs_per_method() * budget:.3g} FLOPs (the ledger's, "
            f"teacher passes charged), validation split at every rung")


def _test_budget(exp: DictConfig) -> float:
    cfg = compose_config(list(Overrides(list(exp.overrides))))
    return float(cfg.train.budget.value)


# ---------------------------------------------------------------- the pruner


def halving_keep(values: dict[int, float], reduction_factor: int) -> set[int]:
    """The trial numbers a rung keeps: the best max(1, n // reduction_factor) by value (nan last), ties to the
    earlier trial."""
    keep = max(1, len(values) // reduction_factor)
    order = sorted(values, key=lambda n: (-values[n] if math.isfinite(values[n]) else math.inf, n))
    return set(order[:keep])


def halving_pruner(reduction_factor: int) -> Any:
    """Synchronous successive halving as an Optuna pruner: a trial is pruned at its last reported step when it is
    not among the best 1/reduction_factor of the trials of its bracket (user attr `bracket`) that reported at
    that step. The caller lets the whole cohort report before asking (module docstring)."""
    import optuna

    class HalvingPruner(optuna.pruners.BasePruner):
        def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
            step = trial.last_step
            if step is None:
                return False
            cohort = {t.number: float(t.intermediate_values[step]) for t in study.get_trials(deepcopy=False)
                      if t.user_attrs.get("bracket") == trial.user_attrs.get("bracket") and step in t.intermediate_values}
            return trial.number not in halving_keep(cohort, reduction_factor)

    return HalvingPruner()


# ---------------------------------------------------------------- the loop


@dataclass(frozen=True)
class Trial:
    method: str
    number: int
    params: dict[str, Any]

    @property
    def label(self) -> str:
        return f"{self.method}-t{self.number:03d}"


# Train every (trial, seed) to rung `k` and return, per method, {trial number: (mean validation score over the
# seeds at the rung, FLOPs the trial's runs have spent so far)}; None while jobs are queued (Slurm).
RungRunner = Callable[[dict[str, list[Trial]], int], dict[str, dict[int, tuple[float, float]]] | None]


def _sampler(s: Settings, number: int) -> Any:
    import optuna

    seed = s.sampler_seed * 1_000_003 + number  # per trial number: a resumed tuning asks what the first would have
    if s.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=s.trials)


def open_studies(storage_path: Path, methods: Sequence[str], s: Settings) -> dict[str, Any]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage_path.parent.mkdir(parents=True, exist_ok=True)
    from optuna.storages.journal import JournalFileBackend

    # a journal file (an append-only log of the studies' operations, replayed on load): a killed tuning loses at
    # most its last, incomplete line, and it is 8x faster here than SQLite's per-write transactions
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(storage_path)))
    return {m: optuna.create_study(study_name=m, storage=storage, direction="maximize", load_if_exists=True,
                                   pruner=halving_pruner(s.reduction_factor)) for m in methods}


def _bracket_trials(study: Any, bracket: int, s: Settings, knobs: Sequence[Knob], method: str) -> list[Trial]:
    """The bracket's trials: those already asked (a resumed tuning), then new asks up to s.trials."""
    from optuna.trial import TrialState

    dists = {k.key: k.distribution() for k in knobs}
    mine = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("bracket") == bracket]
    for t in study.get_trials(deepcopy=False):  # asked, killed before it was labelled: sampled as a new ask would be
        if "bracket" not in t.user_attrs and t.state == TrialState.RUNNING:
            if set(t.params) == set(dists) and len(mine) < s.trials:
                study._storage.set_trial_user_attr(t._trial_id, "bracket", bracket)
                mine.append(study._storage.get_trial(t._trial_id))
            else:
                study.tell(t.number, state=TrialState.FAIL)
    while len(mine) < s.trials:
        study.sampler = _sampler(s, len(study.get_trials(deepcopy=False)))
        trial = study.ask(dists)
        trial.set_user_attr("bracket", bracket)
        mine.append(study._storage.get_trial(trial._trial_id))
    return [Trial(method, t.number, dict(t.params)) for t in sorted(mine, key=lambda t: t.number)]


def tune(studies: dict[str, Any], spaces: dict[str, list[Knob]], s: Settings, run_rung: RungRunner,
         log: Callable[[str], None] = lambda _: None) -> dict[str, dict] | None:
    """Every bracket of every method, rung by rung (module docstring); returns the picks, or None while the
    rung's runs are queued. Resumable: trials, reports and decisions live in the studies' storage."""
    from optuna.trial import Trial as OptunaTrial
    from optuna.trial import TrialState

    for bracket in range(s.brackets):
        alive = {m: _bracket_trials(study, bracket, s, spaces[m], m) for m, study in studies.items()}
        for k in range(len(s.rungs)):
            # a trial whose rung-k score is in the journal is neither trained nor scored again: a study resumed
            # from its committed journal alone (no run folders) trains only what is left, from step 0
            reported = {m: {t.number for t in study.get_trials(deepcopy=False) if k in t.intermediate_values}
                        for m, study in studies.items()}
            pending = {m: [tr for tr in alive[m] if tr.number not in reported[m]] for m in studies}
            results = run_rung(pending, k) if any(pending.values()) else {m: {} for m in studies}
            if results is None:
                return None
            for m, study in studies.items():
                by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
                for tr in pending[m]:
                    value, flops = results[m][tr.number]
                    frozen = by_number[tr.number]
                    if frozen.state == TrialState.RUNNING:
                        study._storage.set_trial_user_attr(frozen._trial_id, f"flops_rung{k}", float(flops))
                        # a failed run scores FAILED_SCORE: last in its rung
                        OptunaTrial(study, frozen._trial_id).report(value if math.isfinite(value) else FAILED_SCORE, k)
                frozen_now = {t.number: t for t in study.get_trials(deepcopy=False)}
                last = k == len(s.rungs) - 1
                survivors = []
                for tr in alive[m]:
                    frozen = frozen_now[tr.number]
                    if last:
                        if frozen.state == TrialState.RUNNING:
                            value = float(frozen.intermediate_values[k])
                            study.tell(tr.number, value) if value != FAILED_SCORE else \
                                study.tell(tr.number, state=TrialState.FAIL)
                    elif study.pruner.prune(study, frozen):
                        if frozen.state == TrialState.RUNNING:
                            study.tell(tr.number, state=TrialState.PRUNED)
                    else:
                        survivors.append(tr)
                if not last:
                    alive[m] = survivors
                    log(f"tuning bracket {bracket}, rung {s.rungs[k]:g}: {m} keeps trials "
                        f"{[t.number for t in survivors]}")
    return picks_of(studies, spaces)


def picks_of(studies: dict[str, Any], spaces: dict[str, list[Knob]]) -> dict[str, dict]:
    """OPTUNA_PICK_RULE over every method's completed trials."""
    from optuna.trial import TrialState

    picks = {}
    for m, study in studies.items():
        done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
        if not done:
            raise ValueError(f"tuning: no trial of {m} reached the last rung with a validation score")
        best = min(done, key=lambda t: (-round(float(t.value), 12), float(t.params.get("lr", 0.0)), t.number))
        params = dict(best.params)
        picks[m] = {"label": f"{m}-t{best.number:03d}", "trial": best.number,
                    "values": {f"algorithm.{k}": v for k, v in params.items()}, "overrides": overrides_of(params),
                    "validation_mean": round(float(best.value), 12), "edges": edges(spaces[m], params)}
    return picks


def trials_frame(studies: dict[str, Any], s: Settings) -> pd.DataFrame:
    """Every trial: method, trial, bracket, state, its parameters (param.<key>), its validation score at each
    rung (at_<rung>), the last rung's (value) and the FLOPs its runs spent (flops)."""
    rows = []
    for m, study in studies.items():
        for t in study.get_trials(deepcopy=False):
            if "bracket" not in t.user_attrs:
                continue
            reached = [k for k in range(len(s.rungs)) if f"flops_rung{k}" in t.user_attrs]
            row = {"method": m, "trial": t.number, "label": f"{m}-t{t.number:03d}", "bracket": t.user_attrs["bracket"],
                   "state": t.state.name.lower(),
                   "value": float(t.value) if t.value is not None and t.state.name == "COMPLETE" else float("nan"),
                   "flops": float(t.user_attrs[f"flops_rung{max(reached)}"]) if reached else 0.0}
            row.update({f"param.{k}": v for k, v in t.params.items()})
            row.update({f"at_{r:g}": float(t.intermediate_values[k]) if k in t.intermediate_values
                        and t.intermediate_values[k] != FAILED_SCORE else float("nan") for k, r in enumerate(s.rungs)})
            failed = [r for k, r in enumerate(s.rungs) if t.intermediate_values.get(k) == FAILED_SCORE]
            if failed:
                row["state"] = f"{row['state']} (a run failed at rung {failed[0]:g})"
            rows.append(row)
    return pd.DataFrame(rows)
