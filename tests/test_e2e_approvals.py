"""Approvals through Slack against the real ``jamono run`` process: buttons, clicks, expiry,
zones, and exactly one execution whatever the clicks, retries and restarts."""

from __future__ import annotations

import asyncio
import json

import pytest

from storage.db import create_engine, session_factory
from storage.repositories import Repositories
from storage.tenancy import Tenant
from tests.e2e import (
    ACME,
    ACME_TOKEN,
    ALICE,
    BOB,
    BOT,
    SIGNING_SECRET,
    base_settings,
    click,
    has_buttons,
    started,
)
from tests.fakes import ToolCall, post_event, post_form
from tests.fakes.llm import default_script

INCIDENTS = "C0INCIDENTS"
CAROL = "U0CAROL"  # a second workspace admin


@pytest.fixture
def settings(slack, llm, sqlite_url):
    slack.add_user(ACME, CAROL, "carol", "carol@acme.test", is_admin=True)
    llm.script = announcing
    return base_settings(slack, llm, sqlite_url) | {
        "SLACK_BOT_TOKEN": ACME_TOKEN, "SLACK_SIGNING_SECRET": SIGNING_SECRET,
    }


@pytest.fixture
async def jamono(settings, tmp_path):
    process = await started(settings, tmp_path)
    yield process
    assert await process.stop() == 0, process.output


def announcing(request):
    """The model posts "announce X" messages to #incidents; otherwise the default script."""
    last = request["messages"][-1]
    users = [m["content"] for m in request["messages"] if m["role"] == "user"]
    if last["role"] == "user" and users[-1].startswith("announce "):
        text = users[-1].removeprefix("announce ")
        return [ToolCall("slack_post_message", {"channel": f"<#{INCIDENTS}|incidents>",
                                                "text": text})]
    return default_script(request)


async def mention(http, jamono, slack, text, user=ALICE, channel="C0OPS", thread_ts=None):
    event = slack.app_mention_event(user, channel, f"<@{BOT}> {text}", thread_ts=thread_ts)
    status, _ = await post_event(http, jamono.url + "/slack/events", SIGNING_SECRET,
                                 slack.event_callback(ACME, event))
    assert status == 200
    return event


async def request_approval(http, jamono, slack, text="announce payments API is down",
                           user=ALICE):
    """Mention NOX so it asks to post; returns (mention event, approval message call, id)."""
    event = await mention(http, jamono, slack, text, user=user)
    (message,) = await slack.wait_for(
        "chat.postMessage", lambda p: p.get("thread_ts") == event["ts"] and has_buttons(p)
    )
    (actions,) = [b for b in message.blocks if b["type"] == "actions"]
    return event, message, actions["elements"][0]["value"]


async def handled_clicks(jamono, count, timeout=10.0):
    """Wait until the process logged ``count`` decided clicks (each click logs one line)."""
    for _ in range(int(timeout / 0.05)):
        if jamono.count('"approval_click"') >= count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"expected {count} handled clicks:\n{jamono.output}")


async def audit_kinds(database_url):
    """The workspace's audit events, oldest first, read from the process's database."""
    engine = create_engine(database_url)
    try:
        events = await Repositories.over(session_factory(engine)).events.recent(Tenant(ACME))
    finally:
        await engine.dispose()
    return [event.kind for event in reversed(events)]


def posts_to(slack, channel):
    return [c for c in slack.calls_to("chat.postMessage") if c.params["channel"] == channel]


def updates_of(slack, message):
    return [c for c in slack.calls_to("chat.update")
            if c.params["ts"] == message.response["ts"]]


