"""The control arms and GSPO against their formulas on hand-computed tensors: `neg_fixed` (a fixed negative
advantage, no teacher), `rlsd_shuffled` (RLSD's weights permuted within each response) and `gspo` (GRPO's loss
through the sequence-level importance ratio hook). The micro-batch invariants and the tiny-model end-to-end
runs pick the three up from the registry (tests/test_objective_invariants.py, tests/test_trainer.py)."""

import math

import pytest
import torch

from rlsd_harness.algorithms import build_objective
from rlsd_harness.algorithms.batch import PolicyOutput
from rlsd_harness.algorithms.common import sequence_log_ratio, token_log_ratio
from rlsd_harness.algorithms.neg_fixed import fixed_negative_advantages
from rlsd_harness.algorithms.rlsd import token_advantages
from rlsd_harness.algorithms.rlsd_shuffled import shuffle_index, shuffled_token_advantages
from tests.objective_helpers import make_batch, random_logits, run_in_micro_batches

# Two rows: 3 tokens and 2 tokens (the third is padding).
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
OLD = torch.tensor([[-1.0, -2.0, -0.5], [-1.5, -0.3, -0.7]])
# log π − log π_old: row 0 (0.1, 0.3, −0.1) → mean 0.1; row 1 (0.2, −0.4) → mean −0.1 (padding: NaN, kept out).
DIFF = torch.tensor([[0.1, 0.3, -0.1], [0.2, -0.4, float("nan")]])
ADV = torch.tensor([1.0, -1.0])


def _policy(logp: torch.Tensor) -> PolicyOutput:
    return PolicyOutput(logp=logp, entropy=torch.zeros_like(logp))


def _hand_batch(rollout_logp=None):
    batch = make_batch(num_groups=1, group_size=2, response_len=3, lengths=torch.tensor([3, 2]))
    batch.advantages, batch.old_logp = ADV.clone(), OLD.clone()
    if rollout_logp is not None:
        batch.rollout_logp = rollout_logp
    return batch


# ---------------------------------------------------------------- GSPO: the ratio hook


def test_sequence_log_ratio_hand_values_and_token_gradient():
    logp = (OLD + torch.nan_to_num(DIFF)).requires_grad_(True)
    log_ratio = sequence_log_ratio(logp, OLD, MASK)
    torch.testing.assert_close(log_ratio[MASK > 0], torch.tensor([0.1, 0.1, 0.1, -0.1, -0.1]), atol=1e-6, rtol=0)
    # GSPO-token: d(log s_i at t)/d log π(y_u) = 1 if u = t else 0 (the value is detached, the token's own kept).
    (log_ratio * torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 0.0]])).sum().backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 0.0]]))
    # The token-level ratio is the plain difference.
    torch.testing.assert_close(token_log_ratio(logp, OLD, MASK)[MASK > 0], DIFF[MASK > 0], atol=1e-6, rtol=0)


def _gspo_by_the_formula(logp, old, adv, mask, clip_low, clip_high):
    """Sequence-level GSPO written out on its own: s_i = exp(mean_t (log π − log π_old)),
    loss = mean_i −min(s_i A_i, clip(s_i, 1 − ε_low, 1 + ε_high) A_i)."""
    losses = []
    for i in range(len(adv)):
        on = mask[i] > 0
        s = torch.exp((logp[i][on] - old[i][on]).mean())
        losses.append(-torch.minimum(s * adv[i], s.clamp(1 - clip_low, 1 + clip_high) * adv[i]))
    return torch.stack(losses).mean()


