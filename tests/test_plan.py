"""The dry-run plan reads the settings it depends on: the composed model (not always the 8B), gradient
checkpointing, the micro-batch, the ZeRO stage, and prints time, GPU-hours and disk; the paper preset fits an
80 GB GPU with gradient checkpointing and would not without it."""

from __future__ import annotations

import pytest

from rlsd_harness.algorithms import build_objective
from rlsd_harness.analysis import plan as planning
from rlsd_harness.config import ConfigError, compose_config, expand_experiment, load_experiment

GPU_GB = 80e9  # an "80 GB" H100 / A100


def paper_plan(*extra: str, method: str = "rlsd") -> planning.MethodPlan:
    exp = load_experiment("paper_main_table")
    cfg = compose_config(expand_experiment(["experiment=paper_main_table", f"algorithm={method}", *extra]))
    objective = build_objective(cfg.algorithm.name, dict(cfg.algorithm.get("params") or {}))
    return planning.method_plan(cfg, objective, planning.shape_of(cfg.model), int(exp.world_size),
                                planning.plan_settings(exp.plan))


@pytest.mark.parametrize("method", ["rlsd", "opsd"])  # opsd: the loss also keeps the teacher's whole distribution
def test_the_paper_preset_fits_80_gb_with_gradient_checkpointing_and_not_without(method):
    on = paper_plan(method=method)
    off = paper_plan("train.gradient_checkpointing=false", method=method)
    assert on.peak_gib * 2**30 < GPU_GB < off.peak_gib * 2**30, (on.peak_gib, off.peak_gib)
    # the update's activations, 4 sequences of up to 400 + 512 + 4,096 tokens through 36 layers of width 4,096
    assert 20 * off.activations_gib > 10 * 100 > on.activations_gib * 10  # > 100 GiB without, < 100 / 10 with
    assert on.activations_gib < off.activations_gib / 5


def test_the_plan_reads_the_micro_batch_zero_stage_and_offload():
    base = paper_plan()
    assert paper_plan("train.micro_batch_size=8").activations_gib > 1.9 * base.activations_gib
    # a token budget of 2 sequences' tokens instead of 4 sequences
    assert paper_plan("train.token_budget=10016").activations_gib < 0.55 * base.activations_gib
    assert paper_plan("deepspeed=zero2", "deepspeed.bf16=true").states_gib > 5 * base.states_gib
    assert paper_plan("deepspeed=zero3_offload", "deepspeed.bf16=true").states_gib < base.states_gib


def test_time_gpu_hours_and_disk_follow_the_ledger_flops_and_retention():
    p = paper_plan()
    exp = load_experiment("paper_main_table")
    settings = planning.plan_settings(exp.plan)
    world = int(exp.world_size)
    assert p.seconds_per_step == pytest.approx(p.step_flops / (world * settings["peak_tflops"] * 1e12 * settings["mfu"]))
    assert p.gpu_hours == pytest.approx(200 * p.seconds_per_step * world / 3600)
    # RLSD's teacher runs while lambda > 0: steps 1..49 of 200 (lambda 0.5 -> 0 over 50 steps)
    assert p.teacher_steps == 49
    # saves every 10 steps to 200; kept: the newest 2 (190, 200) and the budget points 50, 100, 150, 200
    assert p.retained == 5 and p.policies == 5
    assert paper_plan("train.keep_last=null").retained == 20
    assert p.disk_bytes == pytest.approx(5 * p.checkpoint_bytes + 6 * 2 * 8.77e9, rel=0.01)


def test_the_paper_dry_run_prints_time_gpu_hours_and_disk(capsys):
    from rlsd_harness.cli.compare import main

    main(["experiment=paper_main_table", "dry_run=true"])
    out = capsys.readouterr().out
    assert "8.77 B parameters" in out and "Qwen3-VL-8B-Instruct's published architecture" in out
    assert "train.gradient_checkpointing=true" in out and "| GPU-hours |" in out
    assert "plan.mfu=0.3 of plan.peak_tflops=989" in out and "| disk per run |" in out
    assert "**no**" not in out  # every method fits


def test_a_tiny_models_plan_describes_the_tiny_model(tiny_dir):
    cfgs = {m: compose_config([f"algorithm={m}", "model.warmup=null"]) for m in ("grpo", "rlsd")}
    objectives = {m: build_objective(c.algorithm.name, dict(c.algorithm.get("params") or {})) for m, c in cfgs.items()}
    text = planning.plan(cfgs, objectives, 1, {"prompt_tokens": 60, "image_patches": 16, "response_tokens": 40})
    shape = planning.shape_of(cfgs["grpo"].model)
    from rlsd_harness.models import load_model

    assert shape.params == sum(p.numel() for p in load_model(tiny_dir).parameters())  # the model a run trains
    assert f"{shape.params / 1e9:.3g} B parameters" in text and "model.size=tiny" in text
    assert "8.77" not in text and "Qwen3-VL-8B" not in text
    assert shape.model.layers == 4 and shape.model.d_model == 128
    # a tiny model's activations are MiB: the unit is said once ("39.4 MiB GiB per sequence" read wrong)
    per_sequence = text.split("activations ", 1)[1].split(" per sequence", 1)[0]
    assert per_sequence.endswith(" MiB") and "GiB" not in per_sequence, per_sequence


def test_plan_keys_are_checked():
    with pytest.raises(ConfigError, match="unknown plan key.*mfuu; valid: prompt_tokens"):
        planning.plan_settings({"mfuu": 0.4})
    with pytest.raises(ConfigError, match=r"plan.mfu=1.5; valid: a fraction in \(0, 1\]"):
        planning.plan_settings({"mfu": 1.5})


def test_layer_units_follow_the_stated_formula():
    # Qwen3-VL-8B's decoder layer: 9h + 2kv + 4f, + 3h + 3kv for the q/k norms
    h, kv, f = 4096, 1024, 12288
    assert planning.layer_units(h, f, kv, True, True) == 12 * h + 5 * kv + 4 * f
    assert planning.layer_units(h, f, kv, False) == 9 * h + 2 * kv + 2 * f
