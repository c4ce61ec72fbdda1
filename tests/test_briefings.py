"""Pure logic of briefings: schedules (DST included), sections and Block Kit limits."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from agents.personas import NOX
from bot.briefings.render import MAX_LINES, list_text, render_briefing
from bot.briefings.schedule import ScheduleError, parse_schedule, parse_timezone
from bot.briefings.sections import (
    BriefingContext,
    SectionContent,
    SectionError,
    Sources,
    SourceUnavailable,
    parse_section,
    parse_sections,
)
from bot.render import MAX_BLOCKS, SECTION_LIMIT
from storage.repositories.briefings import Briefing
from storage.tenancy import Tenant


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


FIRE = utc(2026, 11, 23, 8)


@pytest.mark.parametrize(
    ("text", "canonical", "crontab"),
    [
        ("daily 8:30", "daily 08:30", "30 8 * * *"),
        ("Weekdays 09:05", "weekdays 09:05", "5 9 * * 1-5"),
        ("weekly Monday 17:00", "weekly mon 17:00", "0 17 * * mon"),
        ("cron 0 9 * * 1-5", "cron 0 9 * * 1-5", "0 9 * * 1-5"),
    ],
)
def test_schedules_parse_to_a_canonical_form(text, canonical, crontab):
    schedule = parse_schedule(text)
    assert (schedule.text, schedule.crontab) == (canonical, crontab)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("daily 25:00", "not a time"),
        ("daily 0830", "not a time"),
        ("weekly someday 08:00", "not a day"),
        ("cron 0 9 * *", "five fields"),
        ("cron 61 9 * * *", "not a valid cron line"),
        ("cron 0 9 * * 9", "not a valid cron line"),
        ("hourly", "cannot read"),
    ],
)
def test_bad_schedules_say_what_is_wrong(text, message):
    with pytest.raises(ScheduleError, match=message):
        parse_schedule(text)


@pytest.mark.parametrize("name", ["Mars/Olympus", "", "europe/paris "])
def test_unknown_timezones_are_refused(name):
    with pytest.raises(ScheduleError, match="IANA"):
        parse_timezone(name)


@pytest.mark.parametrize(
    ("crontab", "after", "expected"),
    [
        # crontab(5) weekdays: 0 and 7 are Sunday, 1-5 Monday to Friday.
        ("0 9 * * 1-5", utc(2026, 11, 20, 12), [utc(2026, 11, 23, 9), utc(2026, 11, 24, 9)]),
        ("0 9 * * 0", utc(2026, 11, 20, 12), [utc(2026, 11, 22, 9), utc(2026, 11, 29, 9)]),
        ("0 9 * * 7", utc(2026, 11, 20, 12), [utc(2026, 11, 22, 9), utc(2026, 11, 29, 9)]),
        ("0 9 * * 5,6", utc(2026, 11, 20, 12), [utc(2026, 11, 21, 9), utc(2026, 11, 27, 9)]),
        # */3 is 0, 3, 6: Sunday, Wednesday, Saturday.
        ("0 9 * * */3", utc(2026, 11, 20, 12), [utc(2026, 11, 21, 9), utc(2026, 11, 22, 9)]),
    ],
)
def test_cron_weekdays_follow_crontab_numbering(crontab, after, expected):
    assert parse_schedule(f"cron {crontab}").next_fire_times("UTC", after, 2) == expected


@pytest.mark.parametrize(
    ("schedule", "zone", "after", "expected_utc"),
    [
        # Europe/Paris springs forward on 2026-03-29 (CET+1 → CEST+2): 09:00 local stays 09:00.
        (
            "daily 09:00",
            "Europe/Paris",
            utc(2026, 3, 27, 12),
            [utc(2026, 3, 28, 8), utc(2026, 3, 29, 7), utc(2026, 3, 30, 7)],
        ),
        # ... and falls back on 2026-10-25.
        (
            "daily 09:00",
            "Europe/Paris",
            utc(2026, 10, 23, 12),
            [utc(2026, 10, 24, 7), utc(2026, 10, 25, 8), utc(2026, 10, 26, 8)],
        ),
        # 02:30 does not exist in Paris on 2026-03-29: it runs at the old offset's instant.
        (
            "daily 02:30",
            "Europe/Paris",
            utc(2026, 3, 27, 12),
            [utc(2026, 3, 28, 1, 30), utc(2026, 3, 29, 1, 30), utc(2026, 3, 30, 0, 30)],
        ),
        # New York springs forward on 2026-03-08 (EST-5 → EDT-4).
        (
            "weekdays 08:00",
            "America/New_York",
            utc(2026, 3, 5, 20),
            [utc(2026, 3, 6, 13), utc(2026, 3, 9, 12), utc(2026, 3, 10, 12)],
        ),
        # 01:30 happens twice in New York on 2026-11-01: one run, not two.
        (
            "daily 01:30",
            "America/New_York",
            utc(2026, 10, 31, 12),
            [utc(2026, 11, 1, 5, 30), utc(2026, 11, 2, 6, 30), utc(2026, 11, 3, 6, 30)],
        ),
    ],
)
def test_fire_times_across_dst_changes(schedule, zone, after, expected_utc):
    fires = parse_schedule(schedule).next_fire_times(zone, after, 3)
    assert [fire.astimezone(UTC) for fire in fires] == expected_utc
    assert len({fire.strftime("%H:%M") for fire in fires}) == 1  # same wall-clock time


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"kind": "weather"}, "not a section"),
        ({"kind": "jira"}, "needs a JQL"),
        ({"kind": "prompt", "prompt": "  "}, "needs the question"),
        ({"kind": "jira", "jql": "x" * 1001}, "longer than"),
    ],
)
def test_bad_sections_are_refused(data, message):
    with pytest.raises(SectionError, match=message):
        parse_section(data)


def test_sections_get_default_titles_and_keep_only_their_own_fields():
    specs = parse_sections(
        [{"kind": "approvals", "jql": "ignored"}, {"kind": "jira", "jql": "project = OPS"}]
    )
    assert specs[0].as_json() == {"kind": "approvals", "title": "Pending approvals"}
    assert specs[1].as_json()["jql"] == "project = OPS"
    with pytest.raises(SectionError, match="at least one"):
        parse_sections([])
    with pytest.raises(SectionError, match="at most"):
        parse_sections([{"kind": "approvals"}] * 11)


@pytest.mark.parametrize(
    ("count", "length", "shown"),
    [(3, 10, 3), (MAX_LINES, 10, MAX_LINES), (40, 10, MAX_LINES), (8, 1200, 2)],
)
def test_lists_stay_within_the_section_limit_and_count_the_rest(count, length, shown):
    text = list_text("Open incidents", [f"{i:04d} " + "x" * length for i in range(count)])
    assert len(text) <= SECTION_LIMIT
    assert text.count("• ") == shown
    if shown < count:
        assert text.endswith(f"…and {count - shown} more")
    else:
        assert "more" not in text


def test_a_huge_briefing_stays_within_slack_limits():
    sections = [
        SectionContent(f"List {i}", [f"item {n} " + "y" * 300 for n in range(100)])
        for i in range(8)
    ] + [SectionContent("Notes", text="word " * 5000), SectionContent("Jira", unavailable="down")]
    sections *= 3
    reply = render_briefing("NOX briefing", "A calm day.", sections, "footer")
    assert len(reply.blocks) <= MAX_BLOCKS
    for block in reply.blocks:
        if block["type"] == "section":
            assert len(block["text"]["text"]) <= SECTION_LIMIT
        if block["type"] == "header":
            assert len(block["text"]["text"]) <= 150
    assert "more sections did not fit" in reply.blocks[-2]["elements"][0]["text"]


def test_unavailable_and_empty_sections_are_shown_as_such():
    reply = render_briefing(
        "NOX briefing",
        None,
        [
            SectionContent("Open incidents", unavailable="Jira is not connected in this workspace"),
            SectionContent("Pending approvals", empty="no approvals waiting"),
        ],
        "footer",
    )
    texts = [b["text"]["text"] for b in reply.blocks if b["type"] == "section"]
    assert texts == [
        "*Open incidents*\n_unavailable: Jira is not connected in this workspace_",
        "*Pending approvals*\n_no approvals waiting_",
    ]


class CountingSource:
    """A source of the kind a Jira integration would plug in, counting its calls."""

    def __init__(self, outcome) -> None:
        self.outcome = outcome
        self.calls = 0

    async def gather(self, context, spec):
        self.calls += 1
        await asyncio.sleep(0.01)
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        if self.outcome == "slow":
            await asyncio.sleep(1)
        return SectionContent(spec.title, [f"{spec.jql} for {context.briefing.id}"])


def briefing(subscription_id: int, tenant: str = "T0ACME", timezone: str = "UTC") -> Briefing:
    now = utc(2026, 11, 23, 8)
    return Briefing(
        subscription_id, Tenant(tenant), "C0OPS", "nox", "daily 09:00", timezone,
        [{"kind": "jira", "jql": "project = OPS"}], True, None, "U0ALICE", now, now,
    )


JIRA = parse_section({"kind": "jira", "title": "Open incidents", "jql": "project = OPS"})


@pytest.mark.parametrize(
    ("outcome", "shown"),
    [
        (SourceUnavailable("Jira answered 401: check the API token"),
         "Jira answered 401: check the API token"),
        (RuntimeError("boom"), "internal error (RuntimeError)"),
        ("slow", "no answer within 0.2 s"),
    ],
)
async def test_a_failing_source_makes_its_section_unavailable(outcome, shown):
    sources = Sources({}, timeout=0.2)
    sources.register("jira", CountingSource(outcome))
    [content] = await sources.gather(BriefingContext(briefing(1), NOX, FIRE), [JIRA])
    assert content.unavailable == shown


async def test_a_kind_without_a_source_is_unavailable():
    [jira] = await Sources({}).gather(BriefingContext(briefing(1), NOX, FIRE), [JIRA])
    assert jira.unavailable == "no source for this kind of section"


async def test_briefings_of_a_workspace_due_together_share_workspace_wide_sections():
    source = CountingSource("ok")
    sources = Sources({"jira": source})
    contexts = [BriefingContext(briefing(n), NOX, FIRE) for n in range(1, 6)]
    contexts.append(BriefingContext(briefing(6, tenant="T0GLOBEX"), NOX, FIRE))
    contexts.append(BriefingContext(briefing(7), NOX, FIRE + timedelta(minutes=1)))
    results = await asyncio.gather(*(sources.gather(c, [JIRA]) for c in contexts))
    assert source.calls == 3  # ACME at FIRE, GLOBEX at FIRE, ACME a minute later
    assert {r[0].lines[0] for r in results[:5]} == {"project = OPS for 1"}
