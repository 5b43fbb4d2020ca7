"""The multi-fidelity tuner (analysis/tuning/search.py, phase.py) on a cheap fake objective function, its settings
and search spaces, the tuning report's estimator (analysis/tuning/protocols.py), and the reproduce report's TOST
(analysis/reproduce.py)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from rlsd_harness.analysis import tuning
from rlsd_harness.config import ConfigError, compose_config

BUDGET = 4.0e12
SETTINGS = tuning.Settings(trials=8, reduction_factor=2, rungs=(0.25, 0.5, 1.0), brackets=2, sampler="tpe",
                           sampler_seed=0, seeds=(100, 101, 102))


def fake_runner(score, calls: list | None = None, die_after: int | None = None, step_flops: float = 1.3e10):
    """A RungRunner without training: a trial's validation score at rung k is score(params) (a little lower at
    earlier rungs), and its runs spend the rung's FLOPs plus a deterministic overshoot of less than one step each,
    as a budget-stopped run does."""

    def run(alive, k):
        if calls is not None:
            calls.append(k)
        if die_after is not None and len(calls) > die_after:
            raise KeyboardInterrupt("killed")
        out = {}
        for m, trials in alive.items():
            out[m] = {}
            for t in trials:
                over = sum(step_flops * ((t.number * 7 + s) % 10) / 10 for s in SETTINGS.seeds)
                flops = len(SETTINGS.seeds) * SETTINGS.rungs[k] * BUDGET + over
                out[m][t.number] = (score(t.params) - 0.05 * (len(SETTINGS.rungs) - 1 - k), flops)
        return out

    return run


def planted(params):  # best at lr 3e-5, eps_w 0.3 (and any other knob ignored)
    return 0.6 - 0.1 * (math.log10(params["lr"]) - math.log10(3e-5)) ** 2 - 0.5 * (params.get("params.eps_w", 0.3) - 0.3) ** 2


def spaces_for(*methods):
    return {m: tuning.search_space(compose_config([f"algorithm={m}"])) for m in methods}


def test_each_objective_declares_its_search_space():
    expected = {"grpo": {"lr", "params.clip_high"}, "opsd": {"lr", "params.beta", "params.pointwise_clip"},
                "sdpo": {"lr", "params.alpha", "teacher.ema_rate", "params.topk"},
                "grpo_opsd": {"lr", "params.distill_coef"}, "rlsd": {"lr", "params.eps_w", "params.lam_decay_steps"}}
    for method, keys in expected.items():
        knobs = tuning.search_space(compose_config([f"algorithm={method}"]))
        assert {k.key for k in knobs} == keys
        lr = next(k for k in knobs if k.key == "lr")
        assert lr.log and lr.low < lr.high
    assert next(k for k in tuning.search_space(compose_config(["algorithm=sdpo"])) if k.key == "params.topk").integer


def test_a_new_search_space_is_picked_up_by_the_tuner(tmp_path):
    """An objective's search_space block, whatever it holds, is what the tuner samples: no tuner change."""
    cfg = compose_config(["algorithm=opd"])
    OmegaConf.update(cfg, "algorithm.search_space", {"lr": {"low": 1e-5, "high": 1e-4, "log": True},
                                                    "params.kl_coef": {"low": 0.5, "high": 2.0},
                                                    "params.discount": {"choices": [0.0, 0.5, 0.9]}}, force_add=True)
    knobs = tuning.search_space(cfg)
    s = tuning.Settings(4, 2, (0.5, 1.0), 1, "tpe", 0, (100, 101, 102))
    studies = tuning.open_studies(tmp_path / "optuna.journal", ["opd"], s)
    seen = []

    def score(p):
        seen.append(dict(p))
        return p["params.kl_coef"]

    picks = tuning.tune(studies, {"opd": knobs}, s, fake_runner(score))
    assert all(set(p) == {"lr", "params.kl_coef", "params.discount"} for p in seen)
    assert all(p["params.discount"] in (0.0, 0.5, 0.9) and 0.5 <= p["params.kl_coef"] <= 2.0 for p in seen)
    assert "algorithm.params.kl_coef" in picks["opd"]["values"]
    assert any(o.startswith("algorithm.params.discount=") for o in picks["opd"]["overrides"])


def test_search_space_errors_name_the_entry():
    cfg = compose_config(["algorithm=rlsd"])
    OmegaConf.update(cfg, "algorithm.search_space", {"lr": {"low": 1e-5, "high": 1e-4, "log": True},
                                                    "params.no_such": {"low": 0, "high": 1}}, force_add=True)
    with pytest.raises(ConfigError, match="params.no_such"):
        tuning.search_space(cfg)
    OmegaConf.update(cfg, "algorithm.search_space", {"params.eps_w": {"low": 0.1, "high": 0.3}}, merge=False)
    with pytest.raises(ConfigError, match="no lr"):
        tuning.search_space(cfg)


