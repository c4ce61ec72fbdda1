"""Metrics (issue 10), written as what they stop: a stranger reading the operator's figures from
the public port, figures that lose a workspace's usage on restart or show it under another
workspace, and a dashboard or alert that silently watches a metric nobody exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from agents.metrics import SETTLE, JamonoCollector, Metrics, StoredCounters, TurnLatency
from bot.settings import SettingsError, load_settings
from integrations.resilience import Resilience
from storage.db import create_engine, session_factory
from storage.repositories import Repositories
from storage.repositories.conversations import LLMCallUsage
from storage.repositories.metrics import Marks, States
from storage.tenancy import Tenant
from tests.cross_session_support import (
    SECRET,
    GatewayProcess,
    receive,
    register,
    send,
    wait_until,
)
from tests.cross_session_support import token as session_token
from tests.e2e import ACME, bot_token_settings, has_buttons, started
from tests.fakes import ToolCall
from tests.process import free_port
from tests.test_e2e_http import in_thread, mention

TOKEN = "metrics-token-4f1c9a0e7b2d"
DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
CREATE = {"project": "OPS", "issue_type": "Incident", "summary": "Payments API down"}


def script(request):
    """A ticket (approval request) when asked for one, the time tool when asked the time."""
    last = request["messages"][-1]
    if last["role"] == "tool":
        return f"Tool result: {last['content']}"
    if "ticket" in last["content"]:
        return [ToolCall("jira_create_issue", CREATE)]
    if "time" in last["content"]:
        return [ToolCall("get_time", {})]
    return "hello"


@pytest.fixture
def settings(slack, llm, jira, sqlite_url):
    llm.script = script
    return bot_token_settings(slack, llm, sqlite_url) | {
        "JIRA_URL": jira.url, "JIRA_PAT": jira.pat,
    }


async def get(http, url, token=None, scheme="Bearer"):
    headers = {"Authorization": f"{scheme} {token}"} if token is not None else {}
    async with http.get(url, headers=headers) as response:
        return response.status, await response.text()


def figures(text: str) -> dict[tuple[str, frozenset], float]:
    """``{(sample name, labels): value}`` of a Prometheus text exposition."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(found, name, **labels) -> float | None:
    return found.get((name, frozenset(labels.items())))


