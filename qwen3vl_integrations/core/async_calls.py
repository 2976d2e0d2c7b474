"""The adapters' async calls: run in threads of our own, and stopped once their caller gives up on them.

Threads of our own: a call waits for its model (behind other calls' forward passes) in the thread that runs it.
In the loop's default pool (6 threads on a 2-core machine) a burst of calls waiting so held up everything else that
pool runs: `asyncio.to_thread`, LangChain's `run_in_executor` (a vector store's search), the application's own
blocking work. Embedding and reranking calls get a pool each, so that a flood of one never queues the other behind
it (both models can run at once).

Giving up: `asyncio.to_thread` stops waiting when the awaiting task is cancelled, but the thread runs on: a call
given up on kept the model for all its remaining forward passes (127 of them after a 0.3 s timeout on a 4 s call),
delaying every later call. `WorkerThreads.run` runs the call with a flag in its context that the batch loop reads
before each forward pass.
"""
from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator, TypeVar

T = TypeVar("T")

# asyncio's own ceiling for its default pool: enough calls waiting at once for concurrent queries to share passes
# (core/joining.py); further calls queue here, not in the loop's pool
THREADS_PER_POOL = 32

_GIVEN_UP: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar("qwen3vl_given_up", default=None)
_GROUP_STOPPED: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar("qwen3vl_group_stopped",
                                                                                       default=None)


class CallGivenUp(Exception):
    """Ends a call whose caller gave up on it (nobody waits for its result, so nobody sees this)."""


def stop_if_given_up() -> None:
    """Raise `CallGivenUp` in a call whose async caller was cancelled, or whose group was stopped (called between
    forward passes)."""
    for given_up in (_GIVEN_UP.get(), _GROUP_STOPPED.get()):
        if given_up is not None and given_up.is_set():
            raise CallGivenUp("the caller stopped waiting for this call")


@contextlib.contextmanager
def calls_stopped_together() -> Iterator[threading.Event]:
    """Around one public call made of several concurrent calls (LlamaIndex's async batch methods run a chunk per
    call): once the yielded event is set, each of them that the block started, in its threads or in
    `WorkerThreads.run`, stops before its next forward pass (the copied context carries the event)."""
    stopped = threading.Event()
    token = _GROUP_STOPPED.set(stopped)
    try:
        yield stopped
    finally:
        _GROUP_STOPPED.reset(token)


class WorkerThreads:
    """A pool of threads, started on first use, that runs blocking calls for async callers."""

    def __init__(self, name: str, threads: int = THREADS_PER_POOL) -> None:
        self.name = name
        self.threads = threads
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def _pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self.threads, thread_name_prefix=self.name)
            return self._executor

    def forget_threads(self) -> None:
        """In a forked child: the parent's threads were not copied, so start new ones on first use (the pool would
        count its idle thread as there and queue every call for it: a hang)."""
        self._executor = None
        self._lock = threading.Lock()

    async def run(self, function: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """`asyncio.to_thread` in this pool, except that a call whose awaiting task is cancelled stops before its
        next forward pass (one still queued never starts)."""
        given_up = threading.Event()
        context = contextvars.copy_context()
        context.run(_GIVEN_UP.set, given_up)
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool(), functools.partial(context.run, function, *args, **kwargs))
        except asyncio.CancelledError:
            given_up.set()
            raise


embedding_threads = WorkerThreads("qwen3vl-embedding")
reranking_threads = WorkerThreads("qwen3vl-reranking")


def _after_fork_in_child() -> None:
    embedding_threads.forget_threads()
    reranking_threads.forget_threads()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
