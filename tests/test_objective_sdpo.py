"""SDPO: the top-k + tail distributions, the JSD on them against hand numbers, the sampled-token mode, the
importance-ratio cap and the sibling mask."""

import math

import pytest
import torch
import torch.nn.functional as F

from rlsd_harness.algorithms import build_objective
from rlsd_harness.algorithms.batch import PolicyOutput
from rlsd_harness.algorithms.sdpo import append_tail_bucket, topk_tail_distillation_loss
from tests.objective_helpers import make_batch, random_logits, student_forward

STUDENT_TOPK = torch.tensor([0.5, 0.25]).log()  # tail 0.25
TEACHER_TOPK = torch.tensor([0.125, 0.5]).log()  # tail 0.375


@pytest.mark.parametrize("k", [1, 5, 20, 49, 50])
def test_topk_plus_tail_sums_to_one(k):
    gen = torch.Generator().manual_seed(k)
    logprobs = torch.log_softmax(torch.randn(3, 4, 50, generator=gen) * 3, -1)
    topk = logprobs.topk(k, -1).values
    with_tail = append_tail_bucket(topk)
    assert with_tail.shape == (3, 4, k + 1)
    torch.testing.assert_close(with_tail.exp().sum(-1), torch.ones(3, 4), atol=2e-6, rtol=0)
    # Teacher log-probs gathered on the student's ids need not be its top-k; the tail still completes them.
    other = torch.log_softmax(torch.randn(3, 4, 50, generator=gen), -1)[..., :k]
    torch.testing.assert_close(append_tail_bucket(other).exp().sum(-1), torch.ones(3, 4), atol=2e-6, rtol=0)


def test_tail_bucket_hand_value_and_finite_gradient_when_topk_holds_everything():
    assert append_tail_bucket(STUDENT_TOPK)[-1].item() == pytest.approx(math.log(0.25), abs=1e-6)
    logits = torch.tensor([2.0, -1.0, 0.5], requires_grad=True)
    full = append_tail_bucket(torch.log_softmax(logits, -1))  # top-k is the whole vocabulary
    assert torch.isfinite(full).all()
    full.exp().sum().backward()
    assert torch.isfinite(logits.grad).all()


def test_topk_tail_jsd_hand_values():
    # With tails: S = (0.5, 0.25, 0.25), T = (0.125, 0.5, 0.375).
    # KL(S‖T) = 0.5 ln 4 + 0.25 ln 0.5 + 0.25 ln(2/3) = 0.4184941; KL(T‖S) = 0.125 ln 0.25 + 0.5 ln 2 + 0.375 ln 1.5 = 0.3253362.
    assert topk_tail_distillation_loss(STUDENT_TOPK, TEACHER_TOPK, 1.0).item() == pytest.approx(0.4184941, abs=1e-6)
    assert topk_tail_distillation_loss(STUDENT_TOPK, TEACHER_TOPK, 0.0).item() == pytest.approx(0.3253362, abs=1e-6)
    # α = 0.5: M = (0.3125, 0.375, 0.3125); 0.5·KL(T‖M) + 0.5·KL(S‖M) = 0.0877625.
    assert topk_tail_distillation_loss(STUDENT_TOPK, TEACHER_TOPK, 0.5).item() == pytest.approx(0.0877625, abs=1e-6)


def _hand_batch():
    """One row, one token, vocabulary 3: student (0.5, 0.25, 0.25) with top-2 ids (0, 1); the teacher puts
    (0.125, 0.5) there."""
    batch = make_batch(num_groups=1, group_size=1, response_len=1, vocab_size=3, lengths=torch.tensor([1]))
    batch.response_ids = torch.tensor([[0]])
    batch.topk_idx = torch.tensor([[[0, 1]]])
    batch.teacher_topk_logp = TEACHER_TOPK.view(1, 1, 2)
    batch.teacher_logp = TEACHER_TOPK[0].view(1, 1)
    student = torch.tensor([0.5, 0.25, 0.25]).log().view(1, 1, 3)
    return batch, PolicyOutput(logp=student[..., 0], entropy=torch.zeros(1, 1), logprobs=student)


def test_sdpo_objective_declares_topk_and_matches_hand_value():
    obj = build_objective("sdpo", {"alpha": 1.0, "topk": 2})
    assert (obj.teacher_signal, obj.topk, obj.teacher_context) == ("topk", 2, "sibling")
    batch, policy = _hand_batch()
    loss, metrics = obj.loss(batch, policy)
    assert loss.item() == pytest.approx(0.4184941, abs=1e-6)
    assert metrics["teacher_kl"].item() == pytest.approx(math.log(0.5 / 0.125), abs=1e-6)