def exported_names(text: str) -> set[str]:
    """Every series name the exposition declares, samples or not (an empty counter still
    says ``# TYPE jamono_budget_rejections counter``, which PromQL reads as ``…_total``)."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
                "summary": ("_sum", "_count")}
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ()))
        names.update(sample.name for sample in family.samples)
    return names


async def test_the_public_port_refuses_a_scrape_without_the_token(settings, tmp_path, http):
    jamono = await started(settings | {"JAMONO_METRICS_TOKEN": TOKEN}, tmp_path)
    try:
        url = jamono.url + "/metrics"
        assert (await get(http, url))[0] == 401
        assert (await get(http, url, TOKEN[:-1]))[0] == 401  # all but the last character
        assert (await get(http, url, TOKEN + "x"))[0] == 401
        assert (await get(http, url, TOKEN, scheme="Basic"))[0] == 401
        status, body = await get(http, url, TOKEN, scheme="bearer")  # the scheme is any case
        assert status == 200 and "jamono_turns" in body
    finally:
        assert await jamono.stop() == 0, jamono.output


async def test_a_metrics_port_keeps_the_figures_off_the_public_port(settings, tmp_path, http):
    port = free_port()
    jamono = await started(settings | {"JAMONO_METRICS_PORT": str(port)}, tmp_path)
    try:
        assert (await get(http, jamono.url + "/metrics"))[0] == 404
        status, body = await get(http, f"http://127.0.0.1:{port}/metrics")
        assert status == 200 and "jamono_turn_duration_seconds" in body
    finally:
        assert await jamono.stop() == 0, jamono.output


async def test_off_by_default(settings, tmp_path, http):
    jamono = await started(settings, tmp_path)
    try:
        assert (await get(http, jamono.url + "/metrics", TOKEN))[0] == 404
    finally:
        assert await jamono.stop() == 0, jamono.output


async def test_a_scrape_shows_each_workspaces_usage_and_survives_a_restart(
    settings, tmp_path, http, slack
):
    settings = settings | {"JAMONO_METRICS_TOKEN": TOKEN}
    jamono = await started(settings, tmp_path)
    try:
        time_event = await mention(http, jamono, slack, "what time is it?")
        await slack.wait_for("chat.postMessage", in_thread(time_event["ts"]))
        ticket = await mention(http, jamono, slack, "open a ticket: payments API is down")
        await slack.wait_for("chat.postMessage",
                             lambda p: p.get("thread_ts") == ticket["ts"] and has_buttons(p))
        await slack.wait_for("chat.postMessage", lambda p: p.get("thread_ts") == ticket["ts"]
                             and not has_buttons(p))
        await jamono.wait_for_output('"tool_call"', 2)
        status, body = await get(http, jamono.url + "/metrics", TOKEN)
    finally:
        assert await jamono.stop() == 0, jamono.output
    assert status == 200
    found = figures(body)
    assert value(found, "jamono_metrics_storage_up") == 1
    assert value(found, "jamono_turns_total", team_id=ACME, persona="nox", outcome="ok") == 2
    assert value(found, "jamono_llm_calls_total", team_id=ACME, model="fake-model") == 4
    prompt = value(found, "jamono_llm_tokens_total", team_id=ACME, model="fake-model",
                   kind="prompt")
    assert prompt and prompt > 0
    assert value(found, "jamono_tool_calls_total", tool="get_time", outcome="ok") == 1
    assert value(found, "jamono_tool_calls_total", tool="jira_create_issue",
                 outcome="awaiting_approval") == 1
    assert value(found, "jamono_approval_requests", team_id=ACME, state="pending") == 1
    # Every workspace label is the one that did the work.
    teams = {dict(labels)["team_id"] for _, labels in found if "team_id" in dict(labels)}
    assert teams == {ACME}
    # This process's latency histogram saw both turns.
    assert value(found, "jamono_turn_duration_seconds_count", persona="nox", outcome="ok") == 2
    assert value(found, "jamono_turn_duration_seconds_bucket", persona="nox", outcome="ok",
                 le="+Inf") == 2

    # Stored counters come from the database: a restarted process reports the same totals.
    jamono = await started(settings, tmp_path)
    try:
        status, body = await get(http, jamono.url + "/metrics", TOKEN)
    finally:
        assert await jamono.stop() == 0, jamono.output
    again = figures(body)
    for name in ("jamono_turns_total", "jamono_llm_tokens_total", "jamono_tool_calls_total",
                 "jamono_approval_requests"):
        assert {k: v for k, v in again.items() if k[0] == name} == {
            k: v for k, v in found.items() if k[0] == name}
    assert value(again, "jamono_turn_duration_seconds_count", persona="nox", outcome="ok") is None


def referenced_metrics() -> set[str]:
    """Metric names used by the shipped dashboard's queries and the alert rules."""
    dashboard = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    rules = yaml.safe_load((DEPLOY / "prometheus-alerts.yml").read_text())

    def exprs(node):
        if isinstance(node, dict):
            for key, item in node.items():
                if key in ("expr", "query") and isinstance(item, str):
                    yield item
                else:
                    yield from exprs(item)
        elif isinstance(node, list):
            for item in node:
                yield from exprs(item)

    queries = list(exprs(dashboard)) + list(exprs(rules))
    assert queries, "no queries found in deploy/"
    for query in queries:  # a typo'd bracket would leave a panel or an alert blank forever
        depth = []
        for char in query:
            if char in "([{":
                depth.append(char)
            elif char in ")]}":
                assert depth and "([{"[")]}".index(char)] == depth.pop(), query
        assert not depth, query
    return {name for query in queries for name in re.findall(r"\bjamono_[a-z_]+", query)}


