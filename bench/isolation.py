"""Isolation: workspace A's answer latency while workspace B floods turns and points its Jira at
a server that trickles a byte a second.

The real ``jamono run`` process (HTTP mode, OAuth install, a new SQLite file) serves two
workspaces installed through ``/slack/install``: A (its Jira is the fake Jira) and B (its Jira
is a trickling server). The fake model answers every mention by calling ``jira_search``, then
replying with the result. Measured: A's event-to-answer latency (signed ``app_mention`` POSTed →
the fake Slack receives ``chat.postMessage`` in the thread) in three phases: A alone; while B
posts mentions at ``--flood-rate`` per second with a healthy Jira (the cost of B's turns
themselves: model calls, storage, CPU); and while B floods with its Jira on the trickling
server, each of B's turns waiting until the integration deadline stops its call.

A, the workspace measured, has its turn limits lifted by the operator (``jamono config limit``),
so every one of its mentions is a real turn. B, the attacker, keeps the default budgets and
limits (``--b-unlimited`` lifts them too, to measure the thread pools' isolation alone).

Printed, in milliseconds: A's p50 and p99 in each phase, the ratio of the trickle phase's p99
to the unloaded p99 (target: at most 1.5), and how B's turns ended.
Run with ``.venv/bin/python bench/isolation.py [--events N] [--flood-rate R]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
from pathlib import Path

import aiohttp
from cryptography.fernet import Fernet

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agents.budgets import Limit  # noqa: E402
from bench.turn_overhead import drive, percentile  # noqa: E402
from storage.db import create_engine, session_factory  # noqa: E402
from storage.repositories import Repositories  # noqa: E402
from storage.secrets import SecretBox  # noqa: E402
from storage.tenancy import Tenant  # noqa: E402
from tests.e2e import (  # noqa: E402
    ACME,
    ACME_TOKEN,
    ALICE,
    BOT,
    GLOBEX,
    GLOBEX_TOKEN,
    SIGNING_SECRET,
    oauth_settings,
)
from tests.fakes import FakeLLM, FakeSlack, ToolCall, post_event  # noqa: E402
from tests.fakes.jira import FakeJira  # noqa: E402
from tests.fakes.trickle import TrickleServer  # noqa: E402
from tests.process import JamonoProcess, free_port  # noqa: E402
from tests.test_e2e_oauth import install  # noqa: E402

WARMUP = 10


def script(request: dict) -> str | list[ToolCall]:
    """Every turn searches Jira once, then answers with the result."""
    last = request["messages"][-1]
    if last["role"] == "tool":
        return f"Found: {last['content'][:60]}"
    return [ToolCall("jira_search", {"jql": "project = PAY"})]


async def save_jira(database_url: str, key: str, team: str, url: str, jira: FakeJira) -> None:
    """The workspace's Jira credentials, as ``/nox-connect`` stores them (B's trickling server
    could not pass /nox-connect's live test, which is the point)."""
    engine = create_engine(database_url)
    try:
        repos = Repositories.over(session_factory(engine), SecretBox.from_setting(key))
        await repos.credentials.save(
            Tenant(team), "jira", {"url": url, "email": jira.email, "api_token": jira.api_token},
            None, url=url, account=jira.email)
    finally:
        await engine.dispose()


async def flood(http: aiohttp.ClientSession, url: str, slack: FakeSlack, rate: float,
                stop: asyncio.Event) -> int:
    """B's mentions, ``rate`` per second until ``stop``; returns how many were sent."""
    sent = 0
    while not stop.is_set():
        event = slack.app_mention_event(ALICE, "C0FLOOD", f"<@{BOT}> flood {sent}")
        status, _ = await post_event(http, url, SIGNING_SECRET,
                                     slack.event_callback(GLOBEX, event))
        if status != 200:
            raise RuntimeError(f"B's mention got HTTP {status}")
        sent += 1
        with contextlib.suppress(TimeoutError):  # the pace between mentions
            await asyncio.wait_for(stop.wait(), 1 / rate)
    return sent


async def lift_turn_limits(database_url: str, team: str) -> None:
    """The operator's ``jamono config --team T limit NAME 0`` for every per-minute and
    concurrency limit of ``team`` (0: no limit)."""
    engine = create_engine(database_url)
    try:
        repos = Repositories.over(session_factory(engine))
        for limit in (Limit.TURNS_PER_MINUTE_USER, Limit.TURNS_PER_MINUTE_WORKSPACE,
                      Limit.CONCURRENT_TURNS):
            await repos.budgets.set_override(Tenant(team), limit.value, 0, "bench")
    finally:
        await engine.dispose()


