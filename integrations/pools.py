"""Bounded thread pools for blocking integration clients, with a share per workspace and an
overall deadline per call.

``jira`` and ``caldav`` block, so their calls run in threads — never in the event loop's
default executor, which the process shares with DNS look-ups for Slack, the LLM and the
database. Each integration gets its own :class:`IntegrationPool`: ``threads`` workers, of which
one workspace holds at most ``per_workspace`` at a time. A workspace's extra calls wait for its
own share; when the share stays full until the call's deadline the call fails with
:class:`PoolBusy`. So a slow or hostile server slows only the workspace that configured it.

HTTP libraries time out per socket operation, so a server that trickles one byte a second
never times out. Each call therefore carries a :class:`Deadline`: the egress guard
(:mod:`integrations.egress`) attaches every socket the call opens or reuses to it, and when the
deadline passes the event loop shuts those sockets down — the blocked read returns at once and
the thread is free again, instead of running on after asyncio gave up on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

# Seconds a call waits, after its deadline shut its sockets, for its thread to return: a read on
# a shut-down socket returns at once, so this is only reached by a thread stuck in the resolver.
_RELEASE_GRACE = 1.0

_current: contextvars.ContextVar[Deadline | None] = contextvars.ContextVar(
    "integration_deadline", default=None)


class DeadlineExceeded(Exception):
    """A call ran past its overall deadline and was stopped; ``seconds`` is that deadline."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"did not finish within {seconds:g} s")
        self.seconds = seconds


class PoolBusy(Exception):
    """The workspace's share of the pool stayed full (or every thread was busy) until the
    call's deadline; ``share`` is the number of threads one workspace may hold."""

    def __init__(self, share: int, seconds: float) -> None:
        super().__init__(f"{share} calls of this workspace were already running and none "
                         f"finished within {seconds:g} s")
        self.share = share
        self.seconds = seconds


class Deadline:
    """The end of one call, ``seconds`` from now on the monotonic clock.

    Thread-safe. :meth:`attach` registers a socket (a duplicate of its descriptor is kept, so
    a later TLS wrap does not hide it); :meth:`expire` shuts every attached socket down;
    :meth:`close` drops the duplicates when the call is over.
    """

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self._clock = clock
        self._end = clock() + seconds
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self.expired = False

    def remaining(self) -> float:
        """Seconds left (0 when past)."""
        return max(0.0, self._end - self._clock())

    def bound(self, timeout: float | None) -> float:
        """``timeout`` (seconds, ``None`` for none) cut to the time left."""
        left = self.remaining()
        return left if timeout is None else min(timeout, left)

    def attach(self, sock: socket.socket) -> None:
        """Shut ``sock`` down when the deadline expires. Raises :class:`DeadlineExceeded` when
        it already has."""
        with self._lock:
            if self.expired:
                raise DeadlineExceeded(self.seconds)
            self._sockets.append(sock.dup())

    def expire(self) -> None:
        """Mark the deadline as passed and shut down every attached socket."""
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                with contextlib.suppress(OSError):  # already closed by its connection
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        with self._lock:
            for sock in self._sockets:
                sock.close()
            self._sockets.clear()


@dataclass(frozen=True)
class PoolLimits:
    """The size of each integration's pool: ``threads`` workers, at most ``per_workspace`` of
    them for one workspace, ``deadline`` seconds per call (settings
    ``JAMONO_INTEGRATION_THREADS``, ``…_WORKSPACE_THREADS``, ``…_DEADLINE``)."""

    threads: int = 64
    per_workspace: int = 4
    deadline: float = 20.0

    def pool(self, name: str) -> IntegrationPool:
        return IntegrationPool(name, threads=self.threads, per_workspace=self.per_workspace,
                               deadline=self.deadline)


def current_deadline() -> Deadline | None:
    """The deadline of the call running in this thread, or ``None`` outside a pool."""
    return _current.get()


class IntegrationPool:
    """``threads`` worker threads for one integration (``name``: ``jira``, ``calendar``),
    at most ``per_workspace`` of them held by one workspace, each call bounded by ``deadline``
    seconds (waiting for a thread included).

    Use from one event loop (the process's). :meth:`close` stops the workers.
    """

    def __init__(self, name: str, *, threads: int, per_workspace: int,
                 deadline: float) -> None:
        if threads < 1 or per_workspace < 1 or deadline <= 0:
            raise ValueError("threads and per_workspace must be at least 1, deadline positive")
        self.name = name
        self.per_workspace = min(per_workspace, threads)
        self.deadline = deadline
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix=f"jamono-{name}")
        self._shares: dict[str, asyncio.Semaphore] = {}
        self._held: Counter[str] = Counter()

    def in_use(self, workspace: str) -> int:
        """Threads the workspace holds now (calls running or about to)."""
        return self._held[workspace]

    async def run(self, workspace: str, fn: Callable[[], T], *,
                  deadline: float | None = None) -> T:
        """Run blocking ``fn`` in a worker under the workspace's share; return its result or
        raise what it raised.

        ``deadline`` (seconds) overrides the pool's. Raises :class:`PoolBusy` when no thread of
        the share (or of the pool) became free in time, :class:`DeadlineExceeded` when ``fn``
        ran past the deadline (its sockets are shut down, which ends it). Cancelling the
        caller stops ``fn`` the same way.
        """
        loop = asyncio.get_running_loop()
        limit = Deadline(deadline or self.deadline)
        share = self._shares.setdefault(workspace, asyncio.Semaphore(self.per_workspace))
        try:
            await asyncio.wait_for(share.acquire(), limit.remaining())
        except TimeoutError:
            raise PoolBusy(self.per_workspace, limit.seconds) from None
        self._held[workspace] += 1

        def release() -> None:
            self._held[workspace] -= 1
            share.release()

        def finished(_: object) -> None:  # in the worker thread, or here if never started
            limit.close()
            # A closed loop raises RuntimeError: nobody waits on this share any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(release)

        context = contextvars.copy_context()
        context.run(_current.set, limit)
        future = self._executor.submit(context.run, fn)
        future.add_done_callback(finished)
        waiter = asyncio.wrap_future(future)
        try:
            return await asyncio.wait_for(asyncio.shield(waiter), limit.remaining())
        except TimeoutError:
            if future.cancel():  # never started: every thread of the pool was busy
                raise PoolBusy(self.per_workspace, limit.seconds) from None
            await _stop(limit, waiter)
            raise DeadlineExceeded(limit.seconds) from None
        except asyncio.CancelledError:
            if not future.cancel():
                await _stop(limit, waiter)
            raise

    def close(self) -> None:
        """Stop taking calls; running ones end at their deadlines."""
        self._executor.shutdown(wait=False, cancel_futures=True)


async def _stop(limit: Deadline, waiter: asyncio.Future) -> None:
    """Shut the call's sockets and wait (briefly) for its thread to return, so that when the
    caller hears of the end the thread and the share are free again."""
    limit.expire()
    await asyncio.wait({waiter}, timeout=_RELEASE_GRACE)
    if waiter.done() and not waiter.cancelled():
        waiter.exception()  # what the shut socket made the call raise: replaced by the caller