async def test_dashboard_and_alerts_only_use_metrics_the_endpoint_exports(
    slack, llm, sqlite_url, tmp_path, http
):
    settings = bot_token_settings(slack, llm, sqlite_url) | {"JAMONO_METRICS_TOKEN": TOKEN}
    jamono = await started(settings, tmp_path)
    try:
        status, body = await get(http, jamono.url + "/metrics", TOKEN)
    finally:
        assert await jamono.stop() == 0, jamono.output
    assert status == 200
    referenced = referenced_metrics()
    assert {"jamono_turns_total", "jamono_turn_duration_seconds_bucket",
            "jamono_integration_circuit_open", "jamono_budget_rejections_total",
            "jamono_gateway_refusals_total", "jamono_briefing_runs_total",
            "jamono_llm_cost_usd_total"} <= referenced
    assert referenced - exported_names(body) == set()
    rules = yaml.safe_load((DEPLOY / "prometheus-alerts.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert rule["alert"] and rule["expr"] and rule["annotations"]["summary"]


async def finished_turn(repos, tenant, persona, status, thread):
    turn_id, _ = await repos.conversations.begin_turn(tenant, "C1", thread, persona, "U1")
    await repos.conversations.finish_turn(
        tenant, turn_id, [], [], status, None, 5, [LLMCallUsage("m1", 10, 3, 1)])


async def test_stored_counters_count_each_row_once_and_keep_workspaces_apart(engine):
    repos = Repositories.over(session_factory(engine))
    acme, globex = Tenant(team_id=ACME), Tenant(team_id="T0GLOBEX")
    now = [0.0]
    counters = StoredCounters(repos.metrics, clock=lambda: now[0])
    await finished_turn(repos, acme, "nox", "ok", "1")
    await finished_turn(repos, acme, "nox", "ok", "2")
    await finished_turn(repos, globex, "atlas", "error", "3")
    running, _ = await repos.conversations.begin_turn(acme, "C1", "4", "nox", "U1")
    await repos.audit.record_tool_call(
        globex, turn_id=None, persona="atlas", user_id="U1", tool="get_time", arguments={},
        result_summary="", status="ok", duration_ms=1)
    await repos.approvals.create(
        acme, persona="nox", requested_by="U1", channel_id="C1", thread_ts="1", tool="t",
        arguments={}, risk="write", target="x")

    first = await counters.read()
    assert first.turns == {(ACME, "nox", "ok"): 2, ("T0GLOBEX", "atlas", "error"): 1}
    assert first.llm_calls == {(ACME, "m1"): 2, ("T0GLOBEX", "m1"): 1}
    assert first.prompt_tokens == {(ACME, "m1"): 20, ("T0GLOBEX", "m1"): 10}
    assert first.completion_tokens == {(ACME, "m1"): 6, ("T0GLOBEX", "m1"): 3}
    assert first.tool_calls == {("get_time", "ok"): 1}
    assert await repos.metrics.states() == States([(ACME, "pending", 1)], [])

    # Later scrapes settle what they saw SETTLE seconds before; the running turn holds its
    # range back, so it is counted once it finishes, and nothing is counted twice.
    now[0] = SETTLE
    assert await counters.read() == first
    await repos.conversations.finish_turn(acme, running, [], [], "ok", None, 5, [])
    await finished_turn(repos, globex, "atlas", "ok", "5")
    for step in (2, 3, 4):
        now[0] = step * SETTLE
        assert await counters.read() == await repos.metrics.counts(Marks())
    final = await counters.read()
    assert final.turns[(ACME, "nox", "ok")] == 3
    assert final.turns[("T0GLOBEX", "atlas", "ok")] == 1
    assert final.llm_calls == {(ACME, "m1"): 2, ("T0GLOBEX", "m1"): 2}


def collector_over(engine, **kw) -> Metrics:
    return Metrics(JamonoCollector(
        repository=Repositories.over(session_factory(engine)).metrics,
        resilience=Resilience(), turn_latency=TurnLatency(), tool_names=["get_time"], **kw))


async def test_cost_budget_rejections_and_tool_names_as_the_integrator_wires_them(engine):
    repos = Repositories.over(session_factory(engine))
    await finished_turn(repos, Tenant(team_id=ACME), "nox", "ok", "1")
    # A model can ask for any tool name: it must not become a label value.
    await repos.audit.record_tool_call(
        Tenant(team_id=ACME), turn_id=None, persona="nox", user_id="U1",
        tool="x" * 60, arguments={}, result_summary="", status="unknown_tool", duration_ms=1)

    def rejections():  # as Budgets.rejections: this process's counts
        return {(ACME, "turns_per_minute"): 4}

    metrics = collector_over(
        engine, cost_of=lambda model, prompt, completion: prompt * 0.5 + completion * 2.0,
        budget_rejections=rejections)
    found = figures((await metrics.exposition()).decode())

    assert value(found, "jamono_llm_cost_usd_total", team_id=ACME, model="m1") == 10 * 0.5 + 3 * 2
    assert value(found, "jamono_budget_rejections_total", team_id=ACME,
                 limit="turns_per_minute") == 4
    assert value(found, "jamono_tool_calls_total", tool="other", outcome="unknown_tool") == 1
    assert not any("x" * 60 in str(labels) for _, labels in found)


async def test_an_unreadable_database_shows_in_the_scrape_instead_of_failing_it(sqlite_url):
    engine = create_engine(sqlite_url)  # never migrated: every stored query fails
    try:
        body = (await collector_over(engine).exposition()).decode()
    finally:
        await engine.dispose()
    assert value(figures(body), "jamono_metrics_storage_up") == 0
    assert "# TYPE jamono_turn_duration_seconds histogram" in body


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"JAMONO_METRICS_TOKEN": "short"}, "JAMONO_METRICS_TOKEN=(hidden)"),
        ({"JAMONO_METRICS_PORT": "3000", "PORT": "3000"}, "must differ from PORT"),
    ],
)
def test_metrics_settings_that_would_expose_or_clash_are_refused(monkeypatch, overrides, problem):
    for name, setting in overrides.items():
        monkeypatch.setenv(name, setting)
    with pytest.raises(SettingsError) as refused:
        load_settings(_env_file=None)
    assert problem in str(refused.value)
    assert "short" not in str(refused.value)


