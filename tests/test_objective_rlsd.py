"""RLSD: the token advantage against hand-computed numbers, the λ schedule, the reductions to GRPO, and the
sign-preservation invariant."""

import math

import pytest
import torch

from rlsd_harness.algorithms import build_objective
from rlsd_harness.algorithms.batch import PolicyOutput
from rlsd_harness.algorithms.rlsd import evidence_weights, lambda_schedule, token_advantages
from tests.objective_helpers import make_batch, random_logits, run_in_micro_batches

# Two rows: A = +1 (3 tokens) and A = −1 (2 tokens, the third is padding whose teacher value is −inf).
ADV = torch.tensor([1.0, -1.0])
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
STUDENT = torch.tensor([[-1.0, -2.0, -0.5], [-1.5, -0.3, -0.7]])
GAIN = torch.tensor([[math.log(1.1), math.log(2.0), math.log(0.5)], [math.log(2.0), math.log(0.9), 0.0]])
TEACHER = torch.where(MASK > 0, STUDENT + GAIN, torch.tensor(-float("inf")))
# Row A>0: w = [1.1, 2, 0.5] → clip [1.1, 1.2, 0.8]. Row A<0: w = 1/[2, 0.9] = [0.5, 1.1111] → clip [0.8, 1.1111].
CLIPPED_W = torch.tensor([[1.1, 1.2, 0.8], [0.8, 1.0 / 0.9, 1.0]])


def test_token_advantages_hand_values_lambda_half():
    adv_hat = token_advantages(ADV, STUDENT, TEACHER, MASK, eps_w=0.2, lam=0.5)
    # 0.5 + 0.5·clip(w): row 1 = [1.05, 1.1, 0.9]; row 2 = −[0.9, 1.055556], padding 0.
    expected = torch.tensor([[1.05, 1.1, 0.9], [-0.9, -1.055556, 0.0]])
    torch.testing.assert_close(adv_hat, expected, atol=1e-6, rtol=0)


def test_token_advantages_lambda_one_is_eq15():
    adv_hat = token_advantages(ADV, STUDENT, TEACHER, MASK, eps_w=0.2, lam=1.0)
    expected = torch.tensor([[1.1, 1.2, 0.8], [-0.8, -1.111111, 0.0]])
    torch.testing.assert_close(adv_hat, expected, atol=1e-6, rtol=0)


def test_token_advantages_accepts_token_level_advantages_and_detaches():
    student = STUDENT.clone().requires_grad_(True)
    adv_bt = ADV[:, None].expand(2, 3).clone().requires_grad_(True)
    adv_hat = token_advantages(adv_bt, student, TEACHER, MASK, eps_w=0.2, lam=1.0)
    assert not adv_hat.requires_grad
    torch.testing.assert_close(adv_hat, ADV[:, None] * CLIPPED_W * MASK, atol=1e-6, rtol=0)


def test_token_advantages_argument_errors():
    with pytest.raises(ValueError, match="eps_w"):
        token_advantages(ADV, STUDENT, TEACHER, MASK, eps_w=1.0, lam=0.5)
    with pytest.raises(ValueError, match="eps_w"):
        token_advantages(ADV, STUDENT, TEACHER, MASK, eps_w=-0.1, lam=0.5)
    with pytest.raises(ValueError, match="lam"):
        token_advantages(ADV, STUDENT, TEACHER, MASK, eps_w=0.2, lam=1.5)


def test_eps_zero_in_the_pure_function_is_the_uniform_advantage():
    adv_hat = token_advantages(ADV, STUDENT, TEACHER, MASK, eps_w=0.0, lam=1.0)
    assert torch.equal(adv_hat, ADV[:, None] * MASK)


