"""Isolation: workspace A's answer latency while workspace B floods turns and points its Jira at
a server that trickles a byte a second.

The real ``jamono run`` process (HTTP mode, OAuth install, a new SQLite file) serves two
workspaces installed through ``/slack/install``: A (its Jira is the fake Jira) and B (its Jira
is a trickling server). The fake model answers every mention by calling ``jira_search``, then
replying with the result. Measured: A's event-to-answer latency (signed ``app_mention`` POSTed →
the fake Slack receives ``chat.postMessage`` in the thread), A posting at a steady
``--rate`` (a busy workspace, well inside what the process serves), in three phases: A alone;
while B posts mentions at ``--flood-rate`` per second from ``--flood-users`` people with a
healthy Jira (the cost of B's turns themselves: model calls, storage, CPU); and while B floods
with its Jira on the trickling server, each of B's admitted turns waiting until the
integration deadline stops its call. The three phases repeat ``--rounds`` times, interleaved,
so that drift in the machine's speed lands on every phase alike; figures pool the rounds.

A, the workspace measured, has its turn limits lifted by the operator (``jamono config limit``),
so every one of its mentions is a real turn. B, the attacker, keeps the default budgets and
limits (``--b-unlimited`` lifts them too, to measure the thread pools' isolation alone).

Printed, in milliseconds: A's p50 and p99 in each phase, the ratio of the trickle phase's p99
to the unloaded p99 (target, issue 10: at most 1.5), each round's ratio, and how B's turns
ended. ``--in-flight N --rate 0`` drives A closed loop instead (N mentions unanswered at a
time): that measures A's throughput, which any extra work on the process's cores lowers.
Run with ``.venv/bin/python bench/isolation.py [--rounds N] [--rate R] [--flood-rate R]``.
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
                users: int, stop: asyncio.Event) -> int:
    """B's mentions, ``rate`` per second from ``users`` people in turn, until ``stop``; returns
    how many were sent."""
    sent = 0
    while not stop.is_set():
        user = f"U0B{sent % users:04d}"
        event = slack.app_mention_event(user, "C0FLOOD", f"<@{BOT}> flood {sent}")
        status, _ = await post_event(http, url, SIGNING_SECRET,
                                     slack.event_callback(GLOBEX, event))
        if status != 200:
            raise RuntimeError(f"B's mention got HTTP {status}")
        sent += 1
        with contextlib.suppress(TimeoutError):  # the pace between mentions
            await asyncio.wait_for(stop.wait(), 1 / rate)
    return sent


@contextlib.asynccontextmanager
async def flooding(url: str, slack: FakeSlack, args: argparse.Namespace):
    """B floods for the duration of the block."""
    stop = asyncio.Event()
    async with aiohttp.ClientSession() as http:
        task = asyncio.create_task(flood(http, url, slack, args.flood_rate, args.flood_users, stop))
        try:
            yield
        finally:
            stop.set()
            await task


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


async def settle(trickle: TrickleServer, deadline: float) -> None:
    """Until B's turns stuck on the trickle have ended, their retries included: a whole
    deadline passes with no connection to it."""
    while True:
        await trickle.wait_all_closed()
        accepted = trickle.accepted
        await asyncio.sleep(deadline + 1)
        if trickle.accepted == accepted and not trickle.open:
            return


def summary(latencies: list[float]) -> tuple[float, float]:
    return percentile(latencies, 50), percentile(latencies, 99)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="times the three phases repeat")
    # 150 a phase and round: pooled, each phase's p99 is its 5th-slowest of 450 answers. Of 60
    # (the first default), it was about the slowest, and one stall of the machine decided it.
    parser.add_argument("--events", type=int, default=150,
                        help="A's mentions per phase and round")
    parser.add_argument("--rate", type=float, default=4.0,
                        help="A's mentions per second (0: closed loop, --in-flight at a time)")
    parser.add_argument("--in-flight", type=int, default=1000,
                        help="A's unanswered mentions at most")
    parser.add_argument("--b-unlimited", action="store_true",
                        help="lift B's turn limits too (default: B keeps the default limits)")
    parser.add_argument("--flood-rate", type=float, default=10.0,
                        help="B's mentions per second (Slack delivers at most 30,000 events "
                             "an hour, 8.3/s, for one workspace)")
    parser.add_argument("--flood-users", type=int, default=20, help="B's people mentioning")
    parser.add_argument("--deadline", type=float, default=2.0,
                        help="JAMONO_INTEGRATION_DEADLINE, seconds")
    args = parser.parse_args()
    interval = 1 / args.rate if args.rate else 0.0

    key = Fernet.generate_key().decode()
    phases: dict[str, list[float]] = {"alone": [], "healthy": [], "trickle": []}
    ratios: list[float] = []
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
                await lift_turn_limits(database_url, ACME)
                if args.b_unlimited:
                    await lift_turn_limits(database_url, GLOBEX)

                async def a_runs(channel: str) -> list[float]:
                    _, answers = await drive(url, slack, args.events, args.in_flight, channel,
                                             interval)
                    return answers

                await drive(url, slack, WARMUP, args.in_flight, "C0WARM", interval)
                stuck = 0  # connections B's turns opened to the trickle while A ran
                for n in range(args.rounds):
                    await settle(trickle, args.deadline)
                    alone = await a_runs(f"C0ALONE{n}")
                    await save_jira(database_url, key, GLOBEX, jira.url, jira)
                    async with flooding(url, slack, args):
                        healthy = await a_runs(f"C0HEALTHY{n}")
                    # Credentials are read on every use: B's next calls go to the trickle.
                    await save_jira(database_url, key, GLOBEX, trickle.url, jira)
                    async with flooding(url, slack, args):
                        await trickle.wait_open(1)  # B's turns are stuck on its Jira
                        opened = trickle.accepted
                        loaded = await a_runs(f"C0LOADED{n}")
                        stuck += trickle.accepted - opened
                    phases["alone"] += alone
                    phases["healthy"] += healthy
                    phases["trickle"] += loaded
                    ratios.append(summary(loaded)[1] / summary(alone)[1])
            finally:
                await process.stop()
        b_answers = [c.params.get("text", "") for c in slack.calls_to("chat.postMessage")
                     if c.params.get("channel") == "C0FLOOD"]

    (a50, a99), (h50, h99), (l50, l99) = (summary(phases[name]) for name in phases)
    ratio = l99 / a99
    pace = f"{args.rate:g}/s" if args.rate else f"closed loop, {args.in_flight} in flight"
    print(f"A: {args.events} mentions per phase x {args.rounds} rounds at {pace}, each a Jira "
          "search; answer latency in ms")
    print(f"{'phase':<24} {'p50':>8} {'p99':>8}")
    print(f"{'A alone':<24} {a50:>8.1f} {a99:>8.1f}")
    print(f"{'A, B floods (Jira ok)':<24} {h50:>8.1f} {h99:>8.1f}")
    print(f"{'A, B floods (trickle)':<24} {l50:>8.1f} {l99:>8.1f}")
    print(f"A's p99 while B floods onto the trickle = {ratio:.2f}x unloaded (target <= 1.5x: "
          f"{'yes' if ratio <= 1.5 else 'NO'}); {l99 / h99:.2f}x its p99 while B floods "
          "with a healthy Jira")
    print("each round's ratio: " + ", ".join(f"{r:.2f}x" for r in ratios))
    # Each person hears a refusal once until its limit resets.
    limited = sum("limit" in text for text in b_answers)
    print(f"B: {args.flood_rate:g} mentions/s from {args.flood_users} people; turn limits "
          f"{'lifted' if args.b_unlimited else 'the defaults'}; {len(b_answers)} answers, "
          f"{limited} of them a limit's refusal; {stuck} connection(s) to the trickling Jira "
          f"opened while A ran (deadline {args.deadline:g} s)")
    if b_answers:
        print(f"B's last answer: {b_answers[-1][:160]!r}")


if __name__ == "__main__":
    asyncio.run(main())
