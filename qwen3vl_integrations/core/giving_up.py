"""Stopping a call that its async caller gave up on (a timeout, a cancelled task).

`asyncio.to_thread` stops waiting when the awaiting task is cancelled, but the thread runs on: a call given up on
kept the model for all its remaining forward passes (127 of them after a 0.3 s timeout on a 4 s call), delaying
every later call, and kept a thread of the loop's default pool busy. `in_worker_thread` runs the call with a flag in
its context that the batch loop reads before each forward pass.
"""
from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
from typing import Any, Callable, TypeVar

T = TypeVar("T")

_GIVEN_UP: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar("qwen3vl_given_up", default=None)


class CallGivenUp(Exception):
    """Ends a call whose caller gave up on it (nobody waits for its result, so nobody sees this)."""


def stop_if_given_up() -> None:
    """Raise `CallGivenUp` in a call whose async caller was cancelled (called between forward passes)."""
    given_up = _GIVEN_UP.get()
    if given_up is not None and given_up.is_set():
        raise CallGivenUp("the caller stopped waiting for this call")


async def in_worker_thread(function: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """`asyncio.to_thread`, except that a call whose awaiting task is cancelled stops before its next forward pass."""
    given_up = threading.Event()
    context = contextvars.copy_context()
    context.run(_GIVEN_UP.set, given_up)
    loop = asyncio.get_running_loop()
    try:
        return await loop.run_in_executor(None, functools.partial(context.run, function, *args, **kwargs))
    except asyncio.CancelledError:
        given_up.set()
        raise
