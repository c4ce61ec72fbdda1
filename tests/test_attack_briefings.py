"""Attacks on briefings by a member of a workspace (issue 10, findings 6, 8 and 12).

Each test is the attack it stops: flooding a workspace with frequent or never-firing schedules,
input that crashed the form or overflowed a column, and approvals or activity of private
channels and DMs shown to people outside them. Against SQLite and PostgreSQL (the
``database_url`` fixture) and the fake Slack; clocks are passed in, nothing sleeps.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from bot.briefings.delivery import Outcome
from bot.briefings.manage import (
    BriefingInputError,
    BriefingLimits,
    NewBriefing,
    add_briefing,
    describe,
)
from bot.commands import CommandRequest, CommandRouter
from bot.slack_client import is_workspace_admin
from tests.e2e import ALICE, BOB, home_tab
from tests.test_briefings_delivery import TENANT, posts, section_texts, start_services
from tests.test_briefings_slack import jamono, open_form, settings, submit, values  # noqa: F401

NOW = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
OPS, SECRET, RANDOM, ALICE_DM = "C0OPS", "G0SECRET", "C0RANDOM", "D0ALICE"


@pytest.fixture
async def services(database_url, slack):
    services = await start_services(
        database_url,
        slack,
        JAMONO_BRIEFINGS_PER_WORKSPACE="3",
        JAMONO_BRIEFING_MIN_INTERVAL="7200",
    )
    yield services
    await services.close()


async def add(services, schedule="weekdays 08:30", *, user=ALICE, channel=OPS,
              timezone="Europe/Paris", sections=None, now=NOW):
    client = await services.briefings.clients.for_tenant(TENANT)
    return await add_briefing(
        services.repos,
        client,
        TENANT,
        user,
        NewBriefing(channel, schedule, timezone, sections or [{"kind": "approvals"}]),
        limits=BriefingLimits.of(services.settings),
        is_admin=lambda: is_workspace_admin(client, user),
        now=now,
    )


async def refused(services, field, message, *args, **kwargs):
    with pytest.raises(BriefingInputError) as caught:
        await add(services, *args, **kwargs)
    assert caught.value.field == field
    assert message in str(caught.value)


async def test_a_member_cannot_fill_the_workspace_with_briefings(services):
    # Six at once against a limit of three: exactly three are kept, the others are told why.
    results = await asyncio.gather(
        *(add(services, f"daily 0{hour}:00") for hour in range(6)), return_exceptions=True
    )
    kept = [r for r in results if not isinstance(r, Exception)]
    errors = [r for r in results if isinstance(r, Exception)]
    assert len(kept) == 3 and len(errors) == 3
    for error in errors:
        assert isinstance(error, BriefingInputError)
        assert "has 3 briefings" in str(error) and "JAMONO_BRIEFINGS_PER_WORKSPACE" in str(error)
    assert len(await services.repos.briefings.list(TENANT)) == 3
    await refused(services, "channel", "JAMONO_BRIEFINGS_PER_WORKSPACE", "daily 09:00")


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        ("cron * * * * *", "runs at 00:00 and at 00:01"),
        ("cron */30 9 * * 1-5", "runs at 09:00 and at 09:30"),
        ("cron 0 8,9 * * *", "runs at 08:00 and at 09:00"),
        # Far apart within a day, but 23:00 and the next day's 00:00 are an hour apart.
        ("cron 0 0,23 * * *", "runs at 23:00 on"),
        # Only in January: 23:00 on the 1st and 00:00 on the 2nd.
        ("cron 0 0,23 1,2 1 *", "runs at 23:00 on Fri 01 Jan and at 00:00 on Sat 02 Jan"),
    ],
)
async def test_a_schedule_more_frequent_than_the_minimum_interval_is_refused(
    services, schedule, message
):
    await refused(services, "schedule", message, schedule)
    await refused(services, "schedule", "JAMONO_BRIEFING_MIN_INTERVAL", schedule)
    assert await services.repos.briefings.list(TENANT) == []
    # Runs far enough apart are fine, even close to midnight on days that are not consecutive.
    await add(services, "cron 0 0,23 * * mon")


async def test_a_schedule_that_never_fires_is_refused_and_a_stored_one_is_described_cheaply(
    services,
):
    for schedule in ("cron 0 0 30 2 *", "cron 0 0 31 4 *", "cron 0 0 29 2 *"):
        await refused(services, "schedule", "would not run within a year", schedule)
    # Stored before these checks: describing one searches a year ahead, not to the year 9999.
    stored = [
        await services.repos.briefings.create(
            TENANT, channel_id=OPS, persona="nox", schedule=schedule, timezone="UTC",
            sections=[{"kind": "approvals"}], created_by=ALICE,
        )
        for schedule in ("cron 0 0 30 2 *", "cron 0 0 29 2 *")
    ]
    after_leap_day = datetime(2028, 3, 1, tzinfo=UTC)  # the next 29 February is in 2032
    for briefing in stored:
        assert describe(briefing, after_leap_day).endswith("_no run within a year_")
    paused = {reason: describe(replace(stored[0], enabled=False, paused_reason=reason))
              for reason in ("too_frequent", "not_in_channel", "<!channel>")}
    assert paused["too_frequent"].endswith("more often than this workspace's minimum interval_")
    assert paused["not_in_channel"].endswith("_paused by Slack error `not_in_channel`_")
    assert "<!channel>" not in paused["<!channel>"]


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"timezone": "Europe"}, "timezone", "`Europe` is not an IANA timezone"),
        ({"timezone": "../x"}, "timezone", "is not an IANA timezone"),
        ({"timezone": ""}, "timezone", "is not an IANA timezone"),
        ({"timezone": "Europe/Par\x00is"}, "timezone", "`Europe/Par\\x00is` is not"),
        ({"timezone": "A" * 5000}, "timezone", "is not an IANA timezone"),
        # Valid (every two hours), but 126 characters: PostgreSQL refused it, SQLite kept it.
        ({"schedule": "cron 0 " + ",".join(map(str, range(0, 24, 2))) + " "
          + ",".join(map(str, range(1, 32))) + " * *"}, "schedule", "longer than 100 characters"),
        ({"channel": "C" + "0" * 40}, "channel", "is not a Slack channel id"),
        ({"channel": "c0ops; drop"}, "channel", "is not a Slack channel id"),
        ({"user": "U" + "0" * 40}, "created_by", "is not a Slack user id"),
        ({"sections": [{"kind": "jira", "jql": "project = OPS\x00"}]}, "sections",
         "control characters"),
        ({"sections": [{"kind": "approvals", "title": "x" * 150 + "\x07"}]}, "sections",
         "control characters"),
    ],
)
async def test_input_that_crashed_the_form_or_overflowed_a_column_gets_a_clear_error(
    services, change, field, message
):
    arguments = {"schedule": "weekdays 08:30"} | change
    await refused(services, field, message, **arguments)
    assert await services.repos.briefings.list(TENANT) == []


async def test_only_an_admin_can_add_a_free_prompt_section(services, slack):
    prompt = [{"kind": "prompt", "prompt": "Summarise the week"}]
    await refused(services, "sections", "Only workspace admins", user=BOB, sections=prompt)
    assert await services.repos.briefings.list(TENANT) == []
    await add(services, user=ALICE, sections=prompt)  # ALICE is an admin in the fake Slack
    await add(services, user=BOB)  # other sections need no admin


async def conversation_data(services, now):
    """Approvals and persona activity in a public, a private channel and a DM."""
    for channel, target in ((OPS, "OPS project"), (SECRET, "SECRET-1 layoffs"),
                            (ALICE_DM, "<!channel> DM only")):
        await services.repos.approvals.create(
            TENANT, persona="nox", requested_by=ALICE, channel_id=channel, thread_ts="1.1",
            tool="jira_create_issue", arguments={}, risk="write", target=target,
            now=now - timedelta(hours=1),
        )
    for channel, tool in ((OPS, "jira_search"), (SECRET, "calendar_invite")):
        turn_id, _ = await services.repos.conversations.begin_turn(
            TENANT, channel, "2.2", "nox", ALICE
        )
        await services.repos.conversations.finish_turn(TENANT, turn_id, [], [], "ok", None, 10)
        await services.repos.audit.record_tool_call(
            TENANT, turn_id=turn_id, persona="nox", user_id=ALICE, tool=tool, arguments={},
            result_summary="", status="ok", duration_ms=5,
        )


async def test_a_briefing_shows_only_the_approvals_and_activity_of_its_own_channel(
    services, slack
):
    # Turns are stamped with the real clock: the run is "now", so that they are in its window.
    now = datetime.now(UTC).replace(microsecond=0)
    await conversation_data(services, now)
    sections = [{"kind": "approvals"}, {"kind": "activity"}]
    public, private = [
        await services.repos.briefings.create(
            TENANT, channel_id=channel, persona="nox", schedule="daily 08:00",
            timezone="UTC", sections=sections, created_by=ALICE,
        )
        for channel in (OPS, SECRET)
    ]
    # Both due at once: the gathering shared by such runs must not cross channels either.
    await asyncio.gather(
        services.briefings.run_scheduled(public.id, now, now=now),
        services.briefings.run_scheduled(private.id, now, now=now),
    )
    [ops_post] = posts(slack, OPS)
    ops = "\n".join(section_texts(ops_post)) + ops_post.params["text"]
    assert "OPS project" in ops and "`jira_search` × 1" in ops
    assert "1 answers in 1 conversations in this channel" in ops
    for other in ("SECRET-1", "calendar_invite", "DM only", "channel>"):
        assert other not in ops
    [secret_post] = posts(slack, SECRET)
    secret = "\n".join(section_texts(secret_post))
    assert "SECRET-1 layoffs" in secret and "`calendar_invite` × 1" in secret
    assert "OPS project" not in secret and "DM only" not in secret


async def command(services, user, channel, text):
    """``/nox-brief text`` typed by ``user`` in ``channel``, as the Slack listener hands it over."""
    client = await services.briefings.clients.for_tenant(TENANT)
    return await CommandRouter(services).handle(
        CommandRequest(
            tenant=TENANT, command="/nox-brief", text=text, user_id=user, channel_id=channel,
            is_admin=lambda: is_workspace_admin(client, user), slack=client,
        )
    )


async def preview(services, user, channel, text):
    return (await command(services, user, channel, text)).text


async def test_a_preview_shows_a_member_only_what_their_channel_may_see(services, slack):
    await conversation_data(services, datetime.now(UTC))
    # Any member, in a channel without a briefing: a sample of this channel's approvals only.
    sample = await preview(services, BOB, OPS, "preview")
    assert "OPS project" in sample
    assert "SECRET-1" not in sample and "DM only" not in sample
    elsewhere = await preview(services, BOB, RANDOM, "preview")
    assert "no approvals waiting" in elsewhere and "OPS project" not in elsewhere

    # The creator of a private channel's briefing, previewing it from another channel: its
    # approvals and activity stay in the private channel.
    secret = await services.repos.briefings.create(
        TENANT, channel_id=SECRET, persona="nox", schedule="daily 08:00", timezone="UTC",
        sections=[{"kind": "approvals"}, {"kind": "activity"}], created_by=ALICE,
    )
    outside = await preview(services, ALICE, RANDOM, f"preview {secret.id}")
    assert "SECRET-1" not in outside and "calendar_invite" not in outside
    assert "shown only to the members of <#G0SECRET>: preview the briefing there" in outside
    inside = await preview(services, ALICE, SECRET, f"preview {secret.id}")
    assert "SECRET-1 layoffs" in inside and "`calendar_invite` × 1" in inside


async def test_outside_text_in_a_briefing_cannot_notify_the_channel(services, slack):
    await services.repos.approvals.create(
        TENANT, persona="nox", requested_by=ALICE, channel_id=OPS, thread_ts="1.1",
        tool="slack_post", arguments={}, risk="write", target="<!channel> & <https://x|y>",
        now=datetime.now(UTC),
    )
    text = await preview(services, ALICE, OPS, "preview")
    assert "&lt;!channel&gt; &amp; &lt;https://x|y&gt;" in text
    assert "<!channel>" not in text


async def test_list_shows_a_member_only_the_briefings_of_their_channel_and_their_own(
    services, slack
):
    for channel, creator in ((SECRET, ALICE), (ALICE_DM, ALICE), (OPS, BOB)):
        await services.repos.briefings.create(
            TENANT, channel_id=channel, persona="nox", schedule="daily 08:00", timezone="UTC",
            sections=[{"kind": "approvals"}], created_by=creator,
        )
    listed = await preview(services, BOB, RANDOM, "list")
    assert "<#C0OPS>" in listed
    assert "G0SECRET" not in listed and "D0ALICE" not in listed
    assert "2 more in other channels" in listed
    assert "<#G0SECRET>" in await preview(services, BOB, SECRET, "list")
    everything = await preview(services, ALICE, RANDOM, "list")  # an admin
    assert all(f"<#{c}>" in everything for c in (OPS, SECRET, ALICE_DM))


async def test_the_form_answers_every_bad_input_and_home_lists_only_ones_own(
    http, jamono, slack  # noqa: F811
):
    view = await open_form(http, jamono, slack)
    blocks = {block["block_id"]: block for block in view["blocks"]}
    assert blocks["schedule"]["element"]["max_length"] == 100
    assert blocks["timezone"]["element"]["max_length"] == 64
    cases = [
        (values(timezone="Europe"), "timezone", "is not an IANA timezone"),
        (values(timezone="../x"), "timezone", "is not an IANA timezone"),
        (values(schedule="cron 0 0 30 2 *"), "schedule", "would not run within a year"),
        (values(schedule="cron * * * * *"), "schedule", "JAMONO_BRIEFING_MIN_INTERVAL"),
        (values(schedule="cron 0 " + ",".join(map(str, range(0, 24, 2))) + " "
                + ",".join(map(str, range(1, 29))) + " * *"), "schedule", "100 characters"),
    ]
    for form_values, field, message in cases:
        answer = await submit(http, jamono, slack, view, form_values)
        assert answer["response_action"] == "errors", (form_values, answer)
        assert message in answer["errors"][field]
    answer = await submit(
        http, jamono, slack, view, values(sections=["prompt"], prompt="Any risks?"), user=BOB
    )
    assert "Only workspace admins" in answer["errors"]["sections"]
    assert await submit(http, jamono, slack, view, values(channel="G0SECRET")) == {}

    home_text = await home_tab(http, jamono, slack, BOB)
    assert "G0SECRET" not in home_text and "1 more by others" in home_text


@pytest.mark.parametrize("argument", ["²", "٣", "9" * 30, "1" * 5000])
async def test_an_odd_briefing_number_gets_the_usage_not_a_failure(services, argument):
    # "²".isdigit() is true but int("²") fails; 30 digits overflow a BIGINT on PostgreSQL.
    for verb in ("now", "pause", "preview"):
        answer = await preview(services, ALICE, OPS, f"{verb} {argument}")
        assert "Give the briefing's number" in answer


async def test_posting_at_once_keeps_the_minimum_interval(services, slack):
    briefing = await services.repos.briefings.create(
        TENANT, channel_id=OPS, persona="nox", schedule="daily 08:00", timezone="UTC",
        sections=[{"kind": "approvals"}], created_by=BOB,
    )
    first = await preview(services, BOB, OPS, f"now {briefing.id}")
    assert "is posted in <#C0OPS>" in first
    again = await preview(services, BOB, OPS, f"now {briefing.id}")
    assert "runs are at least 2 h apart (JAMONO_BRIEFING_MIN_INTERVAL)" in again
    assert len(posts(slack, OPS)) == 1


async def test_a_preview_by_any_member_asks_no_language_model(database_url, slack, llm):
    services = await start_services(database_url, slack, llm)
    try:
        for _ in range(3):
            reply = await command(services, BOB, OPS, "preview")
            assert "the persona writes its opening when it posts" in json.dumps(reply.blocks)
    finally:
        await services.close()
    assert llm.requests == []


async def test_a_too_frequent_schedule_stored_before_the_limit_is_paused_not_run_every_minute(
    services, slack
):
    briefing = await services.repos.briefings.create(
        TENANT, channel_id=OPS, persona="nox", schedule="cron * * * * *", timezone="UTC",
        sections=[{"kind": "approvals"}], created_by=BOB,
    )
    outcomes = []
    for minute in (0, 1, 2, 120):
        fire = NOW + timedelta(minutes=minute)
        outcomes.append(await services.briefings.run_scheduled(briefing.id, fire, now=fire))
    assert [r.outcome for r in outcomes] == [
        Outcome.POSTED, Outcome.PAUSED, Outcome.DISABLED, Outcome.DISABLED
    ]
    assert "JAMONO_BRIEFING_MIN_INTERVAL" in outcomes[1].detail
    assert len(posts(slack, OPS)) == 1
    stored = await services.repos.briefings.get(TENANT, briefing.id)
    assert not stored.enabled and stored.paused_reason == "too_frequent"
    deliveries = await services.repos.briefings.deliveries(TENANT, briefing.id)
    assert len(deliveries) == 2  # the posted run and the one skipped when it was paused
    [notice] = posts(slack, BOB)
    assert f"I paused briefing {briefing.id}" in notice.params["text"]
    assert "more often than this workspace allows" in notice.params["text"]
    assert f"/nox-brief remove {briefing.id}" in notice.params["text"]


async def test_a_run_too_soon_only_across_a_clock_change_is_skipped_not_paused(services, slack):
    # Every two hours is allowed (7200 s); on 29 March 2026 Paris springs forward at 02:00,
    # so the 00:00 and 02:00 runs are one real hour apart: that run is skipped, no more.
    briefing = await services.repos.briefings.create(
        TENANT, channel_id=OPS, persona="nox", schedule="cron 0 */2 * * *",
        timezone="Europe/Paris", sections=[{"kind": "approvals"}], created_by=BOB,
    )
    first = datetime(2026, 3, 28, 23, 0, tzinfo=UTC)  # 00:00 in Paris
    outcomes = []
    for fire in (first, first + timedelta(hours=1), first + timedelta(hours=3)):
        outcomes.append(await services.briefings.run_scheduled(briefing.id, fire, now=fire))
    assert [r.outcome for r in outcomes] == [Outcome.POSTED, Outcome.SKIPPED, Outcome.POSTED]
    assert (await services.repos.briefings.get(TENANT, briefing.id)).enabled
    assert posts(slack, BOB) == []


async def test_a_refusal_elsewhere_does_not_name_a_private_briefings_creator(services):
    secret = await services.repos.briefings.create(
        TENANT, channel_id=SECRET, persona="nox", schedule="daily 08:00", timezone="UTC",
        sections=[{"kind": "approvals"}], created_by=ALICE,
    )
    for verb in ("pause", "now", "preview", "remove"):
        answer = await preview(services, BOB, RANDOM, f"{verb} {secret.id}")
        assert answer == f"Only its creator and workspace admins can {verb} briefing {secret.id}."
    assert "Only <@U0ALICE>" in await preview(services, BOB, SECRET, f"pause {secret.id}")