@pytest.mark.parametrize("clip", [(0.2, 0.2), (3e-4, 4e-4)], ids=["wide-clip", "paper-clip"])
def test_gspo_loss_and_gradient_match_the_sequence_formula(clip):
    obj = build_objective("gspo", {"clip_low": clip[0], "clip_high": clip[1], "clip_dual": None})
    batch = _hand_batch()
    batch.set_loss_counts()
    logp = (OLD + torch.nan_to_num(DIFF)).requires_grad_(True)
    loss, metrics = obj.loss(batch, _policy(logp))
    loss.backward()
    ref_logp = logp.detach().clone().requires_grad_(True)
    expected = _gspo_by_the_formula(ref_logp, OLD, ADV, MASK, *clip)
    expected.backward()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(logp.grad, ref_logp.grad)
    if clip == (0.2, 0.2):
        # s = (e^0.1, e^−0.1) lie inside [0.8, 1.2]: loss = (−e^0.1 + e^−0.1)/2; gradient −A·s/|y|/2 per token.
        assert loss.item() == pytest.approx((-math.exp(0.1) + math.exp(-0.1)) / 2, abs=1e-6)
        g0, g1 = -math.exp(0.1) / 3 / 2, math.exp(-0.1) / 2 / 2
        torch.testing.assert_close(logp.grad, torch.tensor([[g0, g0, g0], [g1, g1, 0.0]]), atol=1e-6, rtol=0)
        assert metrics["pg_clipfrac"].item() == 0.0
    else:
        # Both rows leave [1 − 3e-4, 1 + 4e-4] on the side the clip binds: no gradient, every token clipped.
        assert loss.item() == pytest.approx((-(1 + 4e-4) + (1 - 3e-4)) / 2, abs=1e-6)
        assert logp.grad.abs().sum() == 0
        assert metrics["pg_clipfrac"].item() == 1.0
    # The ratio metric is the sequence ratio on every token: (3·e^0.1 + 2·e^−0.1)/5.
    assert metrics["ratio_mean"].item() == pytest.approx((3 * math.exp(0.1) + 2 * math.exp(-0.1)) / 5, abs=1e-6)


def test_gspo_keeps_grpos_dual_clip():
    # Row 1 (A = −1) with s = e^1.5 ≈ 4.48 > clip_dual 3: the dual clip caps its loss at −A·3 = 3.
    logp = OLD + torch.tensor([[0.0, 0.0, 0.0], [1.5, 1.5, 0.0]])
    batch = _hand_batch()
    batch.set_loss_counts()
    capped, m = build_objective("gspo", {"clip_dual": 3.0}).loss(batch, _policy(logp))
    uncapped, _ = build_objective("gspo", {"clip_dual": None}).loss(batch, _policy(logp))
    # Row 0: s = 1, loss −1. seq-mean over 2 rows.
    assert capped.item() == pytest.approx((-1.0 + 3.0) / 2, abs=1e-6)
    assert uncapped.item() == pytest.approx((-1.0 + math.exp(1.5)) / 2, abs=1e-5)
    assert m["pg_clipfrac_dual"].item() == pytest.approx(2 / 5)


def test_gspo_keeps_grpos_rollout_is_cap_and_loss_agg_mode():
    # π_old / π_rollout = 2 on row 0 (capped at 1.5) and 0.5 on row 1: per-token losses × (1.5, 0.5).
    rollout = OLD - torch.tensor([[math.log(2.0)] * 3, [math.log(0.5)] * 3])
    logp = OLD + torch.nan_to_num(DIFF)
    l0, l1 = -math.exp(0.1), math.exp(-0.1)  # per-token losses at a wide clip (see the formula test)
    wide = {"clip_low": 0.2, "clip_high": 0.2}
    for mode, expected in (
        ("seq-mean-token-mean", (1.5 * l0 + 0.5 * l1) / 2),
        ("token-mean", (3 * 1.5 * l0 + 2 * 0.5 * l1) / 5),
        ("seq-mean-token-sum", (3 * 1.5 * l0 + 2 * 0.5 * l1) / 2),
    ):
        batch = _hand_batch(rollout_logp=rollout)
        batch.set_loss_counts()
        loss, m = build_objective("gspo", {**wide, "rollout_is_cap": 1.5, "loss_agg_mode": mode}).loss(batch, _policy(logp))
        assert loss.item() == pytest.approx(expected, abs=1e-6), mode
        assert m["rollout_is_weight_mean"].item() == pytest.approx((3 * 1.5 + 2 * 0.5) / 5, abs=1e-6)


