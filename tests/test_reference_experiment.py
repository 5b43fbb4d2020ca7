"""The reference study's experiment file: the five methods, at least eight seeds, a FLOPs budget that GRPO
reaches before the step cap, and every run's configuration composes."""

from pathlib import Path

from rlsd_harness.config import arms, compose_config, load_experiment, run_overrides

# GRPO's FLOPs per step at 8 prompts x 8 samples on the level-1 task (results/embedded/runs/grpo-s0, step 80).
GRPO_FLOPS_PER_STEP = 13.4e9


def test_reference_study_has_five_methods_and_eight_seeds():
    exp = load_experiment("reference")
    assert list(exp.methods) == ["grpo", "opsd", "sdpo", "grpo_opsd", "rlsd"]
    assert len(set(exp.seeds)) >= 8
    assert exp.budget_kind == "flops"


def test_every_reference_run_composes_and_grpo_spends_the_budget_before_the_step_cap(tmp_path: Path):
    exp = load_experiment("reference")
    for arm in arms(exp):
        cfg = compose_config(run_overrides(exp, arm, 0, tmp_path, []))
        assert cfg.train.budget.kind == "flops"
        assert cfg.eval.decoding == "sample" and cfg.eval.sampling.temperature == cfg.rollout.temperature
        if arm == "grpo":
            assert cfg.train.steps * GRPO_FLOPS_PER_STEP > float(cfg.train.budget.value)
