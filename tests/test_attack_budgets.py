"""Attacks on the operator's LLM bill and on the other workspaces' share of it, each stopped by
a budget or limit (agents/budgets.py): floods of mentions, a workspace past its daily tokens
or money, a model reply asking for 50 tool calls, an admin picking an expensive model, and
replicas that must share the counts. Real SQLite/PostgreSQL and Redis, the fake LLM and Slack
at the wire; daily budgets run on an injected clock, nothing sleeps."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy import select

from agents import personas
from agents.budgets import (
    DEFAULT_PRICES,
    Budgets,
    Limit,
    Limits,
    ModelChoice,
    OverLimit,
    PriceTable,
    Refusal,
    parse_limit,
    spend_refusal,
    workspace_burst,
)
from agents.personas import NOX
from agents.runtime import AgentRuntime, TurnRequest
from agents.spend import REFRESH
from bot.briefings.delivery import Outcome
from bot.commands import CommandRequest, CommandRouter
from bot.services import Services
from bot.settings import load_settings
from bot.slack_client import web_client
from bot.turns import IncomingMessage, SlackTurns
from storage import migrate
from storage.models import ApprovalRequest
from storage.repositories.conversations import LLMCallUsage
from storage.tenancy import Tenant
from tests.e2e import ACME, ACME_TOKEN, ALICE, BOB, SIGNING_SECRET
from tests.fakes import ToolCall
from tests.test_cli import jamono

TENANT = Tenant(ACME)
GLOBEX = Tenant("T0GLOBEX")
NOON = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


async def start(database_url, llm, slack=None, **settings) -> Services:
    await migrate.upgrade_async(database_url)
    base = {
        "DATABASE_URL": database_url,
        "OPENAI_BASE_URL": llm.base_url,
        "OPENAI_API_KEY": "sk-test",
        "JAMONO_MODEL": "fake-model",
        "JAMONO_TOOL_TIMEOUT": 5,
    }
    if slack is not None:
        base |= {
            "SLACK_API_URL": slack.api_url,
            "SLACK_BOT_TOKEN": ACME_TOKEN,
            "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        }
    return await Services.start(load_settings(_env_file=None, **(base | settings)))


@pytest.fixture
async def services(sqlite_url, llm, slack):
    # The indicator at once: the flood test checks which turns show it.
    services = await start(
        sqlite_url, llm, slack, JAMONO_TURNS_PER_MINUTE_USER=3, JAMONO_WORKING_INDICATOR_DELAY=0
    )
    yield services
    await services.close()


def clocked(services: Services, now: datetime, **limits) -> AgentRuntime:
    """A runtime whose budgets read the time from ``now`` (a one-element list), with ``limits``
    over the deployment's."""
    budgets = Budgets(
        defaults=replace(services.budgets.defaults, **limits),
        prices=services.budgets.prices,
        models=services.budgets.models,
        repo=services.repos.budgets,
        clock=lambda: now[0],
    )
    runtime = services.runtime
    return AgentRuntime(
        llm=runtime.llm, registry=runtime.registry, repos=runtime.repos,
        default_model="fake-model", tool_timeout=5, context_tokens=6000, budgets=budgets,
    )


def ask(
    text="hello", thread="100.1", user=ALICE, tenant=TENANT, slack=None, persona=NOX
) -> TurnRequest:
    return TurnRequest(
        tenant=tenant, persona=persona, channel_id="C0OPS", thread_ts=thread, user_id=user,
        text=text, slack=slack,
    )


async def spend(services, tenant, model="fake-model", prompt=0, completion=0):
    """Usage stored for ``tenant`` today, as a briefing's opening records it and tells the
    budgets (bot/briefings/delivery.py)."""
    await services.repos.briefings.record_llm_usage(
        tenant, persona="nox", model=model, prompt_tokens=prompt,
        completion_tokens=completion, duration_ms=1,
    )
    services.budgets.stored(tenant, [LLMCallUsage(model, prompt, completion, 1)])


async def command(services, command, text, user=ALICE, admin=True):
    async def is_admin() -> bool:
        return admin

    reply = await CommandRouter(services).handle(
        CommandRequest(TENANT, command, text, user, "C0OPS", is_admin)
    )
    return reply.text


