"""The SQLite connection behind the async engine: statements run on the event loop's thread.

SQLAlchemy's aiosqlite dialect drives an aiosqlite-shaped connection. aiosqlite itself queues
every call to a worker thread and wakes the loop with its result: a statement costs three or
four such trips (cursor, execute, fetch, close), each about 200 µs of CPU and, on a busy loop, a
wait behind every other ready task, while the statement itself takes a few microseconds. With
one connection per process (``storage.db``), that wait is held by every other turn queueing for
the connection: one workspace's load became every workspace's latency.

:class:`InlineConnection` has aiosqlite's interface (what ``sqlalchemy.connectors.asyncio``
calls) and runs statements directly. That is sound for SQLite in WAL mode: readers never wait,
and a writer waits only for another process's write transaction (the CLI, a migration). So
statements run with a busy timeout of zero, and one that finds the database locked
(``SQLITE_BUSY``) is retried on the connection's own thread with the patient timeout, where the
wait blocks nothing else. ``COMMIT`` runs inline too: with ``synchronous=NORMAL`` it appends
to the WAL without an ``fsync`` (a thread trip per commit cost a turn about 0.7 ms of CPU).

The ``fsync`` comes with checkpoints, which copy the WAL into the database file and which
SQLite would run inside whichever ``COMMIT`` crosses 1,000 pages, holding the process's one
connection meanwhile. They are turned off there. At most every :data:`CHECKPOINT_INTERVAL`
seconds after a commit, a ``PASSIVE`` checkpoint runs on the connection's thread through a
connection of its own, which holds up no reader or writer. A writer starts the WAL afresh
only when it finds every frame checkpointed, which writes that never pause prevent: past
:data:`WAL_RESTART_BYTES`, the next due commit runs on the thread and checkpoints through the
main connection before it goes back to the pool, so that no write lands in between.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import structlog

log = structlog.get_logger(__name__)

T = TypeVar("T")

#: How long a statement waits for another process's write lock, in milliseconds.
PATIENT_BUSY_TIMEOUT_MS = 30_000

#: Seconds between WAL checkpoints while commits come (on the connection's thread).
CHECKPOINT_INTERVAL = 1.0
#: WAL size past which a checkpoint holds the connection, so that the WAL starts afresh.
WAL_RESTART_BYTES = 4 * 1024 * 1024  # as SQLite's own 1,000 pages

_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",  # with WAL: durable across a process crash, not a power cut
    "PRAGMA foreign_keys=ON",
    "PRAGMA wal_autocheckpoint=0",  # checkpoints run on the thread (module docstring)
)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _is_busy(error: sqlite3.OperationalError) -> bool:
    # Extended codes: SQLITE_BUSY_RECOVERY waits like plain SQLITE_BUSY; SQLITE_BUSY_SNAPSHOT
    # (another process wrote since this transaction read) fails however long one waits.
    code = getattr(error, "sqlite_errorcode", None) or 0
    return code & 0xFF == sqlite3.SQLITE_BUSY and code != sqlite3.SQLITE_BUSY_SNAPSHOT


class InlineCursor:
    """aiosqlite's ``Cursor`` interface over a ``sqlite3.Cursor``."""

    def __init__(self, connection: InlineConnection) -> None:
        self._connection = connection
        self._cursor = connection.raw.cursor()

    async def __aenter__(self) -> InlineCursor:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._cursor.close()

    async def execute(self, sql: str, parameters: Sequence[Any] = ()) -> InlineCursor:
        await self._connection.run(self._cursor.execute, sql, parameters)
        return self

    async def executemany(self, sql: str, seq_of_parameters: Iterable[Sequence[Any]]
                          ) -> InlineCursor:
        # Materialised: a retry on the thread must see the same rows.
        await self._connection.run(self._cursor.executemany, sql, list(seq_of_parameters))
        return self

    async def fetchone(self) -> Any:
        return self._cursor.fetchone()

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        return self._cursor.fetchmany(self._cursor.arraysize if size is None else size)

    async def fetchall(self) -> list[Any]:
        return self._cursor.fetchall()

    async def close(self) -> None:
        self._cursor.close()

    @property
    def description(self) -> Any:
        return self._cursor.description

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    @property
    def lastrowid(self) -> int | None:
        return self._cursor.lastrowid

    @property
    def arraysize(self) -> int:
        return self._cursor.arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._cursor.arraysize = value