def test_equal_non_binary_rewards_give_zero_token_advantages():
    # Eight equal graded rewards: GRPO's A is exactly 0, so Â = A·(reweight) is exactly 0 on every token.
    obj = build_objective("rlsd", {"lam": 1.0, "lam_decay_steps": 0})
    batch = make_batch(num_groups=1, group_size=8, response_len=4, vocab_size=5, rewards=torch.full((8,), 0.9))
    obj.prepare(batch)
    batch.set_loss_counts()
    logits = random_logits(batch, 5, seed=1)
    logp = torch.log_softmax(logits, -1).gather(-1, batch.response_ids[..., None]).squeeze(-1)
    batch.teacher_logp = logp + 1.0  # a teacher that prefers every sampled token: w would be e at A > 0
    adv_hat, _ = obj.token_advantages(batch, PolicyOutput(logp=logp, entropy=torch.zeros_like(logp)))
    assert torch.equal(adv_hat, torch.zeros_like(adv_hat))


def test_lambda_schedule():
    # The paper: 0.5 → 0 linearly over 50 steps, step counted from 1.
    assert [lambda_schedule(s, 0.5, 0, 50) for s in (1, 25, 50, 80)] == pytest.approx([0.49, 0.25, 0.0, 0.0])
    # Warm-up 10 then decay 20: ramps up, peaks, decays.
    assert [lambda_schedule(s, 0.5, 10, 20) for s in (5, 10, 20, 30, 40)] == pytest.approx([0.25, 0.5, 0.25, 0.0, 0.0])
    # decay 0 holds λ: λ ≡ 1 is Eq. 15.
    assert lambda_schedule(1000, 1.0, 0, 0) == 1.0


def test_rlsd_objective_loss_on_hand_batch_and_metrics():
    obj = build_objective("rlsd", {"lam": 0.5, "lam_decay_steps": 0})
    assert (obj.teacher_signal, obj.teacher_context) == ("sampled", "reference")
    batch = make_batch(num_groups=1, group_size=2, response_len=3, lengths=torch.tensor([3, 2]))
    batch.advantages, batch.teacher_logp = ADV.clone(), TEACHER
    logp = STUDENT.clone().requires_grad_(True)
    loss, metrics = obj.loss(batch, PolicyOutput(logp=logp, entropy=torch.zeros(2, 3)))
    # On-policy ratio 1: loss = −Σ Â / 5 tokens = −(1.05 + 1.1 + 0.9 − 0.9 − 1.055556)/5.
    assert loss.item() == pytest.approx(-0.218889, abs=1e-6)
    loss.backward()
    torch.testing.assert_close(logp.grad, -torch.tensor([[1.05, 1.1, 0.9], [-0.9, -1.055556, 0.0]]) / 5, atol=1e-6, rtol=0)
    # Unclipped w on the 5 tokens: 1.1, 2, 0.5 | 0.5, 1.111 → 2 below 0.8, 1 above 1.2.
    assert metrics["w_clip_low_frac"].item() == pytest.approx(0.4)
    assert metrics["w_clip_high_frac"].item() == pytest.approx(0.2)
    # Δ on the 5 tokens: ln 1.1, ln 2, ln 0.5, ln 2, ln 0.9 → mean 0.136619, population std 0.523110.
    assert metrics["delta_mean"].item() == pytest.approx(0.136619, abs=1e-5)
    assert metrics["delta_std"].item() == pytest.approx(0.523110, abs=1e-5)
    assert metrics["lambda"].item() == pytest.approx(0.5)


def test_negative_only_keeps_the_uniform_advantage_on_positive_rows():
    obj = build_objective("rlsd", {"lam": 1.0, "lam_decay_steps": 0, "negative_only": True})
    batch = make_batch(num_groups=1, group_size=2, response_len=3, lengths=torch.tensor([3, 2]))
    batch.advantages, batch.teacher_logp = ADV.clone(), TEACHER
    adv_hat, _ = obj.token_advantages(batch, PolicyOutput(logp=STUDENT, entropy=torch.zeros(2, 3)))
    expected = torch.tensor([[1.0, 1.0, 1.0], [-0.8, -1.111111, 0.0]])
    torch.testing.assert_close(adv_hat, expected, atol=1e-6, rtol=0)


