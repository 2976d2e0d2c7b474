"""The padding-aware micro-batch planner (plan_batches with batch_overhead)."""
from __future__ import annotations

import itertools
import random

import pytest

from qwen3vl_integrations.core.batching import plan_batches


def plan_cost(costs, plan, overhead):
    return sum(len(batch) * max(max(1, costs[p]) for p in batch) + overhead for batch in plan)


def check_valid(costs, batch_size, budget, plan):
    flat = [p for batch in plan for p in batch]
    assert sorted(flat) == list(range(len(costs)))
    for batch in plan:
        assert 1 <= len(batch) <= batch_size
        assert len(batch) == 1 or len(batch) * max(max(1, costs[p]) for p in batch) <= budget
    ordered = [costs[p] for p in flat]
    assert ordered == sorted(ordered, reverse=True)


def brute_force_best(costs, batch_size, budget, overhead):
    """Cheapest cut of the longest-first order, by trying every cut."""
    order = sorted(range(len(costs)), key=lambda i: (-costs[i], i))
    best = None
    for cuts in itertools.product((False, True), repeat=max(0, len(order) - 1)):
        plan, current = [], [order[0]]
        for cut, position in zip(cuts, order[1:]):
            if cut:
                plan.append(current)
                current = []
            current.append(position)
        plan.append(current)
        if all(len(b) <= batch_size and (len(b) == 1 or len(b) * max(max(1, costs[p]) for p in b) <= budget)
               for b in plan):
            cost = plan_cost(costs, plan, overhead)
            best = cost if best is None else min(best, cost)
    return best


def test_min_padding_plan_is_valid_and_optimal():
    rng = random.Random(1)
    for _ in range(150):
        n = rng.randint(1, 9)
        costs = [rng.randint(1, 300) for _ in range(n)]
        batch_size, budget, overhead = rng.randint(1, 5), rng.randint(50, 1500), rng.choice([0, 16, 64, 1024])
        plan = plan_batches(costs, batch_size, budget, batch_overhead=overhead)
        check_valid(costs, batch_size, budget, plan)
        assert plan_cost(costs, plan, overhead) == brute_force_best(costs, batch_size, budget, overhead)


def test_min_padding_plan_examples():
    assert plan_batches([], 4, 100, batch_overhead=64) == []
    # Equal lengths always share a batch (no padding, one forward pass fewer).
    assert plan_batches([7, 7, 7, 7], 8, 1000, batch_overhead=1) == [[0, 1, 2, 3]]
    # 100 and 10: padding the short one costs 90 tokens; worth it only when a forward pass costs more.
    assert plan_batches([10, 100], 8, 1000, batch_overhead=64) == [[1], [0]]
    assert plan_batches([10, 100], 8, 1000, batch_overhead=128) == [[1, 0]]
    # The budget and the item count still bound every batch; an over-long item runs alone.
    assert plan_batches([500, 1, 1], 8, 100, batch_overhead=10_000) == [[0], [1, 2]]
    assert plan_batches([5, 5, 5], 2, 1000, batch_overhead=10_000) == [[0, 1], [2]]


def test_min_padding_plan_pads_less_than_greedy_on_mixed_lengths():
    rng = random.Random(2)
    costs = [int(10 * 200 ** rng.random()) for _ in range(256)]  # log-uniform 10-2000
    real = sum(costs)
    padded = {name: sum(len(b) * max(costs[p] for p in b) for b in plan) for name, plan in (
        ("greedy", plan_batches(costs, 32, 16384)), ("min", plan_batches(costs, 32, 16384, batch_overhead=64)))}
    assert padded["min"] < padded["greedy"]
    assert padded["min"] / real < 1.05


def test_large_plans_are_fast_enough():
    costs = [random.Random(3).randint(1, 8000) for _ in range(20_000)]
    plan = plan_batches(costs, 32, 16384, batch_overhead=64)
    assert sum(len(b) for b in plan) == 20_000


@pytest.mark.parametrize("device_type", ["cpu"])
def test_runner_uses_the_min_padding_plan(device_type):
    from qwen3vl_integrations.core.runner import BATCH_OVERHEAD_TOKENS

    assert BATCH_OVERHEAD_TOKENS[device_type] > 0