def test_planted_best_configuration_is_found(tmp_path):
    """A configuration planted among the sampled ones (enqueued in the study) scores far above the rest at every
    rung: halving keeps it at every rung and the pick rule picks it. Noise-free scores elsewhere: the pick is the
    best configuration sampled."""
    plant = {"lr": 3e-5, "params.eps_w": 0.3, "params.lam_decay_steps": 50}

    def score(p):
        return 0.9 if p == plant else planted(p) - 0.2

    studies = tuning.open_studies(tmp_path / "optuna.journal", ["rlsd"], SETTINGS)
    studies["rlsd"].enqueue_trial(plant)
    picks = tuning.tune(studies, spaces_for("rlsd"), SETTINGS, fake_runner(score))
    assert picks["rlsd"]["values"] == {f"algorithm.{k}": v for k, v in plant.items()}
    assert picks["rlsd"]["validation_mean"] == pytest.approx(0.9)
    # without the plant: the best configuration sampled at all
    studies = tuning.open_studies(tmp_path / "plain.journal", ["rlsd"], SETTINGS)
    picks = tuning.tune(studies, spaces_for("rlsd"), SETTINGS, fake_runner(planted))
    trials = studies["rlsd"].get_trials()
    best = max(trials, key=lambda t: planted(t.params))
    assert picks["rlsd"]["trial"] == best.number
    sizes = [sum(k in t.intermediate_values for t in trials if t.user_attrs["bracket"] == 0) for k in range(3)]
    assert sizes == SETTINGS.sizes() == [8, 4, 2]


def test_every_method_spends_the_same_flops_within_one_trial(tmp_path):
    methods = ("grpo", "opsd", "sdpo", "grpo_opsd", "rlsd")
    studies = tuning.open_studies(tmp_path / "optuna.journal", list(methods), SETTINGS)
    tuning.tune(studies, spaces_for(*methods), SETTINGS, fake_runner(lambda p: -abs(math.log10(p["lr"]) + 4.5)))
    frame = tuning.trials_frame(studies, SETTINGS)
    spent = frame.groupby("method")["flops"].sum()
    one_trial = len(SETTINGS.seeds) * BUDGET
    assert spent.max() - spent.min() < one_trial
    nominal = SETTINGS.runs_per_method() * BUDGET
    assert all(nominal <= v < nominal + one_trial for v in spent)
    assert frame.groupby("method").size().nunique() == 1  # the same trials, per rung too
    for r in SETTINGS.rungs:
        assert frame.groupby("method")[f"at_{r:g}"].count().nunique() == 1


def test_killed_tuning_resumes_to_the_same_picks(tmp_path):
    whole = tuning.tune(tuning.open_studies(tmp_path / "a.journal", ["rlsd", "grpo"], SETTINGS),
                        spaces_for("rlsd", "grpo"), SETTINGS, fake_runner(planted))
    calls: list = []
    for die_after in (1, 3, 4):  # killed in the first bracket's second rung, the second bracket's first and second
        with pytest.raises(KeyboardInterrupt):
            tuning.tune(tuning.open_studies(tmp_path / "b.journal", ["rlsd", "grpo"], SETTINGS), spaces_for("rlsd", "grpo"),
                        SETTINGS, fake_runner(planted, calls, die_after))
    study = tuning.open_studies(tmp_path / "b.journal", ["rlsd", "grpo"], SETTINGS)
    resumed = tuning.tune(study, spaces_for("rlsd", "grpo"), SETTINGS, fake_runner(planted))
    assert resumed == whole


