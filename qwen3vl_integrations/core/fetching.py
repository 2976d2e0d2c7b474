"""Fetching remote media: an http(s) GET into a temporary file, under a byte cap and three time limits.

`remote_timeout` bounds connecting and each read; the whole fetch (redirects, headers and body) has a deadline of
`DOWNLOAD_TIMEOUTS` times that. Per-read timeouts alone let a server that sends a byte now and then hold a call for
as long as it likes, in the headers and redirects as well as in the body: at the deadline, a watchdog shuts the
fetch's connections down (HTTP and HTTPS, direct or through an HTTP proxy), which ends whatever read is waiting on
them. Connecting itself (the name lookup, then `remote_timeout` for each address tried) comes before a connection
exists and is bounded by those timeouts alone; through a SOCKS proxy only the body loop checks the deadline.

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
from urllib3 import poolmanager
from urllib3.connection import HTTPConnection as _StockHTTPConnection
from urllib3.connection import HTTPSConnection as _StockHTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool as _StockHTTPConnectionPool
from urllib3.connectionpool import HTTPSConnectionPool as _StockHTTPSConnectionPool

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
    try:
        size = _download(url, policy, handle, limit)
    except BaseException:
        _remove(name)  # at once: the exception's traceback can keep `path` alive until the collector runs
        raise
    if not size:
        _remove(name)
        raise _Invalid(f"empty {kind} data")
    return path


def _download(url: str, policy: MediaPolicy, handle: int, limit: float) -> int:
    """The body of `url` into the open file `handle`; its size. Raises _Invalid."""
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
    return size


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
        with self.lock:
            if time.monotonic() - self.started > self.seconds:
                self.passed = True
            for sock in self.sockets:
                sock.close()  # the duplicates only: the connections themselves are closed by their owners
            self.sockets.clear()

    def opened(self, sock: socket.socket) -> None:
        # A duplicate: TLS wraps the socket it is given and detaches it (its fileno becomes -1); shutting down a
        # duplicate ends the same connection.
        duplicate = sock.dup()
        with self.lock:
            self.sockets.append(duplicate)
            if not self.passed:
                return
        _shut(duplicate)  # opened after the deadline

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
    """A connection that tells the running fetch's deadline about each socket it opens."""

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()  # type: ignore[misc]
        deadline = getattr(_current, "deadline", None)
        if deadline is not None:
            deadline.opened(sock)
        return sock


class HTTPConnection(_Recorded, _StockHTTPConnection):
    pass


class HTTPSConnection(_Recorded, _StockHTTPSConnection):
    pass


# The stock names: urllib3's errors name the pool ("HTTPConnectionPool(host=..., port=...): Max retries exceeded").
class HTTPConnectionPool(_StockHTTPConnectionPool):
    ConnectionCls = HTTPConnection


class HTTPSConnectionPool(_StockHTTPSConnectionPool):
    ConnectionCls = HTTPSConnection


_RECORDED_POOLS = {"http": HTTPConnectionPool, "https": HTTPSConnectionPool}


def _record_connections_of(manager: Any) -> Any:
    """`manager` with its connections recorded, where it uses urllib3's plain pools (not a SOCKS proxy's, whose
    connections are of another kind)."""
    if manager.pool_classes_by_scheme == poolmanager.pool_classes_by_scheme:
        manager.pool_classes_by_scheme = _RECORDED_POOLS
    return manager


class _RecordingAdapter(HTTPAdapter):
    """requests' adapter, with connections (direct or through an HTTP proxy) that record their sockets."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        _record_connections_of(self.poolmanager)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        return _record_connections_of(super().proxy_manager_for(proxy, **proxy_kwargs))


def _session() -> requests.Session:
    session = requests.Session()
    adapter = _RecordingAdapter()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session
