"""GRPO and the shared pieces (algorithms/common.py) against hand-computed numbers."""

import math

import pytest
import torch

from rlsd_harness.algorithms import build_objective
from rlsd_harness.algorithms.batch import PolicyOutput
from rlsd_harness.algorithms.common import (
    aggregate_loss,
    clipped_surrogate,
    k3_kl,
    kl_divergence,
    masked_mean,
)
from rlsd_harness.algorithms.grpo import group_advantages
from tests.objective_helpers import make_batch

# ---- group advantages -------------------------------------------------------------------------------


def test_group_advantages_normalise_by_unbiased_std():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    adv = group_advantages(rewards, group_size=4)
    # Group 1: mean 0.5, unbiased std sqrt(4·0.25/3) = 0.577350; ±0.5/(0.577350 + 1e-6) = ±0.866024.
    expected = torch.tensor([0.866024, -0.866024, -0.866024, 0.866024, 0.0, 0.0, 0.0, 0.0])
    torch.testing.assert_close(adv, expected, atol=1e-6, rtol=0)


def test_group_with_equal_rewards_gets_zero_advantage():
    for value in (0.0, 1.0, 0.3):
        adv = group_advantages(torch.full((4,), value), group_size=4)
        assert torch.equal(adv, torch.zeros(4))
        assert torch.equal(group_advantages(torch.full((4,), value), 4, norm_by_std=False), torch.zeros(4))


@pytest.mark.parametrize("value", [0.9, 1 / 3, 1e-7])
@pytest.mark.parametrize("group_size", [3, 8, 16])
def test_equal_non_binary_rewards_give_exactly_zero_advantage(value, group_size):
    # The float32 mean of G copies of `value` can miss it by an ulp (eight 0.9s: by 6e-8); that rounding must
    # not become an advantage. A mixed group in the same batch keeps its normal values.
    mixed = torch.tensor([1.0, 0.0] * group_size)[:group_size]
    rewards = torch.cat([torch.full((group_size,), value), mixed])
    for norm_by_std in (True, False):
        adv = group_advantages(rewards, group_size, norm_by_std=norm_by_std)
        assert torch.equal(adv[:group_size], torch.zeros(group_size))
        expected = mixed - mixed.mean()
        if norm_by_std:
            expected = expected / (mixed.std() + 1e-6)
        torch.testing.assert_close(adv[group_size:], expected)
    metrics = build_objective("grpo").prepare(make_batch(num_groups=2, group_size=group_size, rewards=rewards))
    assert metrics["zero_std_groups"] == 0.5


def test_dr_grpo_advantage_is_reward_minus_group_mean():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0])
    adv = group_advantages(rewards, group_size=4, norm_by_std=False)
    torch.testing.assert_close(adv, torch.tensor([0.75, -0.25, -0.25, -0.25]))


def test_singleton_groups_take_mean_zero_and_std_one():
    rewards = torch.tensor([1.0, 0.0, 0.3])
    torch.testing.assert_close(group_advantages(rewards, 1), torch.tensor([1.0, 0.0, 0.3]) / (1.0 + 1e-6))
    torch.testing.assert_close(group_advantages(rewards, 1, norm_by_std=False), torch.tensor([1.0, 0.0, 0.3]))


def test_group_advantages_rejects_ragged_groups():
    with pytest.raises(ValueError, match="multiple of group_size"):
        group_advantages(torch.zeros(6), group_size=4)


# ---- loss aggregation -------------------------------------------------------------------------------

LOSS = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
MASK = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("token-mean", 7.0 / 3.0),  # (1 + 2 + 4) / 3 tokens
        ("seq-mean-token-mean", (3.0 / 2.0 + 4.0 / 1.0) / 2.0),
        ("seq-mean-token-sum", (3.0 + 4.0) / 2.0),
        ("seq-mean-token-sum-over-max-len", 7.0 / (2.0 * 3.0)),  # / (seqs · T), TRL's dr_grpo
    ],
)
def test_aggregate_loss_modes(mode, expected):
    assert aggregate_loss(LOSS, MASK, mode).item() == pytest.approx(expected)


def test_aggregate_loss_uses_whole_batch_counts_when_given():
    assert aggregate_loss(LOSS, MASK, "token-mean", num_tokens=7.0).item() == pytest.approx(1.0)
    assert aggregate_loss(LOSS, MASK, "seq-mean-token-sum", num_seqs=7.0).item() == pytest.approx(1.0)
    assert aggregate_loss(LOSS, MASK, "seq-mean-token-sum-over-max-len", num_seqs=2.0, max_len=10).item() == pytest.approx(7 / 20)


def test_aggregate_loss_ignores_nan_and_inf_in_padding():
    loss = LOSS.clone()
    loss[0, 2], loss[1, 1] = float("nan"), float("inf")
    assert aggregate_loss(loss, MASK, "token-mean").item() == pytest.approx(7.0 / 3.0)
    assert masked_mean(loss, MASK).item() == pytest.approx(7.0 / 3.0)


def test_aggregate_loss_rejects_unknown_mode():
    with pytest.raises(ValueError, match="token-mean"):
        aggregate_loss(LOSS, MASK, "mean")


# ---- clipped surrogate ------------------------------------------------------------------------------


