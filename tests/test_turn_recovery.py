"""A turn whose process is killed mid-way: the attack is ``kill -9`` (or a lost node) right after
an auto-approved write ran, while the model is still thinking.

Before: the turn stayed ``running`` forever, the person was never answered, and the write that
ran was missing from the conversation memory, so the next turn could do it again.
"""

from __future__ import annotations

import asyncio
import io
import signal
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from agents.memory import NOT_RECORDED, fit_history
from bot.console import run_console
from bot.services import Services
from bot.settings import load_settings
from bot.turns import ORPHAN_AFTER
from storage import migrate
from storage.db import create_engine, session_factory
from storage.models import LLMUsage, Message, Turn
from storage.models import ToolCall as ToolCallRow
from storage.repositories import Repositories
from storage.repositories.conversations import StoredMessage
from storage.tenancy import Tenant
from tests.e2e import (
    ACME,
    ACME_TOKEN,
    ALICE,
    BOT,
    SIGNING_SECRET,
    bot_token_settings,
    oauth_settings,
    slash_command,
    started,
)
from tests.fakes import ToolCall, post_event
from tests.fakes.llm import default_script
from tests.test_e2e_oauth import install

INCIDENTS = "C0INCIDENTS"
HANG = 8.0  # seconds the fake model takes on the call the process is killed in


async def mention(http, jamono, slack, text, thread_ts=None):
    event = slack.app_mention_event(ALICE, "C0OPS", f"<@{BOT}> {text}", thread_ts=thread_ts)
    status, _ = await post_event(http, jamono.url + "/slack/events", SIGNING_SECRET,
                                 slack.event_callback(ACME, event))
    assert status == 200
    return event


async def turn_statuses(database_url):
    engine = create_engine(database_url)
    try:
        async with session_factory(engine)() as session:
            rows = (await session.execute(select(Turn.status).order_by(Turn.id))).all()
    finally:
        await engine.dispose()
    return [row[0] for row in rows]


async def test_kill_9_after_an_auto_approved_write_closes_the_turn_and_keeps_the_write(
    http, slack, llm, sqlite_url, tmp_path
):
    def announce_then_hang(request):
        last = request["messages"][-1]
        if last["role"] == "user" and last["content"].startswith("announce "):
            llm.delay(HANG)  # the model's next call never returns before the kill
            return [ToolCall("slack_post_message", {"channel": f"<#{INCIDENTS}|incidents>",
                                                    "text": "payments API is down"})]
        return default_script(request)

    llm.script = announce_then_hang
    settings = bot_token_settings(slack, llm, sqlite_url) | {"JAMONO_INSTANCE_ID": "jamono-a"}
    first = await started(settings, tmp_path)
    done = await slash_command(http, first, slack, "/nox-config", "autoapprove slack_post_message")
    assert "slack_post_message" in done["text"], done
    event = await mention(http, first, slack, "announce payments API is down")
    await slack.wait_for("chat.postMessage", lambda p: p["channel"] == INCIDENTS)
    await llm.wait_for_requests(2)  # the write ran; the model is now thinking
    await first.wait_for_output('"tool_call"')
    assert await first.stop(signal.SIGKILL) == -signal.SIGKILL
    assert await turn_statuses(sqlite_url) == ["running"]  # what the dead process left
    llm.delay(0)

    second = await started(settings, tmp_path)
    try:
        (notice,) = await slack.wait_for(
            "chat.postMessage",
            lambda p: p.get("thread_ts") == event["ts"] and "interrupted" in p["text"])
        assert f"<@{ALICE}>" in notice.params["text"]
        assert "`slack_post_message`" in notice.params["text"]
        assert "ask again" in notice.params["text"]
        assert "interrupted" in await turn_statuses(sqlite_url)
        assert "running" not in await turn_statuses(sqlite_url)

        seen = len(llm.requests)
        await mention(http, second, slack, "did you post it?", thread_ts=event["ts"])
        await llm.wait_for_requests(seen + 1)
        request = llm.requests[seen]
        calls = [c for m in request["messages"] for c in m.get("tool_calls") or ()]
        assert [c["function"]["name"] for c in calls] == ["slack_post_message"]
        results = [m for m in request["messages"] if m["role"] == "tool"]
        assert [m["tool_call_id"] for m in results] == [calls[0]["id"]]
        assert NOT_RECORDED not in results[0]["content"]
        await slack.wait_for("chat.postMessage",
                             lambda p: p.get("thread_ts") == event["ts"] and "<echo>" in p["text"])
        # Exactly one post reached #incidents: nothing ran twice.
        posts = [c for c in slack.calls_to("chat.postMessage") if c.params["channel"] == INCIDENTS]
        assert len(posts) == 1
    finally:
        assert await second.stop() == 0, second.output


