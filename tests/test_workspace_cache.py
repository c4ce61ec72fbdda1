"""The workspace configuration every turn reads is cached, and never serves a change late
beyond its promise: at once in the changing process and (with Redis) in every other one,
within the TTL otherwise."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from storage import migrate
from storage.db import create_engine, session_factory
from storage.repositories import Repositories
from storage.tenancy import Tenant
from storage.workspace_cache import CHANNEL, WorkspaceCache
from tests.cross_session_support import wait_until
from tests.e2e import ACME, ALICE, BOT, SIGNING_SECRET, bot_token_settings, started
from tests.fakes import post_event
from tests.test_cli import jamono
from tests.test_e2e_http import in_thread

TENANT = Tenant(ACME)


async def processes(database_url, *caches):
    """Repositories over one database, one per ``cache``: processes sharing it."""
    await migrate.upgrade_async(database_url)
    engine = create_engine(database_url)
    return engine, [Repositories.over(session_factory(engine), cache=c) for c in caches]


async def test_without_redis_another_process_sees_a_change_within_the_ttl(sqlite_url):
    now = [0.0]
    here, there = WorkspaceCache(clock=lambda: now[0]), WorkspaceCache(clock=lambda: now[0])
    engine, (changer, reader) = await processes(sqlite_url, here, there)
    try:
        assert (await reader.config.load(TENANT)).timezone == "UTC"
        assert await reader.budgets.overrides(TENANT) == {}
        await changer.config.load(TENANT)  # cached here too, before the change
        await changer.config.set_timezone(TENANT, "Europe/Paris", "U0ADMIN")
        await changer.budgets.set_override(TENANT, "tokens_per_day", 500, "cli")
        assert (await changer.config.load(TENANT)).timezone == "Europe/Paris"  # at once here
        assert await changer.budgets.overrides(TENANT) == {"tokens_per_day": 500}
        now[0] = here.ttl - 1
        assert (await reader.config.load(TENANT)).timezone == "UTC"  # the promise allows this
        now[0] = here.ttl
        assert (await reader.config.load(TENANT)).timezone == "Europe/Paris"
        assert await reader.budgets.overrides(TENANT) == {"tokens_per_day": 500}
    finally:
        await engine.dispose()


async def test_with_redis_every_process_forgets_a_change_at_once(sqlite_url, redis_url):
    clients = [Redis.from_url(redis_url) for _ in range(2)]
    frozen = [WorkspaceCache(redis=client, clock=lambda: 0.0) for client in clients]
    engine, (changer, reader) = await processes(sqlite_url, *frozen)
    listening = asyncio.create_task(frozen[1].listen())
    try:
        await reader.config.load(TENANT)
        await _until_subscribed(clients[0])
        await changer.config.bind_channel(TENANT, "C0OPS", "atlas", "U0ADMIN")
        async def bound() -> bool:  # the clock never moves: only the announcement can
            return (await reader.config.load(TENANT)).bindings == {"C0OPS": "atlas"}

        await wait_until(bound, timeout=5)
    finally:
        listening.cancel()
        await engine.dispose()
        for client in clients:
            await client.aclose()


async def test_a_read_begun_before_a_change_is_not_kept():
    cache = WorkspaceCache(clock=lambda: 0.0)
    reading, changed = asyncio.Event(), asyncio.Event()

    async def slow_old_read():
        reading.set()
        await changed.wait()
        return "old"

    async def new_read():
        return "new"

    read = asyncio.create_task(cache.get(ACME, "config", slow_old_read))
    await reading.wait()
    await cache.changed(ACME)  # committed while the read was on its way
    changed.set()
    assert await read == "old"  # that caller asked before the change
    assert await cache.get(ACME, "config", new_read) == "new"


async def test_an_operator_limit_reaches_a_running_server_at_once_through_redis(
    http, slack, llm, sqlite_url, redis_url, tmp_path
):
    settings = bot_token_settings(slack, llm, sqlite_url) | {"REDIS_URL": redis_url}
    server = await started(settings, tmp_path)
    answers = []
    try:
        first = await _mention(http, server, slack, "one")
        await slack.wait_for("chat.postMessage", in_thread(first))
        code, out, err = await jamono(
            "config", "--team", ACME, "limit", "turns_per_minute_user", "1",
            env=settings, cwd=tmp_path,
        )
        assert code == 0, err
        assert "turns_per_minute_user = 1 (set for this workspace)" in out
        assert "within" not in out  # with Redis the change is announced, not waited for
        # The window of a new amount starts empty (the limits library keys it by amount):
        # the next turn is the minute's one, the one after it is over.
        for text in ("two", "three"):
            thread = await _mention(http, server, slack, text)
            (answer,) = await slack.wait_for("chat.postMessage", in_thread(thread))
            answers.append(answer.params["text"])
    finally:
        assert await server.stop() == 0, server.output
    assert answers[0] == "<echo> two (user messages seen: 1)"
    assert "limit of 1 turn per minute for one person" in answers[1]


async def _mention(http, server, slack, text: str) -> str:
    event = slack.app_mention_event(ALICE, "C0OPS", f"<@{BOT}> {text}")
    status, _ = await post_event(
        http, server.url + "/slack/events", SIGNING_SECRET, slack.event_callback(ACME, event)
    )
    assert status == 200
    return event["ts"]


async def _until_subscribed(client: Redis) -> None:
    async def subscribed() -> int:
        return (await client.pubsub_numsub(CHANNEL))[0][1]

    await wait_until(subscribed, timeout=5)


async def test_callers_missing_together_share_one_read_and_resume_in_order():
    cache = WorkspaceCache(clock=lambda: 0.0)
    reads, resumed = [], []
    release = asyncio.Event()

    async def read():
        reads.append(1)
        await release.wait()
        return "config"

    async def turn(n: int) -> None:
        assert await cache.get(ACME, "config", read) == "config"
        resumed.append(n)

    turns = [asyncio.create_task(turn(n)) for n in range(5)]
    await asyncio.sleep(0)  # every turn is now waiting on the one read
    release.set()
    await asyncio.gather(*turns)
    assert reads == [1] and resumed == [0, 1, 2, 3, 4]
