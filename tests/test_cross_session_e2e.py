"""The real ``jamono run`` process with the gateway: a Slack mention that lists the user's
sessions and runs an action in one, ``/nox-link``, and ``jamono gateway token``."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys

import pytest

from integrations.cross_session.client import SessionClient
from integrations.cross_session.protocol import Owner
from tests.cross_session_support import SECRET, VERIFIER, GatewayProcess, token
from tests.e2e import (
    ACME,
    ACME_TOKEN,
    ALICE,
    SIGNING_SECRET,
    approval_id,
    base_settings,
    click,
    has_buttons,
    started,
)
from tests.fakes import ToolCall
from tests.process import PASS_THROUGH
from tests.test_e2e_http import command, in_thread, mention


@pytest.fixture
def settings(slack, llm, sqlite_url):
    return base_settings(slack, llm, sqlite_url) | {
        "SLACK_BOT_TOKEN": ACME_TOKEN, "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "JAMONO_GATEWAY_SECRET": SECRET, "JAMONO_GATEWAY_HEARTBEAT": "1",
    }


@pytest.fixture
async def jamono(settings, tmp_path):
    process = await started(settings, tmp_path)
    yield process
    assert await process.stop() == 0, process.output


def agent_script(request):
    """List the sessions, run read_range in the first, then report the result."""
    last = request["messages"][-1]
    if last["role"] == "user":
        return [ToolCall("list_sessions", {})]
    result = json.loads(last["content"])
    if "sessions" in result:
        session_id = result["sessions"][0]["session_id"]
        return [ToolCall("execute_on_session", {"session_id": session_id, "tool": "read_range",
                                                "arguments": {"range": "A1:B2"}})]
    return f"Revenue table: {result['structuredContent']['values']}"


async def test_mention_lists_sessions_and_runs_a_tool(http, jamono, slack, llm, sqlite_url):
    client = SessionClient(jamono.url.replace("http", "ws") + "/ws", token(ACME, ALICE),
                           app="excel", title="Budget Q4.xlsx")
    seen = []

    @client.tool(annotations={"readOnlyHint": True},
                 input_schema={"type": "object", "properties": {"range": {"type": "string"}}})
    async def read_range(range: str) -> dict:
        """Read the cells of a range"""
        seen.append(range)
        return {"values": [["Q4", 1200]]}

    runner = asyncio.create_task(client.run())
    await asyncio.wait_for(client.registered.wait(), 10)
    llm.script = agent_script
    event = await mention(http, jamono, slack, "copy the revenue table from my Budget sheet")
    (answer,) = await slack.wait_for("chat.postMessage", in_thread(event["ts"]))
    assert answer.params["text"] == "Revenue table: [['Q4', 1200]]"
    assert seen == ["A1:B2"]
    footer = answer.params["blocks"][-1]["elements"][0]["text"]
    assert "list_sessions" in footer and "execute_on_session" in footer
    # The model was offered the tools and saw the session's title.
    offered = {t["function"]["name"] for t in llm.requests[0]["tools"]}
    assert {"list_sessions", "execute_on_session"} <= offered
    assert "Budget Q4.xlsx" in llm.requests[1]["messages"][-1]["content"]
    # Every call is in the audit trail, with who asked.
    database = sqlite_url.removeprefix("sqlite+aiosqlite:///")
    with sqlite3.connect(database) as db:
        rows = db.execute(
            "SELECT tool, user_id, status FROM tool_calls ORDER BY id"
        ).fetchall()
    assert rows == [("list_sessions", ALICE, "ok"), ("execute_on_session", ALICE, "ok")]
    await client.close()
    await runner


def paste_script(request):
    """List the sessions, then paste into the first one (a write: no readOnlyHint)."""
    last = request["messages"][-1]
    if last["role"] == "user":
        return [ToolCall("list_sessions", {})]
    result = json.loads(last["content"]) if last["content"].startswith("{") else {}
    if "sessions" in result:
        session_id = result["sessions"][0]["session_id"]
        return [ToolCall("execute_on_session", {"session_id": session_id, "tool": "paste_table",
                                                "arguments": {"at": "Report!A1"}})]
    return "The paste waits for your approval."


async def test_a_write_in_a_session_waits_for_approval_and_runs_once(http, jamono, slack, llm):
    client = SessionClient(jamono.url.replace("http", "ws") + "/ws", token(ACME, ALICE),
                           app="word", title="Report.docx")
    pasted = []

    @client.tool(input_schema={"type": "object", "properties": {"at": {"type": "string"}}})
    async def paste_table(at: str) -> str:
        """Paste the copied table"""
        pasted.append(at)
        return "pasted"

    runner = asyncio.create_task(client.run())
    await asyncio.wait_for(client.registered.wait(), 10)
    llm.script = paste_script
    event = await mention(http, jamono, slack, "paste the revenue table into my report")
    (request,) = await slack.wait_for(
        "chat.postMessage", lambda p: p.get("thread_ts") == event["ts"] and has_buttons(p))
    assert "`execute_on_session`" in str(request.blocks) and "paste_table" in str(request.blocks)
    assert pasted == []  # nothing ran on the model's word
    request_id = approval_id(request)
    await asyncio.gather(*(click(http, jamono, slack, request, request_id) for _ in range(3)))
    await slack.wait_for("chat.postMessage", lambda p: p.get("thread_ts") == event["ts"]
                         and "ran" in p.get("text", ""))
    assert pasted == ["Report!A1"]  # once, whatever the clicks
    await client.close()
    await runner


async def test_nox_link_dms_a_token_bound_to_the_user(http, jamono, slack):
    reply = await command(http, jamono, slack, "/nox-link")
    assert "direct message" in reply["text"]
    (dm,) = await slack.wait_for("chat.postMessage", lambda p: p["channel"] == ALICE)
    jwt_token = dm.params["text"].split("```")[1]
    assert VERIFIER.verify(jwt_token).owner == Owner(ACME, ALICE)
    assert jwt_token not in reply["text"]  # only in the DM


def test_gateway_token_command(tmp_path):
    env = {k: v for k, v in os.environ.items() if k in PASS_THROUGH}
    env |= {"JAMONO_GATEWAY_SECRET": SECRET}
    done = subprocess.run(
        [sys.executable, "-m", "bot", "gateway", "token", "--team", "T9", "--user", "U9",
         "--ttl", "120"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr
    identity = VERIFIER.verify(done.stdout.strip())
    assert identity.owner == Owner("T9", "U9")
    missing = subprocess.run(
        [sys.executable, "-m", "bot", "gateway", "token", "--team", "T9", "--user", "U9"],
        cwd=tmp_path, env={k: v for k, v in env.items() if k != "JAMONO_GATEWAY_SECRET"},
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert missing.returncode == 2 and "JAMONO_GATEWAY_SECRET" in missing.stderr


async def test_mention_on_instance_a_reaches_a_client_on_instance_b(
    http, settings, slack, llm, redis_url, tmp_path
):
    b = GatewayProcess({"JAMONO_GATEWAY_SECRET": SECRET, "REDIS_URL": redis_url,
                        "JAMONO_GATEWAY_HEARTBEAT": "1",
                        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'b.db'}"}, tmp_path)
    await b.start()
    a = await started(settings | {"REDIS_URL": redis_url}, tmp_path)
    try:
        client = SessionClient(b.url, token(ACME, ALICE), app="excel", title="Budget Q4.xlsx")

        @client.tool(annotations={"readOnlyHint": True})
        async def read_range(range: str) -> dict:
            """Read the cells of a range"""
            return {"values": [["B", range]]}

        runner = asyncio.create_task(client.run())
        await asyncio.wait_for(client.registered.wait(), 10)
        llm.script = agent_script
        event = await mention(http, a, slack, "copy the revenue table from my Budget sheet")
        (answer,) = await slack.wait_for("chat.postMessage", in_thread(event["ts"]))
        assert answer.params["text"] == "Revenue table: [['B', 'A1:B2']]"
        await client.close()
        await runner
    finally:
        assert await a.stop() == 0, a.output
        await b.kill()
