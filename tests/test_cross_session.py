"""Cross-session on one instance: tokens, protocol, gateway limits, isolation, persona tools."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from agents.personas import NOX
from agents.tools import build_registry
from agents.tools.registry import Tool, ToolContext, ToolError
from agents.tools.sessions import build as build_session_tools
from integrations.cross_session import GatewayLimits, TokenVerifier
from integrations.cross_session.client import SessionAuthError, SessionClient
from integrations.cross_session.protocol import CrossSessionError, Owner, ProtocolError, parse
from integrations.cross_session.tokens import TokenError
from storage.tenancy import Tenant
from tests.cross_session_support import (
    ACME,
    ALICE,
    BOB,
    GLOBEX,
    READ_RANGE,
    SECRET,
    VERIFIER,
    WRITE_RANGE,
    GatewayInstance,
    raw_token,
    receive,
    register,
    send,
    token,
    wait_until,
)


def context(team: str = ACME, user: str = ALICE) -> ToolContext:
    return ToolContext(Tenant(team_id=team), NOX, user, "C0OPS", "1.0", "UTC")


# Tokens ----------------------------------------------------------------------------------


def test_valid_token_gives_the_owner():
    identity = VERIFIER.verify(token(ACME, ALICE, ttl=60))
    assert identity.owner == Owner(ACME, ALICE)
    assert 55 <= identity.expires_at - time.time() <= 60


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: raw_token(algorithm="none", key=None), "alg none"),
        (lambda: raw_token(key="another-secret-of-enough-length-000000"), "wrong key"),
        (lambda: raw_token(exp=int(time.time()) - 60), "expired"),
        (lambda: raw_token(aud="someone-else"), "wrong aud"),
        (lambda: raw_token(drop=("team_id",)), "missing team_id"),
        (lambda: raw_token(drop=("slack_user_id",)), "missing slack_user_id"),
        (lambda: raw_token(drop=("sub",)), "missing sub"),
        (lambda: raw_token(drop=("iat",)), "missing iat"),
        (lambda: raw_token(drop=("exp",)), "missing exp"),
        (lambda: raw_token(team_id=""), "empty team_id"),
        (lambda: raw_token(slack_user_id=["U1"]), "non-string user"),
        (lambda: raw_token(key=SECRET * 2, algorithm="HS512"), "another HMAC algorithm"),
        (lambda: "not.a.jwt", "garbage"),
        (lambda: None, "absent"),
    ],
)
def test_bad_tokens_are_refused(make, reason):
    with pytest.raises(TokenError):
        VERIFIER.verify(make())


def test_issuer_is_checked_when_configured():
    verifier = TokenVerifier(SECRET, "HS256", issuer="https://jamono.example")
    with pytest.raises(TokenError):
        verifier.verify(raw_token())  # no iss
    with pytest.raises(TokenError):
        verifier.verify(raw_token(iss="https://evil.example"))
    assert verifier.verify(raw_token(iss="https://jamono.example")).owner == Owner(ACME, ALICE)


def es256_key_pair() -> tuple[str, str]:
    """A new P-256 key pair as (private PKCS#8 PEM, public SubjectPublicKeyInfo PEM)."""
    private = ec.generate_private_key(ec.SECP256R1())
    private_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    return private_pem, public_pem


def test_es256_with_public_key_and_no_key_confusion():
    private_pem, public_pem = es256_key_pair()
    verifier = TokenVerifier(public_pem, "ES256")
    assert verifier.verify(raw_token(key=private_pem, algorithm="ES256")).owner.team_id == ACME
    # The classic confusion attack: HS256 "signed" with the public key as the secret
    # (built by hand: PyJWT itself refuses to sign so).
    signing_input = _b64(b'{"alg":"HS256","typ":"JWT"}') + "." + _b64(json.dumps({
        "sub": "x", "aud": "jamono-gateway", "iat": int(time.time()),
        "exp": int(time.time()) + 600, "team_id": ACME, "slack_user_id": ALICE,
    }).encode())
    mac = hmac.new(public_pem.encode(), signing_input.encode(), hashlib.sha256).digest()
    with pytest.raises(TokenError):
        verifier.verify(signing_input + "." + _b64(mac))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# Protocol --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("{not json", -32700),
        ("[1, 2]", -32600),
        ('{"id": 1, "method": "ping"}', -32600),
        ('{"jsonrpc": "2.0", "id": {"a": 1}, "method": "ping"}', -32600),
        ('{"jsonrpc": "2.0", "id": 1, "method": 5}', -32600),
        ('{"jsonrpc": "2.0", "id": 1, "method": "ping", "params": [1]}', -32600),
        ('{"jsonrpc": "2.0", "id": 1}', -32600),
        ('{"jsonrpc": "2.0", "id": 1, "result": {}, "error": {}}', -32600),
    ],
)
def test_malformed_messages(text, code):
    with pytest.raises(ProtocolError) as raised:
        parse(text)
    assert raised.value.code == code


