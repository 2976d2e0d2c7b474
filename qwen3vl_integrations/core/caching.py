"""Caches of values derived from a layout (rendered prompts, M-RoPE positions, vision-tower layouts), kept up to a
budget and emptied when a new value would pass it: a corpus repeats few layouts, so emptying costs one recomputation
of each, and no eviction order needs keeping. Values are shared: callers treat them as read-only."""
from __future__ import annotations

import threading
import weakref
from typing import Any, Callable, Hashable


class BoundedCache(dict):
    """A dict of values of total `weight` (1 each by default) at most `budget`; a value heavier than the whole
    budget is made but not kept. Safe for the preprocessing worker threads: a value two of them make at once is
    kept once."""

    def __init__(self, budget: int, weight: Callable[[Any], int] | None = None) -> None:
        super().__init__()
        self.budget = budget
        self.weight = weight or (lambda value: 1)
        self.total = 0  # the weight of the values kept
        self._lock = threading.Lock()

    def get_or_make(self, key: Hashable, make: Callable[[], Any]) -> Any:
        """The value kept under `key`, else `make()`, kept if the budget allows."""
        value = self.get(key)
        if value is None:
            value = make()
            size = self.weight(value)
            with self._lock:
                if self.total + size > self.budget:
                    self.clear()
                    self.total = 0
                if size <= self.budget and key not in self:
                    self[key] = value
                    self.total += size
        return value


def owner_cache(caches: weakref.WeakKeyDictionary[Any, BoundedCache], owner: Any, budget: int,
                weight: Callable[[Any], int] | None = None) -> BoundedCache:
    """The cache of `owner` (a backbone, a vision tower) in `caches`, made on first use and dropped with the owner."""
    cache = caches.get(owner)
    if cache is None:
        cache = caches.setdefault(owner, BoundedCache(budget, weight))
    return cache
