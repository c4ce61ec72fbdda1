"""Shared fixtures: real databases (SQLite file, PostgreSQL), real Redis, and services.

PostgreSQL and Redis tests skip when the server does not answer, unless
JAMONO_REQUIRE_SERVICES=1 (set by .ci/run), where they fail instead.
"""

from __future__ import annotations

import os
import uuid

import aiohttp
import pytest
import pytest_asyncio

from tests.e2e import ACME, ACME_TOKEN, ALICE, BOB, BOT
from tests.fakes import FakeLLM, FakeSlack
from tests.fakes.jira import FakeJira

POSTGRES_ADMIN_URL = os.environ.get(
    "JAMONO_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
# pytest-xdist runs workers side by side: each gets its own Redis database (15, 14, …), since
# the fixture below empties its database before and after every test.
_WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
REDIS_TEST_URL = os.environ.get(
    "JAMONO_TEST_REDIS_URL", f"redis://127.0.0.1:6379/{15 - _WORKER % 15}"
)
REQUIRE_SERVICES = os.environ.get("JAMONO_REQUIRE_SERVICES") == "1"


def unavailable(reason: str) -> None:
    """Skip, or fail when CI requires the real services."""
    if REQUIRE_SERVICES:
        pytest.fail(f"{reason} (JAMONO_REQUIRE_SERVICES=1)")
    pytest.skip(reason)


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'jamono.db'}"


@pytest_asyncio.fixture
async def postgres_url():
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    import asyncpg

    admin = POSTGRES_ADMIN_URL
    name = f"jamono_t_{uuid.uuid4().hex[:12]}"
    try:
        conn = await asyncpg.connect(admin, timeout=3)
    except (OSError, asyncpg.PostgresError) as exc:
        unavailable(f"PostgreSQL at {admin} does not answer: {exc}")
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    yield admin.rsplit("/", 1)[0] + f"/{name}"
    conn = await asyncpg.connect(admin, timeout=3)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path) -> str:
    """Each test using this runs on a SQLite file and on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_url")
    return request.getfixturevalue("postgres_url")


@pytest_asyncio.fixture
async def engine(database_url):
    """An engine on ``database_url`` migrated to head (SQLite and PostgreSQL)."""
    from storage import migrate
    from storage.db import create_engine

    await migrate.upgrade_async(database_url)
    engine = create_engine(database_url)
    yield engine
    await engine.dispose()


@pytest_asyncio.fixture
async def redis_url():
    """A Redis database of this worker's own, emptied before and after the test."""
    from redis.asyncio import Redis

    client = Redis.from_url(REDIS_TEST_URL, socket_connect_timeout=2)
    try:
        await client.flushdb()
    except Exception as exc:
        await client.aclose()
        unavailable(f"Redis at {REDIS_TEST_URL} does not answer: {exc}")
    yield REDIS_TEST_URL
    await client.flushdb()
    await client.aclose()


@pytest.fixture
async def llm():
    async with FakeLLM(api_key="sk-test") as fake:
        yield fake


@pytest.fixture
async def slack():
    async with FakeSlack() as fake:
        fake.add_workspace(ACME, ACME_TOKEN, BOT, "Acme")
        fake.add_user(ACME, ALICE, "alice", "alice@acme.test", is_admin=True)
        fake.add_user(ACME, BOB, "bob", "bob@acme.test")
        yield fake


@pytest.fixture
async def jira():
    """A fake Jira Data Center (personal access token); tests needing Cloud define their own."""
    async with FakeJira("datacenter") as fake:
        yield fake


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session
