"""The comparison matrix: failed runs are reported, a rerun redoes only unfinished work, the report is written."""

import json
import os
import re

import pandas as pd
import pytest

from rlsd_harness.analysis import compare
from rlsd_harness.cli.compare import main as compare_main
from rlsd_harness.config import arms


def test_interrupted_matrix_resumes_without_redoing_finished_runs(tmp_path, tiny_dir, monkeypatch):
    args = ["experiment=smoke", f"out={tmp_path / 'smoke'}", "model.warmup=null", "data.verifier=parity",
            "rollout.max_new_tokens=8", "train.prompts_per_step=2", "train.group_size=4", "train.micro_batch_size=8",
            "eval.n=8", "train.steps=2", "train.save_every=1"]
    real_run = compare.run
    calls, crashed = [], []

    def flaky(cfg, log=None, **kwargs):
        calls.append(cfg.run.name)
        if cfg.run.name == "rlsd-s0" and not crashed:
            crashed.append(True)
            raise RuntimeError("simulated crash")
        return real_run(cfg, log, **kwargs)

    monkeypatch.setattr(compare, "run", flaky)
    compare_main(args)
    runs = tmp_path / "smoke" / "runs"
    assert "simulated crash" in json.loads((runs / "rlsd-s0" / "failed.json").read_text())["error"]
    table = (tmp_path / "smoke" / "table.md").read_text()
    assert "rlsd-s0 failed" in table  # counted beside its method's row, not dropped
    assert calls == ["grpo-s0", "rlsd-s0", "grpo-s1", "rlsd-s1"]  # seed-major: whole seeds first

    calls.clear()
    compare_main(args)
    assert calls == ["rlsd-s0"]  # finished runs are not rerun
    assert not (runs / "rlsd-s0" / "failed.json").exists()
    out = tmp_path / "smoke"
    report = (out / "README.md").read_text()
    assert "rlsd-s0 failed" not in (out / "table.md").read_text()  # the retried run is in the table now
    # the new tables: each method with its interval, rlsd against grpo with a paired p-value, the power line
    table = pd.read_csv(out / "table.csv")
    full = table[table["table"] == "budget=1"].set_index("method")
    assert set(full.index) == {"grpo", "rlsd"} and (full["n_runs"] == 2).all()
    assert (full["ci_low"] <= full["mean"]).all() and (full["mean"] <= full["ci_high"]).all()
    assert full.loc["rlsd", "baseline"] == "grpo" and bool(full.loc["rlsd", "paired"])
    assert "Power:" in report and "95 % CI" in report and "## Tables" in report
    per_seed = pd.read_csv(out / "per_seed.csv")
    assert len(per_seed) == 4 and set(per_seed["status"]) == {"finished"}
    for name in ("accuracy_vs_compute.png", "dynamics.png", "per_seed.md", "table.md"):
        assert (out / name).stat().st_size > 0


def test_grid_expands_into_labelled_arms():
    from omegaconf import OmegaConf

    exp = OmegaConf.create({"methods": ["rlsd"], "seeds": [0], "overrides": [],
                            "grid": {"algorithm.params.eps_w": [0.1, 0.2], "algorithm.teacher.sync_every": [5]}})
    assert arms(exp) == {
        "rlsd-eps_w0.1-sync_every5": ("rlsd", ["algorithm.params.eps_w=0.1", "algorithm.teacher.sync_every=5"]),
        "rlsd-eps_w0.2-sync_every5": ("rlsd", ["algorithm.params.eps_w=0.2", "algorithm.teacher.sync_every=5"]),
    }


def test_unknown_experiment_lists_the_valid_ones(capsys):
    with pytest.raises(SystemExit) as exit_:
        compare_main(["experiment=nope"])
    assert exit_.value.code == 2
    assert re.search("unknown experiment 'nope'; valid: .*embedded", capsys.readouterr().err)