def test_well_formed_messages_parse():
    assert parse('{"jsonrpc":"2.0","id":"a","method":"ping"}')["method"] == "ping"
    assert parse('{"jsonrpc":"2.0","id":3,"result":{"content":[]}}')["id"] == 3


# Gateway: registration and auth ----------------------------------------------------------


async def test_register_list_and_call_through_the_reference_client():
    async with GatewayInstance() as instance:
        client = SessionClient(instance.url, token(), app="excel", title="Budget Q4.xlsx")

        @client.tool(input_schema=READ_RANGE["inputSchema"], annotations={"readOnlyHint": True})
        async def read_range(range: str) -> dict:
            """Read cells"""
            return {"range": range, "values": [[1, 2]]}

        @client.tool()
        async def explode() -> str:
            """Always fails"""
            raise RuntimeError("sheet is locked")

        runner = asyncio.create_task(client.run())
        await asyncio.wait_for(client.registered.wait(), 5)
        (listed,) = await instance.router.list(Owner(ACME, ALICE))
        assert listed["session_id"] == client.session_id and listed["app"] == "excel"
        assert listed["title"] == "Budget Q4.xlsx"
        assert [t["name"] for t in listed["tools"]] == ["read_range", "explode"]
        result = await instance.router.call(
            Owner(ACME, ALICE), client.session_id, "read_range", {"range": "A1:B1"}, 5
        )
        assert result["structuredContent"] == {"range": "A1:B1", "values": [[1, 2]]}
        assert result["isError"] is False
        failed = await instance.router.call(Owner(ACME, ALICE), client.session_id, "explode", {})
        assert failed["isError"] is True and "sheet is locked" in failed["content"][0]["text"]
        with pytest.raises(CrossSessionError) as raised:
            await instance.router.call(Owner(ACME, ALICE), client.session_id, "nope", {})
        assert raised.value.reason == "unknown_tool"
        await client.update(title="Budget Q4 v2.xlsx")
        (listed,) = await instance.router.list(Owner(ACME, ALICE))
        assert listed["title"] == "Budget Q4 v2.xlsx"
        await client.close()
        await asyncio.wait_for(runner, 5)
        await wait_until(lambda: _empty(instance, Owner(ACME, ALICE)))


async def _empty(instance, owner):
    return not await instance.router.list(owner)


async def _refused(ws) -> dict:
    answer = await receive(ws)
    assert (await ws.receive(5)).type == aiohttp.WSMsgType.CLOSE
    assert ws.close_code == 4401
    return answer


@pytest.mark.parametrize(
    "first",
    [
        {"token": raw_token(algorithm="none", key=None)},
        {"token": raw_token(key="another-secret-of-enough-length-000000")},
        {"token": raw_token(exp=int(time.time()) - 60)},
        {"token": raw_token(aud="jamono-other")},
        {"token": raw_token(drop=("team_id",))},
        {},  # the token promised in a later message never counts
    ],
)
async def test_register_with_a_bad_token_gets_32001_and_4401(http, first):
    async with GatewayInstance() as instance:
        ws = await http.ws_connect(instance.url)
        await send(ws, 1, "session.register", {"app": "excel", **first})
        answer = await _refused(ws)
        assert answer["error"]["code"] == -32001 and answer["id"] == 1
        assert not instance.router.sessions