def test_gspo_keeps_grpos_kl_term():
    obj = build_objective("gspo", {"kl_coef": 0.5})
    assert obj.needs_ref
    batch = _hand_batch()
    batch.set_loss_counts()
    batch.ref_logp = OLD.clone()
    with_kl, m = obj.loss(batch, _policy(OLD.clone()))
    without, _ = build_objective("gspo", {}).loss(batch, _policy(OLD.clone()))
    assert with_kl.item() == pytest.approx(without.item(), abs=1e-7)  # π = π_ref: k3 KL is 0
    assert m["kl_ref"].item() == 0.0


def _loss_and_grad(name, params, seed, off_policy):
    batch = make_batch(num_groups=2, group_size=4, response_len=6, vocab_size=9, seed=seed)
    logits = random_logits(batch, 9, seed=seed + 100)
    if off_policy:
        gen = torch.Generator().manual_seed(seed + 7)
        batch.old_logp = torch.log_softmax(logits, -1).gather(-1, batch.response_ids[..., None]).squeeze(-1)
        batch.old_logp = batch.old_logp + 0.3 * torch.randn(batch.old_logp.shape, generator=gen)
    teacher_logits = random_logits(batch, 9, seed=seed + 200)
    return run_in_micro_batches(build_objective(name, params), batch, logits, teacher_logits, micro_batch_size=8)


@pytest.mark.parametrize("seed", [0, 1])
def test_gspo_on_policy_is_grpo_and_off_policy_is_not(seed):
    # At π = π_old both ratios are 1 and both gradients are A·∇log π(y_t): the same loss and gradient.
    same = {"clip_low": 0.2, "clip_high": 0.28, "loss_agg_mode": "seq-mean-token-mean"}
    gspo_loss, gspo_grad = _loss_and_grad("gspo", same, seed, off_policy=False)
    grpo_loss, grpo_grad = _loss_and_grad("grpo", same, seed, off_policy=False)
    torch.testing.assert_close(gspo_loss, grpo_loss)
    torch.testing.assert_close(gspo_grad, grpo_grad)
    assert grpo_grad.abs().sum() > 0
    _, gspo_off = _loss_and_grad("gspo", same, seed, off_policy=True)
    _, grpo_off = _loss_and_grad("grpo", same, seed, off_policy=True)
    assert not torch.allclose(gspo_off, grpo_off)


def test_gspo_defaults_are_the_papers():
    cfg = build_objective("gspo", {}).cfg
    assert (cfg.clip_low, cfg.clip_high, cfg.loss_agg_mode) == (3e-4, 4e-4, "seq-mean-token-mean")
    with pytest.raises(ValueError, match=r"clip_dual must be > 1"):
        build_objective("gspo", {"clip_dual": 0.5})


# ---------------------------------------------------------------- neg_fixed


def test_fixed_negative_advantage_hand_values():
    obj = build_objective("neg_fixed", {"neg_adv": 0.1, "mode": "add"})
    # Group 1 rewards (1, 0, 0, 0): mean 0.25, unbiased std 0.5 → A = (0.75, −0.25, −0.25, −0.25)/(0.5 + 1e-6),
    # about (1.5, −0.5, −0.5, −0.5); group 2 all equal → A = 0 exactly. Then A − 0.1 on every row.
    batch = make_batch(num_groups=2, group_size=4, rewards=torch.tensor([1.0, 0, 0, 0, 1, 1, 1, 1]))
    obj.prepare(batch)
    group_1 = torch.tensor([0.75, -0.25, -0.25, -0.25]) / (0.5 + 1e-6) - 0.1
    expected = torch.cat([group_1, torch.full((4,), -0.1)])
    torch.testing.assert_close(batch.advantages, expected, atol=1e-7, rtol=0)
    replace = build_objective("neg_fixed", {"neg_adv": 0.25, "mode": "replace"})
    replace.prepare(batch)
    assert torch.equal(batch.advantages, torch.full((8,), -0.25))
    assert replace.min_group_size == 1 and obj.min_group_size == 2


