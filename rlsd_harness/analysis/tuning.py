"""Multi-fidelity tuning on Optuna (`tuning.mode: optuna` of an experiment), and the tuning report.

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
- Pick rule (PICK_RULE): the highest mean validation mean@k over the tuning seeds at the last rung (1.0 of the
  test budget); ties go to the smaller learning rate, then to the earlier trial. A pick in the outer EDGE of a
  knob's range is flagged.

The report (tuning.md + tuning.png, `python -m rlsd_harness.analysis.tuning report <study>...` for committed
studies, the grid protocols included): per method the expected best validation score against tuning FLOPs
(Dodge et al. 2019, "Show your work", EMNLP: the expected maximum of n trials drawn from the observed ones,
with its standard deviation as the band), each knob's sensitivity (Spearman's rho of the score over the knob,
and the scores across its range), the pick and every trial's result.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from rlsd_harness.config import BUDGET_KEYS, ConfigError, Overrides, compose_config, tuning_run_overrides

PICK_RULE = ("highest mean validation mean@k over the tuning seeds at the last rung (the full test budget); ties go "
             "to the smaller learning rate, then to the earlier trial")
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
    """PICK_RULE over every method's completed trials."""
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


# ---------------------------------------------------------------- rlsd-compare's tuning phase


def unfinished_runs(folders: Sequence[Path]) -> list[str]:
    """The run folders of a rung that neither finished it nor failed: a run interrupted (SIGINT / SIGTERM) or
    whose worker process died. Only a run that failed (failed.json) scores FAILED_SCORE."""
    from rlsd_harness.training.run import run_state

    return [Path(f).name for f in folders if run_state(Path(f)) not in ("finished", "failed")]


def run_tuning(target: Path, exp: DictConfig, name: str, extra: list[str], train: Callable[[list], bool],
               log: Callable[[str], None], base: list[str] | None, checked: Callable[[list[str]], DictConfig],
               check: Callable[[dict[str, dict]], None] = lambda _: None) -> dict[str, dict] | None:
    """rlsd-compare's tuning phase in tuning.mode optuna: trains the rungs with `train` (compare._train_all over
    (label, folder, config) jobs), writes tuning.csv, tuning.md, tuning.png and picks.json, returns the picks
    (None while Slurm jobs are queued). `check` sees the picks before anything is written."""
    from rlsd_harness.analysis.report import metrics_lines, run_records, write_csv, write_json

    s = settings_of(exp, name)
    runs_dir = target / "tuning" / "runs"
    kind = str(exp.get("budget_kind", "flops"))
    key = BUDGET_KEYS[kind]

    def overrides(trial: Trial, seed: int, k: int) -> list[str]:
        from rlsd_harness.config import TuningPoint

        rungs = f"eval.budget_points=[{','.join(_format(float(r)) for r in s.rungs)}]"
        point = TuningPoint(trial.method, trial.label, float(trial.params.get("lr", 0.0)), {},
                            (*overrides_of(trial.params), rungs, f"train.budget.stop_at={_format(float(s.rungs[k]))}"))
        return tuning_run_overrides(exp, point, seed, runs_dir, extra)

    spaces = {m: search_space(checked(list(overrides(Trial(m, 0, {}), s.seeds[0], 0)))) for m in exp.methods}
    studies = open_studies(target / "tuning" / "optuna.journal", [str(m) for m in exp.methods], s)

    def run_rung(alive: dict[str, list[Trial]], k: int) -> dict[str, dict[int, tuple[float, float]]] | None:
        jobs = [(f"tuning/{t.label}-s{seed}", runs_dir / f"{t.label}-s{seed}", checked(overrides(t, seed, k)))
                for m in alive for t in alive[m] for seed in s.seeds]
        if not train(jobs):
            return None
        stopped = unfinished_runs([folder for _, folder, _ in jobs])
        if stopped:  # interrupted, or its worker died: scoring it as failed would prune its trial for good
            log(f"tuning stopped at rung {k}: {len(stopped)} run(s) neither finished nor failed ({', '.join(stopped[:3])}"
                f"{' ...' if len(stopped) > 3 else ''}); nothing of this rung is scored; rerun the same command to continue")
            return None
        out: dict[str, dict[int, tuple[float, float]]] = {}
        for m in alive:
            out[m] = {}
            for t in alive[m]:
                scores, flops = [], 0.0
                for seed in s.seeds:
                    folder = runs_dir / f"{t.label}-s{seed}"
                    rec = run_records(folder, "validation", list(s.rungs), key) if folder.is_dir() else None
                    at = rec[np.isclose(rec["budget"], s.rungs[k])] if rec is not None else None
                    scores.append(float(at["score"].mean()) if at is not None and len(at) else float("nan"))
                    lines = metrics_lines(folder) if folder.is_dir() else []
                    flops += float(lines[-1].get("ledger/cum/flops/total", 0.0)) if lines else 0.0
                out[m][t.number] = (float(np.mean(scores)), flops)
        return out

    picks = tune(studies, spaces, s, run_rung, log)
    if picks is None:
        return None
    check(picks)
    trials = trials_frame(studies, s)
    budget = _test_budget(exp)
    flops = trials.groupby("method")["flops"].sum().to_dict()
    write_csv(trials, target / "tuning.csv")
    for pick in picks.values():
        pick["n_runs"] = len(s.seeds)
    write_json({"rule": PICK_RULE, "split": "validation", "budget_point": 1.0, "base": base, "mode": "optuna",
                "settings": {**s.__dict__, "rungs": list(s.rungs), "seeds": list(s.seeds)},
                "tuning_flops": {m: float(flops.get(m, 0.0)) for m in picks},
                "planned_flops_per_method": s.runs_per_method() * budget, "picks": picks}, target / "picks.json")
    write_tuning_report(target, protocol_from_optuna(trials, picks, s, budget, spaces, name))
    return picks


