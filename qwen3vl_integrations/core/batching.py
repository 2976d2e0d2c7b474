"""Length-sorted micro-batches under an item count and a padded-token budget."""
from __future__ import annotations

from typing import Sequence


def plan_batches(costs: Sequence[int], batch_size: int, max_batch_tokens: int) -> list[list[int]]:
    """Group positions into micro-batches, longest first.

    Sorting by (estimated) token count keeps padding small; a batch holds at most `batch_size` items and at
    most `max_batch_tokens` padded tokens (rows x longest row). An item longer than the budget runs alone.
    Positions refer to `costs`; callers restore their own order from them.
    """
    if batch_size < 1 or max_batch_tokens < 1:
        raise ValueError("batch_size and max_batch_tokens must be positive")
    order = sorted(range(len(costs)), key=lambda i: (-costs[i], i))
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
