"""Briefings at scale: 1,000 subscriptions due in the same minute across 200 channels.

The real path runs in this process: the scheduler (APScheduler with its SQLAlchemy job store
in a SQLite file, or the PostgreSQL database given with ``--database-url``) fires every
subscription at the next minute boundary, and :class:`bot.briefings.delivery.Briefings`
gathers, renders and posts each briefing to the fake Slack, which enforces one message per
second per channel and answers 429 with ``Retry-After`` beyond it (contracts.md, "Slack:
limits"). Printed:

* delivered: accepted posts, and whether each subscription was posted exactly once;
* drain: seconds from the scheduled fire time to the last accepted post;
* 429s: how many posts the fake refused;
* peak memory: the process's peak RSS (fake Slack included) and tracemalloc's peak of Python
  allocations during the run, in MiB.

Run with ``.venv/bin/python bench/briefings.py [--subscriptions N] [--channels N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bot import logs  # noqa: E402
from bot.scheduler import Scheduler, SoleProcess  # noqa: E402
from bot.services import Services  # noqa: E402
from bot.settings import load_settings  # noqa: E402
from storage import migrate  # noqa: E402
from storage.repositories.briefings import DeliveryState  # noqa: E402
from storage.tenancy import Tenant  # noqa: E402
from tests.e2e import ACME, ACME_TOKEN, ALICE, SIGNING_SECRET  # noqa: E402
from tests.fakes import FakeSlack  # noqa: E402


async def run(subscriptions: int, channels: int, database_url: str) -> None:
    tenant = Tenant(ACME)
    async with FakeSlack() as slack:
        slack.add_workspace(ACME, ACME_TOKEN, "U0NOX", "Acme")
        slack.rate_limit("chat.postMessage", per_seconds=1.0, scope="channel")
        await migrate.upgrade_async(database_url)
        settings = load_settings(
            _env_file=None,
            DATABASE_URL=database_url,
            SLACK_API_URL=slack.api_url,
            SLACK_BOT_TOKEN=ACME_TOKEN,
            SLACK_SIGNING_SECRET=SIGNING_SECRET,
            LOG_LEVEL="WARNING",
        )
        logs.configure(settings.log_level, settings.log_format)
        services = await Services.start(settings)
        # All due at the next minute boundary (at least 20 s away, for the set-up), once.
        fire_at = (datetime.now(UTC) + timedelta(seconds=80)).replace(second=0, microsecond=0)
        for n in range(subscriptions):
            await services.repos.briefings.create(
                tenant,
                channel_id=f"C{n % channels:06d}",
                persona="nox",
                schedule=f"daily {fire_at:%H:%M}",
                timezone="UTC",
                sections=[{"kind": "approvals"}, {"kind": "activity"}, {"kind": "jira",
                          "jql": "project = OPS"}],
                created_by=ALICE,
            )
        fire = fire_at.timestamp()
        print(f"{subscriptions} subscriptions in {channels} channels; due at "
              f"{fire_at:%H:%M:%S} UTC (in {fire - time.time():.0f} s)")
        tracemalloc.start()
        scheduler = Scheduler(
            briefings=services.briefings,
            lease=SoleProcess(),
            database_url=database_url,
            lease_seconds=15,
        )
        scheduler.start()
        try:
            while len(slack.posted) < subscriptions:
                await asyncio.sleep(0.2)
                if time.time() > fire + 600:
                    raise SystemExit(f"only {len(slack.posted)} posts within 10 minutes")
            # Let any duplicate surface before counting.
            await asyncio.sleep(2)
        finally:
            await scheduler.stop()
        _, traced_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        first = min(post["at"] for post in slack.posted)
        last = max(post["at"] for post in slack.posted)
        recorded: list[str | None] = []
        for briefing in await services.repos.briefings.list(tenant):
            deliveries = await services.repos.briefings.deliveries(tenant, briefing.id)
            recorded += [d.message_ts for d in deliveries if d.state is DeliveryState.POSTED]
        await services.close()
        posted_rows = len(recorded)
        calls = len(slack.calls_to("chat.postMessage"))
        # Exactly once: one recorded post per subscription, and those are Slack's only posts.
        accepted = Counter(post["ts"] for post in slack.posted)
        exactly_once = (
            posted_rows == subscriptions
            and set(recorded) == set(accepted)
            and len(slack.posted) == subscriptions
        )
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"delivered: {len(slack.posted)} posts, {posted_rows} recorded as posted, "
              f"each subscription exactly once: {exactly_once}")
        print(f"drain: first post {first - fire:.1f} s after the fire time, "
              f"last {last - fire:.1f} s "
              f"({calls} chat.postMessage calls, {calls - len(slack.posted)} answered 429)")
        print(f"peak memory: {rss:.0f} MiB RSS (fake Slack included), "
              f"{traced_peak / 2**20:.0f} MiB traced Python allocations")
        if not exactly_once or posted_rows != subscriptions:
            raise SystemExit("FAILED: not every subscription was delivered exactly once")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscriptions", type=int, default=1000)
    parser.add_argument("--channels", type=int, default=200)
    parser.add_argument("--database-url", help="default: a SQLite file in a temporary folder")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        url = args.database_url or f"sqlite+aiosqlite:///{folder}/bench.db"
        asyncio.run(run(args.subscriptions, args.channels, url))


if __name__ == "__main__":
    main()