# Rate limits ---------------------------------------------------------------------------------


async def test_a_user_flooding_mentions_is_told_the_limit_and_the_llm_sees_only_the_limit(
    services, llm, slack
):
    client = web_client(slack.api_url, ACME_TOKEN)
    turns = SlackTurns(services)
    for n in range(8):
        await turns.accept(
            IncomingMessage(TENANT, "C0OPS", BOB, f"<@U0NOX> flood {n}", f"200.{n}", None, False),
            client,
        )
    await turns.accept(  # someone else in the workspace is not held back by BOB's flood
        IncomingMessage(TENANT, "C0OPS", ALICE, "<@U0NOX> hi", "300.1", None, False), client
    )
    assert await services.inflight.drain(20) == 0
    assert len(llm.requests) == 4  # BOB's three, then ALICE's
    answers = [c.params["text"] for c in slack.calls_to("chat.postMessage")]
    # BOB hears the refusal once, not once per message: until his minute resets, each
    # refusal would be a post of its own, which Slack allows about once a second per channel.
    (refused,) = [text for text in answers if "turns_per_minute_user" in text]
    assert "limit of 3 turns per minute for one person" in refused
    assert "It resets at" in refused and "UTC (in " in refused
    assert len(answers) == 5  # BOB's three answers, his one refusal, ALICE's answer
    assert services.budgets.rejections() == {(ACME, "turns_per_minute_user"): 5}
    # Nothing is lost: a refused message is stored in its conversation for the next turn.
    history = await services.repos.conversations.recent_messages(TENANT, "C0OPS", "200.7")
    assert [(m.role, m.content) for m in history] == [("user", "flood 7")]
    # Only the admitted turns show the working indicator: a refused one costs one post.
    reacted = sorted(c.params["timestamp"] for c in slack.calls_to("reactions.add"))
    assert reacted == ["200.0", "200.1", "200.2", "300.1"]


async def test_many_users_cannot_exceed_the_workspace_rate(sqlite_url, llm):
    services = await start(sqlite_url, llm, JAMONO_TURNS_PER_MINUTE_WORKSPACE=4)
    try:
        outcomes = [
            await services.runtime.run(ask(user=f"U{n:04d}", thread=f"1.{n}")) for n in range(7)
        ]
        other = await services.runtime.run(ask(tenant=GLOBEX))
    finally:
        await services.close()
    assert [o.status for o in outcomes] == ["ok"] * 4 + ["limited"] * 3
    assert "This workspace has reached its limit of 4 turns per minute" in outcomes[-1].text
    assert other.status == "ok"  # another workspace keeps its own window
    assert len(llm.requests) == 5


async def test_a_flood_of_many_users_starts_a_slice_of_the_minute_at_a_time(sqlite_url, llm):
    services = await start(sqlite_url, llm, JAMONO_TURNS_PER_MINUTE_WORKSPACE=120)
    try:
        outcomes = [
            await services.runtime.run(ask(user=f"U{n:04d}", thread=f"1.{n}")) for n in range(12)
        ]
    finally:
        await services.close()
    assert [o.status for o in outcomes] == ["ok"] * 10 + ["limited"] * 2
    assert ("limit of 120 turns per minute, at most 10 of them in 5 seconds"
            in outcomes[-1].text)
    assert "It resets at" in outcomes[-1].text


def test_a_refusal_is_told_once_per_person_until_its_limit_resets(services):
    now = [datetime(2026, 11, 30, 9, 0, tzinfo=UTC)]
    budgets = Budgets(defaults=services.budgets.defaults, prices=services.budgets.prices,
                      models=services.budgets.models, repo=services.repos.budgets,
                      clock=lambda: now[0])
    minute = Refusal(Limit.TURNS_PER_MINUTE_USER, "wait", now[0] + timedelta(seconds=40))
    busy = Refusal(Limit.CONCURRENT_TURNS, "busy", None)
    assert budgets.first_notice(TENANT, BOB, minute)
    assert not budgets.first_notice(TENANT, BOB, minute)
    assert budgets.first_notice(TENANT, ALICE, minute)  # someone else is told
    assert budgets.first_notice(TENANT, BOB, busy)  # another limit is news
    assert budgets.first_notice(Tenant("T0OTHER"), BOB, minute)  # another workspace's BOB
    now[0] += timedelta(seconds=41)  # the minute has reset: a new refusal is news again
    assert budgets.first_notice(TENANT, BOB, minute)
    assert not budgets.first_notice(TENANT, BOB, busy)  # within a minute of the last
    now[0] += timedelta(seconds=61)
    assert budgets.first_notice(TENANT, BOB, busy)


