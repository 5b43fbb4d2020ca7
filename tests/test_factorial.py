"""Factorial ablations: planted main effects and interactions are recovered with intervals that cover them,
the experiment file's factorial keys are validated, and a factorial study's report has the factorial section
and no paper-claim rows."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from rlsd_harness.analysis import factorial
from rlsd_harness.config import ConfigError, arms, check_experiment, factor_levels, load_experiment

EPS, SYNC = "algorithm.params.eps_w", "algorithm.teacher.sync_every"


def _exp(**extra) -> OmegaConf:
    return OmegaConf.create({"methods": ["rlsd"], "seeds": [0, 1, 2, 3], "overrides": [],
                             "factors": {EPS: [0.1, 0.4], SYNC: [1, 3]}, **extra})


def planted_records(levels: dict, seeds: int, effect, *, items: int = 150, run_sd: float = 0.01,
                    rng_seed: int = 0) -> pd.DataFrame:
    """Per-item scores in [0, 1]: item difficulty + the seed's shift (shared by every arm of a seed) +
    effect(levels of the arm) + run noise + item noise."""
    rng = np.random.default_rng(rng_seed)
    difficulty = rng.normal(0.0, 0.1, items)
    rows = []
    for s in range(seeds):
        shift = rng.normal(0.0, 0.05)
        for arm, lv in levels.items():
            mean = 0.5 + shift + effect(lv) + rng.normal(0.0, run_sd)
            score = np.clip(mean + difficulty + rng.normal(0.0, 0.05, items), 0, 1)
            rows += [{"method": arm, "seed": s, "budget": 1.0, "item": f"i{i}", "score": float(x)}
                     for i, x in enumerate(score)]
    return pd.DataFrame(rows)


def _cells(records: pd.DataFrame) -> pd.DataFrame:
    return records.groupby(["method", "seed"])["score"].mean().rename("y").reset_index().rename(columns={"method": "arm"})


def test_planted_main_effects_and_interaction_are_recovered():
    levels = factor_levels(_exp())
    assert list(levels) == list(arms(_exp())) == ["rlsd-eps_w0.1-sync_every1", "rlsd-eps_w0.1-sync_every3",
                                                  "rlsd-eps_w0.4-sync_every1", "rlsd-eps_w0.4-sync_every3"]
    # eps_w 0.4 adds 6 points, sync 3 takes 2 away, and together they add 4 more: interaction +4
    planted = {"eps_w": 0.06 + 0.04 / 2, "sync_every": -0.02 + 0.04 / 2, "eps_w x sync_every": 0.04}

    def effect(lv):
        a, b = lv[EPS] == 0.4, lv[SYNC] == 3
        return 0.06 * a - 0.02 * b + 0.04 * (a and b)

    records = planted_records(levels, 6, effect)
    effects, anova, note = factorial.fit_effects(_cells(records), levels)
    assert note == "" and list(effects["kind"]) == ["main", "main", "interaction"]
    got = effects.set_index("term")
    for term, want in planted.items():  # main effects are marginal: averaged over the other factor's levels
        assert got.loc[term, "ci_low"] < want < got.loc[term, "ci_high"], (term, got.loc[term].to_dict())
        assert got.loc[term, "estimate"] == pytest.approx(want, abs=0.02)
    assert got.loc["eps_w", "p"] < 1e-3 and got.loc["eps_w x sync_every", "p"] < 0.01
    assert got["df"].iloc[0] == (4 - 1) * (6 - 1)  # seed-blocked: (arms - 1) x (seeds - 1)
    # two-level terms: the F-test is the contrast's t-test squared, the same p
    fp = anova.set_index("term")["p"]
    for term in planted:
        assert fp[term] == pytest.approx(got.loc[term, "p"], rel=1e-6)
    # the crossed seeds x items interval covers the same planted values
    crossed = factorial.crossed_effects(records, levels).set_index("term")
    for term, want in planted.items():
        assert crossed.loc[term, "ci_low"] < want < crossed.loc[term, "ci_high"]
        assert crossed.loc[term, "estimate"] == pytest.approx(got.loc[term, "estimate"], abs=1e-12)  # balanced


def test_a_null_interaction_and_a_three_level_factor():
    exp = _exp(factors={EPS: [0.1, 0.2, 0.4], SYNC: [1, 3]})
    levels = factor_levels(exp)
    steps = {0.1: 0.0, 0.2: 0.03, 0.4: 0.08}

    def effect(lv):
        return steps[lv[EPS]] - 0.02 * (lv[SYNC] == 3)  # additive: no interaction

    effects, anova, _ = factorial.fit_effects(_cells(planted_records(levels, 5, effect, rng_seed=1)), levels)
    main = effects[effects["term"] == "eps_w"].set_index("levels")
    assert list(main.index) == ["0.2 - 0.1", "0.4 - 0.1"]
    for lv in (0.2, 0.4):
        row = main.loc[f"{lv:g} - 0.1"]
        assert row["ci_low"] < steps[lv] < row["ci_high"]
    inter = effects[effects["kind"] == "interaction"]
    assert len(inter) == 2 and ((inter["ci_low"] < 0) & (inter["ci_high"] > 0)).all()
    assert anova.set_index("term").loc["eps_w", "df"] == 2  # the F-test of a 3-level factor has 2 df


def test_one_seed_gives_estimates_without_intervals_and_a_missing_arm_says_so():
    levels = factor_levels(_exp())
    cells = _cells(planted_records(levels, 1, lambda lv: 0.0))
    effects, _, note = factorial.fit_effects(cells, levels)
    assert effects["ci_low"].isna().all() and "no residual degree of freedom" in note
    effects, _, note = factorial.fit_effects(cells[cells["arm"] != "rlsd-eps_w0.4-sync_every3"], levels)
    assert effects.empty and "rlsd-eps_w0.4-sync_every3" in note


@pytest.mark.parametrize(("change", "message"), [
    ({"factorz": {EPS: [0.1, 0.4]}}, "unknown key 'factorz'.*nearest: factors"),
    ({"grid": {EPS: [0.1]}}, "grid and factors cannot be combined"),
    ({"factors": {EPS: [0.1]}}, "factors.algorithm.params.eps_w must be a list of at least 2 distinct"),
    ({"factors": {EPS: [0.1, 0.1]}}, "at least 2 distinct"),
    ({"factors": {"eps_w": [0.1, 0.4]}}, "must be a dotted config key"),
    ({"method_overrides": {"rlds": ["optim.lr=1e-5"]}}, "unknown method 'rlds'.*nearest: rlsd"),
    ({"method_overrides": {"rlsd": ["optim.lr"]}}, "list of key=value overrides"),
])
def test_the_experiment_schema_rejects_a_bad_key_in_one_line(tmp_path, change, message):
    exp = OmegaConf.to_container(_exp())
    exp.update(change)
    path = tmp_path / "bad.yaml"
    path.write_text(OmegaConf.to_yaml(exp))
    with pytest.raises(ConfigError, match=message) as err:
        load_experiment(str(path))
    assert "\n" not in str(err.value)


def test_the_committed_factorial_experiment_is_valid():
    exp = load_experiment("ablation_rlsd_factorial")
    check_experiment(exp)
    levels = factor_levels(exp)
    assert len(levels) == 4 and len(exp.seeds) >= 4
    assert {tuple(v.keys()) for v in levels.values()} == {(EPS, SYNC)}


def test_a_factorial_report_has_effects_and_w_clip_per_arm_and_no_claim_rows(tmp_path):
    """The report of a 2 x 2 RLSD ablation (synthetic run folders): the factorial section with main effects,
    interaction and the w-clip fraction per arm; the claims section says none applies (no +nan rows)."""
    from study_fixtures import write_run

    from rlsd_harness.analysis import report

    exp = _exp(seeds=[0, 1, 2], budget_points=[1.0])
    levels = factor_levels(exp)
    rng = np.random.default_rng(3)
    for (arm, lv), s in itertools.product(levels.items(), exp.seeds):
        p = 0.4 + 0.1 * (lv[EPS] == 0.4) + rng.normal(0, 0.01)
        correct = lambda q: (rng.random((60, 2)) < q).astype(int)  # noqa: E731
        clip = (0.02 if lv[EPS] == 0.4 else 0.08) + rng.normal(0, 0.002, 10)
        write_run(tmp_path / "runs" / f"{arm}-s{s}", {0.0: {"test": correct(0.4)}, 1.0: {"test": correct(p)}},
                  curves={"rollout/reward": np.linspace(0.2, 0.4, 10), "actor/entropy": np.linspace(1.0, 0.5, 10),
                          "actor/w_clip_low_frac": clip / 2, "actor/w_clip_high_frac": clip / 2,
                          "actor/delta_std": np.full(10, 0.3)})
    report.write_report(tmp_path, exp, {"experiment": "fact"}, n_resamples=99, plots=False)
    readme = (tmp_path / "README.md").read_text()
    assert "## Factorial analysis" in readme and "eps_w x sync_every (interaction)" in readme
    assert "w_clip_frac" in (tmp_path / "factorial.md").read_text()
    assert "None applies" in readme and "+nan" not in readme
    table = pd.read_csv(tmp_path / "factorial.csv")
    clip = table[(table["quantity"] == "actor/w_clip_frac") & (table["term"] == "eps_w")].iloc[0]
    assert clip["ci_low"] < -0.06 < clip["ci_high"]  # 2 % - 8 %: eps_w 0.4 clips fewer tokens
    json.dumps(table.to_dict("records"))  # plain values


def test_docs_experiments_documents_every_experiment_key():
    from pathlib import Path

    from rlsd_harness.analysis.plan import PLAN_KEYS
    from rlsd_harness.analysis.tuning import TUNING_KEYS
    from rlsd_harness.config import EXPERIMENT_KEYS

    doc = (Path(__file__).resolve().parents[1] / "docs" / "experiments.md").read_text()
    missing = [k for k in [*EXPERIMENT_KEYS, *TUNING_KEYS, *PLAN_KEYS] if f"`{k}`" not in doc]
    assert not missing, f"docs/experiments.md lacks {missing}"
    # the shipped 3 x 2 x 2 RLSD ablation is a factorial experiment
    levels = factor_levels(load_experiment("ablation_rlsd"))
    assert len(levels) == 12 and len(next(iter(levels.values()))) == 3
