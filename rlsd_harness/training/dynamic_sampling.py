"""Dynamic sampling: drop the groups whose rewards are all equal and refill the batch with more rollouts.

The rule is DAPO's (Yu et al. 2025, "DAPO: An Open-Source LLM Reinforcement Learning System at Scale",
arXiv 2503.14476, section 3.2 "Dynamic Sampling"): over-sample and filter out prompts whose accuracy is 1 or 0,
i.e. keep a group only when 0 < |{o_i : o_i is correct}| < G, and keep sampling until the batch is full of
such groups. verl's recipe (recipe/dapo/dapo_ray_trainer.py, `algorithm.filter_groups`) implements it as: keep a
prompt when the standard deviation of its responses' rewards is > 0, or when it has a single response; generate
further batches until `train_batch_size` prompts are kept or `max_num_gen_batches` batches were generated
(then it raises). Here a group is kept when its rewards are not all equal (the same as std > 0 for finite
rewards, and the same as DAPO's accuracy rule for 0/1 rewards), a group of one response is always kept, and
each refill round samples only as many new prompts as the batch still lacks, up to `max_rounds` rounds.

Every rollout generated, kept or dropped, is charged to the compute ledger by the trainer as it is sampled
(none of verl, ms-swift, slime, NeMo-RL or prime-rl does this), so a matched-compute comparison charges dynamic
sampling for the rollouts it throws away.

When the cap is reached with the batch still short, `on_short` decides: `fill` (the default) completes the
batch with the first dropped groups in sampling order (they carry no GRPO signal; the metrics say how many) so
the run goes on at the configured batch shape; `error` stops the run, as verl does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from rlsd_harness.algorithms.batch import RolloutBatch
from rlsd_harness.config.typed import TrainDynamicSamplingSection


class ShortBatch(RuntimeError):
    """train.dynamic_sampling.on_short=error and the refill rounds ran out before the batch was full."""


def informative_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """(B,) rewards, rows group by group -> (B / G,) bool: the groups whose rewards are not all equal (DAPO's
    0 < correct < G for 0/1 rewards). A group of one response is always kept (verl's `len(...) == 1`)."""
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    groups = rewards.reshape(-1, group_size)
    if group_size == 1:
        return torch.ones(len(groups), dtype=torch.bool)
    return groups.max(-1).values > groups.min(-1).values


def select_groups(batch: RolloutBatch, prompts: Sequence[Any], groups: Sequence[int]) -> tuple[RolloutBatch, list]:
    """The rows of the given groups (in that order) and their prompts."""
    G = batch.group_size
    rows = torch.tensor([g * G + j for g in groups for j in range(G)], dtype=torch.long)
    return batch.select(rows), [prompts[g] for g in groups]


def _identity_max(x: int) -> int:
    return x


def _identity_sum(xs: list[float]) -> list[float]:
    return list(xs)


def fill_batch(
    batch: RolloutBatch,
    prompts: Sequence[Any],
    sample: Callable[[int, int], tuple[RolloutBatch, Sequence[Any]]],
    cfg: TrainDynamicSamplingSection,
    synced: bool = False,
    reduce_max: Callable[[int], int] = _identity_max,
    reduce_sum: Callable[[list[float]], list[float]] = _identity_sum,
) -> tuple[RolloutBatch, list, dict[str, float]]:
    """Keep the informative groups of the step's first rollout `batch` (of `prompts`, one group each) and refill.

    `sample(round, n)` rolls out n new prompts (round 1, 2, ...) and returns their batch and prompts; the caller
    charges each to the ledger as it samples. With several ranks each rank refills its own share; the rounds
    stop when every rank is full (`reduce_max` over ranks) or after `cfg.max_rounds`. `synced`: every rank must
    generate in every round (ZeRO-3's collective generation), so a full rank samples one prompt and drops it.
    Returns the batch (as many groups as `prompts`, the kept ones in sampling order, then any fillers), its
    prompts, and the step's metrics summed over ranks (`reduce_sum`)."""
    target, G = len(prompts), batch.group_size
    kept: list[tuple[RolloutBatch, list]] = []
    spare: list[tuple[RolloutBatch, list]] = []
    n_kept = n_spare = n_dropped = extra = surplus = 0
    rounds = 0
    current: tuple[RolloutBatch, Sequence[Any]] | None = (batch, prompts)
    while True:
        if current is not None:
            b, p = current
            keep = informative_groups(b.rewards, G)
            good = torch.nonzero(keep).flatten().tolist()
            bad = torch.nonzero(~keep).flatten().tolist()
            n_dropped += len(bad)
            surplus += max(0, len(good) - (target - n_kept))
            good = good[: target - n_kept]  # a full rank's synced round, or an over-full round: surplus
            if good:
                kept.append(select_groups(b, p, good))
                n_kept += len(good)
            bad = bad[: max(0, target - n_spare)]  # at most a batch's worth of fillers is ever needed
            if bad:
                spare.append(select_groups(b, p, bad))
                n_spare += len(bad)
        deficit = target - n_kept
        if rounds == cfg.max_rounds or reduce_max(deficit) == 0:
            break
        rounds += 1
        n = deficit or (1 if synced else 0)
        current = None
        if n:
            new_batch, new_prompts = sample(rounds, n)
            extra += new_batch.batch_size
            current = (new_batch, list(new_prompts))
    short = target - n_kept
    if cfg.on_short == "error" and reduce_max(short) > 0:
        raise ShortBatch(f"dynamic sampling: after {rounds} refill round(s) (train.dynamic_sampling.max_rounds="
                         f"{cfg.max_rounds}) this rank has {n_kept} of {target} groups with unequal rewards; raise "
                         f"max_rounds, or set train.dynamic_sampling.on_short=fill to complete the batch with "
                         f"dropped groups")
    parts = list(kept)
    need = short
    for b, p in spare:
        if need <= 0:
            break
        take = list(range(min(need, len(p))))
        parts.append(select_groups(b, p, take))
        need -= len(take)
    out = RolloutBatch.concat([b for b, _ in parts])
    out_prompts = [x for _, p in parts for x in p]
    dropped, extra_rows, short_groups, surplus_groups = reduce_sum([n_dropped, extra, short, surplus])
    metrics = {
        "rollout/groups_dropped": dropped,
        "rollout/extra_rollouts": extra_rows,
        "rollout/refill_rounds": float(rounds),
        "rollout/groups_short": short_groups,
        "rollout/groups_surplus": surplus_groups,
    }
    return out, out_prompts, metrics