def test_the_burst_is_a_twelfth_of_the_minute_but_never_below_the_floor():
    assert [workspace_burst(n) for n in (1, 4, 5, 12, 60, 61, 120, 600)] == [
        1, 4, 5, 5, 5, 6, 10, 50]


# Daily tokens and money --------------------------------------------------------------------


async def test_a_workspace_over_its_daily_tokens_is_refused_before_the_llm_is_called(
    database_url, llm
):
    services = await start(database_url, llm)
    now = [datetime.now(UTC)]
    try:
        runtime = clocked(services, now, tokens_per_day=1000)
        await spend(services, TENANT, prompt=700, completion=300)
        refused = await runtime.run(ask())
        assert len(llm.requests) == 0
        other = await runtime.run(ask(tenant=GLOBEX))  # the budget is per workspace
        assert len(llm.requests) == 1
        now[0] += timedelta(days=1)  # the next UTC day starts a fresh budget
        next_day = await runtime.run(ask("again", thread="100.1"))
    finally:
        await services.close()
    assert refused.status == "limited"
    assert "This workspace has used 1,000 of its 1,000 LLM tokens for today" in refused.text
    assert "It resets at 00:00:00 UTC" in refused.text and "`tokens_per_day`" in refused.text
    assert other.status == "ok" and next_day.status == "ok"
    # The refused message was kept: the next day's turn sees it in the thread's memory.
    assert next_day.text == "<echo> again (user messages seen: 2)"


async def test_a_tool_loop_stops_when_its_own_calls_use_up_the_budget(sqlite_url, llm):
    services = await start(sqlite_url, llm)
    try:
        runtime = clocked(services, [datetime.now(UTC)], tokens_per_day=50)
        llm.script = lambda r: [ToolCall("get_time", {})]  # would loop until max_tool_steps
        outcome = await runtime.run(ask("what time is it?"))
        history = await services.repos.conversations.recent_messages(TENANT, "C0OPS", "100.1")
    finally:
        await services.close()
    assert len(llm.requests) == 1  # the first call used more than 50 tokens
    assert outcome.status == "limited" and "tokens_per_day" in outcome.text
    assert [m.role for m in history] == ["user", "assistant", "tool"]  # a valid history


async def test_a_tool_loop_within_the_budget_is_not_refused_for_calls_counted_twice(
    sqlite_url, llm
):
    """Each step is stored as it happens: the check before the next call must not add the
    stored calls of the turn a second time."""

    def two_rounds(request):
        rounds = sum(m["role"] == "tool" for m in request["messages"])
        return [ToolCall("get_time", {})] if rounds < 2 else "it is late"

    llm.script = two_rounds
    services = await start(sqlite_url, llm)
    try:
        now = [datetime.now(UTC)]  # stored usage is timestamped by the database's clock
        free = await clocked(services, now).run(ask("what time is it?"))
        spent = sum(u.prompt_tokens + u.completion_tokens for u in free.usage)
        # Another workspace, which has spent nothing today, with a budget just over the turn.
        budgeted = await clocked(services, now, tokens_per_day=spent + 50).run(
            ask("what time is it?", tenant=GLOBEX)
        )
    finally:
        await services.close()
    assert free.status == "ok" and len(free.usage) == 3
    assert budgeted.status == "ok", budgeted.text  # refused before its 3rd call when counted twice
    assert budgeted.text == "it is late"