def _test_budget(exp: DictConfig) -> float:
    cfg = compose_config(list(Overrides(list(exp.overrides))))
    return float(cfg.train.budget.value)


# ---------------------------------------------------------------- the report


@dataclass
class Protocol:
    """One tuning protocol's results, whatever produced them: one row per trial (method, label, value: the
    validation score the pick reads, cost: FLOPs of the trial, param.<key> columns, state), the picks
    ({method: {label, values, edges}}) and how it was run (a sentence)."""

    name: str
    trials: pd.DataFrame
    picks: dict[str, dict]
    description: str
    knobs: dict[str, list[Knob]]
    sensitivity_column: str = "value"  # the score a knob's sensitivity reads (every trial has it)


def expected_max(values: Sequence[float], n: int) -> tuple[float, float]:
    """Dodge et al. 2019 (arXiv 1909.03004, Eq. 1): the expected maximum of n draws with replacement from the
    observed scores, and its standard deviation: sum_i v_(i) [(i/N)^n - ((i-1)/N)^n] over the sorted scores."""
    v = np.sort(np.asarray([x for x in values if math.isfinite(x)], dtype=float))
    N = v.size
    if N == 0 or n < 1:
        return float("nan"), float("nan")
    i = np.arange(1, N + 1)
    w = (i / N) ** n - ((i - 1) / N) ** n
    mean = float(np.sum(w * v))
    var = float(np.sum(w * v**2) - mean**2)
    return mean, math.sqrt(max(var, 0.0))


def expected_max_curve(protocol: Protocol, method: str) -> pd.DataFrame:
    """n = 1 .. the number of scored trials: tuning FLOPs (n x the method's FLOPs per scored trial, pruned
    trials' compute spread over the scored ones) and the expected best validation score with its SD."""
    t = protocol.trials[protocol.trials["method"] == method]
    scored = t[np.isfinite(t["value"].astype(float))]
    per_trial = float(t["cost"].sum()) / max(1, len(scored))
    rows = []
    for n in range(1, len(scored) + 1):
        mean, sd = expected_max(scored["value"].astype(float).tolist(), n)
        rows.append({"n": n, "flops": n * per_trial, "mean": mean, "sd": sd})
    return pd.DataFrame(rows)