def summary(latencies: list[float]) -> tuple[float, float]:
    return percentile(latencies, 50), percentile(latencies, 99)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100, help="A's mentions per phase")
    parser.add_argument("--in-flight", type=int, default=4, help="A's mentions in flight")
    parser.add_argument("--b-unlimited", action="store_true",
                        help="lift B's turn limits too (default: B keeps the default limits)")
    parser.add_argument("--flood-rate", type=float, default=10.0, help="B's mentions per second")
    parser.add_argument("--deadline", type=float, default=2.0,
                        help="JAMONO_INTEGRATION_DEADLINE, seconds")
    args = parser.parse_args()

    key = Fernet.generate_key().decode()
    async with (FakeSlack() as slack, FakeLLM() as llm, FakeJira("cloud") as jira,
                TrickleServer(interval=1.0) as trickle):
        llm.script = script
        with tempfile.TemporaryDirectory() as workdir:
            database_url = f"sqlite+aiosqlite:///{workdir}/bench.db"
            process = JamonoProcess(oauth_settings(slack, llm, database_url) | {
                "JAMONO_SECRET_KEY": key, "LOG_LEVEL": "WARNING", "JAMONO_SHUTDOWN_GRACE": "2",
                # The fakes listen on loopback, which OAuth install refuses otherwise.
                "JAMONO_EGRESS_ALLOW": "127.0.0.1/32",
                "JAMONO_INTEGRATION_DEADLINE": str(args.deadline),
            }, Path(workdir), free_port())
            await process.start()
            try:
                url = process.url + "/slack/events"
                async with aiohttp.ClientSession() as http:
                    await install(http, process, slack, ACME, ACME_TOKEN, "code-a")
                    await install(http, process, slack, GLOBEX, GLOBEX_TOKEN, "code-b")
                await save_jira(database_url, key, ACME, jira.url, jira)
                await save_jira(database_url, key, GLOBEX, jira.url, jira)
                await lift_turn_limits(database_url, ACME)
                if args.b_unlimited:
                    await lift_turn_limits(database_url, GLOBEX)

                await drive(url, slack, WARMUP, args.in_flight, "C0WARM")
                _, alone = await drive(url, slack, args.events, args.in_flight, "C0ALONE")

                async with aiohttp.ClientSession() as http:
                    stop = asyncio.Event()
                    flooding = asyncio.create_task(flood(http, url, slack, args.flood_rate, stop))
                    _, healthy = await drive(url, slack, args.events, args.in_flight, "C0HEALTHY")
                    stop.set()
                    await flooding

                    # Credentials are read on every use: B's next calls go to the trickle.
                    await save_jira(database_url, key, GLOBEX, trickle.url, jira)
                    stop = asyncio.Event()
                    flooding = asyncio.create_task(flood(http, url, slack, args.flood_rate, stop))
                    await trickle.wait_open(1)  # B's turns are stuck on its Jira
                    _, loaded = await drive(url, slack, args.events, args.in_flight, "C0LOADED")
                    stuck_during = trickle.open
                    stop.set()
                    b_sent = await flooding
            finally:
                await process.stop()
        b_answers = [c.params.get("text", "") for c in slack.calls_to("chat.postMessage")
                     if c.params.get("channel") == "C0FLOOD"]

    (a50, a99), (h50, h99), (l50, l99) = summary(alone), summary(healthy), summary(loaded)
    ratio = l99 / a99
    print(f"A: {args.events} mentions, {args.in_flight} in flight, each a Jira search; "
          "answer latency in ms")
    print(f"{'phase':<24} {'p50':>8} {'p99':>8}")
    print(f"{'A alone':<24} {a50:>8.1f} {a99:>8.1f}")
    print(f"{'A, B floods (Jira ok)':<24} {h50:>8.1f} {h99:>8.1f}")
    print(f"{'A, B floods (trickle)':<24} {l50:>8.1f} {l99:>8.1f}")
    print(f"A's p99 while B floods onto the trickle = {ratio:.2f}x unloaded (target <= 1.5x: "
          f"{'yes' if ratio <= 1.5 else 'NO'}); {l99 / h99:.2f}x its p99 while B floods "
          "with a healthy Jira")
    limited = sum("limit" in text for text in b_answers)
    print(f"B's turn limits: {'lifted' if args.b_unlimited else 'the defaults'}; {limited} of "
          f"B's answers were a limit's refusal")
    print(f"B (trickle phase): {b_sent} mentions at {args.flood_rate:g}/s; {stuck_during} "
          f"connection(s) held on the trickling Jira at the end of A's run; {len(b_answers)} of "
          f"B's turns (both phases) answered before the process stopped (Jira deadline "
          f"{args.deadline:g} s)")
    if b_answers:
        print(f"B's last answer: {b_answers[-1][:160]!r}")


if __name__ == "__main__":
    asyncio.run(main())
