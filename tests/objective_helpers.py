"""Small builders for pure-tensor objective tests: a RolloutBatch from random numbers, a student forward from
a logits tensor, and a stand-in for the backbone that fills exactly the teacher signals an objective declares.
No model anywhere."""

from __future__ import annotations

import torch

from rlsd_harness.algorithms.batch import PolicyOutput, PromptInputs, RolloutBatch
from rlsd_harness.algorithms.registry import Objective


def make_batch(
    num_groups: int = 2,
    group_size: int = 4,
    response_len: int = 6,
    vocab_size: int = 7,
    seed: int = 0,
    rewards: torch.Tensor | None = None,
    lengths: torch.Tensor | None = None,
    teacher_mask: torch.Tensor | None = None,
    step: int = 1,
) -> RolloutBatch:
    """Random response ids, right-padded masks of varying lengths (every row at least one token), binary rewards."""
    gen = torch.Generator().manual_seed(seed)
    rows = num_groups * group_size
    if lengths is None:
        lengths = torch.randint(1, response_len + 1, (rows,), generator=gen)
    if rewards is None:
        rewards = torch.randint(0, 2, (rows,), generator=gen).float()
    response_mask = (torch.arange(response_len)[None, :] < lengths[:, None]).float()
    return RolloutBatch(
        response_ids=torch.randint(0, vocab_size, (rows, response_len), generator=gen),
        response_mask=response_mask,
        rewards=rewards.float(),
        group_size=group_size,
        rollout_logp=-torch.rand(rows, response_len, generator=gen) * 3.0,
        student=PromptInputs(ids=torch.zeros(rows, 3, dtype=torch.long), mask=torch.ones(rows, 3, dtype=torch.long)),
        teacher_mask=teacher_mask,
        step=step,
    )


def random_logits(batch: RolloutBatch, vocab_size: int, seed: int, scale: float = 2.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch.batch_size, batch.response_ids.shape[1], vocab_size, generator=gen) * scale


def student_forward(logits: torch.Tensor, response_ids: torch.Tensor, with_logprobs: bool) -> PolicyOutput:
    """What the trainer's forward gives an objective: sampled-token log-probs (with grad), detached entropy,
    and the full log-softmax when the objective's teacher signal needs it."""
    logprobs = torch.log_softmax(logits, dim=-1)
    logp = logprobs.gather(-1, response_ids[..., None]).squeeze(-1)
    entropy = -(logprobs.exp() * logprobs).sum(-1).detach()
    return PolicyOutput(logp=logp, entropy=entropy, logprobs=logprobs if with_logprobs else None)


def needs_full_logprobs(objective: Objective) -> bool:
    return objective.teacher_signal in ("topk", "full")


def fill_teacher_signals(mb: RolloutBatch, objective: Objective, policy: PolicyOutput, teacher_logits: torch.Tensor) -> None:
    """Stand-in for the backbone's teacher forward: fills only the signals the objective declares."""
    if objective.teacher_signal == "none":
        return
    teacher_logprobs = torch.log_softmax(teacher_logits, dim=-1)
    mb.teacher_logp = teacher_logprobs.gather(-1, mb.response_ids[..., None]).squeeze(-1)
    if objective.teacher_signal == "full":
        mb.teacher_logprobs = teacher_logprobs
    elif objective.teacher_signal == "topk":
        mb.topk_idx = policy.logprobs.detach().topk(objective.topk, dim=-1).indices
        mb.teacher_topk_logp = teacher_logprobs.gather(-1, mb.topk_idx)


def run_in_micro_batches(
    objective: Objective,
    batch: RolloutBatch,
    logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    micro_batch_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Whole-batch prepare, whole-batch loss counts, then micro-batches of `micro_batch_size` rows, each
    backpropagated as the trainer would. Returns the summed loss and the gradient on `logits`."""
    leaf = logits.detach().clone().requires_grad_(True)
    objective.prepare(batch)
    batch.set_loss_counts()
    total = torch.zeros(())
    for start in range(0, batch.batch_size, micro_batch_size):
        rows = torch.arange(start, min(start + micro_batch_size, batch.batch_size))
        mb = batch.select(rows)
        policy = student_forward(leaf[rows], mb.response_ids, needs_full_logprobs(objective))
        fill_teacher_signals(mb, objective, policy, teacher_logits[rows])
        loss, _ = objective.loss(mb, policy)
        loss.backward()
        total = total + loss.detach()
    return total, leaf.grad


