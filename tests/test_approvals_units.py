"""Pure pieces of approvals: rendering within Block Kit limits, texts for the model, the
slack_post_message target, and the /nox-config policy words (on a real SQLite database)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from agents.channels import canonical_id
from agents.personas import NOX
from agents.policy import outcome_note, refusal_text, waiting_text
from agents.tools import slack_post
from bot.approvals import (
    ARGUMENT_LIMIT,
    MAX_ARGUMENTS,
    argument_text,
    outcome_text,
    request_blocks,
)
from bot.commands import CommandRequest, CommandRouter
from bot.render import MAX_BLOCKS, SECTION_LIMIT
from bot.services import Services
from bot.settings import load_settings
from storage.repositories.approvals import Approval, State
from storage.repositories.policy import Verdict
from storage.tenancy import Tenant

ACME = Tenant("T0ACME")


def approval(arguments, state=State.PENDING, decided_by=None) -> Approval:
    now = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    return Approval(
        id="a" * 32, tenant_id="T0ACME", persona="nox", requested_by="U0ALICE",
        channel_id="C0OPS", thread_ts="100.1", message_ts="100.2", tool_call_id="call_1",
        tool="slack_post_message", arguments=arguments, risk="write",
        target="Slack channel <#C0INC>", state=state, expires_at=now + timedelta(hours=24),
        decided_by=decided_by, decided_at=None, result_summary=None, created_at=now,
    )


@pytest.mark.parametrize(
    "value, shown",
    [
        ("short", "```short```"),
        ("<@U1> & <!here>", "```&lt;@U1&gt; &amp; &lt;!here&gt;```"),  # shown, not pinged
        ({"labels": ["a", "b"]}, '```{"labels": ["a", "b"]}```'),
        (42, "```42```"),
        ("x" * (ARGUMENT_LIMIT + 10), "```" + "x" * ARGUMENT_LIMIT + "… (10 more characters)```"),
    ],
)
def test_arguments_are_shown_verbatim_escaped_and_cut(value, shown):
    assert argument_text(value) == shown


@pytest.mark.parametrize("count", [0, 1, MAX_ARGUMENTS, MAX_ARGUMENTS + 15])
def test_the_request_message_stays_within_block_kit_limits(count):
    arguments = {f"arg{i}": "y" * 5000 for i in range(count)}
    blocks = request_blocks(approval(arguments))
    assert len(blocks) <= MAX_BLOCKS
    assert all(len(b["text"]["text"]) <= SECTION_LIMIT for b in blocks if b["type"] == "section")
    shown = json.dumps(blocks)
    if count:
        assert f"arg{min(count, MAX_ARGUMENTS) - 1}" in shown
    if count > MAX_ARGUMENTS:
        assert "15 more arguments not shown" in shown
    (actions,) = [b for b in blocks if b["type"] == "actions"]
    assert [e["value"] for e in actions["elements"]] == ["a" * 32] * 2


@pytest.mark.parametrize(
    "state, expected",
    [
        (State.EXECUTED, "✅ Approved by <@U0BOB> — done."),
        (State.FAILED, "⚠️ Approved by <@U0BOB>, but it failed."),
        (State.REJECTED, "🚫 Rejected by <@U0BOB>. Nothing was done."),
        (State.EXPIRED, "⌛ Approved by <@U0BOB>, but it expired before it started."),
    ],
)
def test_decided_messages_say_what_happened_and_have_no_buttons(state, expected):
    decided = approval({"text": "hi"}, state, "U0BOB")
    outcome = outcome_text(decided, "result")
    assert outcome.startswith(expected)
    blocks = request_blocks(decided, outcome)
    assert "actions" not in [b["type"] for b in blocks]
    assert blocks[-1]["text"]["text"] == outcome


@pytest.mark.parametrize(
    "verdict, expected",
    [
        (Verdict(False, False, "outside_zones", ("C0A", "C0B")),
         "act only in <#C0A>, <#C0B>, not in <#C0HERE>"),
        (Verdict(False, False, "tool_not_in_zone", ("C0HERE",), ("get_time",)),
         "use only `get_time` in <#C0HERE>, not `slack_post_message`"),
    ],
)
def test_refusals_say_why_and_where(verdict, expected):
    text = refusal_text(NOX, "slack_post_message", "C0HERE", verdict)
    assert expected in text and "Nothing was done" in text and "/nox-config zone" in text


@pytest.mark.parametrize(
    "state, result, expected",
    [
        ("rejected", None, "<@U0BOB> rejected `slack_post_message`"),
        ("expired", None, "<@U0BOB> approved `slack_post_message` on Slack channel <#C0INC> "
                          "(approval request " + "a" * 32 + "), but it expired before it started"),
        ("executed", '{"ts": "1.2"}', 'approved `slack_post_message` on Slack channel <#C0INC> '
                                      '(approval request ' + "a" * 32 + '); it ran. Result: {"ts"'),
        ("failed", "error: boom", "but it failed: error: boom"),
    ],
)
def test_notes_for_the_model(state, result, expected):
    assert expected in outcome_note(approval({}, decided_by="U0BOB"), state, result)


def test_the_model_is_told_the_action_waits():
    text = waiting_text(approval({}), timedelta(hours=24))
    assert "has NOT run yet" in text and "within 24 h" in text and "a" * 32 in text


@pytest.mark.parametrize(
    "channel, channel_id, target",
    [
        ("C0123ABC", "C0123ABC", "Slack channel <#C0123ABC>"),
        ("<#C0123ABC|incidents>", "C0123ABC", "Slack channel <#C0123ABC>"),
        (" <#G0PRIV> ", "G0PRIV", "Slack channel <#G0PRIV>"),
        ("c0123abc", "C0123ABC", "Slack channel <#C0123ABC>"),  # Slack writes ids upper case
        ("U0BOB123", None, "Slack U0BOB123"),
        ("#incidents", None, "Slack #incidents"),
    ],
)
def test_slack_post_channel_and_target(channel, channel_id, target):
    assert canonical_id(channel) == channel_id
    assert slack_post.target({"channel": channel}) == target


@pytest.fixture
async def services(sqlite_url):
    services = await Services.start(load_settings(_env_file=None, DATABASE_URL=sqlite_url))
    yield services
    await services.close()


async def configure(services, text: str, admin: bool = True) -> str:
    async def is_admin() -> bool:
        return admin

    reply = await CommandRouter(services).handle(
        CommandRequest(ACME, "/nox-config", text, "U0ALICE", "C0HERE", is_admin)
    )
    return reply.text


@pytest.mark.parametrize(
    "text, reply",
    [
        ("zone <#C0OPS|ops> get_time, slack_post_message",
         "NOX may now act in <#C0OPS> with `get_time`, `slack_post_message`"),
        ("zone", "NOX may now act in <#C0HERE> with every tool"),
        ("atlas zone C0CLOUD1 all", "ATLAS may now act in <#C0CLOUD1> with every tool"),
        ("zone C0OPS123 drop_database", "Unknown tool `drop_database`"),
        ("zone #ops", "names are looked up in Slack, which is not reachable from here"),
        ("unzone C0NOWHERE", "<#C0NOWHERE> is not one of NOX's action zones"),
        ("autoapprove slack_post_message",
         "`slack_post_message` runs without approval everywhere in this workspace"),
        ("noautoapprove slack_post_message <#C0PROD>",
         "`slack_post_message` needs approval in <#C0PROD>"),
        ("autoapprove get_time", "`get_time` is a read tool; it never needs approval"),
        ("autoapprove", "Name a write tool. Write tools: `calendar_schedule_meeting`, "),
        ("approvers admins", "decided by workspace admins only"),
        ("approvers everyone", "Say `approvers requester` or `approvers admins`"),
    ],
)
async def test_policy_words(services, text, reply):
    assert reply in await configure(services, text)


async def test_policy_is_stored_and_shown_and_changed_by_admins_only(services):
    assert "Only workspace admins" in await configure(services, "zone C0OPS123", admin=False)
    shown = await configure(services, "show", admin=False)
    assert "*Action zones:* none" in shown and "every write tool needs approval" in shown
    await configure(services, "zone C0OPS123 get_time")
    await configure(services, "autoapprove slack_post_message C0OPS123")
    await configure(services, "approvers admins")
    policy = await services.repos.policy.load(ACME)
    assert policy.zones == {"nox": {"C0OPS123": frozenset({"get_time"})}}
    assert policy.auto_approve == {("slack_post_message", "C0OPS123"): True}
    assert policy.approvers == "admins_only"
    shown = await configure(services, "show")
    for part in ("NOX in <#C0OPS123>: `get_time`",
                 "`slack_post_message` auto-approved in <#C0OPS123>",
                 "*Approvals decided by:* workspace admins only"):
        assert part in shown
    done = await configure(services, "unzone C0OPS123")
    assert "NOX has no zone left, so it may act in any channel" in done
    assert (await services.repos.policy.load(ACME)).zones == {}
