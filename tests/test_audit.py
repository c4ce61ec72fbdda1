"""The audit trail, attacked: an admin changes a setting and hopes nobody sees what it was before;
a member reads the trail; a workspace exports the trail hoping to see another's; paging and
``since`` that drop or repeat entries.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from bot.commands.audit import AuditQueryError, parse_since
from storage import migrate
from storage.db import create_engine, session_factory
from storage.models import AuditEvent, ToolCall
from storage.repositories import Repositories
from storage.repositories.audit import Cursor
from storage.secrets import SecretBox, generate_key
from storage.tenancy import Tenant
from tests.e2e import ACME as ACME_ID
from tests.e2e import ALICE, BOB, bot_token_settings, slash_command, started
from tests.test_cli import jamono as jamono_cli

ACME = Tenant(team_id=ACME_ID)
GLOBEX = Tenant(team_id="T0GLOBEX")
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


@pytest.fixture
def repos(engine) -> Repositories:
    return Repositories.over(session_factory(engine), SecretBox([generate_key()]))


async def changes(repos, tenant=ACME):
    """(kind, actor, subject, details) of every event, oldest first."""
    events = await repos.events.recent(tenant, limit=500)
    return [(e.kind, e.actor, e.subject, e.details) for e in reversed(events)]


# Configuration changes keep OLD and NEW ---------------------------------------------------


async def test_every_configuration_change_records_old_and_new(repos):
    config, policy = repos.config, repos.policy
    await config.update_persona(ACME, "nox", "U0ADMIN", model="gpt-4o")
    await config.update_persona(ACME, "nox", "U0ADMIN", model="gpt-4.1", enabled=True)
    await config.update_persona(ACME, "nox", "U0ADMIN", extra_instructions="be brief")
    await config.bind_channel(ACME, "C0OPS", "atlas", "U0ADMIN")
    await config.bind_channel(ACME, "C0OPS", None, "U0ADMIN")
    await config.set_timezone(ACME, "Europe/Paris", "U0ADMIN")
    await policy.set_auto_approve(ACME, "slack_post_message", True, "U0ADMIN", "C0OPS")
    await policy.set_auto_approve(ACME, "slack_post_message", None, "U0ADMIN", "C0OPS")
    await policy.set_zone(ACME, "nox", "C0OPS", ["jira_search"], "U0ADMIN")
    await policy.set_zone(ACME, "nox", "C0OPS", None, "U0ADMIN")
    assert await policy.remove_zone(ACME, "nox", "C0OPS", "U0ADMIN")
    await policy.set_approvers(ACME, "admins_only", "U0ADMIN")
    assert [(kind, subject, details) for kind, _, subject, details in await changes(repos)] == [
        ("persona_changed", "nox", {"field": "model", "old": None, "new": "gpt-4o"}),
        ("persona_changed", "nox", {"field": "model", "old": "gpt-4o", "new": "gpt-4.1"}),
        ("persona_changed", "nox", {"field": "enabled", "old": None, "new": True}),
        ("persona_changed", "nox",
         {"field": "extra_instructions", "old": None, "new": "be brief"}),
        ("channel_binding_changed", "C0OPS", {"old": None, "new": "atlas"}),
        ("channel_binding_changed", "C0OPS", {"old": "atlas", "new": None}),
        ("timezone_changed", None, {"old": None, "new": "Europe/Paris"}),
        ("auto_approve_changed", "slack_post_message",
         {"channel_id": "C0OPS", "old": None, "new": True}),
        ("auto_approve_changed", "slack_post_message",
         {"channel_id": "C0OPS", "old": True, "new": None}),
        ("zone_changed", "nox",
         {"channel_id": "C0OPS", "old": None, "new": {"tools": ["jira_search"]}}),
        ("zone_changed", "nox",
         {"channel_id": "C0OPS", "old": {"tools": ["jira_search"]}, "new": {"tools": "all"}}),
        ("zone_changed", "nox", {"channel_id": "C0OPS", "old": {"tools": "all"}, "new": None}),
        ("approvers_changed", None, {"old": "requester_or_admin", "new": "admins_only"}),
    ]
    assert {actor for _, actor, _, _ in await changes(repos)} == {"U0ADMIN"}


async def test_credentials_are_audited_without_secrets_or_passwords_in_urls(repos):
    creds = repos.credentials
    await creds.save(ACME, "jira", {"api_token": "s3cret-token"}, "U0ADMIN",
                     url="https://acme.atlassian.net", account="ops@acme.test")
    await creds.save(ACME, "caldav", {"password": "hunter2"}, "U0ADMIN",
                     url="https://bob:hunter2@dav.acme.test/cal/", account="bob")
    await creds.save(ACME, "jira", {"api_token": "other-token"}, "U0ADMIN",
                     url="https://acme2.atlassian.net", account="ops@acme.test")
    assert await creds.delete(ACME, "caldav", "U0ADMIN")
    recorded = await changes(repos)
    assert [(kind, subject, details) for kind, _, subject, details in recorded] == [
        ("credentials_saved", "jira", {"old": None, "new": {
            "url": "https://acme.atlassian.net", "account": "ops@acme.test"}}),
        ("credentials_saved", "caldav", {"old": None, "new": {
            "url": "https://dav.acme.test/cal/", "account": "bob"}}),
        ("credentials_saved", "jira", {
            "old": {"url": "https://acme.atlassian.net", "account": "ops@acme.test"},
            "new": {"url": "https://acme2.atlassian.net", "account": "ops@acme.test"}}),
        ("credentials_deleted", "caldav", {"old": {
            "url": "https://dav.acme.test/cal/", "account": "bob"}, "new": None}),
    ]
    assert "hunter2" not in json.dumps(recorded) and "token" not in json.dumps(recorded)


async def test_briefings_added_paused_resumed_and_removed_are_audited(repos):
    briefing = await repos.briefings.create(
        ACME, channel_id="C0OPS", persona="nox", schedule="weekdays 08:30",
        timezone="Europe/Paris", sections=[{"kind": "approvals"}], created_by="U0ALICE")
    assert await repos.briefings.set_enabled(ACME, briefing.id, False, "U0BOB")
    assert await repos.briefings.set_enabled(ACME, briefing.id, True, "U0BOB")
    assert await repos.briefings.pause_for(ACME, briefing.id, "channel_not_found")
    assert await repos.briefings.delete(ACME, briefing.id, "U0ADMIN")
    assert not await repos.briefings.delete(ACME, briefing.id, "U0ADMIN")
    recorded = await changes(repos)
    assert [(kind, actor) for kind, actor, _, _ in recorded] == [
        ("briefing_added", "U0ALICE"), ("briefing_paused", "U0BOB"),
        ("briefing_resumed", "U0BOB"), ("briefing_paused", None), ("briefing_removed", "U0ADMIN"),
    ]
    assert {subject for _, _, subject, _ in recorded} == {str(briefing.id)}
    added, removed = recorded[0][3], recorded[-1][3]
    assert added["old"] is None and added["new"]["schedule"] == "weekdays 08:30"
    assert removed["new"] is None and removed["old"]["channel_id"] == "C0OPS"
    assert recorded[3][3]["reason"] == "channel_not_found"


# Reading the trail: paging, since, filters, and never another workspace's rows -------------


async def seed(engine, tenant, start, count, actor="U0ALICE", tool="jira_search"):
    """``count`` entries, alternating events and tool calls, one minute apart from ``start``."""
    async with session_factory(engine).begin() as session:
        for i in range(count):
            moment = start + timedelta(minutes=i)
            if i % 2:
                session.add(ToolCall(
                    tenant_id=tenant.id, turn_id=None, persona="nox", user_id=actor, tool=tool,
                    arguments={"n": i}, result_summary="ok", status="ok", duration_ms=1,
                    created_at=moment))
            else:
                session.add(AuditEvent(
                    tenant_id=tenant.id, kind="persona_changed", actor=actor, subject="nox",
                    details={"field": "model", "old": None, "new": f"m{i}"}, created_at=moment))


async def test_paging_returns_every_entry_once_newest_first(repos, engine):
    await seed(engine, ACME, NOW - timedelta(hours=2), 23)
    await seed(engine, GLOBEX, NOW - timedelta(hours=2), 9, actor="U0EVE")
    seen, after, pages = [], None, 0
    while True:
        page = await repos.audit.page(ACME, since=NOW - timedelta(days=1), after=after, limit=5)
        seen += page.entries
        pages += 1
        if page.next is None:
            break
        after = Cursor.parse(str(page.next))  # the cursor survives being typed back
    assert pages == 5 and len(seen) == 23
    assert len({(e.source, e.id) for e in seen}) == 23
    assert [e.created_at for e in seen] == sorted((e.created_at for e in seen), reverse=True)
    assert {e.actor for e in seen} == {"U0ALICE"}  # never GLOBEX's


async def test_since_tool_and_user_filter_the_trail(repos, engine):
    await seed(engine, ACME, NOW - timedelta(days=3), 4, actor="U0OLD")
    await seed(engine, ACME, NOW - timedelta(hours=1), 6, actor="U0ALICE", tool="jira_search")
    await seed(engine, ACME, NOW - timedelta(minutes=30), 4, actor="U0BOB", tool="get_time")
    recent = await repos.audit.page(ACME, since=NOW - timedelta(days=1), limit=100)
    assert len(recent.entries) == 10 and "U0OLD" not in {e.actor for e in recent.entries}
    everything = await repos.audit.page(ACME, since=NOW - timedelta(days=7), limit=100)
    assert len(everything.entries) == 14
    bob = await repos.audit.page(ACME, since=NOW - timedelta(days=7), user="U0BOB", limit=100)
    assert {e.actor for e in bob.entries} == {"U0BOB"} and len(bob.entries) == 4
    timed = await repos.audit.page(ACME, since=NOW - timedelta(days=7), tool="get_time")
    assert [e.subject for e in timed.entries] == ["get_time", "get_time"]
    await repos.policy.set_auto_approve(ACME, "get_time", True, "U0ADMIN")
    timed = await repos.audit.page(ACME, since=NOW - timedelta(days=7), tool="get_time")
    assert sorted(e.kind for e in timed.entries) == [
        "auto_approve_changed", "tool_call", "tool_call"]


@pytest.mark.parametrize(("text", "expected"), [
    ("24h", NOW - timedelta(hours=24)),
    ("7d", NOW - timedelta(days=7)),
    ("2026-11-01", datetime(2026, 11, 1, tzinfo=UTC)),
    ("2026-11-29T08:30", datetime(2026, 11, 29, 8, 30, tzinfo=UTC)),
    ("2026-11-29T08:30+01:00", datetime(2026, 11, 29, 7, 30, tzinfo=UTC)),
])
def test_since_is_hours_days_or_an_iso_date(text, expected):
    assert parse_since(text, NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "7w", "2027-01-01", "99999d", "-1h"])
def test_a_since_that_is_not_a_past_time_is_refused(text):
    with pytest.raises(AuditQueryError):
        parse_since(text, NOW)


# The export prints only that workspace, as JSON Lines ---------------------------------------


async def test_export_prints_json_lines_of_that_workspace_only(engine, database_url, tmp_path):
    now = datetime.now(UTC)
    await seed(engine, ACME, now - timedelta(hours=3), 7)
    await seed(engine, GLOBEX, now - timedelta(hours=3), 5, actor="U0EVE", tool="jira_create")
    await seed(engine, ACME, now - timedelta(days=10), 3, actor="U0OLD")
    env = {"DATABASE_URL": database_url}
    code, out, err = await jamono_cli(
        "audit", "export", "--team", ACME.id, "--since", "7d", env=env, cwd=tmp_path)
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 7
    assert {line["actor"] for line in lines} == {"U0ALICE"}
    assert "U0EVE" not in out and "jira_create" not in out
    assert {line["source"] for line in lines} == {"event", "tool_call"}
    code, _, err = await jamono_cli(
        "audit", "export", "--team", ACME.id, "--since", "someday", env=env, cwd=tmp_path)
    assert code == 2 and "--since" in err


# /nox-audit in Slack: admins only, ephemeral, paged ---------------------------------------


async def test_nox_audit_is_for_admins_and_pages_with_a_next_command(
    http, slack, llm, sqlite_url, tmp_path
):
    await migrate.upgrade_async(sqlite_url)
    engine = create_engine(sqlite_url)
    try:
        await seed(engine, ACME, datetime.now(UTC) - timedelta(hours=1), 20)
        await seed(engine, GLOBEX, datetime.now(UTC) - timedelta(hours=1), 4, actor="U0EVE")
    finally:
        await engine.dispose()
    process = await started(bot_token_settings(slack, llm, sqlite_url), tmp_path)
    try:
        refused = await slash_command(http, process, slack, "/nox-audit", "", user=BOB)
        assert refused["response_type"] == "ephemeral"
        assert "Only workspace admins" in refused["text"] and "persona_changed" not in str(refused)

        first = await slash_command(http, process, slack, "/nox-audit", "24h", user=ALICE)
        assert first["response_type"] == "ephemeral"
        assert first["text"].count("\n• ") == 15 and "U0EVE" not in first["text"]
        more = first["text"].rsplit("More: `/nox-audit ", 1)[1].split("`")[0]
        second = await slash_command(http, process, slack, "/nox-audit", more, user=ALICE)
        assert second["text"].count("\n• ") == 5 and "End of the trail." in second["text"]
        lines = [line for page in (first, second) for line in page["text"].splitlines()
                 if line.startswith("• ")]
        assert len(set(lines)) == 20

        bad = await slash_command(http, process, slack, "/nox-audit", "someday!", user=ALICE)
        assert "Usage: `/nox-audit" in bad["text"]
    finally:
        assert await process.stop() == 0, process.output
