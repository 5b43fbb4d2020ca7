"""Invariants every objective must keep: micro-batch splits change neither the loss nor the gradient (in every
aggregation mode, on- and off-policy), the registry rejects misuse with messages that name the fix, and a
missing teacher signal is a clear error."""

import dataclasses

import pytest
import torch

from rlsd_harness.algorithms import build_objective, get_objective_class, objective_names
from rlsd_harness.algorithms.batch import PolicyOutput
from rlsd_harness.algorithms.common import LOSS_AGG_MODES, masked_mean
from rlsd_harness.training.metrics import glossary_entry, namespaced
from tests.objective_helpers import (
    fill_teacher_signals,
    make_batch,
    needs_full_logprobs,
    random_logits,
    run_in_micro_batches,
    student_forward,
)

VOCAB = 128  # room for SDPO's default top-100 support

# Every registered objective with its defaults (so a new objective is covered without editing this file), plus
# the modes that ask the backbone for something different.
CASES = {name: (name, {}) for name in objective_names()} | {
    "grpo-dr": ("grpo", {"norm_adv_by_std": False}),
    "rlsd-constant-lambda": ("rlsd", {"lam": 0.7, "lam_decay_steps": 0}),
    "rlsd-negative-only": ("rlsd", {"lam": 1.0, "lam_decay_steps": 0, "negative_only": True}),
    "opsd-jsd": ("opsd", {"beta": 0.5, "pointwise_clip": None}),
    "opsd-forward-clip-topk": ("opsd", {"beta": 0.0, "pointwise_clip": 0.05, "teacher_topk": 4}),
    "opsd-sampled": ("opsd", {"mode": "sampled"}),
    "sdpo-topk5": ("sdpo", {"topk": 5}),
    "sdpo-full": ("sdpo", {"topk": 0, "alpha": 1.0}),
    "sdpo-sampled": ("sdpo", {"mode": "sampled", "alpha": 1.0, "rollout_is_clip": 2.0}),
    "grpo_opsd-sampled": ("grpo_opsd", {"distill_coef": 0.3, "opsd": {"mode": "sampled"}}),
    "opd-discounted": ("opd", {"discount": 0.9}),
}


def _with_agg_mode(name, params, mode):
    params = dict(params)
    config_fields = {f.name for f in dataclasses.fields(get_objective_class(name).Config)}
    if "loss_agg_mode" in config_fields:
        params["loss_agg_mode"] = mode
    elif name == "grpo_opsd":
        params["grpo"] = {**params.get("grpo", {}), "loss_agg_mode": mode}
        params["opsd"] = {**params.get("opsd", {}), "loss_agg_mode": mode}
    elif mode != "token-mean":
        pytest.skip(f"{name} has no loss_agg_mode option")
    return params


def _batch(off_policy: bool, name: str):
    # Rewards with one all-equal group, so zero advantages are in the mix; with sibling contexts (SDPO),
    # rows 2 and 5 have no successful sibling.
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    sibling = get_objective_class(name).teacher_context == "sibling"
    teacher_mask = torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0]) if sibling else None
    batch = make_batch(num_groups=2, group_size=4, response_len=6, vocab_size=VOCAB, seed=3, rewards=rewards, teacher_mask=teacher_mask)
    logits = random_logits(batch, VOCAB, seed=4)
    if off_policy:
        gen = torch.Generator().manual_seed(5)
        logp = torch.log_softmax(logits, -1).gather(-1, batch.response_ids[..., None]).squeeze(-1)
        batch.old_logp = logp + 0.6 * torch.randn(logp.shape, generator=gen)
    return batch, logits, random_logits(batch, VOCAB, seed=6)