def test_signal_declared_by_mode():
    assert build_objective("sdpo", {}).teacher_signal == "topk"
    assert build_objective("sdpo", {}).topk == 100
    assert build_objective("sdpo", {"topk": 0}).teacher_signal == "full"
    assert build_objective("sdpo", {"mode": "sampled", "alpha": 1.0}).teacher_signal == "sampled"


def test_full_vocabulary_reverse_kl_matches_independent_kl():
    obj = build_objective("sdpo", {"alpha": 1.0, "topk": 0})
    batch = make_batch(num_groups=1, group_size=4, response_len=5, vocab_size=8, seed=2)
    policy = student_forward(random_logits(batch, 8, seed=3), batch.response_ids, with_logprobs=True)
    teacher = torch.log_softmax(random_logits(batch, 8, seed=4), -1)
    batch.teacher_logprobs = teacher
    batch.teacher_logp = teacher.gather(-1, batch.response_ids[..., None]).squeeze(-1)
    loss, _ = obj.loss(batch, policy)
    reverse = F.kl_div(teacher, policy.logprobs, reduction="none", log_target=True).sum(-1)
    expected = (reverse * batch.response_mask).sum() / batch.response_mask.sum()
    torch.testing.assert_close(loss, expected)


def test_topk_covering_the_vocabulary_equals_full_vocabulary_loss():
    batch = make_batch(num_groups=1, group_size=4, response_len=5, vocab_size=8, seed=5)
    logits, teacher = random_logits(batch, 8, seed=6), torch.log_softmax(random_logits(batch, 8, seed=7), -1)
    policy = student_forward(logits, batch.response_ids, with_logprobs=True)
    batch.teacher_logprobs = teacher
    batch.teacher_logp = teacher.gather(-1, batch.response_ids[..., None]).squeeze(-1)
    batch.topk_idx = policy.logprobs.detach().topk(8, -1).indices
    batch.teacher_topk_logp = teacher.gather(-1, batch.topk_idx)
    full, _ = build_objective("sdpo", {"topk": 0}).loss(batch, policy)
    topk, _ = build_objective("sdpo", {"topk": 8}).loss(batch, policy)
    torch.testing.assert_close(topk, full, atol=1e-5, rtol=0)


def test_sampled_mode_value_and_gradient():
    obj = build_objective("sdpo", {"mode": "sampled", "alpha": 1.0})
    batch = make_batch(num_groups=1, group_size=1, response_len=2, lengths=torch.tensor([2]))
    batch.teacher_logp = torch.tensor([[-0.5, -3.0]])
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    loss, _ = obj.loss(batch, PolicyOutput(logp=logp, entropy=torch.zeros(1, 2)))
    # (log P_S − log P_T)·log P_S = (−0.5)(−1), (1)(−2) → (0.5, −2); mean −0.75; gradient (−0.5, 1)/2.
    assert loss.item() == pytest.approx(-0.75)
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-0.25, 0.5]]))


def test_importance_ratio_cap_two():
    obj = build_objective("sdpo", {"mode": "sampled", "alpha": 1.0})
    batch = make_batch(num_groups=1, group_size=1, response_len=2, lengths=torch.tensor([2]))
    batch.teacher_logp = torch.tensor([[-0.5, -3.0]])
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    batch.old_logp = torch.tensor([[-4.0, -2.0 + math.log(2.0)]])  # ratios e³ → 2, and 0.5
    loss, metrics = obj.loss(batch, PolicyOutput(logp=logp, entropy=torch.zeros(1, 2)))
    assert loss.item() == pytest.approx((2 * 0.5 + 0.5 * -2.0) / 2)
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-0.5, 0.25]]))
    assert metrics["is_ratio_mean"].item() == pytest.approx(1.25)


