"""OPSD: the generalized JSD and its limits against independent computations, teacher top-k, the point-wise
clip, the sampled-token mode and the importance-ratio cap."""

import math

import pytest
import torch
import torch.nn.functional as F

from rlsd_harness.algorithms import build_objective
from rlsd_harness.algorithms.batch import PolicyOutput
from rlsd_harness.algorithms.common import generalized_jsd
from rlsd_harness.algorithms.opsd import logit_distillation_loss, restrict_to_teacher_topk
from tests.objective_helpers import make_batch

S = torch.tensor([0.5, 0.5]).log()
T = torch.tensor([0.25, 0.75]).log()


def test_jsd_hand_values():
    # M = (0.375, 0.625); 0.5·KL(T‖M) + 0.5·KL(S‖M) = 0.5·0.0353749 + 0.5·0.0322693.
    assert generalized_jsd(S, T, 0.5).item() == pytest.approx(0.0338221, abs=1e-6)
    # β = 0: KL(T‖S) = 0.25 ln 0.5 + 0.75 ln 1.5; β = 1: KL(S‖T) = 0.5 ln 2 + 0.5 ln(2/3).
    assert generalized_jsd(S, T, 0.0).item() == pytest.approx(0.1308120, abs=1e-6)
    assert generalized_jsd(S, T, 1.0).item() == pytest.approx(0.1438410, abs=1e-6)


def test_pointwise_clip_caps_each_vocabulary_entry():
    # β = 0 terms: 0.25 ln 0.5 = −0.1732868 (kept), 0.75 ln 1.5 = 0.3040988 → 0.05.
    assert generalized_jsd(S, T, 0.0, pointwise_clip=0.05).item() == pytest.approx(-0.1232868, abs=1e-6)


# Far apart: S = (0.9, 0.1), T = (0.1, 0.9). At β = 0.5, M = (0.5, 0.5) and on each entry
# k_T = T ln(T/M), k_S = S ln(S/M) are {0.1 ln 0.2 = −0.1609438, 0.9 ln 1.8 = 0.5290080}, one of each.
S_FAR = torch.tensor([0.9, 0.1]).log()
T_FAR = torch.tensor([0.1, 0.9]).log()


def test_pointwise_clip_caps_the_mixed_term_of_each_entry():
    # Unclipped: 2 · 0.5 · (−0.1609438 + 0.5290080) = 0.3680642.
    assert generalized_jsd(S_FAR, T_FAR, 0.5).item() == pytest.approx(0.3680642, abs=1e-6)
    # Each entry's mixed term 0.1840321 is capped at 0.05: 0.1. (Clamping k_T and k_S apart and then mixing
    # would give 2 · 0.5 · (−0.1609438 + 0.05) = −0.1109438, a negative divergence.)
    assert generalized_jsd(S_FAR, T_FAR, 0.5, pointwise_clip=0.05).item() == pytest.approx(0.1, abs=1e-6)
    # One entry under the cap, one over, one zero: S = (0.9, 0.05, 0.05), T = (0.1, 0.85, 0.05), M = (0.5, 0.45, 0.05);
    # mixed terms 0.1840321, 0.5·(0.85 ln(0.85/0.45) + 0.05 ln(0.05/0.45)) = 0.2153646 → 0.2, and 0: 0.3840321.
    s3, t3 = torch.tensor([0.9, 0.05, 0.05]).log(), torch.tensor([0.1, 0.85, 0.05]).log()
    assert generalized_jsd(s3, t3, 0.5, pointwise_clip=0.2).item() == pytest.approx(0.3840321, abs=1e-6)


def test_pointwise_clip_mixes_with_beta_on_the_teacher_side():
    # β = 0.25 checks which side β weights: M = 0.75·S + 0.25·T = (0.7, 0.3); mixed terms
    # 0.25·0.1 ln(1/7) + 0.75·0.9 ln(9/7) = 0.1209895 and 0.25·0.9 ln 3 + 0.75·0.1 ln(1/3) = 0.1647918 → 0.15.
    assert generalized_jsd(S_FAR, T_FAR, 0.25, pointwise_clip=0.15).item() == pytest.approx(0.2709895, abs=1e-6)


