"""Token-budget micro-batching for long, uneven sequences.

Rows are padded to the longest row of their micro-batch, so a micro-batch costs (rows x longest length)
tokens. `partition_by_tokens` packs rows, longest first, into as few micro-batches as fit a budget, and
`pad_to_count` evens the number of micro-batches across ranks, and `balance_rows` splits a mini-batch between
ranks so that each trains on about as many tokens.
Separate budgets serve forward-only passes (teacher, reference, old log-probs: no activations kept, about
twice the budget fits) and forward+backward passes. Losses stay exact whatever the partition, because every
micro-batch is normalised by whole-mini-batch counts (algorithms/common.py: aggregate_loss).
"""

from __future__ import annotations


def partition_by_tokens(lengths: list[int], budget: int) -> list[list[int]]:
    """Row indices grouped into micro-batches with rows x max(length) <= budget (a row longer than the
    budget gets a micro-batch of its own). Deterministic: ties keep row order."""
    if budget < 1:
        raise ValueError(f"token budget must be >= 1, got {budget}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:  # descending lengths: the first row of a micro-batch is its longest
        if current and (len(current) + 1) * lengths[current[0]] > budget:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def pad_to_count(batches: list[list[int]], count: int) -> list[list[int]]:
    """Split the largest micro-batches until there are `count` of them, so that every rank runs the same
    number of forward/backward passes (ZeRO-3 gathers parameters collectively in each one)."""
    if count < len(batches):
        raise ValueError(f"cannot reduce {len(batches)} micro-batches to {count}")
    batches = [list(b) for b in batches]
    while len(batches) < count:
        big = max(range(len(batches)), key=lambda k: len(batches[k]))
        if len(batches[big]) < 2:
            raise ValueError(f"only {sum(map(len, batches))} rows: cannot make {count} non-empty micro-batches")
        b = batches.pop(big)
        batches[big:big] = [b[: len(b) // 2], b[len(b) // 2 :]]
    return batches


def balance_rows(lengths: list[int], parts: int) -> list[list[int]]:
    """Row indices in `parts` sets of equal size whose token sums are as even as a greedy pass makes them
    (longest row first, to the lightest set that still has room). Deterministic: ties go to the lower set."""
    if parts < 1 or len(lengths) % parts:
        raise ValueError(f"{len(lengths)} rows do not split into {parts} equal parts")
    room = len(lengths) // parts
    sets: list[list[int]] = [[] for _ in range(parts)]
    loads = [0] * parts
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        k = min((k for k in range(parts) if len(sets[k]) < room), key=lambda k: (loads[k], k))
        sets[k].append(i)
        loads[k] += lengths[i]
    return [sorted(s) for s in sets]