async def test_kill_9_right_after_an_answer_keeps_the_turn_its_tool_calls_and_usage(
    http, slack, llm, database_url, tmp_path
):
    """A turn answered is a turn stored: the answer is posted only after the turn's last
    transaction committed, so a process killed the moment it answered loses nothing."""

    def look_then_answer(request):
        if request["messages"][-1]["role"] == "user":
            return [ToolCall("get_time", {})]
        return "it is late"

    llm.script = look_then_answer
    await migrate.upgrade_async(database_url)  # only the embedded SQLite migrates itself
    settings = bot_token_settings(slack, llm, database_url)
    first = await started(settings, tmp_path)
    event = await mention(http, first, slack, "what time is it?")
    await slack.wait_for("chat.postMessage", lambda p: p.get("thread_ts") == event["ts"])
    assert await first.stop(signal.SIGKILL) == -signal.SIGKILL

    engine = create_engine(database_url)
    try:
        async with engine.connect() as connection:
            turns = (await connection.execute(select(Turn.id, Turn.status))).all()
            calls = (await connection.execute(
                select(ToolCallRow.turn_id, ToolCallRow.tool, ToolCallRow.status))).all()
            usage = (await connection.execute(
                select(LLMUsage.turn_id, LLMUsage.prompt_tokens).order_by(LLMUsage.id))).all()
            roles = (await connection.execute(
                select(Message.role).order_by(Message.id))).scalars().all()
    finally:
        await engine.dispose()
    ((turn_id, status),) = turns
    assert status == "ok"
    assert calls == [(turn_id, "get_time", "ok")]
    assert [row.turn_id for row in usage] == [turn_id, turn_id]
    assert all(row.prompt_tokens > 0 for row in usage)
    assert roles == ["user", "assistant", "tool", "assistant"]

    second = await started(settings, tmp_path)  # a restart finds the turn whole
    try:
        seen = len(llm.requests)
        await mention(http, second, slack, "and now?", thread_ts=event["ts"])
        await slack.wait_for("chat.postMessage", lambda p: p.get("thread_ts") == event["ts"],
                             count=2)
        remembered = [m["role"] for m in llm.requests[seen]["messages"][1:]]
    finally:
        assert await second.stop() == 0, second.output
    assert remembered == ["user", "assistant", "tool", "assistant", "user"]
    assert await turn_statuses(database_url) == ["ok", "ok"]  # nothing taken for interrupted


@pytest.mark.parametrize("install_kind", ["bot token", "oauth"])
async def test_a_running_replica_closes_the_turn_of_a_replica_that_died(
    http, slack, llm, sqlite_url, tmp_path, install_kind
):
    # The turn dies while this replica already runs: its periodic sweep must notice. With an
    # OAuth install the notice needs the workspace's own installation to reach Slack.
    settings = (bot_token_settings if install_kind == "bot token" else oauth_settings)(
        slack, llm, sqlite_url
    )
    process = await started(settings | {"JAMONO_TURN_HEARTBEAT": "0.5"}, tmp_path)
    try:
        if install_kind == "oauth":
            await install(http, process, slack, ACME, ACME_TOKEN, "code-acme")
        engine = create_engine(sqlite_url)
        try:
            repos = Repositories.over(session_factory(engine))
            dead, _ = await repos.conversations.begin_turn(
                Tenant(team_id=ACME), "C0OPS", "1700000000.000100", "nox", ALICE,
                owner="replica-b", messages=[{"role": "user", "content": "announce"}],
                tokens=[5])
            await repos.audit.record_tool_call(
                Tenant(team_id=ACME), turn_id=dead, persona="nox", user_id=ALICE,
                tool="slack_post_message", arguments={}, result_summary="posted <!channel>",
                status="ok", duration_ms=2)
        finally:
            await engine.dispose()
        # replica-b heartbeats no more; this one's sweep closes the turn after 4 × 0.5 s.
        (notice,) = await slack.wait_for(
            "chat.postMessage", lambda p: p.get("thread_ts") == "1700000000.000100")
        assert "interrupted" in notice.params["text"] and notice.token == ACME_TOKEN
        assert "`slack_post_message`: posted &lt;!channel&gt;" in notice.params["text"]
        for _ in range(100):  # the note is stored once the notice is posted
            if await turn_statuses(sqlite_url) == ["interrupted", "note"]:
                break
            await asyncio.sleep(0.05)
        assert await turn_statuses(sqlite_url) == ["interrupted", "note"]
    finally:
        assert await process.stop() == 0, process.output


# The sweep: a dead owner is told from a live one, on SQLite and PostgreSQL ------------------

T0 = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
TENANT = Tenant(team_id="T0ACME")


@pytest.fixture
def repos(engine) -> Repositories:
    return Repositories.over(session_factory(engine))