def test_pointwise_clip_with_teacher_topk_applies_after_the_restriction():
    # Teacher's top-2 ids are 1 and 0; renormalised there the pair is exactly (S_FAR, T_FAR): 0.1 as above.
    student = torch.tensor([0.54, 0.06, 0.40]).log()
    teacher = torch.tensor([0.095, 0.855, 0.05]).log()
    loss = logit_distillation_loss(student, teacher, 0.5, teacher_topk=2, pointwise_clip=0.05)
    assert loss.item() == pytest.approx(0.1, abs=1e-6)


def test_opsd_objective_jsd_with_clip_on_hand_token():
    obj = build_objective("opsd", {"beta": 0.5, "pointwise_clip": 0.05, "is_clip": None})
    batch = make_batch(num_groups=1, group_size=1, response_len=1, vocab_size=2, lengths=torch.tensor([1]))
    batch.response_ids = torch.tensor([[1]])
    batch.teacher_logprobs, batch.teacher_logp = T_FAR.view(1, 1, 2), T_FAR[1].view(1, 1)
    student = S_FAR.view(1, 1, 2)
    loss, _ = obj.loss(batch, PolicyOutput(logp=student[..., 1], entropy=torch.zeros(1, 1), logprobs=student))
    assert loss.item() == pytest.approx(0.1, abs=1e-6)


@pytest.mark.parametrize("seed", range(5))
def test_jsd_limits_equal_independent_forward_and_reverse_kl(seed):
    gen = torch.Generator().manual_seed(seed)
    student = torch.log_softmax(torch.randn(3, 4, 11, generator=gen) * 2, -1)
    teacher = torch.log_softmax(torch.randn(3, 4, 11, generator=gen) * 2, -1)
    # F.kl_div(input=log q, target=log p, log_target=True) sums p·(log p − log q) = KL(p‖q).
    forward = F.kl_div(student, teacher, reduction="none", log_target=True).sum(-1)
    reverse = F.kl_div(teacher, student, reduction="none", log_target=True).sum(-1)
    torch.testing.assert_close(generalized_jsd(student, teacher, 0.0), forward)
    torch.testing.assert_close(generalized_jsd(student, teacher, 1.0), reverse)


@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
def test_jsd_is_nonnegative_zero_on_equal_and_swaps_with_one_minus_beta(beta):
    gen = torch.Generator().manual_seed(11)
    student = torch.log_softmax(torch.randn(5, 9, generator=gen), -1)
    teacher = torch.log_softmax(torch.randn(5, 9, generator=gen), -1)
    jsd = generalized_jsd(student, teacher, beta)
    assert (jsd > 0).all()
    torch.testing.assert_close(generalized_jsd(teacher, student, 1.0 - beta), jsd)
    torch.testing.assert_close(generalized_jsd(student, student, beta), torch.zeros(5), atol=1e-7, rtol=0)


def test_forward_kl_gradient_is_student_minus_teacher_probabilities():
    # d KL(T‖softmax(z)) / dz = softmax(z) − T: an independent check of the gradient path.
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 3, 6, generator=gen, requires_grad=True)
    teacher = torch.log_softmax(torch.randn(2, 3, 6, generator=gen), -1)
    logit_distillation_loss(torch.log_softmax(logits, -1), teacher, beta=0.0).sum().backward()
    torch.testing.assert_close(logits.grad, torch.softmax(logits.detach(), -1) - teacher.exp())


def test_teacher_topk_restricts_and_renormalises():
    student = torch.tensor([0.4, 0.3, 0.2, 0.1]).log()
    teacher = torch.tensor([0.1, 0.2, 0.3, 0.4]).log()
    s_k, t_k = restrict_to_teacher_topk(student, teacher, 2)
    # Teacher's top-2 ids are 3 and 2: T' = (0.4, 0.3)/0.7, S' = (0.1, 0.2)/0.3.
    torch.testing.assert_close(t_k.exp(), torch.tensor([4 / 7, 3 / 7]))
    torch.testing.assert_close(s_k.exp(), torch.tensor([1 / 3, 2 / 3]))
    # KL(T'‖S') = 4/7 ln(12/7) + 3/7 ln(9/14) = 0.1186411.
    assert logit_distillation_loss(student, teacher, 0.0, teacher_topk=2).item() == pytest.approx(0.1186411, abs=1e-6)