async def test_jamono_gateway_serves_gateway_figures(sqlite_url, tmp_path, http):
    metrics_port = free_port()
    gateway = GatewayProcess({"DATABASE_URL": sqlite_url, "JAMONO_GATEWAY_SECRET": SECRET,
                              "JAMONO_METRICS_PORT": str(metrics_port)}, tmp_path)
    await gateway.start()
    try:
        ws, _ = await register(http, gateway.url, session_token())
        with pytest.raises(aiohttp.WSServerHandshakeError):  # a foreign web page
            await http.ws_connect(gateway.url, headers={"Origin": "https://evil.example"})
        forged = await http.ws_connect(gateway.url)
        await send(forged, 1, "session.register", {"token": "not-a-token", "app": "excel"})
        assert "error" in await receive(forged)
        await forged.close()
        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"

        async def scraped():
            found = figures((await get(http, metrics_url))[1])
            return found if value(found, "jamono_gateway_refusals_total",
                                  reason="auth") == 1 else None

        found = await wait_until(scraped)
        await ws.close()
    finally:
        await gateway.kill()
    assert value(found, "jamono_gateway_sessions") == 1
    assert value(found, "jamono_gateway_sessions_registered_total") == 1
    assert value(found, "jamono_gateway_refusals_total", reason="origin") == 1
    assert value(found, "jamono_gateway_messages_total") == 2  # two session.register