def test_rows_without_a_sibling_carry_no_loss_and_no_count():
    obj = build_objective("sdpo", {"mode": "sampled", "alpha": 1.0})
    batch = make_batch(num_groups=1, group_size=2, response_len=2, lengths=torch.tensor([2, 2]), teacher_mask=torch.tensor([1.0, 0.0]))
    batch.teacher_logp = torch.tensor([[-0.5, -3.0], [-0.1, -0.1]])
    batch.set_loss_counts()
    assert batch.num_tokens == 2.0 and batch.num_seqs == 1.0
    logp = torch.tensor([[-1.0, -2.0], [-5.0, -7.0]], requires_grad=True)
    loss, metrics = obj.loss(batch, PolicyOutput(logp=logp, entropy=torch.zeros(2, 2)))
    assert loss.item() == pytest.approx(-0.75)
    loss.backward()
    assert torch.equal(logp.grad[1], torch.zeros(2))
    assert metrics["rows_with_teacher"].item() == pytest.approx(0.5)


def test_optional_rollout_importance_weight():
    obj = build_objective("sdpo", {"mode": "sampled", "alpha": 1.0, "rollout_is_clip": 2.0})
    batch = make_batch(num_groups=1, group_size=1, response_len=2, lengths=torch.tensor([2]))
    batch.teacher_logp = torch.tensor([[-0.5, -3.0]])
    batch.rollout_logp = torch.tensor([[-1.0 - math.log(1.5), -2.0 + 3.0]])  # π_old/π_rollout = 1.5, e⁻³
    logp = torch.tensor([[-1.0, -2.0]])
    loss, _ = obj.loss(batch, PolicyOutput(logp=logp, entropy=torch.zeros(1, 2)))
    assert loss.item() == pytest.approx((1.5 * 0.5 + math.exp(-3.0) * -2.0) / 2, abs=1e-6)


def test_sdpo_misuse_errors():
    batch, policy = _hand_batch()
    with pytest.raises(ValueError, match=r"top-k 5 must be in \[1, vocabulary size 3\]"):
        build_objective("sdpo", {"topk": 5}).loss(batch, policy)
    with pytest.raises(ValueError, match="top-k support of size 3"):
        build_objective("sdpo", {"topk": 3}).loss(batch, policy)  # the batch carries a top-2 support
    with pytest.raises(ValueError, match="alpha"):
        build_objective("sdpo", {"alpha": -0.1})
    with pytest.raises(ValueError, match="is_clip"):
        build_objective("sdpo", {"is_clip": 0.0})
    batch.topk_idx = None
    with pytest.raises(ValueError, match="topk_idx"):
        build_objective("sdpo", {"topk": 2}).loss(batch, policy)
    with pytest.raises(ValueError, match="vocabulary size 3"):
        build_objective("sdpo", {"topk": 4}).check_vocab(3)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.99])
def test_sampled_mode_refuses_an_alpha_it_would_ignore(alpha):
    # The sampled-token loss is the reverse KL only (α = 1); any other α must fail at build time, naming the fix.
    with pytest.raises(ValueError, match=rf"alpha {alpha} with mode 'sampled'.*reverse KL.*alpha: 1\.0.*mode: logit"):
        build_objective("sdpo", {"mode": "sampled", "alpha": alpha})
    with pytest.raises(ValueError, match="alpha"):
        build_objective("sdpo", {"mode": "sampled"})  # the default α = 0.5 belongs to the logit mode
    assert build_objective("sdpo", {"mode": "logit", "alpha": alpha}).cfg.alpha == alpha


@pytest.mark.parametrize("alpha", [0.25, 0.5, 0.75])
def test_full_vocabulary_jsd_has_finite_gradients_when_both_sides_ban_an_id(alpha):
    # the trainer's distributions give the vision placeholders probability 0 on both sides (log-prob -inf)
    logits = torch.tensor([[2.0, -1.0, 0.5, 0.0]], requires_grad=True)
    banned = torch.tensor([False, False, False, True])
    student = torch.log_softmax(logits.masked_fill(banned, float("-inf")), -1)
    teacher = torch.log_softmax(torch.tensor([[0.0, 1.0, -0.5, 0.0]]).masked_fill(banned, float("-inf")), -1)
    loss = build_objective("sdpo", {"topk": 0, "alpha": alpha}).vocab_loss(student, teacher)
    s, t = student.detach().exp()[0, :3], teacher.exp()[0, :3]
    m = (1 - alpha) * s + alpha * t
    hand = alpha * (t * (t / m).log()).sum() + (1 - alpha) * (s * (s / m).log()).sum()
    assert loss.item() == pytest.approx(hand.item(), abs=1e-6)
    loss.sum().backward()
    assert torch.isfinite(logits.grad).all() and logits.grad[0, :3].abs().sum() > 0