def _surrogate(ratio, adv, clip_dual=3.0):
    logp = torch.log(torch.tensor(ratio)).requires_grad_(True)
    loss, info = clipped_surrogate(logp, torch.zeros(len(ratio)), torch.tensor(adv), 0.2, 0.28, clip_dual)
    loss.sum().backward()
    return loss.detach(), info, logp.grad


def test_clipped_surrogate_hand_cases_with_dual_clip():
    ratios = [1.5, 0.5, 0.5, 5.0, 2.0, 5.0]
    advs = [1.0, 1.0, -1.0, -1.0, -1.0, 1.0]
    loss, info, grad = _surrogate(ratios, advs)
    # A>0, ratio 1.5 → clipped at 1.28; A>0, ratio 0.5 → unclipped −0.5; A<0, ratio 0.5 → clipped at 0.8;
    # A<0, ratio 5 → max(5, 1.28) = 5, dual-clipped to 3; A<0, ratio 2 → 2 (< 3, no dual); A>0, ratio 5 → −1.28.
    torch.testing.assert_close(loss, torch.tensor([-1.28, -0.5, 0.8, 3.0, 2.0, -1.28]))
    assert info["clipped"].tolist() == [1.0, 0.0, 1.0, 0.0, 0.0, 1.0]
    assert info["dual_clipped"].tolist() == [0.0, 0.0, 0.0, 1.0, 0.0, 0.0]
    # Clipped tokens get no gradient; the others get −A·ratio (d ratio / d log ratio = ratio).
    torch.testing.assert_close(grad, torch.tensor([0.0, -0.5, 0.0, 0.0, 2.0, 0.0]))


def test_clipped_surrogate_without_dual_clip():
    loss, info, grad = _surrogate([5.0], [-1.0], clip_dual=None)
    assert loss.item() == pytest.approx(5.0)
    assert info["dual_clipped"].item() == 0.0
    assert grad.item() == pytest.approx(5.0)


def test_k3_kl_hand_values_and_clamp():
    # logp = ln 0.5, ref = ln 0.25: kl = ln 0.5; e^kl − kl − 1 = 0.5 + ln 2 − 1 = 0.1931472.
    value = k3_kl(torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)]))
    assert value.item() == pytest.approx(0.1931472, abs=1e-6)
    assert k3_kl(torch.tensor([-1.3]), torch.tensor([-1.3])).item() == 0.0
    # log-ratio clamped to −20 gives 19.0000…, then the estimate is clamped to 10.
    assert k3_kl(torch.tensor([0.0]), torch.tensor([-30.0])).item() == pytest.approx(10.0)


def test_kl_divergence_treats_zero_probability_as_zero_without_nan_gradient():
    p = torch.tensor([[0.0, 0.5, 0.5]]).log().requires_grad_(True)
    q = torch.tensor([[0.2, 0.4, 0.4]]).log().requires_grad_(True)
    kl = kl_divergence(p, q)
    assert kl.item() == pytest.approx(math.log(0.5 / 0.4))
    kl.sum().backward()
    assert torch.isfinite(p.grad).all() and torch.isfinite(q.grad).all()


# ---- the GRPO objective -----------------------------------------------------------------------------


def test_grpo_loss_and_gradient_on_hand_batch():
    batch = make_batch(num_groups=1, group_size=2, response_len=2, rewards=torch.tensor([1.0, 0.0]), lengths=torch.tensor([2, 1]))
    obj = build_objective("grpo", {})
    obj.prepare(batch)
    # Rewards (1, 0): mean 0.5, std 0.707107 → A = ±0.5/(0.707107 + 1e-6) = ±0.707106.
    torch.testing.assert_close(batch.advantages, torch.tensor([0.707106, -0.707106]), atol=1e-6, rtol=0)
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -9.0]], requires_grad=True)
    loss, metrics = obj.loss(batch, PolicyOutput(logp=logp, entropy=torch.zeros(2, 2)))
    # On-policy: ratio 1, per-token loss −A; token-mean over 3 tokens: (−2·0.707106 + 0.707106)/3.
    assert loss.item() == pytest.approx(-0.707106 / 3, abs=1e-6)
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-0.235702, -0.235702], [0.235702, 0.0]]), atol=1e-6, rtol=0)
    assert metrics["ratio_mean"].item() == pytest.approx(1.0)


def test_grpo_kl_term_adds_k3_and_asks_for_reference():
    assert not build_objective("grpo", {}).needs_ref
    obj = build_objective("grpo", {"kl_coef": 0.5})
    assert obj.needs_ref
    batch = make_batch(num_groups=1, group_size=2, response_len=1, rewards=torch.tensor([1.0, 1.0]), lengths=torch.tensor([1, 1]))
    obj.prepare(batch)  # equal rewards: A = 0, so only the KL term remains
    batch.ref_logp = torch.tensor([[math.log(0.25)], [math.log(0.25)]])
    logp = torch.tensor([[math.log(0.5)], [math.log(0.5)]])
    loss, metrics = obj.loss(batch, PolicyOutput(logp=logp, entropy=torch.zeros(2, 1)))
    assert loss.item() == pytest.approx(0.5 * 0.1931472, abs=1e-6)
    assert metrics["kl_ref"].item() == pytest.approx(0.1931472, abs=1e-6)


def test_grpo_config_errors():
    with pytest.raises(ValueError, match="loss_agg_mode"):
        build_objective("grpo", {"loss_agg_mode": "sum"})
    with pytest.raises(ValueError, match="clip_dual"):
        build_objective("grpo", {"clip_dual": 0.9})
