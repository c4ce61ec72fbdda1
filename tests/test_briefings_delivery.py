"""Delivering briefings against the fake Slack and LLM, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta

import pytest
from slack_sdk.oauth.installation_store import Installation

from bot.briefings.delivery import STALE_DELIVERY, Outcome
from bot.services import Services
from bot.settings import load_settings
from integrations.calendar import CalDAVClient, CalDAVCredentials, build_invitation
from storage import migrate
from storage.installations import EncryptedInstallationStore
from storage.repositories.briefings import DeliveryState
from storage.secrets import generate_key
from storage.tenancy import Tenant
from tests.e2e import ACME, ACME_TOKEN, ALICE, SIGNING_SECRET
from tests.fakes.jira import FakeJira
from tests.radicale import running_radicale

TENANT = Tenant(ACME)
OPS = "C0OPS"
FIRE = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
ALL_SECTIONS = [
    {"kind": "approvals"},
    {"kind": "activity"},
    {"kind": "jira", "title": "Open incidents", "jql": "project = OPS AND type = Incident"},
    {"kind": "calendar"},
    {"kind": "prompt", "title": "Watch today", "prompt": "What should on-call watch today?"},
]


async def start_services(database_url, slack, llm=None, **extra) -> Services:
    await migrate.upgrade_async(database_url)
    settings = {
        "DATABASE_URL": database_url,
        "SLACK_API_URL": slack.api_url,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "JAMONO_MODEL": "fake-model",
    }
    if llm is not None:
        settings |= {"OPENAI_BASE_URL": llm.base_url, "OPENAI_API_KEY": "sk-test"}
    if not extra.get("SLACK_CLIENT_ID"):
        settings["SLACK_BOT_TOKEN"] = ACME_TOKEN
    return await Services.start(load_settings(_env_file=None, **(settings | extra)))


@pytest.fixture
async def services(database_url, slack):
    services = await start_services(database_url, slack)
    yield services
    await services.close()


async def subscribe(services, channel=OPS, sections=None, schedule="weekdays 09:00"):
    return await services.repos.briefings.create(
        TENANT,
        channel_id=channel,
        persona="nox",
        schedule=schedule,
        timezone="Europe/Paris",
        sections=sections or [{"kind": "approvals"}],
        created_by=ALICE,
    )


def posts(slack, channel=OPS):
    return [
        c for c in slack.calls_to("chat.postMessage") if c.params.get("channel") == channel
    ]


def blocks_of(call) -> list[dict]:
    blocks = call.params["blocks"]
    return json.loads(blocks) if isinstance(blocks, str) else blocks


def section_texts(call) -> list[str]:
    blocks = blocks_of(call)
    return [b["text"]["text"] for b in blocks if b["type"] == "section"]


async def test_a_run_fired_many_times_at_once_posts_once(services, slack):
    briefing = await subscribe(services)
    results = await asyncio.gather(
        *(
            services.briefings.run_scheduled(briefing.id, FIRE, now=FIRE + timedelta(seconds=5))
            for _ in range(6)
        )
    )
    outcomes = sorted(result.outcome for result in results)
    assert outcomes == [Outcome.DUPLICATE] * 5 + [Outcome.POSTED]
    assert len(posts(slack)) == 1
    [delivery] = await services.repos.briefings.deliveries(TENANT, briefing.id)
    assert delivery.state is DeliveryState.POSTED
    assert delivery.scheduled_for == FIRE
    assert delivery.message_ts == next(r.message_ts for r in results if r.message_ts)


async def test_a_run_later_than_the_grace_time_is_skipped_and_recorded(services, slack):
    briefing = await subscribe(services)
    within = await services.briefings.run_scheduled(
        briefing.id, FIRE, now=FIRE + timedelta(minutes=9, seconds=59)
    )
    late = await services.briefings.run_scheduled(
        briefing.id, FIRE + timedelta(days=1), now=FIRE + timedelta(days=1, minutes=11)
    )
    assert within.outcome is Outcome.POSTED
    assert late.outcome is Outcome.SKIPPED
    assert len(posts(slack)) == 1
    deliveries = await services.repos.briefings.deliveries(TENANT, briefing.id)
    assert [d.state for d in deliveries] == [DeliveryState.POSTED, DeliveryState.SKIPPED]
    assert deliveries[1].detail.startswith("missed by 11 min")


async def test_a_delivery_a_dead_process_left_sending_is_recorded_failed(services, slack):
    briefing = await subscribe(services)
    posted = await services.briefings.run_scheduled(
        briefing.id, FIRE, now=FIRE + timedelta(seconds=5)
    )
    # The process that claimed the next run died before it recorded an outcome.
    tomorrow = FIRE + timedelta(days=1)
    assert await services.repos.briefings.claim_delivery(TENANT, briefing.id, tomorrow, "schedule")
    now = datetime.now(UTC)
    assert await services.briefings.close_interrupted(now) == 0  # it may still be running
    assert await services.briefings.close_interrupted(now + STALE_DELIVERY + timedelta(1)) == 1
    deliveries = await services.repos.briefings.deliveries(TENANT, briefing.id)
    assert posted.outcome is Outcome.POSTED
    assert [d.state for d in deliveries] == [DeliveryState.POSTED, DeliveryState.FAILED]
    assert deliveries[1].detail.startswith("interrupted: the process sending it stopped")
    # Not run again: the post may have reached Slack before the process died.
    assert not await services.repos.briefings.claim_delivery(TENANT, briefing.id, tomorrow, "now")
    assert len(posts(slack)) == 1


@pytest.mark.parametrize(
    ("error", "break_it"),
    [
        ("not_in_channel", lambda s: s.set_channel(OPS, is_member=False)),
        ("channel_not_found", lambda s: s.set_channel(OPS, exists=False)),
        ("is_archived", lambda s: s.set_channel(OPS, is_archived=True)),
        ("account_inactive", lambda s: s.deactivate(ACME)),
    ],
)
async def test_channel_errors_pause_the_briefing_and_tell_its_creator_once(
    services, slack, error, break_it
):
    briefing = await subscribe(services)
    other = await subscribe(services, channel="C0OTHER")
    break_it(slack)
    first = await services.briefings.run_scheduled(briefing.id, FIRE, now=FIRE)
    again = await services.briefings.run_scheduled(
        briefing.id, FIRE + timedelta(days=1), now=FIRE + timedelta(days=1)
    )
    assert (first.outcome, first.detail) == (Outcome.PAUSED, error)
    assert again.outcome is Outcome.DISABLED
    stored = await services.repos.briefings.get(TENANT, briefing.id)
    assert (stored.enabled, stored.paused_reason) == (False, error)
    dms = posts(slack, ALICE)
    assert len(dms) == 1  # for account_inactive Slack refuses it too, but it is tried once
    assert f"paused briefing {briefing.id}" in dms[0].params["text"]
    assert f"/nox-brief resume {briefing.id}" in dms[0].params["text"]
    [delivery] = await services.repos.briefings.deliveries(TENANT, briefing.id)
    assert (delivery.state, delivery.detail) == (DeliveryState.FAILED, error)
    assert (await services.repos.briefings.get(TENANT, other.id)).enabled
    resumed = await services.repos.briefings.set_enabled(TENANT, briefing.id, True)
    assert resumed
    assert (await services.repos.briefings.get(TENANT, briefing.id)).paused_reason is None


async def test_rate_limits_are_honoured(services, slack):
    slack.rate_limit("chat.postMessage", per_seconds=1.0)
    slack.fail_next("chat.postMessage", status=429, retry_after=1)
    first = await subscribe(services)
    second = await subscribe(services)
    results = await asyncio.gather(
        services.briefings.run_scheduled(first.id, FIRE, now=FIRE),
        services.briefings.run_scheduled(second.id, FIRE, now=FIRE),
    )
    assert [r.outcome for r in results] == [Outcome.POSTED, Outcome.POSTED]
    calls = posts(slack)
    assert len(calls) == 3  # one 429 from fail_next, then one post each, spaced ≥ 1 s apart
    assert calls[2].at - calls[1].at >= 1.0


async def test_without_an_llm_the_briefing_is_complete(services, slack):
    await services.repos.approvals.create(
        TENANT,
        persona="nox",
        requested_by=ALICE,
        channel_id=OPS,
        thread_ts="1.1",
        tool="jira_create_issue",
        arguments={},
        risk="write",
        target="OPS project",
        now=FIRE - timedelta(hours=1),
    )
    briefing = await subscribe(services, sections=ALL_SECTIONS)
    result = await services.briefings.run_scheduled(briefing.id, FIRE, now=FIRE)
    assert result.outcome is Outcome.POSTED
    [call] = posts(slack)
    texts = section_texts(call)
    assert texts[0].startswith("*Pending approvals*\n• `jira_create_issue` on OPS project")
    assert texts[1] == "*Persona activity, last 24 hours*\n_no persona activity_"
    assert texts[2] == "*Open incidents*\n_unavailable: Jira is not connected in this workspace_"
    assert texts[3] == (
        "*Upcoming calendar events*\n_unavailable: no calendar is connected in this workspace_"
    )
    assert texts[4].startswith("*Watch today*\n_unavailable: no language model is configured")
    assert blocks_of(call)[0]["text"]["text"] == "NOX briefing — Monday 23 November"


async def test_with_an_llm_the_persona_opens_and_answers_the_prompt(database_url, slack, llm):
    def script(request):
        last = request["messages"][-1]["content"]
        if last.startswith("Write a short opening"):
            return "Quiet night; nothing waits for you."
        return f"Answer to: {last}"

    llm.script = script
    services = await start_services(database_url, slack, llm)
    try:
        briefing = await subscribe(services, sections=[ALL_SECTIONS[1], ALL_SECTIONS[4]])
        result = await services.briefings.run_scheduled(briefing.id, FIRE, now=FIRE)
        usage = await services.repos.metrics.usage_since(TENANT, FIRE - timedelta(days=1))
    finally:
        await services.close()
    assert result.outcome is Outcome.POSTED
    texts = section_texts(posts(slack)[0])
    assert texts[0] == "Quiet night; nothing waits for you."
    assert texts[2] == "*Watch today*\nAnswer to: What should on-call watch today?"
    opening_request = next(
        r for r in llm.requests if r["messages"][-1]["content"].startswith("Write a short")
    )
    assert "Answer to: What should on-call watch today?" in opening_request["messages"][-1][
        "content"
    ]
    # Both calls count in the workspace's usage: the prompt's turn and the opening.
    assert usage.turns == 1
    replies = ("Quiet night; nothing waits for you.", "Answer to: " + ALL_SECTIONS[4]["prompt"])
    assert usage.completion_tokens == sum(max(1, len(text) // 4) for text in replies)


async def test_scheduled_runs_refresh_a_rotated_token_themselves(sqlite_url, slack):
    slack.set_oauth_app("111.222", "client-secret")
    slack.enable_token_rotation(ACME, "xoxe-1-first")
    services = await start_services(
        sqlite_url, slack, SLACK_CLIENT_ID="111.222", SLACK_CLIENT_SECRET="client-secret",
        JAMONO_SECRET_KEY=generate_key(),
    )
    try:
        store = EncryptedInstallationStore(
            "111.222", services.engine, services.settings.secret_box()
        )
        await store.async_save(
            Installation(
                app_id="A0JAMONO",
                team_id=ACME,
                user_id=ALICE,
                bot_token=ACME_TOKEN,
                bot_id="B0NOX",
                bot_user_id="U0NOX",
                bot_scopes="chat:write",
                bot_refresh_token="xoxe-1-first",
                bot_token_expires_at=int(time.time()) + 600,  # within Bolt's 120 min margin
            )
        )
        briefing = await subscribe(services)
        first = await services.briefings.run_scheduled(briefing.id, FIRE, now=FIRE)
        later = FIRE + timedelta(days=1)
        second = await services.briefings.run_scheduled(briefing.id, later, now=later)
        saved = await store.async_find_installation(enterprise_id=None, team_id=ACME)
    finally:
        await services.close()
    assert (first.outcome, second.outcome) == (Outcome.POSTED, Outcome.POSTED)
    refreshes = slack.calls_to("oauth.v2.access")
    assert len(refreshes) == 1
    assert refreshes[0].params["grant_type"] == "refresh_token"
    assert saved.bot_token == "xoxe.xoxb-t0acme-1"
    assert {call.token for call in posts(slack)} == {"xoxe.xoxb-t0acme-1"}


async def test_jira_and_calendar_sections_from_the_workspace_integrations(
    sqlite_url, slack, tmp_path
):
    """The fake Jira answers the section's JQL; a real Radicale holds the day's post-mortem."""
    start = FIRE + timedelta(hours=2)  # 10:00 UTC, 11:00 in Paris
    invitation = build_invitation(
        title="Post-mortem: payments API down", start=start, duration=60,
        timezone="Europe/Paris", organizer="alice@acme.test", attendees=["bob@acme.test"],
    )
    with running_radicale(tmp_path / "radicale", calendars=("Post-mortems",)) as url:
        calendar = CalDAVCredentials(url, "nox", "any", "Post-mortems")
        await CalDAVClient(calendar).store_event(invitation.store_ics)
        async with FakeJira("cloud") as jira:
            services = await start_services(
                sqlite_url, slack, JIRA_URL=jira.url, JIRA_EMAIL=jira.email,
                JIRA_API_TOKEN=jira.api_token, CALDAV_URL=url, CALDAV_USERNAME="nox",
                CALDAV_PASSWORD="any", CALDAV_CALENDAR="Post-mortems",
            )
            try:
                briefing = await subscribe(services, sections=[
                    {"kind": "jira", "title": "Open OPS",
                     "jql": "project = OPS AND status != Done"},
                    {"kind": "calendar"},
                ])
                result = await services.briefings.run_scheduled(briefing.id, FIRE, now=FIRE)
            finally:
                await services.close()
    assert result.outcome is Outcome.POSTED
    [call] = posts(slack)
    jira_text, calendar_text = section_texts(call)
    assert jira_text.startswith("*Open OPS*\n")
    assert f"<{jira.url}/browse/OPS-2|OPS-2>" in jira_text and "OPS-1" not in jira_text
    assert calendar_text == (
        "*Upcoming calendar events*\n• Mon 11:00–12:00 Post-mortem: payments API down"
    )