async def test_first_message_must_be_register(http):
    async with GatewayInstance() as instance:
        ws = await http.ws_connect(instance.url)
        await send(ws, 1, "ping")
        assert (await _refused(ws))["error"]["code"] == -32001
        ws = await http.ws_connect(instance.url)
        await ws.send_str("{garbage")
        assert (await _refused(ws))["error"]["code"] == -32001


async def test_no_register_within_the_deadline(http):
    limits = GatewayLimits(heartbeat=1.0, register_timeout=0.3)
    async with GatewayInstance(limits) as instance:
        ws = await http.ws_connect(instance.url)
        answer = await _refused(ws)
        assert answer["error"]["code"] == -32001 and "0.3 s" in answer["error"]["message"]


async def test_bad_register_params_can_be_corrected(http):
    async with GatewayInstance() as instance:
        ws = await http.ws_connect(instance.url)
        await send(ws, 1, "session.register", {"token": token(), "app": "excel",
                                                "tools": [{"name": "x", "inputSchema": 5}]})
        assert (await receive(ws))["error"]["code"] == -32602
        await send(ws, 2, "session.register", {"token": token(), "app": "excel",
                                                "tools": [READ_RANGE]})
        assert "session_id" in (await receive(ws))["result"]


async def test_methods_after_registration(http):
    async with GatewayInstance() as instance:
        ws, session_id = await register(http, instance.url, token())
        await send(ws, 2, "ping")
        assert (await receive(ws)) == {"jsonrpc": "2.0", "id": 2, "result": {}}
        await send(ws, 3, "tools/list")
        assert (await receive(ws))["error"]["code"] == -32601
        await send(ws, 4, "session.register", {"token": token(), "app": "excel"})
        assert (await receive(ws))["error"]["code"] == -32600
        await send(ws, 5, "session.update", {"tools": "nope"})
        assert (await receive(ws))["error"]["code"] == -32602
        await ws.send_str("{broken")
        assert (await receive(ws))["error"]["code"] == -32700
        await send(ws, 6, "session.update", {"tools": [WRITE_RANGE]})
        assert (await receive(ws))["result"] == {}
        info = await instance.router.describe(Owner(ACME, ALICE), session_id)
        assert [t["name"] for t in info["tools"]] == ["write_range"]


async def test_token_expiry_closes_and_refresh_extends(http):
    async with GatewayInstance() as instance:
        ws, _ = await register(http, instance.url, token(ttl=2))
        await send(ws, 2, "session.refresh", {"token": token(ttl=600)})
        assert (await receive(ws))["result"]["expires_at"] > time.time() + 500
        with pytest.raises(asyncio.TimeoutError):
            # Reading, so the gateway's heartbeat pings are answered.
            await asyncio.wait_for(ws.receive(), 2.5)
        await send(ws, 3, "ping")
        assert (await receive(ws))["result"] == {}  # still open past the first exp

        short, _ = await register(http, instance.url, token(ttl=1))
        message = await short.receive(5)
        assert message.type == aiohttp.WSMsgType.CLOSE and short.close_code == 4401
        await wait_until(lambda: _count(instance, Owner(ACME, ALICE), 1))


async def _count(instance, owner, expected):
    return len(await instance.router.list(owner)) == expected


async def test_refresh_with_another_users_token_is_refused(http):
    async with GatewayInstance() as instance:
        ws, _ = await register(http, instance.url, token(ACME, ALICE))
        await send(ws, 2, "session.refresh", {"token": token(ACME, BOB)})
        assert (await _refused(ws))["error"]["code"] == -32001


async def test_fixed_token_refused_stops_the_client():
    async with GatewayInstance() as instance:
        client = SessionClient(instance.url, raw_token(aud="x"), app="excel")
        with pytest.raises(SessionAuthError):
            await asyncio.wait_for(client.run(), 5)


# Gateway: limits -------------------------------------------------------------------------


