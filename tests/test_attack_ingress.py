"""Attacks on the ingress: deeply nested JSON, oversized bodies, floods of unauthenticated
sockets. Against the real ``jamono run`` process (HTTP events and the ``/ws`` gateway) and a
gateway on a real port for the overall cap.

Each attack must end in a clean refusal (401, 400, 413, 503, a JSON-RPC error) with a log
line, never a 500 or a traceback, and the process keeps serving.
"""

from __future__ import annotations

import asyncio
import json
from urllib.parse import quote

import aiohttp
import pytest

from integrations.cross_session import GatewayLimits
from integrations.json_limits import too_deep
from tests.cross_session_support import (
    SECRET,
    GatewayInstance,
    receive,
    register,
    send,
    token,
    wait_until,
)
from tests.e2e import ACME, ACME_TOKEN, ALICE, BOT, SIGNING_SECRET, base_settings, started
from tests.fakes import post_event
from tests.fakes.signing import post_signed

DEEP = 20_000  # nesting levels: far past Python's recursion limit (1000)
PER_ADDRESS = 3


@pytest.fixture
async def jamono(slack, llm, sqlite_url, tmp_path):
    settings = base_settings(slack, llm, sqlite_url) | {
        "SLACK_BOT_TOKEN": ACME_TOKEN,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "JAMONO_GATEWAY_SECRET": SECRET,
        "JAMONO_GATEWAY_MAX_UNAUTHENTICATED_PER_ADDRESS": str(PER_ADDRESS),
        "JAMONO_GATEWAY_REGISTER_TIMEOUT": "1.5",
        "JAMONO_MAX_REQUEST_BODY": str(256 * 1024),
    }
    process = await started(settings, tmp_path)
    yield process
    assert await process.stop() == 0, process.output
    assert "Traceback" not in process.output, process.output
    assert "RecursionError" not in process.output, process.output


async def still_answers(http, jamono, slack, text: str) -> None:
    """The process is healthy and still answers a mention."""
    async with http.get(jamono.url + "/healthz") as response:
        assert response.status == 200
    event = slack.app_mention_event(ALICE, "C0OPS", f"<@{BOT}> {text}")
    status, _ = await post_event(http, jamono.url + "/slack/events", SIGNING_SECRET,
                                 slack.event_callback(ACME, event))
    assert status == 200
    await slack.wait_for("chat.postMessage", lambda p: p.get("thread_ts") == event["ts"])


def nested_event() -> bytes:
    return b'{"type":"event_callback","event":' + b"[" * DEEP + b"]" * DEEP + b"}"


async def test_nested_json_without_a_valid_signature_is_401(http, jamono, slack):
    url = jamono.url + "/slack/events"
    body = nested_event()
    async with http.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
        assert r.status == 401
    status, _ = await post_signed(http, url, "not-the-signing-secret", body, "application/json")
    assert status == 401
    # A timestamp that is not a number is a bad signature too, not a crash.
    headers = {"Content-Type": "application/json", "X-Slack-Request-Timestamp": "soon",
               "X-Slack-Signature": "v0=00"}
    async with http.post(url, data=body, headers=headers) as r:
        assert r.status == 401
    await jamono.wait_for_output("slack_request_unsigned", 3)
    await still_answers(http, jamono, slack, "after unsigned nesting")


async def test_signed_nested_json_is_400_and_never_500(http, jamono, slack):
    url = jamono.url + "/slack/events"
    status, text = await post_signed(http, url, SIGNING_SECRET, nested_event(),
                                     "application/json")
    assert status == 400 and "nested deeper" in text
    # The same nesting inside an interactivity form's payload=…
    payload = "payload=" + quote('{"type":"block_actions","actions":' + "[" * DEEP + "]" * DEEP
                                 + "}")
    status, text = await post_signed(http, url, SIGNING_SECRET, payload.encode(),
                                     "application/x-www-form-urlencoded")
    assert status == 400 and "nested deeper" in text
    # Just past the limit is refused; ordinary Slack payloads are far inside it.
    just_past = ('{"type":"event_callback","event":' + '{"a":' * 64 + "1" + "}" * 65).encode()
    status, _ = await post_signed(http, url, SIGNING_SECRET, just_past, "application/json")
    assert status == 400
    await jamono.wait_for_output("slack_request_malformed", 3)
    await still_answers(http, jamono, slack, "after signed nesting")