def test_lambda_follows_the_batch_step():
    obj = build_objective("rlsd", {})  # paper defaults: λ 0.5, decay 50
    batch = make_batch(num_groups=1, group_size=2, response_len=3, lengths=torch.tensor([3, 2]))
    batch.advantages, batch.teacher_logp = ADV.clone(), TEACHER
    for step, lam in ((1, 0.49), (25, 0.25), (50, 0.0)):
        batch.step = step
        _, metrics = obj.token_advantages(batch, PolicyOutput(logp=STUDENT, entropy=torch.zeros(2, 3)))
        assert metrics["lambda"].item() == pytest.approx(lam)


def test_at_lambda_zero_the_teacher_is_not_needed_and_the_advantage_is_the_formulas():
    obj = build_objective("rlsd", {})  # λ 0.5 decaying to 0 at step 50
    assert [obj.uses_teacher(s) for s in (1, 49, 50, 51, 500)] == [True, True, False, False, False]
    assert not build_objective("rlsd", {"lam": 0.0, "lam_decay_steps": 0}).uses_teacher(1)
    assert build_objective("rlsd", {"lam": 0.5, "lam_decay_steps": 0}).uses_teacher(10_000)
    batch = make_batch(num_groups=1, group_size=2, response_len=3, lengths=torch.tensor([3, 2]))
    batch.advantages, batch.step = ADV.clone(), 50
    policy = PolicyOutput(logp=STUDENT, entropy=torch.zeros(2, 3))
    lean, metrics = obj.token_advantages(batch, policy)  # no teacher_logp on the batch
    assert torch.equal(lean, ADV[:, None] * MASK) and set(metrics) == {"lambda"}
    batch.teacher_logp = TEACHER
    with_teacher, _ = obj.token_advantages(batch, policy)
    assert torch.equal(lean, with_teacher)
    batch.teacher_logp, batch.step = None, 49  # λ > 0: the teacher is required
    with pytest.raises(ValueError, match="lacks \\['teacher_logp'\\]"):
        obj.token_advantages(batch, policy)


def _loss_and_grad(name, params, seed, old_logp_noise):
    batch = make_batch(num_groups=2, group_size=4, response_len=6, vocab_size=9, seed=seed)
    logits = random_logits(batch, 9, seed=seed + 100)
    if old_logp_noise:  # a policy that moved since the rollout, so the PPO clip is active somewhere
        gen = torch.Generator().manual_seed(seed + 7)
        batch.old_logp = torch.log_softmax(logits, -1).gather(-1, batch.response_ids[..., None]).squeeze(-1)
        batch.old_logp = batch.old_logp + 0.5 * torch.randn(batch.old_logp.shape, generator=gen)
    teacher_logits = random_logits(batch, 9, seed=seed + 200)
    return run_in_micro_batches(build_objective(name, params), batch, logits, teacher_logits, micro_batch_size=8)