async def test_the_money_budget_counts_each_model_at_its_price(sqlite_url, llm):
    services = await start(
        sqlite_url, llm, JAMONO_USD_PER_DAY=1.0,
        JAMONO_LLM_PRICES=json.dumps({"fake-model": [100, 100]}),
        JAMONO_LLM_DEFAULT_PRICE="[1000, 1000]",
    )
    try:
        await spend(services, TENANT, model="fake-model", prompt=4000, completion=0)  # $0.40
        await spend(services, TENANT, model="mystery-model", prompt=0, completion=500)  # $0.50
        under = await services.runtime.run(ask())
        await spend(services, TENANT, model="gpt-4o-2024-08-06", prompt=40_000)  # $0.10
        over = await services.runtime.run(ask(thread="100.2"))
    finally:
        await services.close()
    assert under.status == "ok"
    assert over.status == "limited" and "`usd_per_day`" in over.text
    assert "of its $1.00 daily LLM budget" in over.text
    assert len(llm.requests) == 1


async def test_usage_another_process_stored_counts_within_the_spend_refresh(sqlite_url, llm):
    """Each process reads the day's usage at most every REFRESH and adds its own as it stores
    it: another replica's spending reaches its checks that much later, never later."""
    services = await start(sqlite_url, llm, JAMONO_TOKENS_PER_DAY=1000)
    now = [datetime.now(UTC)]
    here, there = (
        Budgets(defaults=services.budgets.defaults, prices=services.budgets.prices,
                models=services.budgets.models, repo=services.repos.budgets,
                clock=lambda: now[0])
        for _ in range(2)
    )
    try:
        assert await there.spend_refusal(TENANT) is None  # read: nothing spent yet
        await services.repos.briefings.record_llm_usage(
            TENANT, persona="nox", model="fake-model", prompt_tokens=1000,
            completion_tokens=0, duration_ms=1,
        )
        here.stored(TENANT, [LLMCallUsage("fake-model", 1000, 0, 1)])
        assert await here.spend_refusal(TENANT) is not None  # its own: at once
        now[0] += REFRESH - timedelta(seconds=1)
        assert await there.spend_refusal(TENANT) is None  # the promise allows this much
        now[0] += timedelta(seconds=1)
        refused = await there.spend_refusal(TENANT)
    finally:
        await services.close()
    assert refused is not None and refused.limit is Limit.TOKENS_PER_DAY


async def test_a_briefing_of_a_workspace_over_budget_makes_no_llm_call(sqlite_url, llm, slack):
    services = await start(sqlite_url, llm, slack, JAMONO_TOKENS_PER_DAY=100)
    try:
        await spend(services, TENANT, prompt=100)
        briefing = await services.repos.briefings.create(
            TENANT, channel_id="C0OPS", persona="nox", schedule="daily 12:00",
            timezone="UTC", created_by=ALICE,
            sections=[{"kind": "activity"}, {"kind": "prompt", "title": "Watch", "prompt": "?"}],
        )
        result = await services.briefings.run_scheduled(briefing.id, NOON, now=NOON)
    finally:
        await services.close()
    assert result.outcome is Outcome.POSTED  # the briefing still goes out, without the LLM
    assert llm.requests == []
    assert services.budgets.rejections()[(ACME, "tokens_per_day")] == 2  # prompt and opening


# Tool calls per reply --------------------------------------------------------------------------


async def test_a_reply_with_50_tool_calls_runs_at_most_n_and_posts_at_most_n_cards(
    services, llm, slack
):
    client = web_client(slack.api_url, ACME_TOKEN)
    flood = [
        ToolCall("slack_post_message", {"channel": "<#C0INC|incidents>", "text": f"spam {n}"})
        for n in range(50)
    ]
    llm.script = lambda r: "done" if r["messages"][-1]["role"] == "tool" else flood
    outcome = await services.runtime.run(ask("announce", slack=client))
    cap = services.budgets.defaults.tool_calls_per_reply
    assert cap == 8
    assert [r.status for r in outcome.tool_runs] == ["awaiting_approval"] * cap
    assert len(slack.calls_to("chat.postMessage")) == cap  # approval cards only
    async with services.repos.approvals._sessions() as session:
        assert len((await session.scalars(select(ApprovalRequest))).all()) == cap
    results = [m for m in llm.requests[1]["messages"] if m["role"] == "tool"]
    assert len(results) == 50  # every call answered, so the history stays valid
    assert sum("not run: at most 8 tool calls" in m["content"] for m in results) == 42
    assert services.budgets.rejections() == {(ACME, "tool_calls_per_reply"): 1}