async def test_an_oversized_body_is_413(http, jamono, slack):
    body = json.dumps({"type": "event_callback", "pad": "x" * (300 * 1024)}).encode()
    status, _ = await post_signed(http, jamono.url + "/slack/events", SIGNING_SECRET, body,
                                  "application/json")
    assert status == 413
    await still_answers(http, jamono, slack, "after a big body")


async def test_nested_json_on_ws_before_and_after_registering(http, jamono, slack):
    ws_url = jamono.url.replace("http", "ws") + "/ws"
    nested = '{"jsonrpc":"2.0","id":1,"method":"session.register","params":' + \
        "[" * DEEP + "]" * DEEP + "}"
    anonymous = await http.ws_connect(ws_url, max_msg_size=0)
    await anonymous.send_str(nested[: 60 * 1024])  # within the 64 KiB message limit
    answer = await receive(anonymous)
    assert answer["error"]["code"] == -32001 and "nested deeper" in answer["error"]["message"]
    assert await receive(anonymous) is None and anonymous.close_code == 4401

    ws, _ = await register(http, ws_url, token())
    await ws.send_str('{"jsonrpc":"2.0","id":2,"method":"ping","params":' + "{\"a\":" * 3000
                      + "1" + "}" * 3001)
    answer = await receive(ws)
    assert answer["error"]["code"] == -32700
    await send(ws, 3, "ping")  # the session goes on
    assert (await receive(ws))["result"] == {}
    await ws.close()
    await still_answers(http, jamono, slack, "after nesting on /ws")


async def test_unauthenticated_sockets_are_capped_per_address_and_time_out(http, jamono, slack):
    ws_url = jamono.url.replace("http", "ws") + "/ws"
    waiting = [await http.ws_connect(ws_url) for _ in range(PER_ADDRESS)]
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(ws_url)
    assert refused.value.status == 503
    await jamono.wait_for_output("xs_unauthenticated_refused")
    # An authenticated session does not count: once one registers, a new socket is let in.
    await send(waiting[0], 1, "session.register", {"token": token(), "app": "excel"})
    assert "result" in await receive(waiting[0])
    extra = await http.ws_connect(ws_url)
    # The others are closed at the register deadline, which frees their places.
    for ws in [*waiting[1:], extra]:
        answer = await receive(ws, timeout=5)
        assert answer["error"]["code"] == -32001
        assert await receive(ws) is None and ws.close_code == 4401
    again = [await http.ws_connect(ws_url) for _ in range(PER_ADDRESS)]
    for ws in [*again, waiting[0]]:
        await ws.close()
    await still_answers(http, jamono, slack, "after a socket flood")


def waiting_is(instance: GatewayInstance, count: int):
    async def check() -> bool:
        return instance.gateway.unauthenticated == count

    return check


async def test_unauthenticated_sockets_are_capped_overall(http):
    limits = GatewayLimits(heartbeat=1.0, max_unauthenticated=4,
                           max_unauthenticated_per_address=100)
    async with GatewayInstance(limits) as instance:
        waiting = await asyncio.gather(*(http.ws_connect(instance.url) for _ in range(4)))
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(instance.url)
        assert refused.value.status == 503
        assert instance.gateway.unauthenticated == 4
        await waiting[0].close()
        await wait_until(waiting_is(instance, 3))
        ws, _ = await register(http, instance.url, token())
        assert instance.gateway.unauthenticated == 3
        for socket in [*waiting[1:], ws]:
            await socket.close()
        await wait_until(waiting_is(instance, 0))


async def test_a_deep_but_allowed_tool_schema_is_answered(http):
    schema: dict = {"type": "object"}
    for _ in range(25):  # 50 JSON levels with the envelope: inside the default 64
        schema = {"type": "object", "properties": {"a": schema}}
    tool = {"name": "deep", "description": "d", "inputSchema": schema}
    async with GatewayInstance() as instance:
        ws, _ = await register(http, instance.url, token(), tools=[tool])
        await ws.close()


@pytest.mark.parametrize(
    "text, depth, deep",
    [
        ('{"a": "[[[[[[[[[["}', 2, False),  # brackets inside strings do not count
        ('{"a": "\\"[[[[", "b": [[1]]}', 3, False),  # nor after an escaped quote
        ('{"a": [[[1]]]}', 3, True),
        ('{"a": [[[1]]]}', 4, False),
        ("[]" * 10_000, 1, False),  # wide is fine
        ('"' + '\\"' * 50_000, 1, False),  # an unterminated string: one pass, not quadratic
        ("[[[", 10, True),  # unbalanced counts as too deep
    ],
)
def test_nesting_is_measured_outside_strings(text, depth, deep):
    assert too_deep(text, depth) is deep
