"""Sampled-token on-policy distillation (the guide's worked example) against hand-computed numbers."""

import math

import pytest
import torch

from rlsd_harness.algorithms import build_objective
from rlsd_harness.algorithms.batch import PolicyOutput
from rlsd_harness.algorithms.opd import discounted_future_sum
from tests.objective_helpers import make_batch


def test_discounted_future_sum_hand_values():
    rewards = torch.tensor([[1.0, 2.0, 3.0, float("nan")]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    # γ = 0.5: A_2 = 3, A_1 = 2 + 0.5·3 = 3.5, A_0 = 1 + 0.5·3.5 = 2.75; padding 0 (its NaN never enters).
    torch.testing.assert_close(discounted_future_sum(rewards, mask, 0.5), torch.tensor([[2.75, 3.5, 3.0, 0.0]]))
    torch.testing.assert_close(discounted_future_sum(rewards, mask, 0.0), torch.tensor([[1.0, 2.0, 3.0, 0.0]]))


def _two_token_batch():
    batch = make_batch(num_groups=1, group_size=1, response_len=2, lengths=torch.tensor([2]))
    batch.teacher_logp = torch.tensor([[-0.5, -3.0]])
    return batch


def _loss_and_grad(params, old_logp=None):
    obj = build_objective("opd", params)
    batch = _two_token_batch()
    batch.old_logp = old_logp
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    loss, metrics = obj.loss(batch, PolicyOutput(logp=logp, entropy=torch.zeros(1, 2)))
    loss.backward()
    return loss.item(), logp.grad, metrics


def test_declares_sampled_teacher_signal_with_reference_context():
    obj = build_objective("opd", {})
    assert (obj.teacher_signal, obj.teacher_context, obj.needs_ref) == ("sampled", "reference", False)


def test_on_policy_loss_and_gradient():
    loss, grad, metrics = _loss_and_grad({})
    # Reverse KL on the sampled tokens: (−1 + 0.5, −2 + 3) = (−0.5, 1) → A = (0.5, −1); ratio 1;
    # loss = mean(−A) = 0.25; gradient −A/2.
    assert loss == pytest.approx(0.25)
    torch.testing.assert_close(grad, torch.tensor([[-0.25, 0.5]]))
    assert metrics["teacher_kl"].item() == pytest.approx(0.25)


def test_discount_and_coefficient():
    loss, grad, _ = _loss_and_grad({"discount": 0.5, "kl_coef": 2.0})
    # r = −2·(−0.5, 1) = (1, −2); A_1 = −2, A_0 = 1 + 0.5·(−2) = 0 → loss (0 + 2)/2 = 1; gradient (0, 1).
    assert loss == pytest.approx(1.0)
    torch.testing.assert_close(grad, torch.tensor([[0.0, 1.0]]))


def test_off_policy_importance_ratio_is_not_clipped():
    # π/π_old = e on token 0 and 1 on token 1; A from π_old: −(−2 + 0.5, −2 + 3) = (1.5, −1).
    loss, grad, _ = _loss_and_grad({}, old_logp=torch.tensor([[-2.0, -2.0]]))
    assert loss == pytest.approx((-math.e * 1.5 + 1.0) / 2, abs=1e-5)
    torch.testing.assert_close(grad, torch.tensor([[-math.e * 1.5 / 2, 0.5]]))


def test_gradient_matches_opsd_sampled_mode_on_policy():
    # Same estimator (−Δ·∇log π), different surrogate value: the gradients agree, the losses do not.
    opd_loss, opd_grad, _ = _loss_and_grad({})
    obj = build_objective("opsd", {"mode": "sampled"})
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    opsd_loss, _ = obj.loss(_two_token_batch(), PolicyOutput(logp=logp, entropy=torch.zeros(1, 2)))
    opsd_loss.backward()
    torch.testing.assert_close(opd_grad, logp.grad)
    assert opd_loss != pytest.approx(opsd_loss.item())


def test_config_errors():
    with pytest.raises(ValueError, match="discount"):
        build_objective("opd", {"discount": 1.5})
    with pytest.raises(ValueError, match="kl_coef"):
        build_objective("opd", {"kl_coef": 0.0})