def _one_token_batch():
    batch = make_batch(num_groups=1, group_size=1, response_len=1, vocab_size=2, lengths=torch.tensor([1]))
    batch.response_ids = torch.tensor([[1]])
    batch.teacher_logprobs = T.view(1, 1, 2)
    batch.teacher_logp = T[1].view(1, 1)
    return batch


def test_opsd_objective_official_setting_on_hand_token():
    obj = build_objective("opsd", {"beta": 0.0, "pointwise_clip": 0.05})
    assert (obj.teacher_signal, obj.teacher_context) == ("full", "reference")
    batch = _one_token_batch()
    student = S.view(1, 1, 2)
    loss, metrics = obj.loss(batch, PolicyOutput(logp=student[..., 1], entropy=torch.zeros(1, 1), logprobs=student))
    assert loss.item() == pytest.approx(-0.1232868, abs=1e-6)
    # Sampled token 1: log P_S − log P_T = ln 0.5 − ln 0.75.
    assert metrics["teacher_kl"].item() == pytest.approx(math.log(0.5 / 0.75), abs=1e-6)


def test_importance_ratio_is_capped_and_detached():
    obj = build_objective("opsd", {"beta": 1.0, "pointwise_clip": None, "is_clip": 2.0})
    batch = _one_token_batch()

    def loss_and_grad(old_logp):
        batch.old_logp = old_logp
        logits = S.view(1, 1, 2).clone().requires_grad_(True)
        student = torch.log_softmax(logits, -1)
        loss, _ = obj.loss(batch, PolicyOutput(logp=student[..., 1], entropy=torch.zeros(1, 1), logprobs=student))
        loss.backward()
        return loss.item(), logits.grad

    base_loss, base_grad = loss_and_grad(None)  # on-policy: no reweighting
    assert base_loss == pytest.approx(0.1438410, abs=1e-6)
    capped_loss, capped_grad = loss_and_grad(S[1].view(1, 1) - 3.0)  # ratio e³ capped at 2
    assert capped_loss == pytest.approx(2 * 0.1438410, abs=1e-6)
    torch.testing.assert_close(capped_grad, 2 * base_grad)
    small_loss, _ = loss_and_grad(S[1].view(1, 1) + math.log(2.0))  # ratio 0.5, below the cap
    assert small_loss == pytest.approx(0.5 * 0.1438410, abs=1e-6)


def test_sampled_token_mode_is_a_policy_gradient_on_the_information_gain():
    obj = build_objective("opsd", {"mode": "sampled"})
    assert obj.teacher_signal == "sampled"
    batch = make_batch(num_groups=1, group_size=1, response_len=2, lengths=torch.tensor([2]))
    batch.teacher_logp = torch.tensor([[-0.5, -3.0]])
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    loss, _ = obj.loss(batch, PolicyOutput(logp=logp, entropy=torch.zeros(1, 2)))
    # Δ = (0.5, −1); per-token −Δ·log P_S = (0.5, −2); token mean −0.75; gradient −Δ/2.
    assert loss.item() == pytest.approx(-0.75)
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-0.25, 0.5]]))


def test_opsd_misuse_errors():
    batch = _one_token_batch()
    student = S.view(1, 1, 2)
    policy = PolicyOutput(logp=student[..., 1], entropy=torch.zeros(1, 1), logprobs=student)
    with pytest.raises(ValueError, match="teacher_topk 5 exceeds the vocabulary size 2"):
        build_objective("opsd", {"teacher_topk": 5}).loss(batch, policy)
    with pytest.raises(ValueError, match="beta"):
        build_objective("opsd", {"beta": 1.5})
    with pytest.raises(ValueError, match="mode"):
        build_objective("opsd", {"mode": "topk"})
    with pytest.raises(ValueError, match="pointwise_clip"):
        build_objective("opsd", {"pointwise_clip": 0.0})
    batch.teacher_logprobs = None
    with pytest.raises(ValueError, match="teacher_logprobs"):
        build_objective("opsd", {}).loss(batch, policy)
    with pytest.raises(ValueError, match="PolicyOutput.logprobs"):
        build_objective("opsd", {}).loss(_one_token_batch(), PolicyOutput(logp=student[..., 1], entropy=torch.zeros(1, 1)))