# Models --------------------------------------------------------------------------------------


async def test_an_admin_cannot_bill_the_operator_for_a_model_outside_the_allow_list(
    sqlite_url, llm
):
    services = await start(sqlite_url, llm, JAMONO_ALLOWED_MODELS="gpt-4.1-mini")
    try:
        refused = await command(services, "/nox-config", "model gpt-4.5-preview")
        stored = (await services.repos.config.load(TENANT)).overrides
        allowed = await command(services, "/nox-config", "model gpt-4.1-mini")
        await services.runtime.run(ask(persona=await configured(services)))
        # An override stored before the operator narrowed the list falls back to the default.
        await services.repos.config.update_persona(TENANT, "nox", "U0OLD", model="gpt-4o")
        await services.runtime.run(ask(thread="100.2", persona=await configured(services)))
        shown = await command(services, "/nox-config", "show")
        status = await command(services, "/nox-status", "")
    finally:
        await services.close()
    assert "`gpt-4.5-preview` is not one of the models this deployment allows" in refused
    assert "`fake-model`, `gpt-4.1-mini`" in refused
    assert "nox" not in stored
    assert "now uses model `gpt-4.1-mini`" in allowed
    assert [r["model"] for r in llm.requests] == ["gpt-4.1-mini", "fake-model"]
    assert "model `fake-model` (`gpt-4o` is no longer allowed)" in shown
    assert "*Model:* `fake-model`" in status


async def configured(services):
    """NOX as the workspace configured it (the listeners resolve it so for each turn)."""
    return personas.effective("nox", await services.repos.config.load(TENANT))


# Operator overrides and /nox-status ------------------------------------------------------


async def test_only_the_operator_changes_a_workspace_budget(tmp_path, llm):
    database = f"sqlite+aiosqlite:///{tmp_path / 'jamono.db'}"
    env = {"DATABASE_URL": database}
    code, out, err = await jamono(
        "config", "--team", ACME, "limit", "tokens_per_day", "200", env=env, cwd=tmp_path
    )
    assert code == 0, err
    assert "tokens_per_day = 200 (set for this workspace)" in out
    assert "usd_per_day = 5.0 (default)" in out
    code, _, err = await jamono(
        "config", "--team", ACME, "limit", "tokens_per_day", "lots", env=env, cwd=tmp_path
    )
    assert code == 2 and "tokens_per_day takes a whole number, not 'lots'" in err
    services = await start(database, llm)
    try:
        await spend(services, TENANT, prompt=200)
        refused = await services.runtime.run(ask())
        by_admin = await command(services, "/nox-config", "limit tokens_per_day 99999999")
        status = await command(services, "/nox-status", "")
    finally:
        await services.close()
    assert refused.status == "limited" and "of its 200 LLM tokens" in refused.text
    assert "`limit` is not a configuration verb" in by_admin  # admins are outside parties
    assert "*LLM usage today:* 200 of 200 tokens; $0.00 of $5.00" in status
    # The refused turn was admitted by the rate limits, then stopped by the budget.
    assert "10 turns a minute per person (you have 9 left now)" in status
    assert "60 turns a minute in the workspace (59 left now)" in status
    assert "10 answers at once (0 running)" in status
    assert "8 tool calls per model reply" in status
    code, out, _ = await jamono(
        "config", "--team", ACME, "limit", "tokens_per_day", "default", env=env, cwd=tmp_path
    )
    assert code == 0 and "tokens_per_day = 2000000 (default)" in out
    code, out, _ = await jamono("audit", "export", "--team", ACME, "--since", "1d", env=env,
                                cwd=tmp_path)
    changes = [json.loads(line) for line in out.splitlines()]
    changes = [c for c in changes if c["kind"] == "limit_changed"]
    assert code == 0 and [(c["actor"], c["details"]["old"], c["details"]["new"])
                          for c in reversed(changes)] == [("cli", None, 200), ("cli", 200, None)]


