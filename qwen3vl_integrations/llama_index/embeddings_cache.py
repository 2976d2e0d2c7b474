"""``SeparatedEmbeddingsCache``: LlamaIndex's ``embeddings_cache``, with query and document vectors kept apart.

LlamaIndex keys a cached embedding by its raw text, in one collection for queries and documents alike, and for
every model that shares the store. Qwen3-VL embeds a query and a document with different instructions, so
"a red car" asked as a query must not get the vector it got as a document (with a plain store it did, and the other
way round); nor may a vector of another model, Matryoshka size or instruction come back. This wrapper stores each
kind under a collection of its own, named by the role and a fingerprint of what shapes the vector.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
from contextvars import ContextVar
from typing import Any, Dict, Iterator, Optional

from llama_index.core.storage.kvstore.types import DEFAULT_COLLECTION, BaseKVStore

__all__ = ["SeparatedEmbeddingsCache", "cache_namespace"]

# Set around a public embedding call (a context variable: it follows the call into threads and asyncio tasks).
_NAMESPACE: ContextVar[Optional[str]] = ContextVar("qwen3vl_embeddings_cache_namespace", default=None)


@contextlib.contextmanager
def cache_namespace(role: str, *shaped_by: Any) -> Iterator[None]:
    """Within the block, cached vectors live in the collection of `role` and the values that shape them."""
    digest = hashlib.sha256(json.dumps([str(v) for v in shaped_by]).encode("utf-8")).hexdigest()[:16]
    token = _NAMESPACE.set(f"qwen3vl/{role}/{digest}")
    try:
        yield
    finally:
        _NAMESPACE.reset(token)


class SeparatedEmbeddingsCache(BaseKVStore):
    """A user's ``BaseKVStore`` seen through one collection per role and configuration (see the module docstring).

    ``store`` is the user's own store, which keeps everything (persist it as usual). Outside our embedding calls the
    collections are the ones given, unchanged.
    """

    def __init__(self, store: BaseKVStore) -> None:
        self.store = store

    @staticmethod
    def _collection(collection: str) -> str:
        namespace = _NAMESPACE.get()
        return collection if namespace is None else f"{collection}/{namespace}"

    def put(self, key: str, val: dict, collection: str = DEFAULT_COLLECTION) -> None:
        self.store.put(key, val, collection=self._collection(collection))

    async def aput(self, key: str, val: dict, collection: str = DEFAULT_COLLECTION) -> None:
        await self.store.aput(key, val, collection=self._collection(collection))

    def get(self, key: str, collection: str = DEFAULT_COLLECTION) -> Optional[dict]:
        return self.store.get(key, collection=self._collection(collection))

    async def aget(self, key: str, collection: str = DEFAULT_COLLECTION) -> Optional[dict]:
        return await self.store.aget(key, collection=self._collection(collection))

    def get_all(self, collection: str = DEFAULT_COLLECTION) -> Dict[str, dict]:
        return self.store.get_all(collection=self._collection(collection))

    async def aget_all(self, collection: str = DEFAULT_COLLECTION) -> Dict[str, dict]:
        return await self.store.aget_all(collection=self._collection(collection))

    def delete(self, key: str, collection: str = DEFAULT_COLLECTION) -> bool:
        return self.store.delete(key, collection=self._collection(collection))

    async def adelete(self, key: str, collection: str = DEFAULT_COLLECTION) -> bool:
        return await self.store.adelete(key, collection=self._collection(collection))