def test_neg_fixed_loss_and_gradient_on_hand_batch():
    # Replace mode, on-policy, token-mean over 5 tokens: loss = −Σ(−c)/5 = c; gradient on log π = c/5 per token.
    obj = build_objective("neg_fixed", {"neg_adv": 0.3, "mode": "replace"})
    batch = make_batch(num_groups=1, group_size=2, response_len=3, lengths=torch.tensor([3, 2]))
    obj.prepare(batch)
    batch.set_loss_counts()
    logp = OLD.clone().requires_grad_(True)
    loss, _ = obj.loss(batch, _policy(logp))
    loss.backward()
    assert loss.item() == pytest.approx(0.3, abs=1e-7)
    torch.testing.assert_close(logp.grad, 0.3 / 5 * MASK)


def test_neg_fixed_add_is_grpo_shifted():
    # add mode = GRPO with A − c: loss(neg_fixed) = loss(GRPO) + c on-policy (token-mean: −Σ(A − c)/N).
    grpo_loss, _ = _loss_and_grad("grpo", {}, 3, off_policy=False)
    neg_loss, _ = _loss_and_grad("neg_fixed", {"neg_adv": 0.2}, 3, off_policy=False)
    assert neg_loss.item() == pytest.approx(grpo_loss.item() + 0.2, abs=1e-6)


def test_neg_fixed_config_errors_name_the_valid_values():
    with pytest.raises(ValueError, match=r"neg_adv must be > 0.*got -0.1"):
        build_objective("neg_fixed", {"neg_adv": -0.1})
    with pytest.raises(ValueError, match=r"mode 'subtract'; valid: add, replace"):
        build_objective("neg_fixed", {"mode": "subtract"})
    with pytest.raises(ValueError, match=r"mode 'x'; valid: add, replace"):
        fixed_negative_advantages(torch.zeros(2), 0.1, "x")


# ---------------------------------------------------------------- rlsd_shuffled

STUDENT = OLD
GAIN = torch.tensor([[math.log(1.1), math.log(2.0), math.log(0.5)], [math.log(2.0), math.log(0.9), 0.0]])
TEACHER = torch.where(MASK > 0, STUDENT + GAIN, torch.tensor(-float("inf")))
# RLSD's clipped weights (tests/test_objective_rlsd.py): row A>0 [1.1, 1.2, 0.8]; row A<0 [0.8, 1/0.9].


def test_shuffled_advantages_hand_values():
    index = torch.tensor([[2, 0, 1], [1, 0, 2]])
    adv_hat = shuffled_token_advantages(ADV, STUDENT, TEACHER, MASK, index, eps_w=0.2, lam=1.0)
    expected = torch.tensor([[0.8, 1.1, 1.2], [-1.0 / 0.9, -0.8, 0.0]])
    torch.testing.assert_close(adv_hat, expected, atol=1e-6, rtol=0)
    # λ = 0.5: 1 + 0.5·(c − 1).
    half = shuffled_token_advantages(ADV, STUDENT, TEACHER, MASK, index, eps_w=0.2, lam=0.5)
    torch.testing.assert_close(half, torch.tensor([[0.9, 1.05, 1.1], [-(0.5 + 0.5 / 0.9), -0.9, 0.0]]), atol=1e-6, rtol=0)


def test_identity_index_is_rlsd_exactly():
    identity = torch.arange(3).expand(2, 3)
    for lam in (0.3, 1.0):
        shuffled = shuffled_token_advantages(ADV, STUDENT, TEACHER, MASK, identity, eps_w=0.2, lam=lam)
        assert torch.equal(shuffled, token_advantages(ADV, STUDENT, TEACHER, MASK, eps_w=0.2, lam=lam))