def sensitivity(protocol: Protocol, method: str) -> list[dict[str, Any]]:
    """Per knob of the method: Spearman's rho of the score over the knob's value, the score's range and the
    knob value of the best and worst trial (every trial's score at sensitivity_column)."""
    from scipy.stats import spearmanr

    t = protocol.trials[protocol.trials["method"] == method]
    col = protocol.sensitivity_column
    out = []
    for knob in protocol.knobs.get(method, []):
        c = f"param.{knob.key}"
        sub = t[[c, col]].dropna() if c in t else pd.DataFrame()
        if len(sub) < 2:
            continue
        x, y = sub[c].astype(float), sub[col].astype(float)
        rho = float(spearmanr(x, y).statistic) if x.nunique() > 1 and y.nunique() > 1 else float("nan")
        out.append({"knob": knob.key, "trials": len(sub), "rho": rho, "score_low": float(y.min()),
                    "score_high": float(y.max()), "best_at": float(x[y.idxmax()]), "worst_at": float(x[y.idxmin()])})
    return out


def protocol_from_optuna(trials: pd.DataFrame, picks: dict[str, dict], s: Settings, budget: float,
                         spaces: dict[str, list[Knob]], name: str) -> Protocol:
    t = trials.copy()
    t["cost"] = t["flops"]
    desc = (f"{name}: Optuna {s.sampler} (seed {s.sampler_seed}), synchronous successive halving, "
            f"{s.brackets} bracket(s) of {' -> '.join(map(str, s.sizes()))} trials at rungs "
            f"{', '.join(f'{r:g}' for r in s.rungs)} of the test budget ({budget:.3g} FLOPs), seeds {list(s.seeds)}; "
            f"the score is the validation mean@k at the last rung; sensitivity reads every trial's first-rung score")
    return Protocol(name, t, picks, desc, spaces, sensitivity_column=f"at_{s.rungs[0]:g}")


def protocol_from_grid(folder: Path, flops_per_run: float | None = None) -> Protocol:
    """A committed grid-tuned study (tuning.csv, picks.json): every grid point one trial whose score is its
    mean over the tuning seeds at the tuning budget's last point, costing n_runs x the tuning budget
    (train.budget.value in picks.json's tuning overrides, else `flops_per_run`, else the study's experiment's
    budget)."""
    folder = Path(folder)
    table = pd.read_csv(folder / "tuning.csv")
    recorded = json.loads((folder / "picks.json").read_text())
    if "overrides" not in recorded:
        raise ConfigError(f"{folder / 'picks.json'} records no tuning overrides (written before picks.json kept "
                          f"them); bench/migrate_studies.py {folder} adds them from its tuning.md")
    found = re.search(r"train\.budget\.value=([0-9.eE+-]+)", " ".join(recorded["overrides"]))
    if found:
        flops_per_run = float(found.group(1))
    elif flops_per_run is None:
        from rlsd_harness.config import load_experiment

        flops_per_run = _test_budget(load_experiment(folder.name))
    picks = recorded["picks"]
    t = pd.DataFrame({"method": table["method"], "label": table["label"], "value": table["mean"].astype(float),
                      "cost": table["n_runs"].astype(float) * flops_per_run, "param.lr": table["lr"].astype(float),
                      "state": np.where(table["picked"], "picked", "complete")})
    lrs = sorted(set(t["param.lr"]))
    knobs = {m: [Knob("lr", min(lrs), max(lrs), log=True)] for m in t["method"].unique()}
    grid_picks = {}
    for m, p in picks.items():
        tried = sorted(set(t.loc[t["method"] == m, "param.lr"]))
        lr = float(p["values"]["algorithm.lr"])
        edge = [f"lr={lr:g} is the {'smallest' if lr == tried[0] else 'largest'} tried"] \
            if len(tried) > 1 and lr in (tried[0], tried[-1]) else []
        grid_picks[m] = {**p, "edges": edge}
    n_runs = sorted(set(table["n_runs"]))
    desc = (f"{folder.name}: learning-rate grid of {len(lrs)} points {', '.join(f'{x:g}' for x in lrs)} per method"
            f" (the same for every method), {'/'.join(map(str, n_runs))} seeds, {flops_per_run:.3g} FLOPs per run, "
            f"scored at the tuning budget's last point")
    return Protocol(folder.name, t, grid_picks, desc, knobs)


def _pts(x: float) -> str:
    return "-" if not math.isfinite(x) else f"{100 * x:.1f}"


