"""Credentials, approval requests, action policy and audit events on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import text

from storage import migrate
from storage.db import create_engine, session_factory
from storage.repositories import Repositories
from storage.repositories.approvals import State
from storage.repositories.credentials import MissingSecretKey
from storage.secrets import SecretBox, UndecryptableSecret, generate_key
from storage.tenancy import Tenant

ACME = Tenant(team_id="T0ACME")
GLOBEX = Tenant(team_id="T0GLOBEX")
T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
TOKEN = "ATATT3xFfGF0-very-secret-api-token"
KEY = generate_key()


@pytest.fixture
def repos(engine) -> Repositories:
    return Repositories.over(session_factory(engine), SecretBox([KEY]))


JIRA = {"url": "https://acme.atlassian.net", "email": "ops@acme.test", "api_token": TOKEN}


async def request(repos: Repositories, tenant: Tenant = ACME, **changes):
    fields = {
        "persona": "nox",
        "requested_by": "U0ALICE",
        "channel_id": "C0OPS",
        "thread_ts": "1700000000.000100",
        "tool": "jira_create_issue",
        "arguments": {"project": "OPS", "summary": "Payments API down"},
        "risk": "write",
        "target": "Jira project OPS",
        "tool_call_id": "call_1",
        "now": T0,
    }
    return await repos.approvals.create(tenant, **(fields | changes))


# Credentials


async def test_credentials_are_encrypted_at_rest(repos, engine):
    await repos.credentials.save(
        ACME, "jira", JIRA, "U0ADMIN", url=JIRA["url"], account=JIRA["email"]
    )

    async with engine.connect() as conn:
        rows = (await conn.execute(text("SELECT * FROM credentials"))).all()
        events = (await conn.execute(text("SELECT * FROM audit_events"))).all()
    assert len(rows) == 1
    raw = repr(tuple(rows[0]))
    assert TOKEN not in raw and "api_token" not in raw
    assert TOKEN not in repr(events)
    assert JIRA["url"] in raw  # the display field stays readable

    assert await repos.credentials.load(ACME, "jira") == JIRA
    assert await repos.credentials.load(GLOBEX, "jira") is None
    assert await repos.credentials.load(ACME, "caldav") is None


async def test_credentials_replace_list_and_delete(repos):
    await repos.credentials.save(ACME, "jira", JIRA, "U0ADMIN", url=JIRA["url"], account="a@x")
    await repos.credentials.save(
        ACME, "jira", JIRA | {"api_token": "new"}, "U0BOB", url="https://b"
    )
    caldav = {"url": "https://dav.acme.test/", "username": "nox", "password": "pw"}
    await repos.credentials.save(ACME, "caldav", caldav, None, url=caldav["url"], account="nox")

    info = await repos.credentials.configured(ACME)
    assert [(i.kind, i.url, i.account, i.updated_by) for i in info] == [
        ("caldav", "https://dav.acme.test/", "nox", None),
        ("jira", "https://b", None, "U0BOB"),
    ]
    assert all(i.updated_at.tzinfo is not None for i in info)
    assert (await repos.credentials.load(ACME, "jira"))["api_token"] == "new"
    assert await repos.credentials.configured(GLOBEX) == []

    assert await repos.credentials.delete(GLOBEX, "jira", "U0X") is False
    assert await repos.credentials.delete(ACME, "jira", "U0ADMIN") is True
    assert await repos.credentials.delete(ACME, "jira", "U0ADMIN") is False
    assert [i.kind for i in await repos.credentials.configured(ACME)] == ["caldav"]

    kinds = [(e.kind, e.actor, e.subject) for e in await repos.events.recent(ACME)]
    assert kinds == [
        ("credentials_deleted", "U0ADMIN", "jira"),
        ("credentials_saved", None, "caldav"),
        ("credentials_saved", "U0BOB", "jira"),
        ("credentials_saved", "U0ADMIN", "jira"),
    ]
    with pytest.raises(ValueError, match="unknown credentials kind"):
        await repos.credentials.save(ACME, "github", {}, None, url="https://x")


async def test_concurrent_saves_leave_one_row(repos):
    await asyncio.gather(
        *(
            repos.credentials.save(
                ACME, "jira", JIRA | {"api_token": f"t{n}"}, f"U{n}", url=JIRA["url"]
            )
            for n in range(10)
        )
    )
    [info] = await repos.credentials.configured(ACME)
    token = (await repos.credentials.load(ACME, "jira"))["api_token"]
    assert token == f"t{info.updated_by[1:]}"  # the settings and the author of the same save
    assert len(await repos.events.recent(ACME, kind="credentials_saved")) == 10


async def test_rotation_moves_every_row_to_the_newest_key(engine):
    sessions = session_factory(engine)
    old = Repositories.over(sessions, SecretBox([KEY]))
    await old.credentials.save(ACME, "jira", JIRA, "U0ADMIN", url=JIRA["url"])
    await old.credentials.save(GLOBEX, "caldav", {"password": "pw"}, None, url="https://dav")

    newest = generate_key()
    both = Repositories.over(sessions, SecretBox([newest, KEY]))
    assert await both.credentials.rotate_all() == 2

    only_new = Repositories.over(sessions, SecretBox([newest]))
    assert await only_new.credentials.load(ACME, "jira") == JIRA
    assert await only_new.credentials.load(GLOBEX, "caldav") == {"password": "pw"}
    with pytest.raises(UndecryptableSecret, match="jira credentials of T0ACME"):
        await old.credentials.load(ACME, "jira")
    rotated = await only_new.events.recent(GLOBEX, kind="credentials_rotated")
    assert [(e.subject, e.actor) for e in rotated] == [("caldav", None)]


async def test_rotation_with_an_unknown_key_changes_nothing(engine):
    sessions = session_factory(engine)
    await Repositories.over(sessions, SecretBox([KEY])).credentials.save(
        ACME, "jira", JIRA, None, url=JIRA["url"]
    )
    stranger = Repositories.over(sessions, SecretBox([generate_key()]))
    with pytest.raises(UndecryptableSecret, match="T0ACME"):
        await stranger.credentials.rotate_all()
    assert (
        await Repositories.over(sessions, SecretBox([KEY])).credentials.load(ACME, "jira") == JIRA
    )


async def test_without_a_key_credentials_are_listed_but_not_read(engine):
    sessions = session_factory(engine)
    await Repositories.over(sessions, SecretBox([KEY])).credentials.save(
        ACME, "jira", JIRA, None, url=JIRA["url"]
    )
    keyless = Repositories.over(sessions)
    assert [i.kind for i in await keyless.credentials.configured(ACME)] == ["jira"]
    with pytest.raises(MissingSecretKey, match="JAMONO_SECRET_KEY is not set"):
        await keyless.credentials.load(ACME, "jira")
    with pytest.raises(MissingSecretKey):
        await keyless.credentials.save(ACME, "jira", JIRA, None, url=JIRA["url"])


# Approval requests


async def test_a_request_is_stored_pending_with_its_details(repos):
    created = await request(repos)
    assert len(created.id) == 32
    assert created.state is State.PENDING
    assert created.expires_at == T0 + timedelta(hours=24)
    assert await repos.approvals.set_message_ts(ACME, created.id, "1700000001.000200") is True

    stored = await repos.approvals.get(ACME, created.id)
    assert stored is not None
    assert stored.message_ts == "1700000001.000200"
    assert stored.arguments == {"project": "OPS", "summary": "Payments API down"}
    assert (stored.tool, stored.target, stored.tool_call_id) == (
        "jira_create_issue",
        "Jira project OPS",
        "call_1",
    )
    assert stored.created_at == T0
    event = (await repos.events.recent(ACME, subject=created.id))[0]
    assert (event.kind, event.actor, event.details["tool"]) == (
        "approval_requested",
        "U0ALICE",
        "jira_create_issue",
    )


async def test_twenty_concurrent_deciders_on_two_engines_have_one_winner(
    repos, engine, database_url
):
    created = await request(repos)
    other_engine = create_engine(database_url)
    try:
        replicas = [repos, Repositories.over(session_factory(other_engine))]
        decisions = await asyncio.gather(
            *(
                replicas[n % 2].approvals.decide(
                    ACME, created.id, f"U{n:03d}", approve=n % 3 != 0, now=T0 + timedelta(hours=1)
                )
                for n in range(20)
            )
        )
    finally:
        await other_engine.dispose()

    winners = [n for n, decision in enumerate(decisions) if decision.won]
    assert len(winners) == 1
    winner = winners[0]
    expected = State.REJECTED if winner % 3 == 0 else State.APPROVED
    stored = await repos.approvals.get(ACME, created.id)
    assert (stored.state, stored.decided_by) == (expected, f"U{winner:03d}")
    assert stored.decided_at == T0 + timedelta(hours=1)
    for decision in decisions:
        assert decision.request is not None and decision.state is expected
        assert decision.request.decided_by == f"U{winner:03d}"
    decided = await repos.events.recent(ACME, kind="approval_decided")
    assert [(e.actor, e.details) for e in decided] == [
        (f"U{winner:03d}", {"approved": expected is State.APPROVED})
    ]


async def test_execution_starts_once_and_finishes_once(repos):
    created = await request(repos)
    assert await repos.approvals.start_execution(ACME, created.id, T0) is None  # not approved
    await repos.approvals.decide(ACME, created.id, "U0ALICE", approve=True, now=T0)

    starts = await asyncio.gather(
        *(repos.approvals.start_execution(ACME, created.id, T0) for _ in range(20))
    )
    running = [s for s in starts if s is not None]
    assert len(running) == 1
    assert running[0].state is State.EXECUTING
    assert running[0].arguments["project"] == "OPS"

    assert await repos.approvals.finish_execution(ACME, created.id, "Created OPS-7", ok=True)
    assert not await repos.approvals.finish_execution(ACME, created.id, "again", ok=False)
    stored = await repos.approvals.get(ACME, created.id)
    assert (stored.state, stored.result_summary) == (State.EXECUTED, "Created OPS-7")
    executed = await repos.events.recent(ACME, kind="action_executed")
    assert [(e.actor, e.subject, e.details["ok"]) for e in executed] == [
        ("U0ALICE", created.id, True)
    ]


async def test_a_failed_execution_is_recorded_as_failed(repos):
    created = await request(repos)
    await repos.approvals.decide(ACME, created.id, "U0ALICE", approve=True, now=T0)
    await repos.approvals.start_execution(ACME, created.id, T0)
    assert await repos.approvals.finish_execution(ACME, created.id, "Jira is unavailable", ok=False)
    stored = await repos.approvals.get(ACME, created.id)
    assert (stored.state, stored.result_summary) == (State.FAILED, "Jira is unavailable")


async def test_a_second_decision_reports_the_first(repos):
    created = await request(repos)
    first = await repos.approvals.decide(ACME, created.id, "U0BOB", approve=False, now=T0)
    assert first.won and first.state is State.REJECTED

    second = await repos.approvals.decide(ACME, created.id, "U0ALICE", approve=True, now=T0)
    assert not second.won
    assert second.state is State.REJECTED
    assert second.request.decided_by == "U0BOB"
    assert await repos.approvals.start_execution(ACME, created.id) is None


async def test_a_late_click_expires_the_request(repos):
    created = await request(repos, ttl=timedelta(minutes=10))
    decision = await repos.approvals.decide(
        ACME, created.id, "U0ALICE", approve=True, now=T0 + timedelta(minutes=10)
    )
    assert not decision.won
    assert decision.state is State.EXPIRED
    assert decision.request.decided_by is None
    assert await repos.approvals.start_execution(ACME, created.id) is None
    assert await repos.approvals.expire_due(T0 + timedelta(days=2)) == []  # already expired
    expired = await repos.events.recent(ACME, kind="approval_expired")
    assert [(e.subject, e.details) for e in expired] == [(created.id, {"clicked_by": "U0ALICE"})]


async def test_expire_due_sweeps_every_tenant_once(repos):
    due = await request(repos, ttl=timedelta(hours=1))
    later = await request(repos, ttl=timedelta(hours=3))
    elsewhere = await request(repos, GLOBEX, ttl=timedelta(hours=1))
    decided = await request(repos, ttl=timedelta(hours=1))
    await repos.approvals.decide(ACME, decided.id, "U0ALICE", approve=True, now=T0)

    swept = await repos.approvals.expire_due(T0 + timedelta(hours=2))
    # Approved but never started counts as not done: it expires too (and never runs).
    assert {(a.tenant_id, a.id) for a in swept} == {
        ("T0ACME", due.id), ("T0GLOBEX", elsewhere.id), ("T0ACME", decided.id)
    }
    assert all(a.state is State.EXPIRED for a in swept)
    assert await repos.approvals.expire_due(T0 + timedelta(hours=2)) == []
    assert (await repos.approvals.get(ACME, later.id)).state is State.PENDING
    assert (await repos.approvals.get(ACME, decided.id)).decided_by == "U0ALICE"

    pending = await repos.approvals.pending_for(ACME, T0 + timedelta(hours=2))
    assert [a.id for a in pending] == [later.id]


async def test_fail_stalled_closes_only_executions_started_before_the_bound(repos):
    async def executing(tenant: Tenant = ACME):
        created = await request(repos, tenant, now=datetime.now(UTC))
        await repos.approvals.decide(tenant, created.id, "U0BOB", approve=True)
        return await repos.approvals.start_execution(tenant, created.id)

    orphan, elsewhere = await executing(), await executing(GLOBEX)
    bound = datetime.now(UTC)
    running = await executing()
    assert orphan.state is State.EXECUTING

    closed = await repos.approvals.fail_stalled(bound, "error: the process stopped")
    assert {(a.tenant_id, a.id) for a in closed} == {
        ("T0ACME", orphan.id), ("T0GLOBEX", elsewhere.id)
    }
    assert all(a.state is State.FAILED for a in closed)
    assert closed[0].result_summary == "error: the process stopped"
    assert (await repos.approvals.get(ACME, running.id)).state is State.EXECUTING
    assert await repos.approvals.fail_stalled(bound, "again") == []
    # The process that started it cannot finish it twice: the request is already closed.
    assert not await repos.approvals.finish_execution(ACME, orphan.id, "ok", ok=True)
    events = await repos.events.recent(ACME, kind="action_executed")
    assert [(e.subject, e.details) for e in events] == [
        (orphan.id, {"tool": "jira_create_issue", "ok": False, "stalled": True})
    ]
    assert await repos.approvals.pending_for(ACME, T0 + timedelta(hours=3)) == []


async def test_another_tenant_never_finds_a_request(repos):
    created = await request(repos)
    decision = await repos.approvals.decide(GLOBEX, created.id, "U0EVE", approve=True, now=T0)
    assert not decision.won and decision.request is None and decision.state is None
    assert await repos.approvals.get(GLOBEX, created.id) is None
    assert await repos.approvals.set_message_ts(GLOBEX, created.id, "1.2") is False
    assert await repos.approvals.start_execution(GLOBEX, created.id) is None
    assert await repos.approvals.pending_for(GLOBEX, T0) == []
    assert await repos.events.recent(GLOBEX) == []
    stored = await repos.approvals.get(ACME, created.id)
    assert stored.state is State.PENDING and stored.message_ts is None


async def test_a_request_survives_a_restart(database_url):
    await migrate.upgrade_async(database_url)
    first = create_engine(database_url)
    try:
        created = await request(Repositories.over(session_factory(first)))
    finally:
        await first.dispose()

    second = create_engine(database_url)
    try:
        repos = Repositories.over(session_factory(second))
        assert [a.id for a in await repos.approvals.pending_for(ACME, T0)] == [created.id]
        decision = await repos.approvals.decide(ACME, created.id, "U0ALICE", True, now=T0)
        assert decision.won and decision.state is State.APPROVED
    finally:
        await second.dispose()


async def test_naive_times_and_bad_lifetimes_are_refused(repos):
    with pytest.raises(ValueError, match="naive"):
        await request(repos, now=datetime(2026, 11, 23, 9, 0))
    with pytest.raises(ValueError, match="positive"):
        await request(repos, ttl=timedelta(0))
    created = await request(repos)
    paris = datetime(2026, 11, 23, 10, 0, tzinfo=timezone(timedelta(hours=1)))
    decision = await repos.approvals.decide(ACME, created.id, "U0ALICE", True, now=paris)
    assert decision.won and decision.request.decided_at == T0
    assert decision.request.decided_at.utcoffset() == timedelta(0)


# Action policy


async def test_policy_is_stored_per_tenant(repos):
    policy = repos.policy
    await policy.set_auto_approve(ACME, "jira_add_comment", True, "U0ADMIN")
    await policy.set_auto_approve(ACME, "jira_add_comment", False, "U0ADMIN", channel_id="C0PROD")
    await policy.set_auto_approve(ACME, "jira_create_issue", True, "U0ADMIN", channel_id="C0OPS")
    await policy.set_zone(ACME, "nox", "C0OPS", None, "U0ADMIN")
    await policy.set_zone(ACME, "nox", "C0PROD", ["jira_search", "jira_add_comment"], "U0ADMIN")
    await policy.set_approvers(ACME, "admins_only", "U0ADMIN")

    acme = await policy.load(ACME)
    assert acme.approvers == "admins_only"
    assert acme.zones == {
        "nox": {"C0OPS": None, "C0PROD": frozenset({"jira_search", "jira_add_comment"})}
    }
    assert acme.check("nox", "jira_add_comment", "write", "C0OPS").needs_approval is False
    assert acme.check("nox", "jira_add_comment", "write", "C0PROD").needs_approval is True
    assert acme.check("nox", "jira_create_issue", "write", "C0PROD").refusal == "tool_not_in_zone"
    assert acme.check("nox", "jira_search", "read", "C0RANDOM").refusal == "outside_zones"
    assert acme.check("atlas", "jira_search", "read", "C0RANDOM").allowed

    globex = await policy.load(GLOBEX)
    assert (globex.approvers, globex.zones, globex.auto_approve) == ("requester_or_admin", {}, {})

    await policy.set_auto_approve(ACME, "jira_add_comment", None, "U0ADMIN", channel_id="C0PROD")
    assert await policy.remove_zone(ACME, "nox", "C0PROD") is True
    assert await policy.remove_zone(ACME, "nox", "C0PROD") is False
    await policy.set_zone(ACME, "nox", "C0OPS", ["jira_search"], "U0ADMIN")
    acme = await policy.load(ACME)
    assert acme.check("nox", "jira_add_comment", "write", "C0PROD").refusal == "outside_zones"
    assert acme.zones["nox"] == {"C0OPS": frozenset({"jira_search"})}
    await policy.remove_zone(ACME, "nox", "C0OPS")
    acme = await policy.load(ACME)
    assert acme.check("nox", "jira_add_comment", "write", "C0PROD").needs_approval is False

    with pytest.raises(ValueError, match="approvers"):
        await policy.set_approvers(ACME, "anyone", "U0ADMIN")
    with pytest.raises(ValueError, match="at least one tool"):
        await policy.set_zone(ACME, "nox", "C0OPS", [], "U0ADMIN")


# Audit events


async def test_events_are_listed_newest_first_per_tenant(repos):
    for n in range(5):
        await repos.events.record(
            ACME, "action_executed", actor="U0ALICE", subject=f"r{n}", details={"n": n}
        )
    await repos.events.record(GLOBEX, "credentials_saved", actor=None)

    recent = await repos.events.recent(ACME, limit=3)
    assert [e.subject for e in recent] == ["r4", "r3", "r2"]
    assert recent[0].details == {"n": 4} and recent[0].created_at.tzinfo is not None
    assert [e.kind for e in await repos.events.recent(GLOBEX)] == ["credentials_saved"]
    assert await repos.events.recent(ACME, kind="credentials_saved") == []
    with pytest.raises(ValueError, match="1 to 32 characters"):
        await repos.events.record(ACME, "x" * 33, actor=None)
