"""The bounded caches behind rendered prompts, M-RoPE positions and vision-tower layouts (core/caching.py)."""
from __future__ import annotations

import weakref

from qwen3vl_integrations.core.caching import BoundedCache, owner_cache


def test_values_are_kept_up_to_the_budget_then_the_cache_is_emptied():
    made = []
    cache = BoundedCache(budget=5, weight=len)

    def make(value: str):
        return lambda: made.append(value) or value

    assert cache.get_or_make("a", make("aa")) == "aa" and cache.get_or_make("a", make("xx")) == "aa"
    assert cache.get_or_make("b", make("bbb")) == "bbb" and cache.total == 5 and made == ["aa", "bbb"]
    assert cache.get_or_make("c", make("c")) == "c"  # 5 + 1 > 5: emptied, then kept
    assert dict(cache) == {"c": "c"} and cache.total == 1
    assert cache.get_or_make("d", make("dddddd")) == "dddddd"  # heavier than the budget: made, not kept
    assert dict(cache) == {} and cache.total == 0


def test_each_owner_has_its_own_cache_dropped_with_it():
    class Owner:
        pass

    caches: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
    first, second = Owner(), Owner()
    owner_cache(caches, first, 2).get_or_make("k", lambda: 1)
    assert owner_cache(caches, first, 2) is owner_cache(caches, first, 2) and dict(caches[first]) == {"k": 1}
    assert dict(owner_cache(caches, second, 2)) == {}
    del first
    assert len(caches) == 1
