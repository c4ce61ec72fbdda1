"""The agent loop against the fake OpenAI-compatible server and a real database."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from agents.personas import NOX
from agents.runtime import AgentRuntime, TurnRequest
from agents.tools.registry import Tool, ToolRegistry
from bot.services import Services
from bot.settings import load_settings
from storage.models import ToolCall as ToolCallRow
from storage.tenancy import Tenant
from tests.fakes import ToolCall

ACME = Tenant("T0ACME")


@pytest.fixture
async def services(sqlite_url, llm):
    settings = load_settings(
        _env_file=None,
        DATABASE_URL=sqlite_url,
        OPENAI_BASE_URL=llm.base_url,
        OPENAI_API_KEY="sk-test",
        JAMONO_TOOL_TIMEOUT=0.5,
        JAMONO_LLM_TIMEOUT=5,
    )
    services = await Services.start(settings)
    yield services
    await services.close()


def ask(text: str, thread: str = "100.1", persona=NOX, tenant=ACME) -> TurnRequest:
    return TurnRequest(
        tenant=tenant,
        persona=persona,
        channel_id="C1",
        thread_ts=thread,
        user_id="U1",
        text=text,
        timezone="Europe/Paris",
    )


async def audit(services) -> list[ToolCallRow]:
    async with services.repos.audit._sessions() as session:
        return list((await session.scalars(select(ToolCallRow).order_by(ToolCallRow.id))).all())


async def test_plain_answer_records_usage(services, llm):
    outcome = await services.runtime.run(ask("hello"))
    assert outcome.status == "ok"
    assert outcome.text == "<echo> hello (user messages seen: 1)"
    request = llm.requests[0]
    assert request["messages"][0]["role"] == "system"
    assert "You are NOX" in request["messages"][0]["content"]
    offered = {t["function"]["name"] for t in request["tools"]}
    assert offered == {t.name for t in services.runtime.registry.for_persona(NOX)}
    assert {"get_time", "persona_status", "jira_search", "slack_post_message"} <= offered
    assert "list_sessions" not in offered  # registered only when the gateway runs
    figures = await services.repos.metrics.usage_since(ACME, datetime.now(UTC) - timedelta(1))
    assert figures.turns == 1 and figures.prompt_tokens > 0 and figures.completion_tokens > 0


async def test_tool_call_round_trip_is_audited(services, llm):
    outcome = await services.runtime.run(ask("what time is it?"))
    assert outcome.status == "ok"
    assert outcome.text.startswith("Tool result: {")
    assert "Europe/Paris" in outcome.text
    assert [(r.name, r.status) for r in outcome.tool_runs] == [("get_time", "ok")]
    tool_message = llm.requests[1]["messages"][-1]
    assert tool_message["role"] == "tool" and tool_message["tool_call_id"].startswith("call_")
    (row,) = await audit(services)
    assert (row.tenant_id, row.tool, row.status, row.user_id) == ("T0ACME", "get_time", "ok", "U1")
    assert "Europe/Paris" in row.result_summary


async def test_several_calls_in_one_step(services, llm):
    def script(request):
        if request["messages"][-1]["role"] == "tool":
            return "done"
        return [ToolCall("get_time", {"timezone": "Asia/Tokyo"}), ToolCall("get_time", {})]

    llm.script = script
    outcome = await services.runtime.run(ask("two zones"))
    assert outcome.text == "done"
    assert [r.arguments for r in outcome.tool_runs] == [{"timezone": "Asia/Tokyo"}, {}]
    assert [m["role"] for m in llm.requests[1]["messages"][-3:]] == ["assistant", "tool", "tool"]


@pytest.mark.parametrize(
    "call, status, told",
    [
        (ToolCall("get_time", {"timezone": 5}), "invalid_arguments", "5 is not of type 'string'"),
        (ToolCall("get_time", {"zone": "UTC"}), "invalid_arguments", "Additional properties"),
        (ToolCall("get_time", {"timezone": "Mars/Base"}), "error", "not an IANA timezone"),
        # A directory of the zone database: ZoneInfo raised IsADirectoryError, failing the turn.
        (ToolCall("get_time", {"timezone": "Europe"}), "error", "not an IANA timezone"),
        (ToolCall("drop_database", {}), "unknown_tool", "no tool named 'drop_database'"),
        (ToolCall("get_time", '{"timezone": '), "invalid_arguments", "not valid JSON"),
        # A prompt-injected reply nesting thousands of levels: RecursionError in json.loads.
        (ToolCall("get_time", "[" * 5000 + "]" * 5000), "invalid_arguments", "nested deeper"),
    ],
)
async def test_bad_tool_calls_go_back_to_the_model(services, llm, call, status, told):
    llm.script = lambda r: (
        f"saw: {r['messages'][-1]['content']}" if r["messages"][-1]["role"] == "tool" else [call]
    )
    outcome = await services.runtime.run(ask("go"))
    assert outcome.status == "ok"
    assert told in outcome.text
    assert outcome.tool_runs[0].status == status
    assert (await audit(services))[0].status == status


async def test_step_limit_stops_and_keeps_history_valid(services, llm):
    llm.script = lambda r: [ToolCall("get_time", {})]
    persona = replace(NOX, max_tool_steps=2)
    outcome = await services.runtime.run(ask("loop forever", persona=persona))
    assert outcome.status == "max_steps"
    assert "stopped after 2 tool steps" in outcome.text
    assert len(llm.requests) == 3 and len(outcome.tool_runs) == 2

    llm.script = lambda r: "fine"
    await services.runtime.run(ask("again", persona=persona))
    history = llm.requests[-1]["messages"]
    calls = [c["id"] for m in history if m.get("tool_calls") for c in m["tool_calls"]]
    answered = [m["tool_call_id"] for m in history if m["role"] == "tool"]
    assert calls == answered  # every tool call has its result, so the endpoint accepts it


async def test_llm_failure_gives_a_readable_reply(services, llm):
    llm.fail_next(500, times=3)  # the openai library retries twice
    outcome = await services.runtime.run(ask("hello"))
    assert outcome.status == "error"
    assert "answered HTTP 500" in outcome.text and "/nox-status" in outcome.text
    last = await services.repos.metrics.last_error(ACME)
    assert last is not None and "HTTP 500" in last.message
    assert (await services.runtime.run(ask("hello"))).status == "ok"


async def test_wrong_api_key(services, llm):
    llm.api_key = "sk-other"
    outcome = await services.runtime.run(ask("hello"))
    assert "rejected the API key" in outcome.text


async def test_memory_follows_the_thread_and_the_tenant(services, llm):
    await services.runtime.run(ask("first"))
    second = await services.runtime.run(ask("second"))
    assert second.text.endswith("(user messages seen: 2)")
    other_thread = await services.runtime.run(ask("elsewhere", thread="200.2"))
    assert other_thread.text.endswith("(user messages seen: 1)")
    other_tenant = await services.runtime.run(ask("hi", tenant=Tenant("T0GLOBEX")))
    assert other_tenant.text.endswith("(user messages seen: 1)")


async def test_context_budget_keeps_newest_turns(services, llm):
    runtime = services.runtime
    small = AgentRuntime(
        llm=runtime.llm,
        registry=runtime.registry,
        repos=runtime.repos,
        default_model="m",
        tool_timeout=1,
        context_tokens=60,
    )
    for word in ("alpha " * 20, "beta", "gamma"):
        await small.run(ask(word))
    contents = [m["content"] for m in llm.requests[-1]["messages"] if m["role"] == "user"]
    assert contents[-1] == "gamma" and "beta" in contents
    assert not any(c.startswith("alpha") for c in contents)


async def test_slow_tool_times_out(services, llm):
    async def slow_tool(context):
        """Sleeps longer than the tool timeout."""
        await asyncio.sleep(5)

    registry = ToolRegistry([Tool.from_function(slow_tool, parameters={"type": "object"})])
    runtime = services.runtime
    timed = AgentRuntime(
        llm=runtime.llm,
        registry=registry,
        repos=runtime.repos,
        default_model="m",
        tool_timeout=0.2,
        context_tokens=1000,
    )
    llm.script = lambda r: (
        "ok" if r["messages"][-1]["role"] == "tool" else [ToolCall("slow_tool", {})]
    )
    outcome = await timed.run(ask("slow", persona=replace(NOX, tools=("slow_tool",))))
    assert outcome.tool_runs[0].status == "timeout"
    assert "did not finish within 0.2 s" in llm.requests[-1]["messages"][-1]["content"]


async def test_no_llm_configured(sqlite_url):
    services = await Services.start(load_settings(_env_file=None, DATABASE_URL=sqlite_url))
    try:
        outcome = await services.runtime.run(ask("hello"))
    finally:
        await services.close()
    assert outcome.status == "not_configured"
    assert "OPENAI_API_KEY" in outcome.text and "OPENAI_BASE_URL" in outcome.text