def test_shuffle_index_permutes_each_rows_own_tokens_reproducibly():
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 50, (6, 12), generator=gen)
    lengths = torch.tensor([12, 9, 5, 1, 12, 7])
    mask = (torch.arange(12)[None] < lengths[:, None]).float()
    index = shuffle_index(ids, mask, step=3, seed=0)
    for row, length in enumerate(lengths.tolist()):
        assert sorted(index[row, :length].tolist()) == list(range(length))  # a permutation of the response
        assert index[row, length:].tolist() == list(range(length, 12))  # padding stays put
    assert torch.equal(index, shuffle_index(ids, mask, step=3, seed=0))  # reproducible
    assert not torch.equal(index, shuffle_index(ids, mask, step=4, seed=0))  # a new draw each step
    assert not torch.equal(index, shuffle_index(ids, mask, step=3, seed=1))  # and each seed
    assert not torch.equal(index[0], torch.arange(12))  # a 12-token row is moved (1 chance in 12! to stay)
    # A row's permutation is its own: the same row elsewhere in another batch gets the same one.
    torch.testing.assert_close(shuffle_index(ids[[4, 0]], mask[[4, 0]], step=3, seed=0), index[[4, 0]])


def _shuffled_vs_rlsd(params):
    batch = make_batch(num_groups=2, group_size=4, response_len=8, vocab_size=9, seed=5,
                       rewards=torch.tensor([1.0, 0, 0, 1, 0, 1, 0, 0]), lengths=torch.tensor([8, 7, 6, 8, 5, 8, 4, 8]))
    logits = random_logits(batch, 9, seed=6)
    logp = torch.log_softmax(logits, -1).gather(-1, batch.response_ids[..., None]).squeeze(-1)
    batch.teacher_logp = torch.log_softmax(random_logits(batch, 9, seed=7), -1).gather(
        -1, batch.response_ids[..., None]).squeeze(-1)
    out = {}
    for name in ("rlsd", "rlsd_shuffled"):
        obj = build_objective(name, params)
        obj.prepare(batch)
        out[name] = obj.token_advantages(batch, _policy(logp))
    return batch, out


def test_shuffled_objective_keeps_each_rows_weights_and_metrics_and_moves_them():
    batch, out = _shuffled_vs_rlsd({"lam": 1.0, "lam_decay_steps": 0})
    (rlsd_adv, rlsd_m), (shuf_adv, shuf_m) = out["rlsd"], out["rlsd_shuffled"]
    mask = batch.response_mask > 0
    for row in range(batch.batch_size):  # the same multiset of token advantages per response
        torch.testing.assert_close(shuf_adv[row][mask[row]].sort().values, rlsd_adv[row][mask[row]].sort().values)
    assert not torch.equal(shuf_adv, rlsd_adv)  # but not on the same tokens
    assert set(shuf_m) == set(rlsd_m)
    for key, value in rlsd_m.items():
        torch.testing.assert_close(shuf_m[key], value, msg=key)


def test_shuffled_at_lambda_zero_is_grpo_exactly():
    for seed in (0, 1):
        grpo = _loss_and_grad("grpo", {}, seed, off_policy=True)
        shuf = _loss_and_grad("rlsd_shuffled", {"lam": 0.0, "lam_decay_steps": 0}, seed, off_policy=True)
        assert torch.equal(shuf[0], grpo[0]) and torch.equal(shuf[1], grpo[1])


def test_shuffled_negative_only_leaves_positive_rows_uniform():
    batch, out = _shuffled_vs_rlsd({"lam": 1.0, "lam_decay_steps": 0, "negative_only": True})
    adv_hat, _ = out["rlsd_shuffled"]
    adv = batch.advantages[:, None] * batch.response_mask
    positive = batch.advantages > 0
    assert torch.equal(adv_hat[positive], adv[positive])
    assert not torch.equal(adv_hat[~positive], adv[~positive])


def test_shuffled_declares_rlsds_teacher():
    obj = build_objective("rlsd_shuffled", {})
    assert (obj.teacher_signal, obj.teacher_context) == ("sampled", "reference")
    assert [obj.uses_teacher(s) for s in (1, 49, 50)] == [True, True, False]
