"""Fair tuning and reruns in `compare`, with training replaced by synthetic run folders: the picks follow
the stated rule on validation results, the test runs train at the picked values and report the test split,
and a rerun of a finished study leaves it untouched."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rlsd_harness.analysis import compare, credit
from rlsd_harness.analysis.tuning import tuning_grid
from rlsd_harness.config import ConfigError, load_experiment
from tests.study_fixtures import write_run

EXPERIMENT = """
methods: [grpo, opsd, rlsd]
seeds: [0, 1]
budget_kind: flops
budget_points: [0.5, 1.0]
baseline: grpo
overrides:
  - model.warmup=null
  - train.steps=4
  - train.budget.kind=flops
  - train.budget.value=1e12
tuning:
  seeds: [100, 101]
  split: validation
  overrides: [train.budget.value=2e11]
  grid:
    grpo: {lr: [1e-5, 5e-5, 1e-4, 2e-4]}
    opsd: {lr: [1e-5, 1e-4], algorithm.params.pointwise_clip: [0.05, 0.1]}
    rlsd: {lr: [1e-5, 5e-5], algorithm.params.eps_w: [0.1, 0.2]}
"""

# validation accuracy each grid point is built to reach; opsd's two best are tied: the smaller lr must win
VALIDATION = {
    ("grpo", 1e-5, None): 0.30, ("grpo", 5e-5, None): 0.45, ("grpo", 1e-4, None): 0.40, ("grpo", 2e-4, None): 0.10,
    ("opsd", 1e-5, 0.05): 0.20, ("opsd", 1e-5, 0.1): 0.35, ("opsd", 1e-4, 0.05): 0.35, ("opsd", 1e-4, 0.1): 0.30,
    ("rlsd", 1e-5, 0.1): 0.25, ("rlsd", 1e-5, 0.2): 0.30, ("rlsd", 5e-5, 0.1): 0.50, ("rlsd", 5e-5, 0.2): 0.40,
}
ITEMS = 40


def correct_at(acc: float, seed: int) -> np.ndarray:
    """Exactly round(acc * ITEMS) items correct in all 4 samples, shifted by the seed."""
    row = (np.arange(ITEMS) + seed) % ITEMS < round(acc * ITEMS)
    return np.repeat(row[:, None], 4, axis=1).astype(int)


class FakeRun:
    """Stands in for training/run.py: records each composed config and writes a finished run folder whose
    validation accuracy follows VALIDATION and whose test accuracy is 0.6 at every point; a test run also
    writes validation records at a misleading 0.99 that must not reach the tables."""

    def __init__(self):
        self.configs = []

    def __call__(self, cfg, log=None, **_):
        self.configs.append(cfg)
        method, lr = cfg.algorithm.name, float(cfg.algorithm.lr or cfg.optim.lr)
        knob = {"opsd": "pointwise_clip", "rlsd": "eps_w"}.get(method)
        value = float(cfg.algorithm.params[knob]) if knob else None
        split = cfg.eval.get("budget_split", "test")
        points = [0.0, *[float(p) for p in cfg.eval.budget_points]]
        if split == "validation":
            # at 0.5 the ranking is reversed: the picks must read the last budget point only
            evals = {p: {"validation": correct_at(VALIDATION[(method, lr, value)] if p != 0.5 else
                                                  0.5 - VALIDATION[(method, lr, value)], cfg.seed)} for p in points}
        else:
            evals = {p: {"test": correct_at(0.6, cfg.seed), "validation": correct_at(0.99, cfg.seed)} for p in points}
        write_run(Path(cfg.run.dir) / cfg.run.name, evals, budget=float(cfg.train.budget.value))
        (Path(cfg.run.dir) / cfg.run.name / "finished.json").write_text("{}")
        return Path(cfg.run.dir) / cfg.run.name


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """compare without training: the fake run, no process-group shutdown, no credit picture, results/ in tmp."""
    fake = FakeRun()
    monkeypatch.setattr(compare, "run", fake)
    monkeypatch.setattr(credit, "token_weights", lambda run_dir: {})
    monkeypatch.setattr(credit, "draw", lambda picks, path: Path(path).write_bytes(b"png"))
    monkeypatch.setattr(compare, "REPO", tmp_path)
    path = tmp_path / "tuned.yaml"
    path.write_text(EXPERIMENT)
    return fake, str(path)


def test_picks_follow_the_rule_and_the_test_runs_get_them(offline, tmp_path):
    fake, exp_file = offline
    out = compare.compare(exp_file)
    assert out == tmp_path / "results" / "tuned"
    picks = json.loads((out / "picks.json").read_text())
    assert picks["split"] == "validation" and "ties go to the smaller learning rate" in picks["rule"]
    got = {m: p["values"] for m, p in picks["picks"].items()}
    assert got == {"grpo": {"algorithm.lr": 5e-5},
                   "opsd": {"algorithm.lr": 1e-5, "algorithm.params.pointwise_clip": 0.1},  # tie with lr 1e-4
                   "rlsd": {"algorithm.lr": 5e-5, "algorithm.params.eps_w": 0.1}}
    tuning = [c for c in fake.configs if "/tuning/" in str(c.run.dir)]
    tests = [c for c in fake.configs if "/tuning/" not in str(c.run.dir)]
    assert len(tuning) == 3 * 4 * 2 and len(tests) == 3 * 2
    assert fake.configs.index(tests[0]) == len(tuning)  # every tuning run before any test run
    # the same short budget and validation split for every method's grid; the test runs at the full budget
    assert {(c.train.budget.value, c.eval.budget_split, c.seed in (100, 101)) for c in tuning} == {(2e11, "validation", True)}
    assert {c.train.budget.value for c in tests} == {1e12}
    assert all(c.eval.get("budget_split", "test") == "test" for c in tests)
    for c in tests:
        want = got[c.algorithm.name]
        assert float(c.algorithm.lr) == want["algorithm.lr"]
        for key, value in want.items():
            if key != "algorithm.lr":
                assert float(c.algorithm.params[key.rsplit(".", 1)[1]]) == value
    grid = pd.read_csv(out / "tuning.csv")
    assert len(grid) == 12 and grid["picked"].sum() == 3 and (grid["n_runs"] == 2).all()
    best = grid[grid["picked"]].set_index("method")["mean"]
    assert best.to_dict() == pytest.approx({"grpo": 0.45, "opsd": 0.35, "rlsd": 0.50})
    # the earlier budget point is shown beside the last, with its interval
    assert np.allclose(grid["mean_at_0.5"], 0.5 - grid["mean"])
    assert (grid["ci_low_at_0.5"] <= grid["mean_at_0.5"]).all() and (grid["mean_at_0.5"] <= grid["ci_high_at_0.5"]).all()
    md = (out / "tuning.md").read_text()
    assert "| picked | not counted | at 0.5 (95 % CI) |" in md and "| **picked** |  | 5.0 [" in md
    # the tables read the test split (0.6), never the validation records the test runs also wrote (0.99)
    table = pd.read_csv(out / "table.csv")
    assert np.allclose(table[table["table"] == "budget=1"]["mean"], 0.6)
    readme = (out / "README.md").read_text()
    assert "## Tuning" in readme and "**picked**" in readme
    # grpo's pick is inside its grid of four; every value of a two-point axis is at an edge
    edge = (out / "tuning.md").read_text().split("At the edge of the grid", 1)[1]
    assert edge.endswith(": opsd: lr=1e-05 is the smallest tried, pointwise_clip=0.1 is the largest tried; "
                         "rlsd: lr=5e-05 is the largest tried, eps_w=0.1 is the smallest tried.\n"), edge


def test_the_report_rebuilds_the_tuning_files_and_refuses_picks_that_would_change(offline, tmp_path, capsys):
    from rlsd_harness.cli.report import main as report_main

    _, exp_file = offline
    out = compare.compare(exp_file)
    written = {f: (out / f).read_bytes() for f in compare.TUNING_FILES}
    for f in compare.TUNING_FILES[:2]:
        (out / f).unlink()
    report_main([f"folder={out}"])
    assert {f: (out / f).read_bytes() for f in compare.TUNING_FILES} == written
    # picks.json records another pick than its tuning runs make: the test runs were trained at the recorded one
    picks = json.loads((out / "picks.json").read_text())
    picks["picks"]["grpo"]["overrides"] = ["algorithm.lr=0.0001"]
    (out / "picks.json").write_text(json.dumps(picks))
    before = {p: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with pytest.raises(SystemExit):
        report_main([f"folder={out}"])
    assert "picks.json records" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_picks_that_change_under_trained_test_runs_are_refused_every_time(offline, tmp_path):
    fake, exp_file = offline
    out = compare.compare(exp_file, out=tmp_path / "study")
    (out / "meta.json").unlink()  # an unfinished study: the next invocation continues it
    picks = json.loads((out / "picks.json").read_text())
    picks["picks"]["grpo"]["overrides"] = ["algorithm.lr=0.0001"]  # the test runs were trained at this pick
    (out / "picks.json").write_text(json.dumps(picks))
    before = {f: (out / f).read_bytes() for f in compare.TUNING_FILES}
    for _ in range(2):  # the refusal must not record the new picks, or the second invocation would go on
        fake.configs.clear()
        with pytest.raises(ConfigError, match="the tuning picks changed"):
            compare.compare(exp_file, out=out)
        assert {f: (out / f).read_bytes() for f in compare.TUNING_FILES} == before
        assert all("/tuning/" in str(c.run.dir) for c in fake.configs) and not (out / "meta.json").exists()


def test_a_study_continues_over_packed_runs_but_never_from_another_base(offline, tmp_path):
    from rlsd_harness.analysis.pack import pack_study

    fake, exp_file = offline
    out = compare.compare(exp_file, out=tmp_path / "study")
    exp = load_experiment(exp_file)
    packed = tmp_path / "packed"  # what a fresh clone holds of a committed study: no weights, no tuning runs
    pack_study(out, packed, exp, json.loads((out / "meta.json").read_text()))
    (packed / "meta.json").unlink()
    for run in ("grpo-s1", "rlsd-s1"):  # two runs still to train
        for f in (packed / "runs" / run).iterdir():
            f.unlink() if f.is_file() else None
    fake.configs.clear()
    compare.compare(exp_file, out=packed, tuning_from=out)
    assert sorted(c.run.name for c in fake.configs) == ["grpo-s1", "rlsd-s1"]
    (packed / "meta.json").unlink()
    picks = json.loads((packed / "picks.json").read_text())
    picks["base"] = ["0" * 64]  # the packed runs came from another base policy
    (packed / "picks.json").write_text(json.dumps(picks))
    fake.configs.clear()
    with pytest.raises(ConfigError, match="trained from base policy"):
        compare.compare(exp_file, out=packed)
    assert not fake.configs


def test_tuning_from_reuses_an_earlier_studys_picks_and_runs_no_tuning(offline, tmp_path):
    fake, exp_file = offline
    first = compare.compare(exp_file)
    fake.configs.clear()
    # the same tuning section, a larger test budget: only the test runs train, at the earlier picks
    bigger = tmp_path / "tuned_bigger.yaml"
    bigger.write_text(EXPERIMENT.replace("  - train.budget.value=1e12", "  - train.budget.value=2e12"))
    out = compare.compare(str(bigger), tuning_from=first)
    assert all("/tuning/" not in str(c.run.dir) for c in fake.configs) and len(fake.configs) == 3 * 2
    picked = {m: p["values"]["algorithm.lr"] for m, p in json.loads((first / "picks.json").read_text())["picks"].items()}
    assert {c.algorithm.name: float(c.algorithm.lr) for c in fake.configs} == picked
    assert {c.train.budget.value for c in fake.configs} == {2e12}
    for f in compare.TUNING_FILES:
        assert (out / f).read_bytes() == (first / f).read_bytes()
    meta = json.loads((out / "meta.json").read_text())
    assert meta["tuning_from"] == str(first) and meta["base"] == json.loads((first / "picks.json").read_text())["base"]
    assert len(meta["base"]) == 1 and len(meta["base"][0]) == 64
    assert f"taken from the tuned study in `{first}` (same base, grid" in (out / "README.md").read_text()


def test_tuning_only_stops_after_the_picks_and_trains_no_test_run(offline, tmp_path):
    fake, exp_file = offline
    out = compare.compare(exp_file, tuning_only=True)
    assert out == tmp_path / "results" / "tuned" / "tuning.md"
    assert fake.configs and all("/tuning/" in str(c.run.dir) for c in fake.configs)
    folder = out.parent
    assert all((folder / f).exists() for f in compare.TUNING_FILES)
    assert not (folder / "runs").exists() and not (folder / "table.csv").exists()
    # the same folder then continues into the test runs at those picks, without tuning again
    fake.configs.clear()
    compare.compare(exp_file)
    assert len(fake.configs) == 3 * 2 and all("/tuning/" not in str(c.run.dir) for c in fake.configs)


def test_tuning_only_is_refused_where_there_is_no_tuning_phase(offline, tmp_path):
    _, exp_file = offline
    untuned = tmp_path / "untuned.yaml"
    untuned.write_text(EXPERIMENT.split("tuning:", 1)[0])
    with pytest.raises(ConfigError, match="does not have"):
        compare.compare(str(untuned), tuning_only=True)
    first = compare.compare(exp_file)
    with pytest.raises(ConfigError, match="skips with tuning_from"):
        compare.compare(exp_file, out=tmp_path / "again", tuning_from=first, tuning_only=True)
    assert not (tmp_path / "again").exists()


@pytest.mark.parametrize("recorded", [None, ["0" * 64]])
def test_tuning_from_refuses_picks_made_on_another_base_policy(offline, tmp_path, recorded):
    # the same config warms up to another base on a CPU whose kernels differ: its picks are not this base's
    fake, exp_file = offline
    first = compare.compare(exp_file)
    fake.configs.clear()
    picks = json.loads((first / "picks.json").read_text())
    (first / "picks.json").write_text(json.dumps({**picks, "base": recorded}))
    with pytest.raises(ConfigError, match="it was tuned from base policy"):
        compare.compare(exp_file, out=tmp_path / "again", tuning_from=first)
    assert not fake.configs and not (tmp_path / "again").exists()


@pytest.mark.parametrize("change, message", [
    ("    grpo: {lr: [1e-5, 5e-5, 1e-4, 2e-4]}", "is not this experiment's"),
    ("  seeds: [100, 101]", "runs each"),
    ("  overrides: [train.budget.value=2e11]", "it was tuned with"),
])
def test_tuning_from_refuses_a_study_tuned_differently_before_writing(offline, tmp_path, change, message):
    fake, exp_file = offline
    first = compare.compare(exp_file)
    fake.configs.clear()
    other = {"    grpo: {lr: [1e-5, 5e-5, 1e-4, 2e-4]}": "    grpo: {lr: [1e-5, 5e-5, 1e-4, 3e-4]}",
             "  seeds: [100, 101]": "  seeds: [100, 101, 102]",
             "  overrides: [train.budget.value=2e11]": "  overrides: [train.budget.value=3e11]"}[change]
    changed = tmp_path / "tuned_other.yaml"
    changed.write_text(EXPERIMENT.replace(change, other))
    with pytest.raises(ConfigError, match=message):
        compare.compare(str(changed), tuning_from=first)
    assert not fake.configs and not (tmp_path / "results" / "tuned_other").exists()


def test_a_rerun_writes_a_fresh_folder_and_leaves_the_finished_one_untouched(offline, tmp_path):
    fake, _ = offline
    exp_file = tmp_path / "tuned.yaml"  # the rerun machinery does not depend on tuning: a smaller matrix
    exp_file.write_text("methods: [grpo, rlsd]\nseeds: [0, 1, 2]\nbudget_kind: flops\nbudget_points: [0.5, 1.0]\n"
                        "overrides: [model.warmup=null, train.steps=4, train.budget.kind=flops, train.budget.value=1e12]\n")
    exp_file = str(exp_file)
    first = compare.compare(exp_file)

    def snapshot(folder: Path) -> dict[str, str]:
        return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(folder.rglob("*")) if p.is_file()}

    before = snapshot(first)
    second = compare.compare(exp_file)
    assert second != first and second.name.startswith("tuned-rerun-")
    assert snapshot(first) == before
    assert json.loads((second / "meta.json").read_text())["rerun_of"] == str(first)
    same = pd.read_csv(second / "compare_with.csv")
    assert (same["runs_both"] == 3).all() and (same["runs_identical"] == same["runs_both"]).all()
    assert "Against an earlier run of this study" in (second / "README.md").read_text()
    with pytest.raises(ConfigError, match="holds a finished study"):
        compare.compare(exp_file, out=first)


def test_tuning_runs_that_would_evaluate_nothing_are_refused_before_any_compute(offline, tmp_path):
    fake, _ = offline
    silent = tmp_path / "silent.yaml"
    silent.write_text(EXPERIMENT.replace("overrides: [train.budget.value=2e11]",
                                         "overrides: [train.budget.value=2e11, train.eval_every=0]"))
    with pytest.raises(ConfigError, match="tuning runs would write no validation records"):
        compare.compare(str(silent))
    assert fake.configs == [] and not (tmp_path / "results" / "silent").exists()
    dry = compare.compare("reference", dry=True)  # the committed reference study's tuning runs do evaluate
    assert "tuning first: 5 methods x 4 grid points x 2 seeds" in dry


def test_a_bad_tuning_section_is_refused_before_any_compute(offline, tmp_path, capsys):
    """The config layer does not check the tuning section (analysis/tuning/grid.py: tuning_grid does): rlsd-compare's
    runs and dry run and rlsd-report refuse a bad one before anything is trained or written, and a run launched by
    hand from the experiment (rlsd-train experiment=<name> algorithm=<method>) does not read it."""
    from rlsd_harness.cli.report import main as report_main
    from rlsd_harness.config import expand_experiment

    fake, _ = offline
    bad = tmp_path / "uneven.yaml"
    bad.write_text(EXPERIMENT.replace("grpo: {lr: [1e-5, 5e-5, 1e-4, 2e-4]}", "grpo: {lr: [1e-5, 5e-5]}"))
    for dry in (False, True):
        with pytest.raises(ConfigError, match="grid sizes differ"):
            compare.compare(str(bad), dry=dry)
    assert fake.configs == [] and not (tmp_path / "results").exists()
    folder = tmp_path / "study"
    (folder / "runs").mkdir(parents=True)
    (folder / "meta.json").write_text(json.dumps({"experiment": "uneven", "experiment_file": str(bad)}))
    with pytest.raises(SystemExit) as e:
        report_main([f"folder={folder}"])
    assert e.value.code == 2 and "grid sizes differ" in capsys.readouterr().err
    assert sorted(p.name for p in folder.iterdir()) == ["meta.json", "runs"]
    assert "train.steps=4" in expand_experiment([f"experiment={bad}", "algorithm=grpo"])


def test_every_method_gets_the_same_grid_size_and_picks_never_read_the_test_split(tmp_path):
    bad = tmp_path / "uneven.yaml"
    bad.write_text(EXPERIMENT.replace("grpo: {lr: [1e-5, 5e-5, 1e-4, 2e-4]}", "grpo: {lr: [1e-5, 5e-5]}"))
    with pytest.raises(ConfigError, match=r"grid sizes differ: \{'grpo': 2, 'opsd': 4, 'rlsd': 4\}"):
        tuning_grid(load_experiment(str(bad)))
    test_split = tmp_path / "test_split.yaml"
    test_split.write_text(EXPERIMENT.replace("split: validation", "split: test"))
    with pytest.raises(ConfigError, match="tuning.split must be validation"):
        tuning_grid(load_experiment(str(test_split)))
    missing = tmp_path / "missing.yaml"
    missing.write_text(EXPERIMENT.replace("    rlsd: {lr: [1e-5, 5e-5], algorithm.params.eps_w: [0.1, 0.2]}\n", ""))
    with pytest.raises(ConfigError, match="one entry per method"):
        tuning_grid(load_experiment(str(missing)))
    ok = tmp_path / "ok.yaml"
    ok.write_text(EXPERIMENT)
    grid = tuning_grid(load_experiment(str(ok)))
    assert [p.label for p in grid["rlsd"]] == ["rlsd-lr1e-05-eps_w0.1", "rlsd-lr1e-05-eps_w0.2",
                                               "rlsd-lr5e-05-eps_w0.1", "rlsd-lr5e-05-eps_w0.2"]


def test_committed_experiments_load_and_the_paper_table_keeps_its_own_settings():
    from rlsd_harness.config import group_choices

    for name in group_choices("experiment"):
        tuning_grid(load_experiment(name), name)
    assert not tuning_grid(load_experiment("paper_main_table"))
    reference = load_experiment("reference")
    assert list(reference.methods) == ["grpo", "opsd", "sdpo", "grpo_opsd", "rlsd"]
    assert list(reference.seeds) == list(range(8)) and reference.budget_kind == "flops"
    sizes = {m: len(p) for m, p in tuning_grid(reference).items()}
    assert set(sizes) == set(reference.methods) and len(set(sizes.values())) == 1
    # the tuning-horizon study tunes the reference's test runs at their own budget
    horizon = load_experiment("reference_horizon")
    assert list(horizon.overrides) == list(reference.overrides)
    assert list(horizon.tuning.seeds) == list(reference.tuning.seeds) and horizon.tuning.split == "validation"
    assert not any(o.startswith("train.budget") for o in horizon.tuning.overrides)
