"""What one turn's storage costs: the repository calls a mention makes, one at a time.

A mention claims its delivery, loads the workspace's configuration and limit overrides (from
the server's cache after the first turn, ``storage/workspace_cache.py``), opens a turn
(reading the thread's history) and finishes it (messages, outcome, token usage). The daily
budgets read no row per turn (``agents/spend.py``). This times each call on
``--database-url`` (default: a new SQLite file, migrated first) and prints CPU time and wall
time per call in microseconds; CPU time counts every thread of the process, so it includes the
SQLite connection's own thread (``COMMIT`` runs there; statements run on the loop's thread,
``storage/sqlite_driver.py``).

For reference it prints what one database round trip costs through aiosqlite (a
``SELECT 1`` queued to its worker thread), which SQLAlchemy's aiosqlite adapter made three or
four times per statement before that driver, against the same statement on ``sqlite3``.

    python bench/turn_storage.py [--calls 1000] [--database-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiosqlite

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from storage import migrate  # noqa: E402
from storage.db import create_engine, session_factory  # noqa: E402
from storage.repositories import Repositories  # noqa: E402
from storage.repositories.conversations import LLMCallUsage  # noqa: E402
from storage.tenancy import Tenant  # noqa: E402
from storage.workspace_cache import WorkspaceCache  # noqa: E402

TENANT = Tenant("T0BENCH")
EXCHANGE = [{"role": "user", "content": "ping"}, {"role": "assistant", "content": "pong"}]


async def timed(call: Callable[[int], Awaitable[object]], calls: int) -> tuple[float, float]:
    """(CPU µs, wall µs) per call of ``call(i)``, after a warm-up of 50 calls."""
    for i in range(50):
        await call(-1 - i)
    cpu, wall = time.process_time(), time.perf_counter()
    for i in range(calls):
        await call(i)
    return (
        (time.process_time() - cpu) / calls * 1e6,
        (time.perf_counter() - wall) / calls * 1e6,
    )


async def repository_calls(database_url: str, calls: int) -> dict[str, tuple[float, float]]:
    engine = create_engine(database_url)
    repos = Repositories.over(session_factory(engine), cache=WorkspaceCache())
    run = time.time_ns()  # keys unique across runs on a reused database

    async def claim(i: int) -> None:
        await repos.claims.claim(f"bench:{run}:{i}")

    async def load_config(_: int) -> None:
        await repos.config.load(TENANT)
        await repos.budgets.overrides(TENANT)

    turns: list[int] = []

    async def begin_turn(i: int) -> None:
        turn_id, _ = await repos.conversations.begin_turn(
            TENANT, "C0BENCH", f"{run}.{i}", "nox", "U0BENCH"
        )
        turns.append(turn_id)

    async def finish_turn(_: int) -> None:
        await repos.conversations.finish_turn(
            TENANT, turns.pop(), EXCHANGE, [3, 3], "ok", None, 5,
            [LLMCallUsage("fake-model", 40, 2, 1)],
        )

    try:
        return {
            "claim": await timed(claim, calls),
            "config.load": await timed(load_config, calls),
            "begin_turn": await timed(begin_turn, calls),
            "finish_turn": await timed(finish_turn, calls),
        }
    finally:
        await engine.dispose()


async def round_trips(path: Path, calls: int) -> dict[str, tuple[float, float]]:
    async with aiosqlite.connect(path) as connection:

        async def queued(_: int) -> None:
            await connection.execute_fetchall("SELECT 1")

        via_thread = await timed(queued, calls)
    direct = sqlite3.connect(path)

    async def inline(_: int) -> None:
        direct.execute("SELECT 1").fetchall()

    try:
        return {"aiosqlite trip": via_thread, "sqlite3 direct": await timed(inline, calls)}
    finally:
        direct.close()


async def measure(database_url: str, db_file: Path, calls: int) -> dict[str, tuple[float, float]]:
    return await repository_calls(database_url, calls) | await round_trips(db_file, calls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--database-url", help="default: a new SQLite file in a temporary folder")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as workdir:
        db_file = Path(workdir) / "bench.db"
        database_url = args.database_url or f"sqlite+aiosqlite:///{db_file}"
        migrate.upgrade(database_url)
        results = asyncio.run(measure(database_url, db_file, args.calls))

    print(f"{args.calls} calls each, one at a time, on {database_url.split(':')[0]}")
    print(f"{'call':<16} {'CPU µs':>8} {'wall µs':>8}")
    for name, (cpu, wall) in results.items():
        print(f"{name:<16} {cpu:>8.0f} {wall:>8.0f}")
    turn = ("claim", "config.load", "begin_turn", "finish_turn")
    print(f"storage CPU per turn: {sum(results[name][0] for name in turn) / 1000:.1f} ms")


if __name__ == "__main__":
    main()
