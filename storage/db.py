"""Engine and session setup for SQLite (default) and PostgreSQL."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import AsyncAdaptedQueuePool

from storage.sqlite_driver import InlineConnection

_ASYNC_DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg"}


def async_url(database_url: str) -> URL:
    """Return ``database_url`` with an async driver (``postgresql://`` → ``postgresql+asyncpg://``).

    Raises:
        ValueError: the URL does not parse or names a database other than SQLite/PostgreSQL.
    """
    try:
        url = make_url(database_url)
    except Exception as exc:
        raise ValueError(f"not a database URL: {exc}") from None
    backend = url.get_backend_name()
    if backend == "postgres":
        backend = "postgresql"
    if backend not in _ASYNC_DRIVERS:
        raise ValueError(f"unsupported database {backend!r}; use sqlite or postgresql")
    driver = url.get_driver_name()
    if driver in ("aiosqlite", "asyncpg"):
        return url
    return url.set(drivername=_ASYNC_DRIVERS[backend])


def create_engine(database_url: str) -> AsyncEngine:
    """An async engine. SQLite files get WAL, and their statements run on the loop's thread
    (``storage.sqlite_driver``); a write waits up to 30 s for another process's.

    A process uses one SQLite connection: SQLite takes one writer at a time anyway, and
    queueing for the pool's connection is FIFO, where concurrent connections would meet
    SQLite's busy handler (sleeps of up to 100 ms) or fail a read-then-write transaction
    with ``SQLITE_BUSY``.
    """
    url = async_url(database_url)
    if url.get_backend_name() == "sqlite":
        database = url.database or ":memory:"
        return create_async_engine(
            url,
            async_creator=lambda: InlineConnection.open(database),
            poolclass=AsyncAdaptedQueuePool,
            pool_size=1,
            max_overflow=0,
        )
    return create_async_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10)


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


async def ping(engine: AsyncEngine) -> None:
    """Run ``SELECT 1``; raises the driver's error when the database is unreachable."""
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
