"""Length-sorted micro-batches under an item count and a padded-token budget."""
from __future__ import annotations

from typing import Sequence


def plan_batches(costs: Sequence[int], batch_size: int, max_batch_tokens: int,
                 batch_overhead: int | None = None) -> list[list[int]]:
    """Group positions into micro-batches, longest first.

    Sorting by (estimated) token count keeps padding small; a batch holds at most `batch_size` items and at
    most `max_batch_tokens` padded tokens (rows x longest row). An item longer than the budget runs alone.
    Positions refer to `costs`; callers restore their own order from them.

    Without `batch_overhead` the sorted items are filled greedily into batches. With it, the cut points are chosen
    to minimise the padded tokens plus `batch_overhead` tokens per batch (the fixed cost of one forward pass, in
    tokens): a batch then only takes a shorter item when the padding it adds costs less than another forward pass.
    Either way the batches are contiguous runs of the same longest-first order.
    """
    if batch_size < 1 or max_batch_tokens < 1:
        raise ValueError("batch_size and max_batch_tokens must be positive")
    order = sorted(range(len(costs)), key=lambda i: (-costs[i], i))
    if batch_overhead is not None:
        return _plan_min_padding(order, [max(1, int(costs[p])) for p in order], batch_size, max_batch_tokens,
                                 max(0, int(batch_overhead)))
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for position in order:
        cost = max(1, int(costs[position]))
        if current and (len(current) + 1 > batch_size or max(longest, cost) * (len(current) + 1) > max_batch_tokens):
            batches.append(current)
            current, longest = [], 0
        current.append(position)
        longest = max(longest, cost)
    if current:
        batches.append(current)
    return batches


def _plan_min_padding(order: list[int], sorted_costs: list[int], batch_size: int, max_batch_tokens: int,
                      overhead: int) -> list[list[int]]:
    """Exact minimum of sum(rows x longest + overhead) over cuts of the sorted list (dynamic programming).

    `sorted_costs` is descending, so a batch of items i..j-1 is as wide as item i. O(len x batch_size).
    """
    n = len(sorted_costs)
    best = [0] * (n + 1)
    start = [0] * (n + 1)
    for j in range(1, n + 1):
        # item j-1 alone always fits; then the batches starting earlier
        best_cost, best_start = best[j - 1] + sorted_costs[j - 1] + overhead, j - 1
        for i in range(j - 2, max(0, j - batch_size) - 1, -1):
            rows = j - i
            padded = rows * sorted_costs[i]
            if padded > max_batch_tokens:
                break  # starting earlier only makes the batch wider and longer
            cost = best[i] + padded + overhead
            if cost < best_cost:
                best_cost, best_start = cost, i
        best[j], start[j] = best_cost, best_start
    batches: list[list[int]] = []
    j = n
    while j > 0:
        i = start[j]
        batches.append(order[i:j])
        j = i
    batches.reverse()
    return batches
