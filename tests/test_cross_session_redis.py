"""Cross-session across instances through real Redis: routing, isolation, kill and restart."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import pytest
from redis.asyncio import Redis

from agents.tools.registry import ToolError
from agents.tools.sessions import build as build_session_tools
from integrations.cross_session import GatewayLimits
from integrations.cross_session.client import SessionClient
from integrations.cross_session.protocol import CrossSessionError, Owner
from integrations.cross_session.redis_routing import RedisRouter, _owner_key
from integrations.cross_session.sessions import LiveSession
from tests.cross_session_support import (
    ACME,
    ALICE,
    BOB,
    GLOBEX,
    SECRET,
    BlackholeProxy,
    GatewayInstance,
    GatewayProcess,
    RedisServer,
    receive,
    register,
    token,
    wait_until,
)
from tests.test_cross_session import context

LIMITS = GatewayLimits(heartbeat=0.5)


def excel_client(url, jwt_token=None) -> SessionClient:
    client = SessionClient(url, jwt_token or token(), app="excel", title="Budget Q4.xlsx",
                           min_backoff=0.05, max_backoff=0.5)

    @client.tool(annotations={"readOnlyHint": True})
    async def read_range(range: str) -> dict:
        """Read cells"""
        return {"range": range, "values": [[42]]}

    return client


async def test_call_routed_from_persona_on_a_to_client_on_b(redis_url):
    async with (
        GatewayInstance(LIMITS, redis_url, "a") as a,
        GatewayInstance(LIMITS, redis_url, "b") as b,
    ):
        client = excel_client(b.url)
        runner = asyncio.create_task(client.run())
        await asyncio.wait_for(client.registered.wait(), 5)
        assert b.router.sessions.holds(client.session_id)
        assert not a.router.sessions.holds(client.session_id)
        tools = {t.name: t for t in build_session_tools(a.router, 5)}
        listed = await tools["list_sessions"].handler(context())
        assert [s["session_id"] for s in listed["sessions"]] == [client.session_id]
        assert listed["sessions"][0]["tools"][0]["annotations"] == {"readOnlyHint": True}
        answer = await tools["execute_on_session"].handler(
            context(), session_id=client.session_id, tool="read_range",
            arguments={"range": "B2"},
        )
        assert answer["structuredContent"] == {"range": "B2", "values": [[42]]}
        risk = await tools["execute_on_session"].risk_of(
            context(), {"session_id": client.session_id, "tool": "read_range"}
        )
        assert risk == "read"
        # Ten calls in flight at once all come back to the right caller.
        results = await asyncio.gather(*(
            a.router.call(Owner(ACME, ALICE), client.session_id, "read_range", {"range": str(i)})
            for i in range(10)
        ))
        assert [r["structuredContent"]["range"] for r in results] == [str(i) for i in range(10)]
        with pytest.raises(CrossSessionError) as raised:
            await a.router.call(Owner(ACME, ALICE), client.session_id, "delete_sheet", {})
        assert raised.value.reason == "unknown_tool"
        await client.close()
        await runner
        await wait_until(lambda: _listed(a, Owner(ACME, ALICE), 0))


async def _listed(instance, owner, count):
    return len(await instance.router.list(owner)) == count


@pytest.mark.parametrize(
    ("team", "user"), [(ACME, BOB), (GLOBEX, ALICE)], ids=["other user", "other team"]
)
async def test_isolation_across_instances(redis_url, http, team, user):
    async with (
        GatewayInstance(LIMITS, redis_url, "a") as a,
        GatewayInstance(LIMITS, redis_url, "b") as b,
    ):
        ws, session_id = await register(http, b.url, token(ACME, ALICE))
        tools = {t.name: t for t in build_session_tools(a.router, 2)}
        intruder = context(team, user)
        assert (await tools["list_sessions"].handler(intruder))["sessions"] == []
        for guessed in (session_id, session_id.upper(), "*", f"{session_id}*"):
            with pytest.raises(ToolError) as raised:
                await tools["execute_on_session"].handler(
                    intruder, session_id=guessed, tool="read_range"
                )
            assert "no live session" in str(raised.value)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(ws.receive(), 0.3)  # nothing reached the application


async def test_holding_instance_checks_the_owner_again(redis_url, http):
    """A forged inbox message (as if the directory check were bypassed) is refused on B."""
    async with GatewayInstance(LIMITS, redis_url, "b") as b:
        ws, session_id = await register(http, b.url, token(ACME, ALICE))
        redis = Redis.from_url(redis_url, decode_responses=True)
        pubsub = redis.pubsub()
        await pubsub.subscribe("test-reply")
        forged = {"request_id": "r1", "reply_to": "test-reply", "deadline": time.time() + 5,
                  "team_id": ACME, "slack_user_id": BOB, "session_id": session_id,
                  "tool": "read_range", "arguments": {}}
        assert await redis.publish("jamono:xs:inbox:b", json.dumps(forged)) == 1
        reply = None
        while reply is None:
            reply = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
        assert json.loads(reply["data"])["error"]["reason"] == "not_found"
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(ws.receive(), 0.3)
        await pubsub.aclose()
        await redis.aclose()


async def test_dead_instance_fails_fast_and_is_not_listed(redis_url):
    async with GatewayInstance(LIMITS, redis_url, "a") as a:
        redis = Redis.from_url(redis_url, decode_responses=True)
        record = {"team_id": ACME, "slack_user_id": ALICE, "instance": "ghost", "app": "excel",
                  "title": "Old", "tools": [], "connected_at": time.time()}
        await redis.set("jamono:xs:s:ghost-session", json.dumps(record), ex=30)
        await redis.zadd(f"jamono:xs:u:{ACME}:{ALICE}", {"ghost-session": time.time() + 30})
        # Its instance key is missing: not listed ...
        assert await a.router.list(Owner(ACME, ALICE)) == []
        # ... and a call PUBLISHes to nobody, so it fails at once instead of timing out.
        started = time.monotonic()
        with pytest.raises(CrossSessionError) as raised:
            await a.router.call(Owner(ACME, ALICE), "ghost-session", "read_range", {}, 10)
        assert raised.value.reason == "session_gone"
        assert time.monotonic() - started < 5
        await redis.aclose()


async def test_late_reply_is_dropped(redis_url, http):
    async with (
        GatewayInstance(LIMITS, redis_url, "a") as a,
        GatewayInstance(LIMITS, redis_url, "b") as b,
    ):
        ws, session_id = await register(http, b.url, token())
        with pytest.raises(CrossSessionError) as raised:
            await a.router.call(Owner(ACME, ALICE), session_id, "read_range", {}, 0.3)
        assert raised.value.reason == "timeout"
        request = await receive(ws)
        await ws.send_str(json.dumps({"jsonrpc": "2.0", "id": request["id"], "result": {
            "content": [{"type": "text", "text": "late"}], "isError": False}}))
        # The next call gets its own answer, not the late one.
        call = asyncio.create_task(
            a.router.call(Owner(ACME, ALICE), session_id, "read_range", {}, 5)
        )
        request = await receive(ws)
        await ws.send_str(json.dumps({"jsonrpc": "2.0", "id": request["id"], "result": {
            "content": [{"type": "text", "text": "fresh"}], "isError": False}}))
        assert (await call)["content"][0]["text"] == "fresh"


async def test_max_sessions_counts_every_instance(redis_url, http):
    limits = GatewayLimits(heartbeat=0.5, max_sessions_per_user=1)
    async with (
        GatewayInstance(limits, redis_url, "a") as a,
        GatewayInstance(limits, redis_url, "b") as b,
    ):
        held = await register(http, a.url, token())
        ws = await http.ws_connect(b.url)
        await ws.send_str(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "session.register",
                                      "params": {"token": token(), "app": "excel"}}))
        assert (await receive(ws))["error"]["data"] == {"reason": "too_many_sessions"}
        assert held


async def test_concurrent_registrations_never_exceed_the_limit(redis_url, http):
    limits = GatewayLimits(heartbeat=0.5, max_sessions_per_user=2)
    async with (
        GatewayInstance(limits, redis_url, "a") as a,
        GatewayInstance(limits, redis_url, "b") as b,
    ):
        sockets = [await http.ws_connect(url) for url in [a.url, b.url] * 10]
        await asyncio.gather(*(
            ws.send_str(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "session.register",
                                    "params": {"token": token(), "app": "excel"}}))
            for ws in sockets
        ))
        answers = await asyncio.gather(*(receive(ws) for ws in sockets))
        admitted = [answer for answer in answers if "result" in answer]
        refused = [answer["error"]["data"] for answer in answers if "error" in answer]
        assert len(admitted) == 2
        assert refused == [{"reason": "too_many_sessions"}] * 18
        listed = await a.router.list(Owner(ACME, ALICE))
        assert {s["session_id"] for s in listed} == {x["result"]["session_id"] for x in admitted}
        for ws in sockets:
            await ws.close()


@contextlib.asynccontextmanager
async def two_routers(redis_url):
    """Routers of instances "a" and "b" on one Redis, started, and twenty sessions of Alice."""
    routers = [RedisRouter(redis_url, name, heartbeat=5.0) for name in ("a", "b")]
    owner = Owner(ACME, ALICE)
    sessions = [
        LiveSession(f"s{i}", owner, "excel", "Budget", [], int(time.time()) + 600, peer=None)
        for i in range(20)
    ]
    try:
        for router in routers:
            await router.start()
        yield routers, sessions
    finally:
        for router in routers:
            await router.close()


async def test_admission_is_atomic_across_routers(redis_url):
    """Two instances admitting twenty sessions of one user at once admit exactly the limit."""
    async with two_routers(redis_url) as (routers, sessions):
        admitted = await asyncio.gather(*(
            routers[i % 2].admit(session, 3) for i, session in enumerate(sessions)
        ))
        assert admitted.count(True) == 3
        held = {s.session_id for r in routers for s in r.sessions}
        assert held == {s.session_id for s, ok in zip(sessions, admitted, strict=True) if ok}
        assert len(await routers[0].list(Owner(ACME, ALICE))) == 3


async def test_a_heartbeat_during_admission_records_only_admitted_sessions(redis_url):
    """A refused registration leaves nothing in Redis, even if a heartbeat ran meanwhile."""
    owner = Owner(ACME, ALICE)
    async with (
        Redis.from_url(redis_url, decode_responses=True) as redis,
        two_routers(redis_url) as (routers, sessions),
    ):
        *admitted, _, _ = await asyncio.gather(
            *(routers[i % 2].admit(session, 3) for i, session in enumerate(sessions)),
            *(router.refresh() for router in routers),
        )
        held = {s.session_id for s, ok in zip(sessions, admitted, strict=True) if ok}
        assert len(held) == 3
        assert set(await redis.zrange(_owner_key(owner), 0, -1)) == held
        assert {s["session_id"] for s in await routers[0].list(owner)} == held


# Faults: private redis-server and jamono processes ----------------------------------------


async def test_sigkilled_instance_leaves_the_list_and_clients_move(tmp_path):
    redis = RedisServer(tmp_path)
    await redis.start()
    heartbeat = 1.0
    settings = {"JAMONO_GATEWAY_SECRET": SECRET, "REDIS_URL": redis.url,
                "JAMONO_GATEWAY_HEARTBEAT": str(heartbeat), "JAMONO_INSTANCE_ID": "b",
                "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'b.db'}"}
    b = GatewayProcess(settings, tmp_path)
    try:
        await b.start()
        async with GatewayInstance(GatewayLimits(heartbeat=heartbeat), redis.url, "a") as a:
            client = excel_client([b.url, a.url])
            runner = asyncio.create_task(client.run())
            await asyncio.wait_for(client.registered.wait(), 10)
            first = client.session_id
            assert not a.router.sessions.holds(first)
            assert await a.router.call(Owner(ACME, ALICE), first, "read_range", {"range": "A1"})
            await b.kill()
            # Within three heartbeats (plus one for polling and a loaded machine).
            await wait_until(lambda: _gone_from(a, first), timeout=4 * heartbeat)
            # The client reconnected to A and is callable there.
            await wait_until(lambda: _holds(a, client), timeout=10)
            result = await a.router.call(
                Owner(ACME, ALICE), client.session_id, "read_range", {"range": "C3"}
            )
            assert result["structuredContent"]["range"] == "C3"
            await client.close()
            await runner
    finally:
        await b.kill()
        await redis.stop()


async def _gone_from(instance, session_id):
    listed = await instance.router.list(Owner(ACME, ALICE))
    return session_id not in {s["session_id"] for s in listed}


async def _holds(instance, client):
    return client.registered.is_set() and instance.router.sessions.holds(client.session_id)


async def test_redis_restart(tmp_path, http):
    redis = RedisServer(tmp_path)
    await redis.start()
    try:
        async with (
            GatewayInstance(LIMITS, redis.url, "a") as a,
            GatewayInstance(LIMITS, redis.url, "b") as b,
        ):
            local = excel_client(a.url)
            remote = excel_client(b.url)
            runners = [asyncio.create_task(c.run()) for c in (local, remote)]
            for c in (local, remote):
                await asyncio.wait_for(c.registered.wait(), 5)
            owner = Owner(ACME, ALICE)
            assert await a.router.call(owner, remote.session_id, "read_range", {"range": "A"})

            await redis.stop()
            # Local calls keep working; cross-instance calls fail clearly.
            result = await a.router.call(owner, local.session_id, "read_range", {"range": "L"})
            assert result["structuredContent"]["range"] == "L"
            with pytest.raises(CrossSessionError) as raised:
                await a.router.call(owner, remote.session_id, "read_range", {}, 3)
            assert raised.value.reason == "routing_unavailable"
            assert "Redis is unavailable" in str(raised.value)
            assert [s["session_id"] for s in await a.router.list(owner)] == [local.session_id]

            await redis.start()  # same port, empty: nothing survived
            # Heartbeats write the directory again and the subscribers come back by themselves.
            async def routed():
                try:
                    return await a.router.call(
                        owner, remote.session_id, "read_range", {"range": "R"}, 1
                    )
                except CrossSessionError:
                    return None

            result = await wait_until(routed, timeout=15, interval=0.2)
            assert result["structuredContent"]["range"] == "R"
            result = await b.router.call(owner, local.session_id, "read_range", {"range": "X"}, 2)
            assert result["structuredContent"]["range"] == "X"
            assert len(await a.router.list(owner)) == 2
            for c in (local, remote):
                await c.close()
            await asyncio.gather(*runners)
    finally:
        await redis.stop()


async def test_a_silently_dead_subscription_is_noticed_and_replaced(tmp_path, http):
    redis = RedisServer(tmp_path)
    await redis.start()
    proxy = BlackholeProxy(redis.port)
    await proxy.start()
    try:
        async with (
            GatewayInstance(LIMITS, redis.url, "a") as a,
            GatewayInstance(LIMITS, proxy.url, "b") as b,
        ):
            client = excel_client(b.url)
            runner = asyncio.create_task(client.run())
            await asyncio.wait_for(client.registered.wait(), 5)
            owner = Owner(ACME, ALICE)
            assert await a.router.call(owner, client.session_id, "read_range", {"range": "1"})
            proxy.blackhole()  # B's connections to Redis go silent, without an error

            async def routed():
                try:
                    return await a.router.call(
                        owner, client.session_id, "read_range", {"range": "2"}, 0.5
                    )
                except CrossSessionError:
                    return None

            result = await wait_until(routed, timeout=20, interval=0.2)
            assert result["structuredContent"]["range"] == "2"
            await client.close()
            await runner
    finally:
        await proxy.stop()
        await redis.stop()