async def test_status_answers_when_the_usage_figures_cannot_be_read(sqlite_url, llm):
    """/nox-status is how people learn that a store fails: it must not fail with it."""
    services = await start(sqlite_url, llm)
    try:
        async with services.engine.begin() as connection:
            await connection.execute(sa.text("DROP TABLE llm_usage"))
        status = await command(services, "/nox-status", "")
    finally:
        await services.close()
    assert "*LLM usage today:* unavailable (OperationalError)" in status
    assert "*Integrations:*" in status


# Across replicas (Redis) ----------------------------------------------------------------------


async def test_two_replicas_share_the_rate_and_concurrency_limits(sqlite_url, llm, redis_url):
    limits = {"REDIS_URL": redis_url, "JAMONO_TURNS_PER_MINUTE_USER": 3}
    first = await start(sqlite_url, llm, **limits)
    second = await start(sqlite_url, llm, **limits, JAMONO_CONCURRENT_TURNS=1)
    try:
        outcomes = [
            await (first if n % 2 else second).runtime.run(ask(thread=f"1.{n}")) for n in range(6)
        ]
        assert [o.status for o in outcomes] == ["ok"] * 3 + ["limited"] * 3
        assert len(llm.requests) == 3
        # A turn in progress on the first replica holds the workspace's only slot.
        async with first.budgets.turn(TENANT, "U0OTHER"):
            busy = await second.runtime.run(ask(user=BOB, thread="2.1"))
        free = await second.runtime.run(ask(user=BOB, thread="2.2"))
    finally:
        await first.close()
        await second.close()
    assert busy.status == "limited" and "`concurrent_turns`" in busy.text
    assert "It frees up as soon as one of those answers is finished" in busy.text
    assert free.status == "ok"


async def test_a_concurrency_slot_is_freed_when_the_turn_fails(sqlite_url, llm, redis_url):
    services = await start(sqlite_url, llm, REDIS_URL=redis_url, JAMONO_CONCURRENT_TURNS=1)
    try:
        llm.fail_next(400)  # not retried by the library
        failed = await services.runtime.run(ask())
        after = await services.runtime.run(ask(thread="100.2"))
        report = await services.budgets.report(TENANT, ALICE)
    finally:
        await services.close()
    assert failed.status == "error" and after.status == "ok"
    assert report.turns_running == 0


async def refused_by(budgets, user, count) -> list[Limit]:
    """Ask ``count`` turns for ``user``; the limits that refused them."""
    limits = []
    for _ in range(count):
        with pytest.raises(OverLimit) as caught:
            async with budgets.turn(TENANT, user):
                pass
        limits.append(caught.value.refusal.limit)
    return limits


async def test_turns_refused_by_the_workspace_window_do_not_use_up_a_users_own(
    sqlite_url, llm, redis_url
):
    services = await start(
        sqlite_url, llm, REDIS_URL=redis_url, JAMONO_TURNS_PER_MINUTE_USER=3,
        JAMONO_TURNS_PER_MINUTE_WORKSPACE=2, JAMONO_CONCURRENT_TURNS=2,
    )
    try:
        for user in ("U0ONE", "U0TWO"):  # the workspace's minute is used up by others
            async with services.budgets.turn(TENANT, user):
                pass
        refusals = await refused_by(services.budgets, ALICE, 4)
        report = await services.budgets.report(TENANT, ALICE)
    finally:
        await services.close()
    assert refusals == [Limit.TURNS_PER_MINUTE_WORKSPACE] * 4
    assert report.user_turns_left == 3  # ALICE still has her own minute when it frees up
    assert report.turns_running == 0  # and no refused turn kept a concurrency slot


