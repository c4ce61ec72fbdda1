"""A ticket through Slack and the real process: mention → approval → Approve → one Jira issue."""

from __future__ import annotations

import asyncio

import pytest

from tests.e2e import (
    ACME,
    ALICE,
    BOB,
    SIGNING_SECRET,
    approval_id,
    bot_token_settings,
    click,
    has_buttons,
    started,
)
from tests.fakes import ToolCall
from tests.fakes.signing import post_form
from tests.test_e2e_http import mention

CREATE = {"project": "OPS", "issue_type": "Incident", "summary": "Payments API down",
          "priority": "Highest", "labels": ["incident"]}


def ticket_script(request):
    """Ask for the ticket on the first message, then relay what the tool said."""
    last = request["messages"][-1]
    if last["role"] == "user":
        return [ToolCall("jira_create_issue", CREATE)]
    return f"Tool result: {last['content']}"


@pytest.fixture
async def jamono(slack, llm, jira, sqlite_url, tmp_path):
    llm.script = ticket_script
    settings = bot_token_settings(slack, llm, sqlite_url) | {
        "JIRA_URL": jira.url, "JIRA_PAT": jira.pat,
    }
    process = await started(settings, tmp_path)
    yield process
    assert await process.stop() == 0, process.output


async def request_ticket(http, jamono, slack):
    event = await mention(http, jamono, slack, "open an incident ticket: payments API is down")
    (request,) = await slack.wait_for(
        "chat.postMessage", lambda p: p.get("thread_ts") == event["ts"] and has_buttons(p))
    return event, request


async def test_approve_creates_exactly_one_issue_and_shows_its_key(http, jamono, slack, jira):
    event, request = await request_ticket(http, jamono, slack)
    shown = str(request.blocks)
    assert "`jira_create_issue`" in shown and "Jira project OPS" in shown
    assert "Payments API down" in shown
    assert jira.requests_to("POST", "/rest/api/2/issue") == []

    request_id = approval_id(request)
    fields = slack.block_actions_payload(ACME, ALICE, request, "approval_approve", request_id)
    url = jamono.url + "/slack/events"
    await asyncio.gather(
        post_form(http, url, SIGNING_SECRET, fields),  # a double click ...
        post_form(http, url, SIGNING_SECRET, fields),
        post_form(http, url, SIGNING_SECRET, fields, retry_num=1, retry_reason="http_timeout"),
    )
    (ran,) = await slack.wait_for("chat.postMessage", lambda p: p.get("thread_ts") == event["ts"]
                                  and "ran" in p.get("text", ""))
    (update,) = await slack.wait_for("chat.update", lambda p: p["ts"] == request.response["ts"])
    created = jira.requests_to("POST", "/rest/api/2/issue")
    assert len(created) == 1
    assert created[0].json["fields"]["summary"] == "Payments API down"
    key = "OPS-4"  # the seed data holds OPS-1 to OPS-3
    assert jira.issue(key)["fields"]["summary"] == "Payments API down"
    assert f"{jira.url}/browse/{key}|{key}>" in str(update.params["blocks"])
    assert "approval_approve" not in str(update.params["blocks"])  # no buttons left
    await jamono.wait_for_output('"approval_click"', 3)  # every delivery of the click handled
    assert len(jira.requests_to("POST", "/rest/api/2/issue")) == 1


async def test_reject_creates_nothing_and_the_model_hears_it(http, jamono, slack, jira, llm):
    event, request = await request_ticket(http, jamono, slack)
    await click(http, jamono, slack, request, approval_id(request), approve=False)
    await slack.wait_for("chat.update", lambda p: p["ts"] == request.response["ts"]
                         and "Rejected" in str(p.get("blocks")))
    await mention(http, jamono, slack, "ok, anything else?", thread_ts=event["ts"])
    await llm.wait_for_requests(3)
    notes = [m["content"] for m in llm.requests[-1]["messages"] if m["role"] == "system"]
    assert any("rejected" in note for note in notes[1:])
    assert jira.requests_to("POST", "/rest/api/2/issue") == []


async def test_someone_else_may_not_approve(http, jamono, slack, jira):
    _, request = await request_ticket(http, jamono, slack)
    await click(http, jamono, slack, request, approval_id(request), user=BOB)
    (refusal,) = await slack.wait_for("chat.postEphemeral", lambda p: p["user"] == BOB)
    assert "Only <@U0ALICE> or a workspace admin can decide" in refusal.params["text"]
    assert jira.requests_to("POST", "/rest/api/2/issue") == []
