"""Fetching remote media: an http(s) GET into a temporary file, under a byte cap and three time limits.

`remote_timeout` bounds connecting and each read; the whole fetch (redirects, headers and body) has a deadline of
`DOWNLOAD_TIMEOUTS` times that. Per-read timeouts alone let a server that sends a byte now and then hold a call for
as long as it likes, in the headers and redirects as well as in the body: at the deadline, a watchdog shuts the
fetch's sockets down, which ends whatever read is waiting on them.

Imported on the first remote fetch only (it imports requests).
"""
from __future__ import annotations

import os
import socket
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path, PosixPath, WindowsPath
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from .media import DOWNLOAD_TIMEOUTS, MediaPolicy, _Invalid

READ_SIZE = 1 << 16

# Path itself cannot be subclassed before Python 3.12: the concrete class that Path() makes here is.
if sys.platform == "win32":
    _ConcretePath = WindowsPath
else:
    _ConcretePath = PosixPath


class FetchedFile(_ConcretePath):
    """A temporary file holding fetched remote content; removed once nothing refers to this path any more."""


def fetch_remote(url: str, policy: MediaPolicy, kind: str) -> Path:
    """GET an http(s) URL into a temporary file (every input of a call is resolved before the model runs: a call
    with thousands of image URLs held them all in memory). Raises _Invalid."""
    if not policy.allow_remote:
        raise _Invalid(f"remote fetching is disabled (allow_remote=False): {url!r}")
    limit = DOWNLOAD_TIMEOUTS * policy.timeout
    handle, name = tempfile.mkstemp(prefix="qwen3vl-fetched-")
    path = FetchedFile(name)
    weakref.finalize(path, _remove, name)
    size = 0
    deadline = _Deadline(limit)
    try:
        with os.fdopen(handle, "wb") as file, deadline, _session() as session, \
                session.get(url, stream=True, timeout=(policy.timeout, policy.timeout)) as response:
            response.raise_for_status()
            declared = response.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > policy.max_remote_bytes:
                raise _Invalid(f"{url!r} is {int(declared)} bytes, over the {policy.max_remote_bytes}-byte cap")
            while not deadline.passed:
                # read1 returns what has arrived (iter_content would wait for a full chunk)
                chunk = response.raw.read1(READ_SIZE, decode_content=True)
                if not chunk:
                    break
                size += len(chunk)
                if size > policy.max_remote_bytes:
                    raise _Invalid(f"{url!r} exceeds the {policy.max_remote_bytes}-byte cap")
                file.write(chunk)
    except _Invalid:
        raise
    except Exception as exc:  # requests' and urllib3's many exception types, all meaning "could not fetch"
        if not deadline.passed:
            raise _Invalid(f"could not fetch {url!r}: {exc}") from None
    if deadline.passed:  # a body cut short by the watchdog can look complete: never keep one
        raise _Invalid(f"{url!r} took over {limit:g} s to download ({size} bytes so far; remote_timeout="
                       f"{policy.timeout:g} s per read, {DOWNLOAD_TIMEOUTS}x that per file, redirects included)")
    if not size:
        raise _Invalid(f"empty {kind} data")
    return path


def _remove(name: str) -> None:
    try:
        os.unlink(name)
    except OSError:
        pass


# ------------------------------------------------------------------------------------- the fetch's deadline

_current = threading.local()  # the sockets of the fetch running in this thread (requests connects in the caller's)


class _Deadline:
    """While entered, the sockets this thread opens are recorded; at the deadline they are shut down."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        self.passed = False
        self.timer = threading.Timer(seconds, self._expire)
        self.timer.daemon = True
        self.started = 0.0

    def __enter__(self) -> "_Deadline":
        _current.deadline = self
        self.started = time.monotonic()
        self.timer.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.timer.cancel()
        _current.deadline = None
        if time.monotonic() - self.started > self.seconds:
            self.passed = True

    def opened(self, sock: socket.socket) -> None:
        with self.lock:
            self.sockets.append(sock)
            if not self.passed:
                return
        _shut(sock)  # opened after the deadline

    def _expire(self) -> None:
        with self.lock:
            self.passed = True
            sockets = list(self.sockets)
        for sock in sockets:
            _shut(sock)


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)  # a read waiting on it returns at once; closing stays with its owner
    except OSError:  # already closed
        pass


class _Recorded:
    """A connection that tells the running fetch's deadline about each socket it opens (TLS wraps this one)."""

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()  # type: ignore[misc]
        deadline = getattr(_current, "deadline", None)
        if deadline is not None:
            deadline.opened(sock)
        return sock


class _RecordedHTTP(_Recorded, HTTPConnection):
    pass


class _RecordedHTTPS(_Recorded, HTTPSConnection):
    pass


class _RecordedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _RecordedHTTP


class _RecordedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _RecordedHTTPS


_RECORDED_POOLS = {"http": _RecordedHTTPPool, "https": _RecordedHTTPSPool}


class _RecordingAdapter(HTTPAdapter):
    """requests' adapter, with connections (direct or through a proxy) that record their sockets."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _RECORDED_POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        manager.pool_classes_by_scheme = _RECORDED_POOLS
        return manager


def _session() -> requests.Session:
    session = requests.Session()
    adapter = _RecordingAdapter()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session
