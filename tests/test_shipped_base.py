"""The warmed-up bases ship with the package: a fresh cache resolves the default and the reference configs to
them without warming up, on any CPU; another recipe warms up (with progress and an ETA); a corrupt shipped
file is refused by its sha256; the committed studies' recorded base is the shipped one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from rlsd_harness.config import compose_config, load_experiment, run_overrides
from rlsd_harness.models import WeightsError, recipe_digest
from rlsd_harness.training import warmup
from tests.conftest import typed_config

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "results" / "reference"


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """An empty HARNESS_CACHE, and a warm-up or tiny-model build that fails if anything calls it."""
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("HARNESS_CACHE", str(cache))

    def forbidden(*args, **kwargs):
        raise AssertionError("a shipped recipe was built instead of read from the shipped base")

    monkeypatch.setattr(warmup, "run_warmup", forbidden)
    monkeypatch.setattr(warmup, "build_tiny", forbidden)
    return cache


def _experiment_cfg(name: str, tmp_path: Path):
    exp = load_experiment(name)
    return compose_config(run_overrides(exp, exp.baseline, exp.seeds[0], tmp_path / "runs", []))


def test_manifest_lists_each_shipped_folder_with_its_own_recipe_digest_and_weights():
    manifest = warmup.read_manifest()
    assert manifest["bases"], "no shipped base"
    for digest, entry in manifest["bases"].items():
        folder = warmup.BASES_DIR / entry["folder"]
        assert recipe_digest(entry["recipe"]) == digest
        assert warmup.weights_sha256(folder) == entry["weights_sha256"]
        # everything a load needs, listed and hashed: weights, config, tokenizer, processor, arch (recipe.json)
        assert {"model.safetensors", "config.json", "tokenizer.json", "recipe.json", "warmup.json"} <= set(entry["files"])
        assert sorted(p.name for p in folder.iterdir()) == sorted(entry["files"])


def test_fresh_cache_resolves_the_default_config_to_the_shipped_base_without_building(fresh_cache):
    from rlsd_harness.models import load_model, load_processor

    cfg = typed_config()
    lines = []
    path = warmup.policy_path(cfg.model, cfg.data, log=lines.append)
    entry = warmup.read_manifest()["bases"][recipe_digest(warmup.warmup_recipe(cfg.model, cfg.data.level))]
    assert path == warmup.BASES_DIR / entry["folder"] and entry["recipe"]["steps"] == cfg.model.warmup.steps
    assert not any(fresh_cache.iterdir()) and not lines  # nothing built, cached or announced
    model, processor = load_model(path), load_processor(path)
    assert model.config.text_config.vocab_size == len(processor.tokenizer) <= cfg.model.vocab_size


def test_local_data_starts_from_the_shipped_base_too(fresh_cache, tmp_path):
    """data=local has no embedded level of its own; the tiny model's warm-up took level 2, which no base ships,
    so a first data=local run without model.path warmed up for 16+ minutes under load."""
    rows = tmp_path / "rows.jsonl"
    rows.write_text("")
    cfg = typed_config("data=local", f"data.path={rows}")
    path = warmup.policy_path(cfg.model, cfg.data, log=lambda msg: None)
    assert path == warmup.policy_path(typed_config().model, typed_config().data)  # the default config's base
    assert path.parent == warmup.BASES_DIR and not any(fresh_cache.iterdir())


@pytest.mark.parametrize("experiment", ["reference", "embedded", "reference_horizon"])
def test_the_studies_base_is_shipped_and_is_the_one_the_reference_study_recorded(fresh_cache, tmp_path, experiment):
    from rlsd_harness.analysis.compare import base_digests

    recorded = json.loads((REFERENCE / "picks.json").read_text())["base"]
    assert base_digests([_experiment_cfg(experiment, tmp_path)], log=print) == recorded
    assert not any(fresh_cache.iterdir())


def test_tuning_from_the_committed_reference_study_accepts_its_picks_on_a_fresh_cache(fresh_cache, tmp_path):
    from rlsd_harness.analysis.compare import base_digests
    from rlsd_harness.analysis.tuning import earlier_picks, tuning_grid

    exp = load_experiment("reference")
    base = base_digests([_experiment_cfg("reference", tmp_path)], log=print)
    picks = earlier_picks(REFERENCE, exp, tuning_grid(exp, "reference"), base)
    assert picks == json.loads((REFERENCE / "picks.json").read_text())["picks"]


def test_a_recipe_that_does_not_ship_warms_up_once_with_progress_and_an_eta(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    cfg = typed_config("model.warmup.steps=2", "model.warmup.batch_size=2")
    recipe = warmup.warmup_recipe(cfg.model, cfg.data.level)
    assert warmup.shipped_base(recipe) is None
    lines: list[str] = []
    path = warmup.warmed_up(cfg.model, cfg.data.level, log=lines.append)
    assert path == tmp_path / "cache" / "warmup" / recipe_digest(recipe)
    assert json.loads((path / "warmup.json").read_text())["steps"] == 2
    assert "is not one of the shipped bases" in lines[0]
    # not a terminal here: a line at the last step (and every 10 s before it) with the elapsed time and ETA
    assert lines[-1].startswith("warm-up step 2/2, ") and "ETA 00:00" in lines[-1], lines
    calls = []
    monkeypatch.setattr(warmup, "run_warmup", lambda *a, **k: calls.append(a))
    assert warmup.warmed_up(cfg.model, cfg.data.level, log=lines.append) == path and not calls  # cached


def test_progress_prints_a_line_every_interval_off_a_terminal(monkeypatch):
    clock = iter([0.0, 4.0, 11.0, 15.0, 22.0, 30.0])
    monkeypatch.setattr(warmup.time, "perf_counter", lambda: next(clock))
    lines: list[str] = []
    progress = warmup.Progress(5, "warm-up", lines.append, every=10.0)
    for step in range(1, 6):
        progress.update(step, loss="1.000")
    # steps at 4 s (too soon), 11 s (printed), 15 s (too soon), 22 s (printed), 30 s (the last: printed)
    assert [line.split(",")[0] for line in lines] == ["warm-up step 2/5", "warm-up step 4/5", "warm-up step 5/5"]
    assert "00:11 elapsed, ETA 00:16" in lines[0] and lines[0].endswith("loss 1.000")


def _corrupt_copy(tmp_path: Path, name: str) -> tuple[Path, Path]:
    bases = tmp_path / "bases"
    shutil.copytree(warmup.BASES_DIR, bases)
    entry = next(iter(json.loads((bases / warmup.MANIFEST).read_text())["bases"].values()))
    target = bases / entry["folder"] / name
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit, past the header: loads fine, but is not the shipped base
    target.write_bytes(bytes(data))
    return bases, target


@pytest.mark.parametrize("name", ["model.safetensors", "tokenizer.json"])
def test_a_corrupt_shipped_file_is_refused_by_its_sha256_in_one_line(fresh_cache, tmp_path, monkeypatch, name, capsys):
    from rlsd_harness.cli.warmup import main

    bases, target = _corrupt_copy(tmp_path, name)
    monkeypatch.setattr(warmup, "BASES_DIR", bases)
    entry = next(e for e in warmup.read_manifest(bases)["bases"].values() if e["folder"] == target.parent.name)
    with pytest.raises(WeightsError, match=f"shipped base {target}: sha256 [0-9a-f]{{64}} is not the manifest's "
                       f"{entry['files'][name]}"):
        warmup.shipped_base(entry["recipe"], bases)
    target.unlink()
    with pytest.raises(WeightsError, match=f"shipped base {target}: missing"):
        warmup.shipped_base(entry["recipe"], bases)
    steps = entry["recipe"]["steps"]
    with pytest.raises(SystemExit) as exit_:
        main([f"model.warmup.steps={steps}"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and err.startswith(f"error: shipped base {target}")


def test_ship_refuses_to_replace_a_shipped_base_with_other_weights(tmp_path):
    bases = tmp_path / "bases"
    shutil.copytree(warmup.BASES_DIR, bases)
    digest, entry = next(iter(warmup.read_manifest(bases)["bases"].items()))
    other = tmp_path / "other"
    shutil.copytree(bases / entry["folder"], other)
    (other / "model.safetensors").write_bytes(b"another CPU's floats")
    before = (bases / warmup.MANIFEST).read_text()
    with pytest.raises(WeightsError, match=f"recipe {digest} already ships"):
        warmup.ship(other, entry["recipe"], "replacement", bases)
    with pytest.raises(ValueError, match="not a Python identifier"):
        warmup.ship(other, entry["recipe"], "2-bad", bases)
    assert (bases / warmup.MANIFEST).read_text() == before and not (bases / "replacement").exists()