class InlineConnection:
    """aiosqlite's ``Connection`` interface over a ``sqlite3.Connection``.

    Open with :meth:`open`. Not safe for concurrent use: the engine's pool hands the one
    connection to one session at a time, as for any DBAPI connection. Only what the dialect
    calls is here: no ``AUTOCOMMIT`` isolation level (the dialect sets it through aiosqlite's
    private queue), which Jamono does not use.
    """

    def __init__(
        self,
        raw: sqlite3.Connection,
        thread: ThreadPoolExecutor,
        database: str,
        checkpoint_interval: float = CHECKPOINT_INTERVAL,
        wal_restart_bytes: int = WAL_RESTART_BYTES,
    ) -> None:
        self.raw = raw
        self._thread = thread
        self._closed = False
        # An in-memory database has no WAL.
        self._wal = None if database == ":memory:" else Path(f"{database}-wal")
        self._database = database
        self._checkpoint_interval = checkpoint_interval
        self._wal_restart_bytes = wal_restart_bytes
        self._checkpointed_at = time.monotonic()
        self._checkpoint: Future[None] | None = None
        self._checkpointer: sqlite3.Connection | None = None  # used on the thread only

    @classmethod
    async def open(
        cls,
        database: str,
        checkpoint_interval: float = CHECKPOINT_INTERVAL,
        wal_restart_bytes: int = WAL_RESTART_BYTES,
    ) -> InlineConnection:
        """Connect to ``database`` (a path or ``:memory:``) in WAL mode; the WAL is
        checkpointed at most every ``checkpoint_interval`` seconds after a commit, holding the
        connection once it is over ``wal_restart_bytes``.

        Raises:
            sqlite3.Error: the file cannot be opened or set up.
        """
        thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")

        def connect() -> sqlite3.Connection:
            raw = sqlite3.connect(database, timeout=PATIENT_BUSY_TIMEOUT_MS / 1000,
                                  check_same_thread=False)
            for pragma in _PRAGMAS:
                raw.execute(pragma)
            raw.execute("PRAGMA busy_timeout=0")
            return raw

        try:
            raw = await asyncio.get_running_loop().run_in_executor(thread, connect)
        except BaseException:
            thread.shutdown(wait=False)
            raise
        return cls(raw, thread, database, checkpoint_interval, wal_restart_bytes)

    async def run(self, call: Callable[..., T], *args: Any) -> T:
        """``call(*args)`` on this thread; on ``SQLITE_BUSY``, again on the connection's thread,
        waiting up to :data:`PATIENT_BUSY_TIMEOUT_MS` for the lock."""
        try:
            return call(*args)
        except sqlite3.OperationalError as error:
            if not _is_busy(error):
                raise
        return await self._patiently(call, *args)

    async def _patiently(self, call: Callable[..., T], *args: Any) -> T:
        def patient() -> T:
            self.raw.execute(f"PRAGMA busy_timeout={PATIENT_BUSY_TIMEOUT_MS}")
            try:
                return call(*args)
            finally:
                self.raw.execute("PRAGMA busy_timeout=0")

        return await asyncio.get_running_loop().run_in_executor(self._thread, patient)

    # aiosqlite's Connection interface, as sqlalchemy.connectors.asyncio uses it.

    @property
    def _connection(self) -> sqlite3.Connection | None:
        # The aiosqlite dialect commits and rolls back only while this is set.
        return None if self._closed else self.raw

    def cursor(self) -> InlineCursor:
        return InlineCursor(self)

    async def commit(self) -> None:
        now = time.monotonic()
        due = self._wal is not None and now - self._checkpointed_at >= self._checkpoint_interval
        if not due or (self._checkpoint is not None and not self._checkpoint.done()):
            await self.run(self.raw.commit)
            return
        self._checkpointed_at = now
        if _size(self._wal) < self._wal_restart_bytes:
            await self.run(self.raw.commit)
            self._checkpoint = self._thread.submit(self._checkpoint_aside)
        else:
            await self._patiently(self._commit_and_checkpoint)

    def _checkpoint_aside(self) -> None:
        try:
            if self._checkpointer is None:
                self._checkpointer = sqlite3.connect(self._database, check_same_thread=False)
            self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as exc:  # the next interval tries again
            log.warning("sqlite_checkpoint_failed", error=repr(exc))

    def _commit_and_checkpoint(self) -> None:
        self.raw.commit()
        try:
            self.raw.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as exc:  # committed all the same; the next interval tries again
            log.warning("sqlite_checkpoint_failed", error=repr(exc))

    def _close_on_thread(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.close()
        self.raw.close()

    async def rollback(self) -> None:
        self.raw.rollback()

    async def create_function(self, *args: Any, **kwargs: Any) -> None:
        self.raw.create_function(*args, **kwargs)

    @property
    def isolation_level(self) -> str | None:
        return self.raw.isolation_level

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await asyncio.get_running_loop().run_in_executor(self._thread, self._close_on_thread)
        self._thread.shutdown(wait=False)

    def stop(self) -> None:
        """Close without awaiting (SQLAlchemy's terminate). Queued behind a running commit."""
        if self._closed:
            return
        self._closed = True
        self._thread.submit(self._close_on_thread)
        self._thread.shutdown(wait=False)