async def test_approve_runs_once_despite_double_clicks_two_approvers_and_retries(
    http, jamono, slack, llm, sqlite_url
):
    event, message, request_id = await request_approval(http, jamono, slack)
    # The model was told the action waits; its answer says so in the thread.
    answer = (await slack.wait_for(
        "chat.postMessage", lambda p: p.get("thread_ts") == event["ts"], count=2))[1]
    assert "has NOT run yet" in answer.params["text"]
    assert "awaiting approval" in str(answer.params["blocks"])
    shown = str(message.blocks)
    for part in ("*NOX*", "`slack_post_message`", f"Slack channel <#{INCIDENTS}>",
                 "payments API is down", f"<@{ALICE}>"):
        assert part in shown
    assert posts_to(slack, INCIDENTS) == []

    fields = slack.block_actions_payload(ACME, ALICE, message, "approval_approve", request_id)
    url = jamono.url + "/slack/events"
    statuses = await asyncio.gather(
        post_form(http, url, SIGNING_SECRET, fields),  # Alice ...
        post_form(http, url, SIGNING_SECRET, fields),  # ... double-clicks
        post_form(http, url, SIGNING_SECRET, fields, retry_num=1, retry_reason="http_timeout"),
        click(http, jamono, slack, message, request_id, user=CAROL),  # a second approver
    )
    assert all(status == 200 for status, *_ in statuses[:3])
    await handled_clicks(jamono, 4)
    (ran,) = await slack.wait_for(
        "chat.postMessage", lambda p: p.get("thread_ts") == event["ts"] and "ran" in p["text"])
    assert "approved by <@" in ran.params["text"]
    (posted,) = posts_to(slack, INCIDENTS)
    assert posted.params["text"] == "payments API is down"
    (update,) = updates_of(slack, message)
    assert "actions" not in [b["type"] for b in update.blocks]  # no buttons left
    assert "✅ Approved by" in str(update.blocks) and posted.response["ts"] in str(update.blocks)

    # A click on the finished request changes nothing and says why.
    told = len(slack.calls_to("chat.postEphemeral"))
    await click(http, jamono, slack, message, request_id, user=ALICE)
    late = (await slack.wait_for("chat.postEphemeral", count=told + 1))[-1]
    assert late.params["user"] == ALICE and "Already approved" in late.params["text"]
    assert len(posts_to(slack, INCIDENTS)) == 1 and len(updates_of(slack, message)) == 1
    assert await audit_kinds(sqlite_url) == [
        "approval_requested", "approval_decided", "action_executed"
    ]


async def test_reject_is_recorded_and_the_model_hears_of_it(http, jamono, slack, llm):
    event, message, request_id = await request_approval(http, jamono, slack)
    await click(http, jamono, slack, message, request_id, approve=False)
    (update,) = await slack.wait_for("chat.update", lambda p: p["ts"] == message.response["ts"])
    assert f"🚫 Rejected by <@{ALICE}>" in str(update.blocks)
    assert "actions" not in [b["type"] for b in update.blocks]
    await click(http, jamono, slack, message, request_id)  # approving afterwards does nothing
    await slack.wait_for("chat.postEphemeral", lambda p: "Already rejected" in p["text"])
    assert posts_to(slack, INCIDENTS) == []

    await mention(http, jamono, slack, "did it go out?", thread_ts=event["ts"])
    await slack.wait_for("chat.postMessage", lambda p: "did it go out?" in p.get("text", ""))
    notes = [m["content"] for m in llm.requests[-1]["messages"][1:] if m["role"] == "system"]
    assert len(notes) == 1 and f"<@{ALICE}> rejected `slack_post_message`" in notes[0]


async def test_someone_not_allowed_gets_an_ephemeral_refusal(http, jamono, slack, sqlite_url):
    event, message, request_id = await request_approval(http, jamono, slack)
    await click(http, jamono, slack, message, request_id, user=BOB)  # neither requester nor admin
    (refusal,) = await slack.wait_for("chat.postEphemeral")
    assert refusal.params["user"] == BOB and refusal.params["thread_ts"] == event["ts"]
    assert f"Only <@{ALICE}> or a workspace admin" in refusal.params["text"]
    assert slack.calls_to("chat.update") == [] and posts_to(slack, INCIDENTS) == []
    assert await audit_kinds(sqlite_url) == ["approval_requested", "approval_denied"]
    # The request is still open for those who may decide.
    await click(http, jamono, slack, message, request_id, user=ALICE)
    await slack.wait_for("chat.update", lambda p: "Approved by" in str(p.get("blocks")))
    assert len(posts_to(slack, INCIDENTS)) == 1


async def test_only_admins_when_the_workspace_says_so(http, jamono, slack):
    await command(http, jamono, slack, "/nox-config", "approvers admins")
    _, message, request_id = await request_approval(http, jamono, slack, user=BOB)
    await click(http, jamono, slack, message, request_id, user=BOB)  # the requester himself
    await slack.wait_for("chat.postEphemeral", lambda p: "Only workspace admins" in p["text"])
    await click(http, jamono, slack, message, request_id, user=CAROL)
    await slack.wait_for("chat.update", lambda p: f"Approved by <@{CAROL}>" in str(p["blocks"]))
    assert len(posts_to(slack, INCIDENTS)) == 1


async def test_expiry_updates_the_message_and_a_late_click_is_told(
    http, slack, llm, settings, tmp_path
):
    process = await started(settings | {"JAMONO_APPROVAL_TTL": "0.0005"}, tmp_path)  # 1.8 s
    try:
        _, message, request_id = await request_approval(http, process, slack)
        # Nobody clicks: the background sweep marks it expired and updates the message.
        (update,) = await slack.wait_for(
            "chat.update", lambda p: p["ts"] == message.response["ts"], timeout=15)
        assert "⌛ Expired" in str(update.blocks)
        assert "actions" not in [b["type"] for b in update.blocks]
        await click(http, process, slack, message, request_id)
        (late,) = await slack.wait_for("chat.postEphemeral")
        assert "expired" in late.params["text"] and late.params["user"] == ALICE
        assert posts_to(slack, INCIDENTS) == []
    finally:
        assert await process.stop() == 0, process.output


