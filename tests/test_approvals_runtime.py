"""The policy gate in the agent loop: real database, fake LLM, fake Slack at the wire."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from agents.personas import NOX
from agents.runtime import TurnRequest
from bot.approvals import STALLED_AFTER, STALLED_RESULT, Click
from bot.services import Services
from bot.settings import load_settings
from bot.slack_client import web_client
from storage import migrate
from storage.models import ApprovalRequest
from storage.models import ToolCall as ToolCallRow
from storage.repositories.approvals import State
from storage.tenancy import Tenant
from tests.e2e import ACME_TOKEN
from tests.fakes import ToolCall

ACME = Tenant("T0ACME")
POST = ToolCall("slack_post_message", {"channel": "<#C0INC|incidents>", "text": "API is down"})


@pytest.fixture
async def services(database_url, llm):
    """Services on a SQLite file and on PostgreSQL (migrated first, as an operator does)."""
    await migrate.upgrade_async(database_url)
    settings = load_settings(
        _env_file=None,
        DATABASE_URL=database_url,
        OPENAI_BASE_URL=llm.base_url,
        OPENAI_API_KEY="sk-test",
        JAMONO_TOOL_TIMEOUT=5,
        JAMONO_APPROVAL_TTL=2,
    )
    services = await Services.start(settings)
    yield services
    await services.close()


@pytest.fixture
def client(slack):
    return web_client(slack.api_url, ACME_TOKEN)


def calls(*replies):
    """An LLM script: the given tool calls first, then echo what the tool said."""

    def script(request):
        last = request["messages"][-1]
        if last["role"] == "tool":
            return f"Tool said: {last['content']}"
        return list(replies)

    return script


def ask(client, channel="C0OPS", thread="100.1", text="announce the outage") -> TurnRequest:
    return TurnRequest(
        tenant=ACME,
        persona=NOX,
        channel_id=channel,
        thread_ts=thread,
        user_id="U0ALICE",
        text=text,
        timezone="Europe/Paris",
        slack=client,
    )


async def audit(services) -> list[ToolCallRow]:
    async with services.repos.audit._sessions() as session:
        return list((await session.scalars(select(ToolCallRow).order_by(ToolCallRow.id))).all())


def blocks_of(call):
    blocks = call.params["blocks"]
    return json.loads(blocks) if isinstance(blocks, str) else blocks


def posts_to(slack, channel):
    return [c for c in slack.calls_to("chat.postMessage") if c.params["channel"] == channel]


@pytest.mark.parametrize(
    "zone_channel, zone_tools, told",
    [
        ("C0WAR", None, "act only in <#C0WAR>, not in <#C0OPS>"),
        ("C0OPS", ["get_time"], "use only `get_time` in <#C0OPS>, not `slack_post_message`"),
    ],
)
async def test_outside_the_action_zone_the_model_is_told_why_and_nothing_happens(
    services, llm, slack, client, zone_channel, zone_tools, told
):
    await services.repos.policy.set_zone(ACME, "nox", zone_channel, zone_tools, "U0ADMIN")
    llm.script = calls(POST)
    outcome = await services.runtime.run(ask(client))
    assert [r.status for r in outcome.tool_runs] == ["refused"]
    assert told in outcome.text and "Nothing was done" in outcome.text
    assert "/nox-config zone" in outcome.text
    assert slack.calls_to("chat.postMessage") == []
    assert await services.repos.approvals.pending_for(ACME) == []
    (row,) = await audit(services)
    assert (row.tool, row.status) == ("slack_post_message", "refused")


async def test_zones_govern_read_tools_too_and_allow_inside(services, llm, client):
    await services.repos.policy.set_zone(ACME, "nox", "C0OPS", None, "U0ADMIN")
    llm.script = calls(ToolCall("get_time", {}))
    inside = await services.runtime.run(ask(client, channel="C0OPS"))
    outside = await services.runtime.run(ask(client, channel="C0ELSE", thread="100.2"))
    assert [r.status for r in inside.tool_runs] == ["ok"]
    assert [r.status for r in outside.tool_runs] == ["refused"]


async def test_a_write_tool_becomes_an_approval_request_in_the_thread(
    services, llm, slack, client
):
    llm.script = calls(POST)
    outcome = await services.runtime.run(ask(client))
    assert [r.status for r in outcome.tool_runs] == ["awaiting_approval"]
    assert "has NOT run yet" in outcome.text
    (request,) = await services.repos.approvals.pending_for(ACME)
    assert request.arguments == POST.arguments and request.tool == "slack_post_message"
    assert request.target == "Slack channel <#C0INC>" and request.requested_by == "U0ALICE"
    assert (request.channel_id, request.thread_ts) == ("C0OPS", "100.1")
    assert timedelta(hours=1.9) < request.expires_at - datetime.now(UTC) <= timedelta(hours=2)
    (message,) = slack.calls_to("chat.postMessage")  # only the approval message
    assert message.params["channel"] == "C0OPS" and message.params["thread_ts"] == "100.1"
    blocks = blocks_of(message)
    (actions,) = [b for b in blocks if b["type"] == "actions"]
    assert [(e["action_id"], e["value"]) for e in actions["elements"]] == [
        ("approval_approve", request.id),
        ("approval_reject", request.id),
    ]
    shown = json.dumps(blocks)
    assert "API is down" in shown and "slack_post_message" in shown and "*NOX*" in shown
    assert request.message_ts is not None
    (row,) = await audit(services)
    assert row.status == "awaiting_approval"
    kinds = [e.kind for e in await services.repos.events.recent(ACME)]
    assert kinds == ["approval_requested"]


@pytest.mark.parametrize("channels", [[None], ["C0OPS", "C0INC"]])
async def test_auto_approved_write_tools_run_at_once(services, llm, slack, client, channels):
    for channel_id in channels:  # workspace-wide, or where it is asked and where it posts
        await services.repos.policy.set_auto_approve(
            ACME, "slack_post_message", True, "U0ADMIN", channel_id
        )
    llm.script = calls(POST)
    outcome = await services.runtime.run(ask(client))
    assert [r.status for r in outcome.tool_runs] == ["ok"]
    (posted,) = posts_to(slack, "C0INC")
    assert posted.params["text"] == "API is down"
    assert await services.repos.approvals.pending_for(ACME) == []


async def test_auto_approval_here_does_not_cover_posting_elsewhere(services, llm, slack, client):
    await services.repos.policy.set_auto_approve(ACME, "slack_post_message", True, "U0ADMIN",
                                                 "C0OPS")
    llm.script = calls(POST)  # asked in C0OPS, posts into C0INC
    outcome = await services.runtime.run(ask(client))
    assert [r.status for r in outcome.tool_runs] == ["awaiting_approval"]
    assert posts_to(slack, "C0INC") == []


async def test_a_zone_limits_where_a_persona_posts_not_only_where_it_is_asked(
    services, llm, slack, client
):
    await services.repos.policy.set_zone(ACME, "nox", "C0OPS", None, "U0ADMIN")
    llm.script = calls(POST)  # asked inside its zone, posting outside it
    outcome = await services.runtime.run(ask(client))
    assert [r.status for r in outcome.tool_runs] == ["refused"]
    assert posts_to(slack, "C0INC") == []


async def test_a_channel_rule_requiring_approval_beats_workspace_auto_approve(
    services, llm, slack, client
):
    policy = services.repos.policy
    await policy.set_auto_approve(ACME, "slack_post_message", True, "U0ADMIN")
    await policy.set_auto_approve(ACME, "slack_post_message", False, "U0ADMIN", "C0OPS")
    llm.script = calls(POST)
    outcome = await services.runtime.run(ask(client))
    assert [r.status for r in outcome.tool_runs] == ["awaiting_approval"]
    assert posts_to(slack, "C0INC") == []


async def test_read_tools_are_not_gated(services, llm, slack, client):
    llm.script = calls(ToolCall("get_time", {}))
    outcome = await services.runtime.run(ask(client))
    assert [r.status for r in outcome.tool_runs] == ["ok"]
    assert slack.calls_to("chat.postMessage") == []


async def test_without_slack_a_write_needing_approval_is_refused(services, llm):
    llm.script = calls(POST)
    outcome = await services.runtime.run(ask(None))
    assert [r.status for r in outcome.tool_runs] == ["refused"]
    assert "not in Slack" in outcome.text
    assert await services.repos.approvals.pending_for(ACME) == []


async def test_an_approved_request_runs_exactly_once_and_the_next_turn_knows(
    services, llm, slack, client
):
    llm.script = calls(POST)
    await services.runtime.run(ask(client))
    (request,) = await services.repos.approvals.pending_for(ACME)
    gate = services.runtime.gate
    assert await gate.execute(ACME, request.id, client) is None  # not approved yet
    decision = await services.repos.approvals.decide(ACME, request.id, "U0ALICE", approve=True)
    assert decision.won
    runs = await asyncio.gather(*(gate.execute(ACME, request.id, client) for _ in range(5)))
    (execution,) = [run for run in runs if run is not None]
    assert execution.ok and '"channel": "C0INC"' in execution.result
    assert len(posts_to(slack, "C0INC")) == 1
    done = await services.repos.approvals.get(ACME, request.id)
    assert done.state == State.EXECUTED and done.result_summary == execution.result
    assert [e.kind for e in await services.repos.events.recent(ACME)] == [
        "action_executed",
        "approval_decided",
        "approval_requested",
    ]
    assert [r.status for r in await audit(services)] == ["awaiting_approval", "ok"]

    llm.script = lambda request: "noted"
    await services.runtime.run(ask(client, text="did it go out?"))
    notes = [m["content"] for m in llm.requests[-1]["messages"][1:] if m["role"] == "system"]
    assert len(notes) == 1 and notes[0].startswith("Approval update: <@U0ALICE> approved")
    assert "it ran" in notes[0]
    figures = await services.repos.metrics.usage_since(ACME, datetime.now(UTC) - timedelta(1))
    assert figures.turns == 2  # the note is not counted as an exchange


async def test_a_failing_approved_action_is_recorded_as_failed(services, llm, slack, client):
    llm.script = calls(ToolCall("slack_post_message", {"channel": "C0INC", "text": "hello"}))
    await services.runtime.run(ask(client))
    (request,) = await services.repos.approvals.pending_for(ACME)
    await services.repos.approvals.decide(ACME, request.id, "U0ALICE", approve=True)
    slack.fail_next("chat.postMessage", status=500)  # not retried: posting is not idempotent
    execution = await services.runtime.gate.execute(ACME, request.id, client)
    assert not execution.ok and "error:" in execution.result
    assert (await services.repos.approvals.get(ACME, request.id)).state == State.FAILED


async def test_an_action_cut_short_by_shutdown_is_recorded_as_interrupted(
    services, llm, slack, client
):
    llm.script = calls(POST)
    await services.runtime.run(ask(client))
    (request,) = await services.repos.approvals.pending_for(ACME)
    await services.repos.approvals.decide(ACME, request.id, "U0ALICE", approve=True)
    slack.delay("chat.postMessage", 2)  # the post is still in flight when the task is cut
    running = asyncio.create_task(services.runtime.gate.execute(ACME, request.id, client))
    await slack.wait_for("chat.postMessage", lambda p: p.get("channel") == "C0INC")
    running.cancel()  # what draining at shutdown does to a task past its grace
    with pytest.raises(asyncio.CancelledError):
        await running
    done = await services.repos.approvals.get(ACME, request.id)
    assert done.state == State.FAILED and "interrupted by a restart" in done.result_summary
    assert [r.status for r in await audit(services)] == ["awaiting_approval", "error"]


async def test_an_approved_request_left_unstarted_runs_on_the_next_approve_only(
    services, llm, slack, client
):
    """A process that died between decide and start_execution leaves it ``approved``: a later
    Approve runs it once; a Reject click does not run it."""
    llm.script = calls(POST)
    await services.runtime.run(ask(client))
    (request,) = await services.repos.approvals.pending_for(ACME)
    await services.repos.approvals.decide(ACME, request.id, "U0ALICE", approve=True)

    def clicked(approve):
        return Click(ACME, request.id, "U0ALICE", approve, "C0OPS", request.message_ts)

    await services.approvals.click(clicked(False), client)
    (told,) = slack.calls_to("chat.postEphemeral")
    assert "about to run" in told.params["text"] and posts_to(slack, "C0INC") == []
    await asyncio.gather(*(services.approvals.click(clicked(True), client) for _ in range(3)))
    assert len(posts_to(slack, "C0INC")) == 1
    assert (await services.repos.approvals.get(ACME, request.id)).state == State.EXECUTED


async def test_the_sweep_closes_an_execution_orphaned_by_a_dead_process(
    services, llm, slack, client, database_url
):
    """A process killed mid-action leaves the request ``executing``; once the tool timeout and
    the margin have passed, the sweep marks it failed, on its message and in the thread."""
    llm.script = calls(POST)
    await services.runtime.run(ask(client))
    (request,) = await services.repos.approvals.pending_for(ACME)
    await services.repos.approvals.decide(ACME, request.id, "U0ALICE", approve=True)
    # What the dead process did before dying: it won the start, and never finished.
    await services.repos.approvals.start_execution(ACME, request.id)

    async def client_for(tenant):
        return client if tenant == ACME else None

    await services.approvals.sweep(client_for)
    assert (await services.repos.approvals.get(ACME, request.id)).state is State.EXECUTING

    long_ago = datetime.now(UTC) - STALLED_AFTER - timedelta(seconds=6)  # tool timeout is 5 s
    async with services.engine.begin() as connection:
        await connection.execute(
            update(ApprovalRequest)
            .where(ApprovalRequest.id == request.id)
            .values(execution_started_at=long_ago)
        )
    await services.approvals.sweep(client_for)

    closed = await services.repos.approvals.get(ACME, request.id)
    assert closed.state is State.FAILED and closed.result_summary == STALLED_RESULT
    (updated,) = slack.calls_to("chat.update")
    assert updated.params["ts"] == request.message_ts
    assert "but it failed" in updated.params["text"] and "may or may not" in updated.params["text"]
    history = await services.repos.conversations.recent_messages(ACME, "C0OPS", "100.1")
    assert "may or may not have taken effect" in history[-1].content
    assert posts_to(slack, "C0INC") == []  # closing it runs nothing