async def test_oversize_frame_closes_with_1009(http):
    limits = GatewayLimits(heartbeat=1.0, max_message=4096)
    async with GatewayInstance(limits) as instance:
        ws, _ = await register(http, instance.url, token())
        await send(ws, 2, "session.update", {"title": "x" * 5000})
        assert (await ws.receive(5)).type == aiohttp.WSMsgType.CLOSE
        assert ws.close_code == 1009
        await wait_until(lambda: _empty(instance, Owner(ACME, ALICE)))


async def test_flood_closes_with_1008_and_other_sessions_live_on(http):
    limits = GatewayLimits(heartbeat=1.0, rate=5, burst=10)
    async with GatewayInstance(limits) as instance:
        calm, calm_id = await register(http, instance.url, token(ACME, BOB))
        flood, _ = await register(http, instance.url, token())
        for i in range(50):
            try:
                await send(flood, i + 2, "ping")
            except ConnectionResetError:
                break
        codes = []
        while (message := await flood.receive(5)).type == aiohttp.WSMsgType.TEXT:
            codes.append(json.loads(message.data).get("error", {}).get("code"))
        assert flood.close_code == 1008 and -32000 in codes
        await send(calm, 2, "ping")
        assert (await receive(calm))["result"] == {}
        assert await instance.router.describe(Owner(ACME, BOB), calm_id)


async def test_binary_frames_close_with_1003(http):
    async with GatewayInstance() as instance:
        ws, _ = await register(http, instance.url, token())
        await ws.send_bytes(b"\x00\x01")
        assert (await ws.receive(5)).type == aiohttp.WSMsgType.CLOSE
        assert ws.close_code == 1003


@pytest.mark.parametrize(
    ("allowed", "allow_missing", "origin", "accepted"),
    [
        (frozenset(), True, None, True),
        (frozenset(), False, None, False),
        (frozenset(), True, "https://evil.example", False),
        (frozenset({"https://addin.example"}), True, "https://addin.example", True),
        (frozenset({"https://addin.example"}), True, "https://addin.example.evil", False),
    ],
)
async def test_origin_allowlist(http, allowed, allow_missing, origin, accepted):
    limits = GatewayLimits(heartbeat=1.0, allowed_origins=allowed,
                           allow_missing_origin=allow_missing)
    async with GatewayInstance(limits) as instance:
        headers = {"Origin": origin} if origin else {}
        if accepted:
            ws = await http.ws_connect(instance.url, headers=headers)
            await ws.close()
        else:
            with pytest.raises(aiohttp.WSServerHandshakeError) as raised:
                await http.ws_connect(instance.url, headers=headers)
            assert raised.value.status == 403


async def test_max_sessions_per_user(http):
    limits = GatewayLimits(heartbeat=1.0, max_sessions_per_user=2)
    async with GatewayInstance(limits) as instance:
        held = [await register(http, instance.url, token()) for _ in range(2)]
        held.append(await register(http, instance.url, token(ACME, BOB)))  # Bob's own quota
        ws = await http.ws_connect(instance.url)
        await send(ws, 1, "session.register", {"token": token(), "app": "excel"})
        answer = await receive(ws)
        assert answer["error"]["code"] == -32000
        assert answer["error"]["data"] == {"reason": "too_many_sessions"}
        assert (await ws.receive(5)).type == aiohttp.WSMsgType.CLOSE and ws.close_code == 1008


async def test_a_call_to_an_application_that_never_answers_times_out(http):
    async with GatewayInstance() as instance:
        ws, session_id = await register(http, instance.url, token())
        with pytest.raises(CrossSessionError) as raised:
            await instance.router.call(Owner(ACME, ALICE), session_id, "read_range", {}, 0.3)
        assert raised.value.reason == "timeout"
        request = await receive(ws)
        assert request["method"] == "tools/call"
        assert request["params"] == {"name": "read_range", "arguments": {}}
        # The late answer is dropped without harm.
        await ws.send_str(json.dumps({"jsonrpc": "2.0", "id": request["id"],
                                      "result": {"content": [], "isError": False}}))
        await send(ws, 9, "ping")
        assert (await receive(ws))["result"] == {}