def report_markdown(p: Protocol) -> str:
    lines = [f"# Tuning: {p.name}", "", p.description + ".", "", f"Pick rule: {PICK_RULE}." if "optuna" in
             p.description.lower() else "Pick rule: the highest mean validation score at the tuning budget's last "
             "point; ties to the smaller learning rate.", "",
             "## Expected best validation score against tuning FLOPs", "",
             "Dodge et al. 2019: the expected maximum of n trials drawn from the scored ones (+- its SD); FLOPs = n x "
             "the method's tuning FLOPs per scored trial (a pruned trial's compute is charged to the scored ones).", "",
             "| method | trials scored | tuning FLOPs | E[best] at n = 1 | at n = all | pick | pick's score | edge |",
             "|---|---|---|---|---|---|---|---|"]
    for m in p.picks:
        curve = expected_max_curve(p, m)
        if not len(curve):
            continue
        first, last = curve.iloc[0], curve.iloc[-1]
        pick = p.picks[m]
        values = ", ".join(f"{k.removeprefix('algorithm.')}={v:.4g}" for k, v in pick["values"].items())
        lines.append(f"| {m} | {len(curve)} | {last['flops']:.3g} | {_pts(first['mean'])} +- {_pts(first['sd'])} | "
                     f"{_pts(last['mean'])} +- {_pts(last['sd'])} | {values} | "
                     f"{_pts(float(pick.get('validation_mean', float('nan'))))} | "
                     f"{'; '.join(pick.get('edges') or []) or '-'} |")
    lines += ["", "## Sensitivity", "",
              f"Spearman's rho of the score ({p.sensitivity_column}) over each knob, the score's range over the trials "
              f"and where the best and worst trials put the knob.", "",
              "| method | knob | trials | rho | score range | best at | worst at |", "|---|---|---|---|---|---|---|"]
    for m in p.picks:
        for r in sensitivity(p, m):
            lines.append(f"| {m} | {r['knob']} | {r['trials']} | {r['rho']:+.2f} | {_pts(r['score_low'])} .. "
                         f"{_pts(r['score_high'])} | {r['best_at']:.4g} | {r['worst_at']:.4g} |")
    params = [c for c in p.trials.columns if c.startswith("param.")]
    rungs = [c for c in p.trials.columns if c.startswith("at_")]
    lines += ["", "## Every trial", "", "| method | trial | state | " + " | ".join(c[6:] for c in params)
              + "".join(f" | {c[3:]}" for c in rungs) + " | score | FLOPs |",
              "|---|---|---|" + "---|" * (len(params) + len(rungs) + 2)]
    for r in p.trials.to_dict("records"):
        lines.append(f"| {r['method']} | {r['label']} | {r['state']} | "
                     + " | ".join("-" if not isinstance(r[c], int | float) or not math.isfinite(r[c]) else f"{r[c]:.4g}"
                                  for c in params)
                     + "".join(f" | {_pts(r[c])}" for c in rungs) + f" | {_pts(r['value'])} | {r['cost']:.3g} |")
    return "\n".join(lines) + "\n"


