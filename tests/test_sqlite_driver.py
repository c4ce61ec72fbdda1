"""The SQLite connection that runs statements on the loop's thread (storage/sqlite_driver.py):
another process's write lock is waited for off the loop, and errors keep SQLAlchemy's types."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError, OperationalError

from storage.db import create_engine
from storage.sqlite_driver import InlineConnection


@pytest.fixture
async def sqlite_engine(tmp_path):
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path}/driver.db")
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT UNIQUE)"))
    yield engine
    await engine.dispose()


def other_process(engine) -> sqlite3.Connection:
    """A second connection to the same file, as the CLI or a migration would open."""
    return sqlite3.connect(engine.url.database, timeout=0, isolation_level=None)


async def test_a_write_waits_for_another_process_lock_without_blocking_the_loop(sqlite_engine):
    other = other_process(sqlite_engine)
    other.execute("BEGIN IMMEDIATE")  # holds the write lock
    other.execute("INSERT INTO notes (body) VALUES ('theirs')")

    async def write() -> None:
        async with sqlite_engine.begin() as conn:
            await conn.execute(text("INSERT INTO notes (body) VALUES ('ours')"))

    writing = asyncio.create_task(write())
    ticks = 0
    for _ in range(200):  # the loop keeps running while the write waits for the lock
        await asyncio.sleep(0)
        ticks += 1
    assert ticks == 200
    assert not writing.done()
    other.execute("COMMIT")
    await writing

    async with sqlite_engine.connect() as conn:
        rows = (await conn.execute(text("SELECT body FROM notes ORDER BY id"))).scalars().all()
    assert rows == ["theirs", "ours"]
    other.close()


async def test_reads_do_not_wait_for_another_process_write(sqlite_engine):
    async with sqlite_engine.begin() as conn:
        await conn.execute(text("INSERT INTO notes (body) VALUES ('committed')"))
    other = other_process(sqlite_engine)
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO notes (body) VALUES ('pending')")
    async with sqlite_engine.connect() as conn:  # WAL: the last committed state, at once
        rows = (await conn.execute(text("SELECT body FROM notes"))).scalars().all()
    assert rows == ["committed"]
    other.execute("ROLLBACK")
    other.close()


async def test_errors_keep_their_sqlalchemy_types_and_the_connection_stays_usable(sqlite_engine):
    async with sqlite_engine.begin() as conn:
        await conn.execute(text("INSERT INTO notes (body) VALUES ('once')"))
    with pytest.raises(IntegrityError):
        async with sqlite_engine.begin() as conn:
            await conn.execute(text("INSERT INTO notes (body) VALUES ('once')"))
    with pytest.raises(OperationalError):
        async with sqlite_engine.connect() as conn:
            await conn.execute(text("SELECT nothing FROM nowhere"))
    async with sqlite_engine.connect() as conn:
        count = (await conn.execute(text("SELECT count(*) FROM notes"))).scalar_one()
    assert count == 1


async def test_a_rolled_back_transaction_leaves_nothing(sqlite_engine):
    with pytest.raises(RuntimeError):
        async with sqlite_engine.begin() as conn:
            await conn.execute(text("INSERT INTO notes (body) VALUES ('gone')"))
            raise RuntimeError("the caller failed mid-transaction")
    async with sqlite_engine.connect() as conn:
        count = (await conn.execute(text("SELECT count(*) FROM notes"))).scalar_one()
    assert count == 0


async def test_the_wal_starts_afresh_under_writes_that_never_pause(tmp_path):
    """COMMIT runs inline with SQLite's own checkpoints off: the connection's thread must
    checkpoint instead, and past the restart size hold the connection for it, or under
    writes that never pause the WAL grows by every page ever written."""
    path = tmp_path / "wal.db"
    wal = path.with_name("wal.db-wal")
    connection = await InlineConnection.open(
        str(path), checkpoint_interval=0, wal_restart_bytes=64 * 1024
    )
    sizes = []
    try:
        connection.raw.execute("CREATE TABLE pages (body BLOB)")
        await connection.commit()
        for n in range(1, 1001):  # each commit appends at least one 4 KiB page to the WAL
            connection.raw.execute("INSERT INTO pages VALUES (randomblob(3000))")
            await connection.commit()
            if n % 500 == 0:
                sizes.append(wal.stat().st_size)  # before the last close empties it
    finally:
        await connection.close()
    # Once it starts afresh, the file stops growing; else 500 commits add 2 MB or more.
    assert sizes[1] - sizes[0] < 500 * 4096 / 4, sizes