# Isolation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("team", "user"),
    [(ACME, BOB), (GLOBEX, ALICE), (GLOBEX, BOB)],
    ids=["other user", "other team", "other team and user"],
)
async def test_other_owners_never_see_or_reach_a_session(http, team, user):
    async with GatewayInstance() as instance:
        ws, session_id = await register(http, instance.url, token(ACME, ALICE))
        registry = build_registry(_Status(), session_router=instance.router, action_time_limit=5)
        list_tool, execute = registry.get("list_sessions"), registry.get("execute_on_session")
        intruder = context(team, user)
        assert (await list_tool.handler(intruder))["sessions"] == []
        for guessed in (session_id, session_id[:-1] + "x", "", "../" + session_id):
            with pytest.raises(ToolError) as raised:
                await execute.handler(intruder, session_id=guessed, tool="read_range")
            assert "no live session" in str(raised.value)
        assert await instance.router.describe(Owner(team, user), session_id) is None
        # Nothing was sent to the application.
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(ws.receive(), 0.5)
        owner_view = await list_tool.handler(context(ACME, ALICE))
        assert [s["session_id"] for s in owner_view["sessions"]] == [session_id]


# Persona tools ---------------------------------------------------------------------------


class _Status:
    async def collect(self, *_):
        raise AssertionError("not used")


async def test_persona_tools_run_actions_and_report_failures(http):
    async with GatewayInstance() as instance:
        client = SessionClient(instance.url, token(), app="excel", title="Budget")

        @client.tool(annotations={"readOnlyHint": True})
        async def read_range(range: str) -> dict:
            """Read cells"""
            return {"values": [[range]]}

        @client.tool()
        async def protect() -> str:
            """Protect the sheet"""
            raise PermissionError("not the owner")

        runner = asyncio.create_task(client.run())
        await asyncio.wait_for(client.registered.wait(), 5)
        tools = {t.name: t for t in build_session_tools(instance.router, 5)}
        me = context()
        listed = await tools["list_sessions"].handler(me)
        assert listed["count"] == 1 and listed["sessions"][0]["app"] == "excel"
        answer = await tools["execute_on_session"].handler(
            me, session_id=client.session_id, tool="read_range", arguments={"range": "A1"}
        )
        assert answer["structuredContent"] == {"values": [["A1"]]}
        assert json.loads(answer["text"]) == {"values": [["A1"]]}
        with pytest.raises(ToolError) as raised:
            await tools["execute_on_session"].handler(
                me, session_id=client.session_id, tool="protect"
            )
        assert "not the owner" in str(raised.value)
        await client.close()
        await runner


# Risk ------------------------------------------------------------------------------------


async def test_risk_of_without_assess_is_the_declared_risk():
    async def handler(context: ToolContext) -> str:
        """Does a thing."""
        return "ok"

    schema = {"type": "object", "properties": {}}
    assert await Tool.from_function(handler, parameters=schema).risk_of(context(), {}) == "read"
    writer = Tool.from_function(handler, parameters=schema, risk="write")
    assert await writer.risk_of(context(), {}) == "write"


async def test_execute_on_session_is_read_only_when_the_tool_says_so(http):
    async with GatewayInstance() as instance:
        _, session_id = await register(
            http, instance.url, token(),
            tools=[READ_RANGE, WRITE_RANGE,
                   {"name": "hinted_false", "annotations": {"readOnlyHint": False}},
                   {"name": "hinted_string", "annotations": {"readOnlyHint": "true"}}],
        )
        execute = {t.name: t for t in build_session_tools(instance.router, 5)}[
            "execute_on_session"
        ]
        assert execute.risk == "write"
        cases = [
            (context(), "read_range", "read"),
            (context(), "write_range", "write"),
            (context(), "hinted_false", "write"),
            (context(), "hinted_string", "write"),
            (context(), "missing", "write"),
            (context(ACME, BOB), "read_range", "write"),  # not Bob's session
        ]
        for ctx, name, expected in cases:
            risk = await execute.risk_of(ctx, {"session_id": session_id, "tool": name})
            assert risk == expected, name
        assert await execute.risk_of(context(), {"session_id": "nope", "tool": "x"}) == "write"


def test_tools_are_registered_only_with_the_gateway():
    assert build_registry(_Status()).get("list_sessions") is None
    from integrations.cross_session import LocalRouter

    registry = build_registry(_Status(), session_router=LocalRouter(), action_time_limit=5)
    assert {"list_sessions", "execute_on_session"} <= {t.name for t in registry.for_persona(NOX)}