async def test_a_click_after_expiry_is_told_it_expired(http, slack, llm, settings, tmp_path):
    # With a 3.6 s TTL the sweep runs every second, so the click or the sweep may expire the
    # request first (test_storage_actions covers the click doing it); either way the clicker is
    # told, the message says so and nothing runs.
    process = await started(settings | {"JAMONO_APPROVAL_TTL": "0.001"}, tmp_path)  # 3.6 s
    try:
        _, message, request_id = await request_approval(http, process, slack)
        await asyncio.sleep(3.7)
        await click(http, process, slack, message, request_id)
        await slack.wait_for("chat.postEphemeral", lambda p: "expired" in p["text"])
        await slack.wait_for("chat.update", lambda p: "⌛ Expired" in str(p["blocks"]))
        assert posts_to(slack, INCIDENTS) == []
    finally:
        assert await process.stop() == 0, process.output


async def test_outside_the_action_zone_nothing_is_posted(http, jamono, slack, llm):
    done = await command(http, jamono, slack, "/nox-config", "zone <#C0WARROOM|war-room> all")
    assert "NOX may now act in <#C0WARROOM>" in done["text"]
    event = await mention(http, jamono, slack, "announce payments API is down")
    (answer,) = await slack.wait_for("chat.postMessage",
                                     lambda p: p.get("thread_ts") == event["ts"])
    told = llm.requests[-1]["messages"][-1]
    assert told["role"] == "tool" and "act only in <#C0WARROOM>" in told["content"]
    assert "act only in <#C0WARROOM>" in answer.params["text"]
    assert not has_buttons(answer.params) and posts_to(slack, INCIDENTS) == []


async def test_a_restart_between_request_and_click_still_runs_once(
    http, slack, settings, tmp_path
):
    first = await started(settings, tmp_path)
    _, message, request_id = await request_approval(http, first, slack)
    assert await first.stop() == 0
    second = await started(settings, tmp_path)
    try:
        await asyncio.gather(*(click(http, second, slack, message, request_id, user=user)
                               for user in (ALICE, ALICE, CAROL)))
        await handled_clicks(second, 3)
        await slack.wait_for("chat.update", lambda p: "Approved by" in str(p["blocks"]))
        assert len(posts_to(slack, INCIDENTS)) == 1
    finally:
        assert await second.stop() == 0, second.output


async def command(http, jamono, slack, name, text="", user=ALICE):
    fields = slack.slash_command_payload(ACME, user, "C0OPS", name, text)
    status, _ = await post_form(http, jamono.url + "/slack/events", SIGNING_SECRET, fields)
    assert status == 200
    url_id = fields["response_url"].rsplit("/", 1)[1]

    async def answered():
        while True:
            for posted_id, body in slack.responses:
                if posted_id == url_id:
                    return body
            await asyncio.sleep(0.05)

    return await asyncio.wait_for(answered(), 10)


async def test_approval_over_socket_mode(slack, llm, sqlite_url, tmp_path):
    app_token = "xapp-1-A0JAMONO-test"
    slack.add_app_token(app_token)
    llm.script = announcing
    process = await started(base_settings(slack, llm, sqlite_url) | {
        "SLACK_BOT_TOKEN": ACME_TOKEN, "SLACK_APP_TOKEN": app_token,
    }, tmp_path)
    try:
        await slack.wait_for_socket_connections(1)
        event = slack.app_mention_event(ALICE, "C0OPS", f"<@{BOT}> announce deploy frozen")
        await slack.socket_send_envelope("events_api", slack.event_callback(ACME, event))
        (message,) = await slack.wait_for(
            "chat.postMessage", lambda p: p.get("thread_ts") == event["ts"] and has_buttons(p))
        (actions,) = [b for b in message.blocks if b["type"] == "actions"]
        fields = slack.block_actions_payload(ACME, ALICE, message, "approval_approve",
                                             actions["elements"][0]["value"])
        payload = json.loads(fields["payload"])
        for attempt in range(2):  # Slack delivers the click again
            envelope_id = await slack.socket_send_envelope(
                "interactive", payload, retry_attempt=attempt,
                retry_reason="timeout" if attempt else "")
            await slack.wait_for_ack(envelope_id)
        await handled_clicks(process, 2)
        await slack.wait_for("chat.update", lambda p: "Approved by" in str(p["blocks"]))
        (posted,) = posts_to(slack, INCIDENTS)
        assert posted.params["text"] == "deploy frozen"
    finally:
        assert await process.stop() == 0, process.output