async def open_turn(repos, owner, thread, now):
    turn, _ = await repos.conversations.begin_turn(
        TENANT, "C1", thread, "nox", "U1", owner=owner,
        messages=[{"role": "user", "content": "hi"}], tokens=[5],
    )
    await repos.conversations.record_step(TENANT, turn, [], [], now=now)
    return turn


async def test_a_sweep_closes_the_dead_owners_turn_and_leaves_the_live_one(repos):
    dead = await open_turn(repos, "replica-dead", "1.1", T0)
    live = await open_turn(repos, "replica-live", "2.2", T0)
    await repos.conversations.heartbeat("replica-live", now=T0 + timedelta(seconds=50))
    closed = await repos.conversations.close_orphans(stale_before=T0 + timedelta(seconds=30))
    assert [t.turn_id for t in closed] == [dead]
    assert closed[0].owner == "replica-dead" and closed[0].thread_ts == "1.1"
    # A second sweep (another replica) closes nothing twice; the live turn still finishes.
    assert await repos.conversations.close_orphans(stale_before=T0 + timedelta(seconds=30)) == []
    await repos.conversations.finish_turn(TENANT, live, [], [], "ok", None, 10)


async def test_at_startup_an_instance_closes_its_own_turns_whatever_their_heartbeat(repos):
    mine = await open_turn(repos, "jamono-a", "1.1", T0)
    other = await open_turn(repos, "jamono-b", "2.2", T0)
    closed = await repos.conversations.close_orphans(
        stale_before=T0 - timedelta(hours=1), owner="jamono-a"
    )
    assert [t.turn_id for t in closed] == [mine]
    assert other not in [t.turn_id for t in closed]


async def test_steps_are_stored_as_they_happen_with_the_tool_calls_of_the_turn(repos):
    turn = await open_turn(repos, "jamono-a", "1.1", T0)
    call = {"id": "call_1", "type": "function",
            "function": {"name": "slack_post_message", "arguments": "{}"}}
    await repos.conversations.record_step(
        TENANT, turn, [{"role": "assistant", "content": None, "tool_calls": [call]}], [10])
    await repos.audit.record_tool_call(
        TENANT, turn_id=turn, persona="nox", user_id="U1", tool="slack_post_message",
        arguments={}, result_summary="posted", status="ok", duration_ms=3)
    await repos.conversations.record_step(
        TENANT, turn, [{"role": "tool", "tool_call_id": "call_1", "content": "posted"}], [4])
    (closed,) = await repos.conversations.close_orphans(stale_before=T0 + timedelta(minutes=1))
    assert [(c.tool, c.status) for c in closed.tool_calls] == [("slack_post_message", "ok")]
    history = await repos.conversations.recent_messages(TENANT, "C1", "1.1")
    assert [m.role for m in history] == ["user", "assistant", "tool"]


def stored(turn, role, content=None, tool_calls=None, tool_call_id=None):
    return StoredMessage(turn, role, content, tool_calls, tool_call_id, 10)


def test_memory_answers_a_call_whose_result_the_crash_lost():
    call = {"id": "call_9", "type": "function", "function": {"name": "jira", "arguments": "{}"}}
    history = fit_history(
        [stored(1, "user", "open a ticket"), stored(1, "assistant", tool_calls=[call]),
         stored(2, "user", "and?")],
        10_000,
    )
    assert [m["role"] for m in history] == ["user", "assistant", "tool", "user"]
    assert history[2] == {"role": "tool", "tool_call_id": "call_9", "content": NOT_RECORDED}


async def test_a_console_turn_outlasting_the_sweep_is_not_taken_for_dead(sqlite_url, llm, tmp_path):
    """``jamono console`` serves no Slack but shares the database: a server's sweep must not
    close its long turn while it still runs (its heartbeat goes on)."""
    heartbeat = 0.5
    services = await Services.start(load_settings(
        _env_file=None, DATABASE_URL=sqlite_url, OPENAI_BASE_URL=llm.base_url,
        OPENAI_API_KEY="sk-test", JAMONO_TURN_HEARTBEAT=str(heartbeat)))
    (tmp_path / "stdin").write_text("a slow question\n")
    llm.delay(heartbeat * ORPHAN_AFTER * 1.5)  # the model thinks past the sweeps' threshold
    try:
        with (tmp_path / "stdin").open() as stdin:  # noqa: ASYNC230 (a local file, once)
            console = asyncio.create_task(run_console(services, stdin=stdin, stdout=io.StringIO()))
            await llm.wait_for_requests(1)
            closed = []
            while not console.done():  # a server's sweep, every heartbeat, while it thinks
                stale_before = datetime.now(UTC) - timedelta(seconds=heartbeat * ORPHAN_AFTER)
                closed += await services.repos.conversations.close_orphans(
                    stale_before=stale_before)
                await asyncio.sleep(heartbeat)
            await console
    finally:
        await services.close()
    assert closed == []
    assert await turn_statuses(sqlite_url) == ["ok"]