async def test_turns_refused_for_concurrency_use_up_no_per_minute_quota(
    sqlite_url, llm, redis_url
):
    services = await start(
        sqlite_url, llm, REDIS_URL=redis_url, JAMONO_TURNS_PER_MINUTE_USER=3,
        JAMONO_TURNS_PER_MINUTE_WORKSPACE=5, JAMONO_CONCURRENT_TURNS=1,
    )
    try:
        async with services.budgets.turn(TENANT, "U0OTHER"):  # the only slot, held
            refusals = await refused_by(services.budgets, ALICE, 4)
        report = await services.budgets.report(TENANT, ALICE)
    finally:
        await services.close()
    assert refusals == [Limit.CONCURRENT_TURNS] * 4
    assert report.user_turns_left == 3
    assert report.workspace_turns_left == 4  # only U0OTHER's admitted turn counts


# Pure decisions ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model, price",
    [
        ("gpt-4o", (2.50, 10.00)),
        ("gpt-4o-mini-2024-07-18", (0.15, 0.60)),  # dated versions take their family's price
        ("gpt-4o-2024-08-06", (2.50, 10.00)),
        ("gpt-4.1-mini", (0.40, 1.60)),
        ("o3-mini", (1.10, 4.40)),
        ("claude-3-5-sonnet-20241022", (3.00, 15.00)),
        ("llama3.1:8b", (7.0, 9.0)),  # unknown: the default price
        ("gpt-4o-audio-preview", (2.50, 10.00)),
    ],
)
def test_prices(model, price):
    assert PriceTable(DEFAULT_PRICES, (7.0, 9.0)).price(model) == price


def test_cost_is_usd_per_million_tokens():
    table = PriceTable(DEFAULT_PRICES, (0, 0))
    assert table.cost("gpt-4o-mini", 1_000_000, 1_000_000) == pytest.approx(0.75)
    assert table.cost("gpt-4o", 2_000, 500) == pytest.approx(0.01)


LIMITS = Limits(10, 60, 10, 1000, 2.0, 8)


@pytest.mark.parametrize(
    "tokens, usd, refused",
    [
        (999, 1.99, None),
        (1000, 0.0, Limit.TOKENS_PER_DAY),
        (0, 2.0, Limit.USD_PER_DAY),
        (5000, 5.0, Limit.TOKENS_PER_DAY),
    ],
)
def test_spend_refusal(tokens, usd, refused):
    refusal = spend_refusal(LIMITS, tokens, usd, NOON)
    assert (refusal.limit if refusal else None) == refused
    if refusal:
        assert refusal.resets_at == datetime(2026, 12, 1, tzinfo=UTC)
        assert "It resets at 00:00:00 UTC (in 12 h 0 min)" in refusal.message


def test_zero_turns_a_limit_off():
    off = replace(LIMITS, tokens_per_day=0, usd_per_day=0)
    assert spend_refusal(off, 10**12, 10**6, NOON) is None


def test_overrides_and_their_parsing():
    limits = LIMITS.with_overrides({"tokens_per_day": 5.0, "usd_per_day": 0.5, "other": 1})
    assert (limits.tokens_per_day, limits.usd_per_day) == (5, 0.5)
    assert isinstance(limits.tokens_per_day, int)
    assert parse_limit("usd_per_day", "2.50") == 2.5
    for name, text, told in [
        ("tokens", "1", "unknown limit 'tokens'; limits: turns_per_minute_user"),
        ("concurrent_turns", "1.5", "concurrent_turns takes a whole number"),
        ("usd_per_day", "-1", "must be 0 (off) or more"),
        ("usd_per_day", "nan", "must be 0 (off) or more"),
    ]:
        with pytest.raises(ValueError, match=re.escape(told)):
            parse_limit(name, text)


def test_model_choice():
    choice = ModelChoice("gpt-4o-mini", frozenset({"gpt-4.1"}))
    assert choice.allowed == {"gpt-4o-mini", "gpt-4.1"}
    assert choice.resolve(None) == "gpt-4o-mini"
    assert choice.resolve("gpt-4.1") == "gpt-4.1"
    assert choice.resolve("o1-pro") == "gpt-4o-mini"


def test_over_limit_carries_the_refusal():
    refusal = Refusal(Limit.CONCURRENT_TURNS, "busy", None)
    assert OverLimit(refusal).refusal is refusal and str(OverLimit(refusal)) == "busy"