@pytest.mark.parametrize("off_policy", [False, True], ids=["on-policy", "off-policy"])
@pytest.mark.parametrize("agg_mode", LOSS_AGG_MODES)
@pytest.mark.parametrize("case", sorted(CASES))
def test_one_micro_batch_of_eight_equals_eight_of_one(case, agg_mode, off_policy):
    name, params = CASES[case]
    params = _with_agg_mode(name, params, agg_mode)
    batch, logits, teacher_logits = _batch(off_policy, name)
    whole_loss, whole_grad = run_in_micro_batches(build_objective(name, params), batch, logits, teacher_logits, 8)
    batch, logits, teacher_logits = _batch(off_policy, name)
    split_loss, split_grad = run_in_micro_batches(build_objective(name, params), batch, logits, teacher_logits, 1)
    torch.testing.assert_close(split_loss, whole_loss, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(split_grad, whole_grad, atol=1e-7, rtol=1e-5)
    assert whole_grad.abs().sum() > 0  # a real gradient, not two zero tensors


def test_unknown_algorithm_lists_the_valid_ones():
    with pytest.raises(KeyError) as info:
        build_objective("rlsd2", {})
    message = str(info.value)
    assert "unknown algorithm 'rlsd2'" in message
    for name in ("grpo", "grpo_opsd", "opd", "opsd", "rlsd", "sdpo"):
        assert name in message


@pytest.mark.parametrize("name", objective_names())
def test_unknown_config_key_is_rejected_with_the_valid_keys(name):
    with pytest.raises(KeyError, match=r"unknown key\(s\) \['no_such_option'\].*valid: "):
        build_objective(name, {"no_such_option": 1})


@pytest.mark.parametrize("name", objective_names())
def test_unknown_loss_agg_mode_is_rejected_with_the_valid_ones(name):
    # verl's name for a different reduction (a constant divisor without the sequence count) must not be taken
    # for TRL's dr_grpo one, which is offered as seq-mean-token-sum-over-max-len.
    params = _with_agg_mode(name, {}, "seq-mean-token-sum-norm")
    with pytest.raises(ValueError, match=r"'seq-mean-token-sum-norm'.*valid: token-mean, .*seq-mean-token-sum-over-max-len"):
        build_objective(name, params)


def test_unknown_nested_key_in_grpo_opsd_is_rejected():
    with pytest.raises(KeyError, match=r"grpo_opsd\.opsd.*valid: .*beta"):
        build_objective("grpo_opsd", {"opsd": {"betta": 0.5}})
    with pytest.raises(KeyError, match=r"grpo_opsd\.grpo.*valid: .*clip_low"):
        build_objective("grpo_opsd", {"grpo": {"clip": 0.2}})


def test_grpo_opsd_is_the_weighted_sum_of_its_parts():
    batch, logits, teacher_logits = _batch(False, "grpo_opsd")
    grpo_loss, grpo_grad = run_in_micro_batches(build_objective("grpo", {}), batch, logits, teacher_logits, 8)
    batch, logits, teacher_logits = _batch(False, "grpo_opsd")
    opsd_loss, opsd_grad = run_in_micro_batches(build_objective("opsd", {}), batch, logits, teacher_logits, 8)
    batch, logits, teacher_logits = _batch(False, "grpo_opsd")
    mixed_loss, mixed_grad = run_in_micro_batches(
        build_objective("grpo_opsd", {"distill_coef": 0.25}), batch, logits, teacher_logits, 8
    )
    torch.testing.assert_close(mixed_loss, 0.75 * grpo_loss + 0.25 * opsd_loss)
    torch.testing.assert_close(mixed_grad, 0.75 * grpo_grad + 0.25 * opsd_grad)


def _metrics_on_one_micro_batch(name, params):
    """The objective's metrics on the whole (off-policy) test batch as one micro-batch, teacher signals filled."""
    objective = build_objective(name, params)
    batch, logits, teacher_logits = _batch(True, name)
    objective.prepare(batch)
    batch.set_loss_counts()
    policy = student_forward(logits, batch.response_ids, needs_full_logprobs(objective))
    fill_teacher_signals(batch, objective, policy, teacher_logits)
    loss, metrics = objective.loss(batch, policy)
    return loss, metrics, batch, policy


@pytest.mark.parametrize("opsd_params", [{}, {"mode": "sampled"}], ids=["logit", "sampled"])
def test_grpo_opsd_logs_each_part_metric_under_the_part_name(opsd_params):
    grpo_params = {"kl_coef": 0.0, "rollout_is_cap": 2.0}
    grpo_loss, grpo_metrics, _, _ = _metrics_on_one_micro_batch("grpo", grpo_params)
    opsd_loss, opsd_metrics, _, _ = _metrics_on_one_micro_batch("opsd", opsd_params)
    _, metrics, _, _ = _metrics_on_one_micro_batch("grpo_opsd", {"grpo": grpo_params, "opsd": opsd_params})
    assert set(metrics) == set(grpo_metrics) | set(opsd_metrics) | {"grpo_loss", "opsd_loss"}
    for key, value in {**grpo_metrics, **opsd_metrics}.items():
        torch.testing.assert_close(metrics[key], value, msg=key)
    torch.testing.assert_close(metrics["grpo_loss"], grpo_loss.detach())
    torch.testing.assert_close(metrics["opsd_loss"], opsd_loss.detach())


@pytest.mark.parametrize("case", sorted(CASES))
def test_metric_names_are_plain_and_the_teacher_gap_is_teacher_kl(case):
    # The trainer logs the teacher-student gap as teacher_kl for every objective with a teacher; an objective
    # that logs it too must use that name and that definition, so the two never disagree in metrics.jsonl.
    name, params = CASES[case]
    _, metrics, batch, policy = _metrics_on_one_micro_batch(name, params)
    assert all("/" not in key for key in metrics), sorted(metrics)
    assert "sampled_kl" not in metrics
    undocumented = [k for k in namespaced(metrics) if glossary_entry(k) is None]
    assert not undocumented, f"{name} logs metrics without a glossary entry (training/metrics.py): {undocumented}"
    if name in ("opsd", "sdpo", "opd", "grpo_opsd"):
        expected = masked_mean(policy.logp.detach() - batch.teacher_logp, batch.loss_mask)
        torch.testing.assert_close(metrics["teacher_kl"], expected)


def test_grpo_opsd_takes_its_teacher_signal_from_the_opsd_part():
    assert build_objective("grpo_opsd", {}).teacher_signal == "full"
    assert build_objective("grpo_opsd", {"opsd": {"mode": "sampled"}}).teacher_signal == "sampled"
    assert build_objective("grpo_opsd", {"grpo": {"kl_coef": 0.1}}).needs_ref
    with pytest.raises(ValueError, match="distill_coef"):
        build_objective("grpo_opsd", {"distill_coef": 1.5})


@pytest.mark.parametrize("case", sorted(c for c, (n, p) in CASES.items() if build_objective(n, p).teacher_signal != "none"))
def test_missing_teacher_signal_is_a_clear_error(case):
    name, params = CASES[case]
    obj = build_objective(name, params)
    batch, logits, _ = _batch(False, name)
    obj.prepare(batch)
    logprobs = torch.log_softmax(logits, -1)
    policy = PolicyOutput(
        logp=logprobs.gather(-1, batch.response_ids[..., None]).squeeze(-1),
        entropy=torch.zeros(batch.response_ids.shape),
        logprobs=logprobs,
    )
    with pytest.raises(ValueError, match=rf"{name}: the micro-batch lacks .*teacher_signal='{obj.teacher_signal}'"):
        obj.loss(batch, policy)


def test_declared_requirements_are_valid():
    for name, params in CASES.values():
        obj = build_objective(name, params)
        assert obj.teacher_signal in ("none", "sampled", "topk", "full")
        assert (obj.teacher_signal == "none") == (obj.teacher_context is None)
        assert (obj.topk > 0) == (obj.teacher_signal == "topk")
        assert dataclasses.is_dataclass(obj.cfg)