def plot_protocol(p: Protocol, path: Path) -> None:
    """Per method: the expected-best curve with its band, and the score over each knob (log axes for log knobs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rlsd_harness.analysis.report import _save_figure

    methods = list(p.picks)
    cols = 1 + max((len(p.knobs.get(m, [])) for m in methods), default=0)
    fig, axes = plt.subplots(len(methods), cols, figsize=(3.2 * cols, 2.4 * len(methods)), squeeze=False)
    for i, m in enumerate(methods):
        curve = expected_max_curve(p, m)
        ax = axes[i][0]
        if len(curve):
            ax.plot(curve["flops"], 100 * curve["mean"], marker="o", ms=3)
            ax.fill_between(curve["flops"], 100 * (curve["mean"] - curve["sd"]), 100 * (curve["mean"] + curve["sd"]),
                            alpha=0.25)
        ax.set_title(f"{m}: E[best] vs tuning FLOPs", fontsize=8)
        ax.set_xlabel("tuning FLOPs", fontsize=7)
        ax.set_ylabel("validation (points)", fontsize=7)
        t = p.trials[p.trials["method"] == m]
        for j, knob in enumerate(p.knobs.get(m, []), start=1):
            ax = axes[i][j]
            c = f"param.{knob.key}"
            if c in t:
                ax.scatter(t[c].astype(float), 100 * t[p.sensitivity_column].astype(float), s=10)
                picked = p.picks[m]["values"].get(f"algorithm.{knob.key}")
                if picked is not None:
                    ax.axvline(float(picked), color="red", lw=0.8)
            if knob.log:
                ax.set_xscale("log")
            ax.set_title(f"{m}: {knob.key}", fontsize=8)
        for j in range(1 + len(p.knobs.get(m, [])), cols):
            axes[i][j].axis("off")
    fig.tight_layout()
    _save_figure(fig, path, 110)
    plt.close(fig)


def write_tuning_report(folder: Path, p: Protocol, stem: str = "tuning") -> None:
    from rlsd_harness.analysis.report import write_text

    write_text(Path(folder) / f"{stem}.md", report_markdown(p))
    plot_protocol(p, Path(folder) / f"{stem}.png")


def side_by_side(protocols: Sequence[Protocol]) -> str:
    """One table: per protocol and method, the pick, its validation score, the tuning FLOPs and E[best]."""
    lines = ["| protocol | method | pick | pick's validation score | tuning FLOPs | E[best] at all trials | edge |",
             "|---|---|---|---|---|---|---|"]
    for p in protocols:
        for m, pick in p.picks.items():
            curve = expected_max_curve(p, m)
            last = curve.iloc[-1] if len(curve) else {"flops": float("nan"), "mean": float("nan"), "sd": float("nan")}
            values = ", ".join(f"{k.removeprefix('algorithm.')}={v:.4g}" for k, v in pick["values"].items())
            lines.append(f"| {p.name} | {m} | {values} | {_pts(float(pick.get('validation_mean', float('nan'))))} | "
                         f"{last['flops']:.3g} | {_pts(last['mean'])} +- {_pts(last['sd'])} | "
                         f"{'; '.join(pick.get('edges') or []) or '-'} |")
    return "\n".join(lines) + "\n"


def load_protocol(folder: Path) -> Protocol:
    """A study folder's tuning, whichever protocol made it (picks.json's mode)."""
    folder = Path(folder)
    recorded = json.loads((folder / "picks.json").read_text())
    if recorded.get("mode") != "optuna":
        return protocol_from_grid(folder)
    st = recorded["settings"]
    s = Settings(st["trials"], st["reduction_factor"], tuple(st["rungs"]), st["brackets"], st["sampler"],
                 st["sampler_seed"], tuple(st["seeds"]))
    trials = pd.read_csv(folder / "tuning.csv")
    spaces: dict[str, list[Knob]] = {}
    for m in recorded["picks"]:
        cols = [c for c in trials.columns if c.startswith("param.") and trials.loc[trials["method"] == m, c].notna().any()]
        spaces[m] = []
        for c in cols:
            x = trials.loc[trials["method"] == m, c].dropna().astype(float)
            spaces[m].append(Knob(c[6:], float(x.min()), float(x.max()) if x.max() > x.min() else float(x.min()) + 1,
                                  log=c == "param.lr"))
    budget = recorded.get("planned_flops_per_method", 0.0) / max(s.runs_per_method(), 1e-12)
    return protocol_from_optuna(trials, recorded["picks"], s, budget, spaces, folder.name)


def main(argv: list[str] | None = None) -> None:
    """python -m rlsd_harness.analysis.tuning report <study folder>... out=<folder>: each study's tuning report
    (<name>.md, <name>.png) and protocols.md, the protocols side by side."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] != "report":
        raise SystemExit("usage: python -m rlsd_harness.analysis.tuning report <study folder>... out=<folder>")
    folders = [a for a in args[1:] if not a.startswith("out=")]
    out = Path(next((a[4:] for a in args if a.startswith("out=")), "tuning-report"))
    missing = [f for f in folders if not (Path(f) / "picks.json").exists() or not (Path(f) / "tuning.csv").exists()]
    if not folders or missing:
        raise SystemExit(f"give study folders with tuning.csv and picks.json; not one: {missing or '(none given)'}")
    protocols = [load_protocol(Path(f)) for f in folders]
    out.mkdir(parents=True, exist_ok=True)
    from rlsd_harness.analysis.report import write_text

    for p in protocols:
        write_tuning_report(out, p, stem=p.name)
    write_text(out / "protocols.md", "# Tuning protocols side by side\n\n" + "\n".join(f"- {p.description}."
               for p in protocols) + "\n\n" + side_by_side(protocols))
    print(f"tuning reports in {out}")


if __name__ == "__main__":
    main()