def test_a_study_continued_from_its_journal_alone_runs_only_what_is_left(tmp_path):
    """The journal is the record: a tuning stopped after its first rung and continued (its run folders gone, as in a
    fresh clone of a study that committed only tuning/optuna.journal) trains only the promoted trials, never a trial
    that already reported the rung, and reaches the uninterrupted picks. Before, every rung re-ran every alive
    trial's runs, so a continued study retrained (and rescored) the whole first rung."""
    whole = tuning.tune(tuning.open_studies(tmp_path / "a.journal", ["rlsd", "grpo"], SETTINGS),
                        spaces_for("rlsd", "grpo"), SETTINGS, fake_runner(planted))
    with pytest.raises(KeyboardInterrupt):
        tuning.tune(tuning.open_studies(tmp_path / "b.journal", ["rlsd", "grpo"], SETTINGS), spaces_for("rlsd", "grpo"),
                    SETTINGS, fake_runner(planted, [], die_after=1))
    asked: list = []

    def recording(alive, k):
        asked.append((k, {m: sorted(t.number for t in trials) for m, trials in alive.items()}))
        return fake_runner(planted)(alive, k)

    resumed = tuning.tune(tuning.open_studies(tmp_path / "b.journal", ["rlsd", "grpo"], SETTINGS),
                          spaces_for("rlsd", "grpo"), SETTINGS, recording)
    assert resumed == whole
    first_rung = SETTINGS.trials
    assert asked[0][0] == 1 and all(len(v) == first_rung // 2 for v in asked[0][1].values())  # rung 0 not rerun
    assert [k for k, _ in asked] == [1, 2, 0, 1, 2]  # then the second bracket, whole


def test_killed_between_ask_and_label_resumes_to_the_same_picks(tmp_path, monkeypatch):
    """A kill after a trial is asked but before it is labelled with its bracket: the resumed tuning adopts it (its
    parameters were sampled with the same per-trial seed) and reaches the same picks."""
    from optuna.trial import Trial

    whole = tuning.tune(tuning.open_studies(tmp_path / "a.journal", ["rlsd"], SETTINGS), spaces_for("rlsd"),
                        SETTINGS, fake_runner(planted))
    labelled = Trial.set_user_attr
    count = {"n": 0}

    def die_on_the_third_bracket_1_label(self, key, value):
        if key == "bracket" and value == 1:
            count["n"] += 1
            if count["n"] == 3:
                raise KeyboardInterrupt("killed between ask and label")
        labelled(self, key, value)

    monkeypatch.setattr(Trial, "set_user_attr", die_on_the_third_bracket_1_label)
    with pytest.raises(KeyboardInterrupt):
        tuning.tune(tuning.open_studies(tmp_path / "b.journal", ["rlsd"], SETTINGS), spaces_for("rlsd"), SETTINGS,
                    fake_runner(planted))
    monkeypatch.setattr(Trial, "set_user_attr", labelled)
    studies = tuning.open_studies(tmp_path / "b.journal", ["rlsd"], SETTINGS)
    assert sum("bracket" not in t.user_attrs for t in studies["rlsd"].get_trials()) == 1
    assert tuning.tune(studies, spaces_for("rlsd"), SETTINGS, fake_runner(planted)) == whole


def test_settings_are_checked():
    exp = OmegaConf.create({"methods": ["grpo"], "seeds": [0, 1], "overrides": [],
                            "tuning": {"mode": "optuna", "seeds": [100, 101, 102], "optuna": {}}})
    assert tuning.settings_of(exp).sizes() == [8, 4, 2]
    bad = [({"rungs": [0.25, 0.5]}, "ending at 1.0"), ({"trials": 4}, "at least 2"), ({"sampler": "cmaes"}, "tpe"),
           ({"nope": 1}, "unknown key")]
    for section, match in bad:
        with pytest.raises(ConfigError, match=match):
            tuning.settings_of(OmegaConf.merge(exp, {"tuning": {"optuna": section}}))
    with pytest.raises(ConfigError, match="3 tuning"):
        tuning.settings_of(OmegaConf.merge(exp, {"tuning": {"seeds": [100, 101]}}))
    with pytest.raises(ConfigError, match="disjoint"):
        tuning.settings_of(OmegaConf.merge(exp, {"tuning": {"seeds": [1, 100, 101]}}))
    with pytest.raises(ConfigError, match="test budget"):
        tuning.settings_of(OmegaConf.merge(exp, {"tuning": {"overrides": ["train.budget.value=1e11"]}}))


def test_edge_of_range_is_flagged():
    knobs = tuning.search_space(compose_config(["algorithm=rlsd"]))
    assert any("lr=" in e and "high edge" in e for e in tuning.edges(knobs, {"lr": 1.9e-4, "params.eps_w": 0.3}))
    assert tuning.edges(knobs, {"lr": 3e-5, "params.eps_w": 0.3, "params.lam_decay_steps": 50}) == []
    assert any("eps_w" in e and "low edge" in e for e in tuning.edges(knobs, {"lr": 3e-5, "params.eps_w": 0.06}))


def test_expected_max_matches_simulation():
    """Dodge et al.'s estimator is the mean of the max of n draws with replacement from the observed scores."""
    values = [0.31, 0.42, 0.40, 0.55, 0.12, 0.47]
    rng = np.random.default_rng(0)
    for n in (1, 3, 6):
        mean, sd = tuning.expected_max(values, n)
        draws = rng.choice(values, size=(200_000, n)).max(axis=1)
        assert abs(mean - draws.mean()) < 2e-3 and abs(sd - draws.std()) < 2e-3
    assert tuning.expected_max(values, 1)[0] == pytest.approx(np.mean(values))


def test_grid_protocols_report(tmp_path):
    """The committed grid-tuned studies read as tuning protocols: one trial per grid point, costs from their
    tuning budgets, picks and edges as tuning.md says."""
    repo = Path(__file__).resolve().parents[1]
    ref = tuning.protocol_from_grid(repo / "results" / "reference")
    horizon = tuning.protocol_from_grid(repo / "results" / "reference_horizon")
    assert len(ref.trials) == 20 and len(horizon.trials) == 6
    assert set(ref.trials["cost"]) == {2 * 9.0e11} and set(horizon.trials["cost"]) == {2 * 4.0e12}
    assert ref.picks["grpo"]["values"]["algorithm.lr"] == 2.5e-05
    assert "largest" in horizon.picks["rlsd"]["edges"][0]
    tuning.main(["report", str(repo / "results" / "reference"), str(repo / "results" / "reference_horizon"),
                 f"out={tmp_path}"])
    text = (tmp_path / "protocols.md").read_text()
    assert "reference_horizon" in text and (tmp_path / "reference.png").stat().st_size > 0


def test_tost_matches_statsmodels():
    from statsmodels.stats.weightstats import ttost_paired

    from rlsd_harness.analysis.reproduce import tost_paired

    rng = np.random.default_rng(3)
    x = rng.uniform(0, 1, 300)
    for shift, spread in ((0.002, 0.05), (0.02, 0.05), (-0.01, 0.2)):
        y = x - shift + rng.normal(0, spread, x.size)
        mine = tost_paired(x, y, -0.015, 0.015)
        p, low, high = ttost_paired(x, y, -0.015, 0.015)
        assert mine["p"] == pytest.approx(p, rel=1e-9)
        assert mine["p_low"] == pytest.approx(low[1], rel=1e-9) and mine["p_high"] == pytest.approx(high[1], rel=1e-9)
    same = tost_paired(x, x, -0.015, 0.015)  # identical reruns: equivalent (statsmodels gives nan here)
    assert same["p"] == 0.0 and same["mean"] == 0.0


def test_reproduce_refuses_what_the_study_lacks(tmp_path, capsys):
    """rlsd-compare reproduce= takes seeds= and methods= (the experiment keys it otherwise refuses) and names a seed
    or method the committed study has no finished run of, before anything is trained or written."""
    from rlsd_harness.cli.compare import main

    repo = Path(__file__).resolve().parents[1]
    for args, named in ((["seeds=[0,99]"], "99"), (["methods=[grpo,nope]"], "nope"), (["train.steps=3"], "train.steps")):
        with pytest.raises(SystemExit) as e:
            main([f"reproduce={repo / 'results' / 'reference'}", *args, f"out={tmp_path / 'x'}"])
        assert e.value.code == 2 and named in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_reproduce_report_of_identical_reruns(tmp_path):
    """The reproduce report over reruns that equal the committed runs (a stand-in trainer copies them): every
    budget point equivalent and identical, every verdict the same, and each rerun's wall time read from its own
    records, so a report written after the reruns finished says how long they took."""
    import json
    import shutil

    from rlsd_harness.analysis.reproduce import reproduce

    repo = Path(__file__).resolve().parents[1]
    study = repo / "results" / "reference"

    def copy_committed(jobs, workers):
        assert workers == 2  # the committed study's workers (meta.json): a run's floats depend on its threads
        for _, run_dir, _ in jobs:
            shutil.copytree(study / "runs" / run_dir.name, run_dir)
            manifest = json.loads((run_dir / "manifest.json").read_text())
            manifest["started"] = "2026-12-06T10:00:00+0000"
            (run_dir / "manifest.json").write_text(json.dumps(manifest))
            (run_dir / "finished.json").write_text(json.dumps({"time": "2026-12-06T10:05:07+0000"}))

    out = tmp_path / "repro"
    table = reproduce(study, out, [0, 1], ["grpo", "rlsd"], copy_committed, log=lambda m: None)
    assert len(table) == 2 * 3 and table["equivalent"].all() and (table["identical_runs"] == 2).all()
    assert table["diff_points"].abs().max() == 0.0
    report = (out / "reproduce.md").read_text()
    assert "grpo-s0 307 s" in report and "rlsd-s1 307 s" in report
    assert "every verdict is the same." in report
    assert json.loads((out / "reproduce.json").read_text())["verdicts_same"] is True


@pytest.mark.slow
def test_tuning_smoke_end_to_end(tmp_path, monkeypatch):
    """rlsd-compare's tuning phase on real runs (tuning_smoke, shrunk): a tuning killed after its first rung's runs
    continues on rerun (the promoted runs resume from their rung checkpoints) to picks.json, tuning.csv (every
    trial), tuning.md / tuning.png, and every method's FLOPs, read from the runs' ledgers, within one trial's cost."""
    import json
    import shutil

    import pandas as pd

    from rlsd_harness.analysis import compare as compare_module

    shrink = ["train.budget.value=4.0e10", "eval.budget_n=16", "eval.n=16"]
    out = tmp_path / "study"
    calls = {"n": 0}
    real = compare_module._train_all

    def killed_after_first_rung(jobs, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed before the second rung")
        return real(jobs, *args, **kwargs)

    monkeypatch.setattr(compare_module, "_train_all", killed_after_first_rung)
    with pytest.raises(KeyboardInterrupt):
        compare_module.compare("tuning_smoke", out, shrink, workers=1, tuning_only=True)
    monkeypatch.setattr(compare_module, "_train_all", real)
    journal_only = tmp_path / "journal-only"  # a fresh clone of a study that committed its journal, not its runs
    (journal_only / "tuning").mkdir(parents=True)
    shutil.copy(out / "tuning" / "optuna.journal", journal_only / "tuning" / "optuna.journal")
    compare_module.compare("tuning_smoke", out, shrink, workers=1, tuning_only=True)
    picks = json.loads((out / "picks.json").read_text())
    trials = pd.read_csv(out / "tuning.csv")
    compare_module.compare("tuning_smoke", journal_only, shrink, workers=1, tuning_only=True)
    assert sorted(p.name for p in (journal_only / "tuning" / "runs").iterdir()) == \
        sorted(f"{r.label}-s{seed}" for r in trials.itertuples() if r.state == "complete" for seed in (100, 101, 102))
    # only the promoted trials ran, each from step 0, and they equal the resumed runs bit for bit
    pd.testing.assert_frame_equal(pd.read_csv(journal_only / "tuning.csv"), trials)
    assert sorted(picks["picks"]) == ["grpo", "rlsd"] and len(trials) == 8
    assert (trials.groupby("method")["state"].apply(lambda s: (s == "complete").sum()) == 2).all()
    spent = trials.groupby("method")["flops"].sum()
    assert spent.max() - spent.min() < 3 * 4.0e10
    resumed = [json.loads((out / "tuning" / "runs" / f"{r.label}-s100" / "finished.json").read_text())
               for r in trials.itertuples() if r.state == "complete"]
    assert all(f["stop_at"] == 1.0 for f in resumed)
    assert (out / "tuning.md").read_text().startswith("# Tuning") and (out / "tuning.png").exists()


def test_a_failed_run_prunes_its_trial_and_is_shown_as_failed(tmp_path):
    s = tuning.Settings(4, 2, (0.5, 1.0), 1, "tpe", 0, (100, 101, 102))
    studies = tuning.open_studies(tmp_path / "optuna.journal", ["rlsd"], s)
    first = {}

    def score(p):  # the first trial's runs fail (nan), though its configuration would score best
        first.setdefault("params", p)
        return float("nan") if p == first["params"] else planted(p)

    picks = tuning.tune(studies, spaces_for("rlsd"), s, fake_runner(score))
    frame = tuning.trials_frame(studies, s)
    row = frame[frame["trial"] == 0].iloc[0]
    assert "failed" in row["state"] and math.isnan(row["at_0.5"]) and picks["rlsd"]["trial"] != 0


def test_a_rung_with_an_interrupted_run_is_not_scored(tmp_path):
    """A run interrupted mid-rung (SIGTERM forwarded to the workers, or a worker that died) was scored as failed,
    which pruned its trial for good, and the tuning went on to the next rung: a stop poisoned the study. Only a
    run that failed scores; anything else stops the tuning, and a rerun continues it."""
    from rlsd_harness.analysis.tuning import unfinished_runs

    done, failed, cut, never = (tmp_path / n for n in ("done", "failed", "cut", "never"))
    (done / "final").mkdir(parents=True)
    (done / "finished.json").write_text("{}")
    failed.mkdir()
    (failed / "failed.json").write_text("{}")
    (cut / "checkpoints").mkdir(parents=True)  # stopped by SIGTERM (a checkpoint, no completion marker)
    assert unfinished_runs([done, failed, cut, never]) == ["cut", "never"]
    assert unfinished_runs([done, failed]) == []