@pytest.mark.slow
def test_matrix_recovers_from_kills_at_its_dangerous_moments(tmp_path, tiny_dir, monkeypatch):
    """Run folders as kills leave them: one killed while writing its first checkpoint (a .tmp folder), one
    killed inside final/ (its config.json without the weights). A rerun of the matrix finishes both."""
    import shutil

    from rlsd_harness.config import load_experiment

    exp = load_experiment("smoke")
    exp.seeds = [0]
    monkeypatch.setattr(compare, "load_experiment", lambda name: exp)
    args = ["experiment=smoke", f"out={tmp_path / 'smoke'}", "model.warmup=null", "data.verifier=parity",
            "rollout.max_new_tokens=8", "train.prompts_per_step=2", "train.group_size=4", "train.micro_batch_size=8",
            "eval.n=8", "train.steps=2", "train.save_every=1"]
    compare_main(args)
    runs = tmp_path / "smoke" / "runs"
    grpo, rlsd = runs / "grpo-s0", runs / "rlsd-s0"
    weights = (rlsd / "final" / "model.safetensors").read_bytes()
    # grpo-s0: killed in its first checkpoint's write
    for p in [grpo / "final", grpo / "checkpoints", grpo / "finished.json"]:
        shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    (grpo / "metrics.jsonl").write_text((grpo / "metrics.jsonl").read_text().splitlines()[0] + "\n")
    (grpo / "checkpoints" / "step-000001.tmp").mkdir(parents=True)
    (grpo / "checkpoints" / "step-000001.tmp" / "model.safetensors").write_bytes(b"\0" * 64)
    # rlsd-s0: killed after final/config.json, before the weights
    (rlsd / "finished.json").unlink(missing_ok=True)
    (rlsd / "final" / "model.safetensors").unlink()
    (tmp_path / "smoke" / "credit_rlsd.png").unlink()
    (tmp_path / "smoke" / "table.csv").write_text("")  # and a table cut short
    meta = tmp_path / "smoke" / "meta.json"  # killed before the study's end: meta.json is not marked finished
    meta.write_text(json.dumps({k: v for k, v in json.loads(meta.read_text()).items() if k != "finished"}))
    compare_main(args)
    table = (tmp_path / "smoke" / "table.md").read_text()
    assert "failed" not in table and "rlsd" in table and "grpo" in table
    assert (rlsd / "final" / "model.safetensors").read_bytes() == weights  # nothing more trained, the same weights
    assert [json.loads(x)["rollout_step"] for x in (grpo / "metrics.jsonl").read_text().splitlines()] == [0, 1, 2]
    assert (tmp_path / "smoke" / "table.csv").stat().st_size > 0
    assert (tmp_path / "smoke" / "credit_rlsd.png").exists()


def test_parallel_workers_train_the_same_runs_as_one_process_at_the_same_thread_count(tmp_path, tiny_dir,
                                                                                        monkeypatch):
    import torch

    # an empty cache, as on a fresh machine: the base is built once, before the workers start (two workers
    # building it together raced on the cache entry's rename)
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "fresh-cache"))

    cores = os.cpu_count() or 1
    if cores < 2:
        pytest.skip("needs 2 cores for 2 workers")
    args = ["experiment=smoke", "model.warmup=null", "rollout.max_new_tokens=8", "train.prompts_per_step=2",
            "train.group_size=4", "train.micro_batch_size=8", "eval.n=8", "eval.budget_n=8", "train.steps=2",
            "train.save_every=0"]
    compare_main([f"out={tmp_path / 'parallel'}", "workers=2", *args])
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, cores // 2))  # what each of the two workers ran with
    try:
        compare_main([f"out={tmp_path / 'serial'}", *args])
    finally:
        torch.set_num_threads(threads)
    meta = json.loads((tmp_path / "parallel" / "meta.json").read_text())
    assert meta["workers"] == 2 and meta["threads_per_run"] == max(1, cores // 2)
    for run in ("grpo-s0", "rlsd-s0", "grpo-s1", "rlsd-s1"):
        lines = [(tmp_path / mode / "runs" / run / "metrics.jsonl").read_text().splitlines() for mode in
                 ("parallel", "serial")]
        drop = re.compile(r'"[^"]*(time|seconds)[^"]*": [-0-9.e]+,? ?')
        assert [drop.sub("", x) for x in lines[0]] == [drop.sub("", x) for x in lines[1]], run
        assert (tmp_path / "parallel" / "runs" / run / "final").is_dir()


def test_workers_out_of_range_is_refused_before_anything_is_written(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        compare_main(["experiment=smoke", f"out={tmp_path / 'x'}", "workers=0"])
    assert e.value.code == 2 and "workers must be an integer from 1" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