async def test_heartbeat_closes_dead_sockets(http):
    async with GatewayInstance(GatewayLimits(heartbeat=0.4)) as instance:
        ws = await http.ws_connect(instance.url, autoping=False)  # will not answer pings
        await send(ws, 1, "session.register", {"token": token(), "app": "excel"})
        assert "result" in await receive(ws)
        assert len(await instance.router.list(Owner(ACME, ALICE))) == 1
        await wait_until(lambda: _empty(instance, Owner(ACME, ALICE)), timeout=3)


async def test_plain_http_on_the_websocket_route_is_a_bad_request(http):
    async with GatewayInstance() as instance:
        response = await http.get(instance.url.replace("ws://", "http://"))
        assert response.status == 400
        response.release()


async def test_client_refreshes_its_token_before_exp():
    issued = []

    async def fresh_token() -> str:
        issued.append(time.time())
        return token(ttl=3)

    async with GatewayInstance() as instance:
        client = SessionClient(instance.url, fresh_token, app="excel")
        runner = asyncio.create_task(client.run())
        await asyncio.wait_for(client.registered.wait(), 5)
        first = client.session_id
        await asyncio.sleep(4.5)  # past the first token's exp
        assert client.registered.is_set() and client.session_id == first
        assert client.connections == 1 and len(issued) >= 3
        await client.close()
        await runner


async def test_client_reconnects_and_registers_again_after_a_restart():
    async with GatewayInstance() as instance:
        client = SessionClient(instance.url, token(), app="excel", min_backoff=0.05)
        runner = asyncio.create_task(client.run())
        await asyncio.wait_for(client.registered.wait(), 5)
        first = client.session_id
        await instance.gateway.shutdown()  # closes every socket with 1001
        await wait_until(lambda: _reregistered(client, first), timeout=5)
        assert await instance.router.describe(Owner(ACME, ALICE), client.session_id)
        assert await instance.router.describe(Owner(ACME, ALICE), first) is None
        await client.close()
        await runner


async def _reregistered(client, first):
    return client.registered.is_set() and client.session_id != first


# Settings wiring -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"JAMONO_GATEWAY_SECRET": "short"}, "at least 32 characters"),
        ({"JAMONO_GATEWAY_SECRET": SECRET, "JAMONO_GATEWAY_ALGORITHM": "RS256"}, "is for HS256"),
        ({"JAMONO_GATEWAY_PUBLIC_KEY": "pem"}, "need JAMONO_GATEWAY_ALGORITHM"),
    ],
)
def test_inconsistent_gateway_settings_are_refused(settings, problem):
    from bot.settings import SettingsError, load_settings

    with pytest.raises(SettingsError) as raised:
        load_settings(**settings)
    assert any(problem in line for line in raised.value.problems)


def test_es256_settings_sign_and_verify_tokens():
    from bot.services import gateway_tokens
    from bot.settings import load_settings

    private_pem, public_pem = es256_key_pair()
    settings = load_settings(JAMONO_GATEWAY_ALGORITHM="ES256",
                             JAMONO_GATEWAY_PUBLIC_KEY=public_pem,
                             JAMONO_GATEWAY_ISSUER="https://jamono.example")
    verifier, issuer = gateway_tokens(settings)
    assert settings.gateway_enabled and issuer is None  # verify-only without a private key
    settings = load_settings(JAMONO_GATEWAY_ALGORITHM="ES256",
                             JAMONO_GATEWAY_PUBLIC_KEY=public_pem,
                             JAMONO_GATEWAY_PRIVATE_KEY=private_pem,
                             JAMONO_GATEWAY_ISSUER="https://jamono.example")
    verifier, issuer = gateway_tokens(settings)
    signed, _ = issuer.issue(Owner(ACME, ALICE), 60)
    assert verifier.verify(signed).owner == Owner(ACME, ALICE)
    assert jwt_header(signed)["alg"] == "ES256"


def jwt_header(value: str) -> dict:
    head = value.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