@pytest.mark.parametrize("old_logp_noise", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lambda_zero_is_exactly_grpo(seed, old_logp_noise):
    grpo_loss, grpo_grad = _loss_and_grad("grpo", {}, seed, old_logp_noise)
    rlsd_loss, rlsd_grad = _loss_and_grad("rlsd", {"lam": 0.0, "lam_decay_steps": 0}, seed, old_logp_noise)
    assert torch.equal(rlsd_loss, grpo_loss)
    assert torch.equal(rlsd_grad, grpo_grad)
    assert grpo_grad.abs().sum() > 0  # the comparison is not between two zero gradients


@pytest.mark.parametrize("old_logp_noise", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_smallest_eps_w_is_exactly_grpo(seed, old_logp_noise):
    # 1 ± 1e-9 rounds to 1 in float32, so the clip pins w to 1 and Â = A bit for bit.
    grpo_loss, grpo_grad = _loss_and_grad("grpo", {}, seed, old_logp_noise)
    rlsd_loss, rlsd_grad = _loss_and_grad("rlsd", {"eps_w": 1e-9, "lam": 1.0, "lam_decay_steps": 0}, seed, old_logp_noise)
    assert torch.equal(rlsd_loss, grpo_loss)
    assert torch.equal(rlsd_grad, grpo_grad)


def test_small_eps_w_bounds_the_deviation_from_grpo():
    # |Â − A| ≤ λ·ε_w·|A| token by token.
    gen = torch.Generator().manual_seed(3)
    adv, mask = torch.randn(16), torch.ones(16, 5)
    student, teacher = -torch.rand(16, 5, generator=gen) * 5, -torch.rand(16, 5, generator=gen) * 5
    for eps in (1e-2, 1e-4):
        adv_hat = token_advantages(adv, student, teacher, mask, eps_w=eps, lam=0.7)
        assert ((adv_hat - adv[:, None]).abs() <= 0.7 * eps * adv.abs()[:, None] + 1e-6).all()


@pytest.mark.parametrize("seed", range(20))
def test_weights_positive_and_sign_of_advantage_preserved(seed):
    gen = torch.Generator().manual_seed(seed)
    rows, length = 12, 7
    adv = torch.randn(rows, generator=gen)
    adv[::4] = 0.0  # zero-variance groups
    student = -torch.rand(rows, length, generator=gen) * 10
    teacher = -torch.rand(rows, length, generator=gen) * 10
    mask = (torch.rand(rows, length, generator=gen) > 0.2).float()
    eps = float(torch.rand((), generator=gen)) * 0.98 + 0.01
    lam = float(torch.rand((), generator=gen))
    _, w = evidence_weights(adv, student, teacher, mask)
    assert (w > 0).all()
    adv_hat = token_advantages(adv, student, teacher, mask, eps_w=eps, lam=lam)
    on = mask > 0
    assert torch.equal(torch.sign(adv_hat)[on], torch.sign(adv[:, None].expand_as(mask))[on])
    assert (adv_hat[~on] == 0).all()
    # The effective multiplier stays within [1 − λε, 1 + λε].
    nonzero = on & (adv[:, None] != 0)
    factor = (adv_hat / adv[:, None])[nonzero]
    assert (factor >= 1 - lam * eps - 1e-6).all() and (factor <= 1 + lam * eps + 1e-6).all()


def test_group_with_equal_rewards_gets_zero_token_advantage():
    obj = build_objective("rlsd", {"lam": 1.0, "lam_decay_steps": 0})
    batch = make_batch(num_groups=2, group_size=4, response_len=5, rewards=torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0]))
    obj.prepare(batch)
    batch.teacher_logp = -torch.rand(8, 5) * 4
    student = -torch.rand(8, 5) * 4
    adv_hat, _ = obj.token_advantages(batch, PolicyOutput(logp=student, entropy=torch.zeros(8, 5)))
    assert torch.equal(adv_hat[:4], torch.zeros(4, 5))
    assert (adv_hat[4:] != 0).any()


@pytest.mark.parametrize("eps_w", [0.0, 1.0, -0.2, 1.5])
def test_eps_w_outside_open_unit_interval_is_rejected(eps_w):
    with pytest.raises(ValueError, match=r"eps_w must be in \(0, 1\)"):
        build_objective("rlsd", {"eps_w": eps_w})


def test_other_rlsd_config_errors():
    with pytest.raises(ValueError, match="lam"):
        build_objective("rlsd", {"lam": 1.2})
    with pytest.raises(ValueError, match="steps"):
        build_objective("rlsd", {"lam_decay_steps": -1})
    with pytest.raises(KeyError, match=r"unknown key.*'lambda'.*valid:.*eps_w"):
        build_objective("rlsd", {"lambda": 0.5})  # the field is `lam`; the error lists the valid keys


def test_missing_teacher_logp_is_a_clear_error():
    obj = build_objective("rlsd", {})
    batch = make_batch(num_groups=1, group_size=2, response_len=3)
    obj.prepare(batch)
    with pytest.raises(ValueError, match="teacher_logp"):
        obj.loss(batch, PolicyOutput(logp=STUDENT, entropy=torch.zeros(2, 3)))
