"""The scheduler: APScheduler's job store in our database, missed runs, leader leases and the
hand-over between two ``jamono run`` processes."""

from __future__ import annotations

import asyncio
import signal
from datetime import UTC, datetime, timedelta

import pytest
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from redis.asyncio import Redis
from sqlalchemy import text

from bot.briefings.schedule import parse_schedule
from bot.scheduler import (
    ADVISORY_LOCK_KEY,
    JOB_PREFIX,
    AdvisoryLock,
    RedisLease,
    Scheduler,
    SoleProcess,
    job_store_engine,
    run_briefing,
)
from storage import migrate
from storage.db import create_engine, session_factory
from storage.repositories import Repositories
from storage.repositories.briefings import DeliveryState
from tests.cross_session_support import wait_until
from tests.e2e import ACME_TOKEN, SIGNING_SECRET, base_settings, started
from tests.test_briefings_delivery import TENANT, posts, start_services, subscribe


class JobStore:
    """The job table as APScheduler sees it, through a paused scheduler of the test's own."""

    def __init__(self, database_url: str) -> None:
        self.engine = job_store_engine(database_url)
        self.scheduler = BackgroundScheduler(
            jobstores={"default": SQLAlchemyJobStore(engine=self.engine)}, timezone="UTC"
        )
        self.scheduler.start(paused=True)

    def next_runs(self) -> dict[str, datetime]:
        return {job.id: job.next_run_time for job in self.scheduler.get_jobs()}

    def put(self, briefing, next_run_time: datetime) -> None:
        """Store the briefing's job as the leader would, due at ``next_run_time``."""
        self.scheduler.add_job(
            run_briefing,
            parse_schedule(briefing.schedule).trigger(briefing.timezone),
            args=[briefing.id],
            id=JOB_PREFIX + str(briefing.id),
            replace_existing=True,
            coalesce=True,
            misfire_grace_time=None,
            max_instances=1,
            next_run_time=next_run_time,
        )

    def close(self) -> None:
        self.scheduler.shutdown(wait=False)
        self.engine.dispose()


async def test_jobs_survive_a_restart_and_missed_runs_follow_the_grace_time(database_url, slack):
    services = await start_services(database_url, slack)
    on_time = await subscribe(services, channel="C0LATE")
    too_late = await subscribe(services, channel="C0TOOLATE")
    scheduler = Scheduler(
        briefings=services.briefings,
        lease=SoleProcess(),
        database_url=database_url,
        lease_seconds=3,
    )
    scheduler.start()
    store = JobStore(database_url)
    try:

        async def both_jobs_stored():
            return len(store.next_runs()) == 2

        await wait_until(both_jobs_stored)
        stored = store.next_runs()
        expected = parse_schedule("weekdays 09:00").next_fire_times(
            "Europe/Paris", on_time.updated_at, 1
        )[0]
        assert stored[JOB_PREFIX + str(on_time.id)] == expected
        await scheduler.stop()
        await services.close()

        # While no process runs, one briefing falls due 5 minutes ago, the other 20.
        now = datetime.now(UTC).replace(microsecond=0)
        store.put(on_time, now - timedelta(minutes=5))
        store.put(too_late, now - timedelta(minutes=20))

        services = await start_services(database_url, slack)
        scheduler = Scheduler(
            briefings=services.briefings,
            lease=SoleProcess(),
            database_url=database_url,
            lease_seconds=3,
        )
        scheduler.start()

        async def both_recorded():
            runs = [
                await services.repos.briefings.deliveries(TENANT, b.id) for b in (on_time, too_late)
            ]
            done = all(r and r[0].state is not DeliveryState.SENDING for r in runs)
            return runs if done else None

        late_run, skipped_run = await wait_until(both_recorded)
        assert [(d.state, d.scheduled_for) for d in late_run] == [
            (DeliveryState.POSTED, now - timedelta(minutes=5))
        ]
        assert [(d.state, d.scheduled_for) for d in skipped_run] == [
            (DeliveryState.SKIPPED, now - timedelta(minutes=20))
        ]
        assert skipped_run[0].detail.startswith("missed by 20 min")
        assert len(posts(slack, "C0LATE")) == 1 and posts(slack, "C0TOOLATE") == []

        async def rescheduled():
            runs = store.next_runs()
            return all(run > now for run in runs.values()) and runs

        assert set((await wait_until(rescheduled)).values()) == {expected}
    finally:
        await scheduler.stop()
        await services.close()
        store.close()


async def test_a_paused_or_removed_briefing_leaves_the_job_store(sqlite_url, slack):
    services = await start_services(sqlite_url, slack)
    kept = await subscribe(services)
    paused = await subscribe(services)
    removed = await subscribe(services)
    scheduler = Scheduler(
        briefings=services.briefings, lease=SoleProcess(), database_url=sqlite_url, lease_seconds=3
    )
    scheduler.start()
    store = JobStore(sqlite_url)
    try:

        async def three_jobs():
            return len(store.next_runs()) == 3

        await wait_until(three_jobs)
        await services.repos.briefings.set_enabled(TENANT, paused.id, False)
        await services.repos.briefings.delete(TENANT, removed.id)
        scheduler.sync_soon()

        async def one_job():
            return set(store.next_runs()) == {JOB_PREFIX + str(kept.id)}

        await wait_until(one_job)
    finally:
        await scheduler.stop()
        await services.close()
        store.close()


async def test_a_redis_lease_has_one_holder_and_passes_on_when_it_expires(redis_url):
    redis = Redis.from_url(redis_url)
    try:
        first, second = RedisLease(redis, ttl=0.5), RedisLease(redis, ttl=0.5)
        assert await first.acquire()
        assert not await second.acquire()
        assert await first.renew()
        await asyncio.sleep(0.7)  # the first holder died: no renewal
        assert await second.acquire()
        assert not await first.renew()  # it cannot take the lease back by renewing
        await first.release()  # and cannot release someone else's
        assert not await first.acquire()
        await second.release()
        assert await first.acquire()
    finally:
        await redis.aclose()


async def test_an_advisory_lock_has_one_holder_and_frees_when_its_connection_dies(postgres_url):
    await migrate.upgrade_async(postgres_url)
    engines = [create_engine(postgres_url), create_engine(postgres_url)]
    first, second = AdvisoryLock(engines[0]), AdvisoryLock(engines[1])
    try:
        assert await first.acquire()
        assert not await second.acquire()
        assert await first.renew()
        async with engines[1].connect() as admin:  # the leader's connection dies
            await admin.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_locks "
                    "WHERE locktype = 'advisory' AND objid = :key"
                ),
                {"key": ADVISORY_LOCK_KEY},
            )

        async def taken_over():
            return await second.acquire()

        await wait_until(taken_over, timeout=10)
        assert not await first.renew()
    finally:
        await second.release()
        for engine in engines:
            await engine.dispose()


@pytest.fixture(params=["redis", "advisory_lock"])
def lease_redis_url(request) -> str:
    """REDIS_URL of the replicas: Redis holds the lease, or (empty) PostgreSQL's advisory lock."""
    return request.getfixturevalue("redis_url") if request.param == "redis" else ""


async def test_killing_the_leader_hands_over_and_no_run_is_posted_twice(
    lease_redis_url, postgres_url, slack, llm, tmp_path
):
    """With Redis the lease expires; without it PostgreSQL frees the dead leader's lock."""
    await migrate.upgrade_async(postgres_url)
    engine = create_engine(postgres_url)
    repos = Repositories.over(session_factory(engine))
    store = JobStore(postgres_url)
    settings = base_settings(slack, llm, postgres_url) | {
        "SLACK_BOT_TOKEN": ACME_TOKEN,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "REDIS_URL": lease_redis_url,
        "JAMONO_LEADER_LEASE": "3",
        "OPENAI_BASE_URL": "",
        "OPENAI_API_KEY": "",
    }
    processes = []
    try:
        before = await subscribe_with(repos, "C0BEFORE")
        after = await subscribe_with(repos, "C0AFTER")
        start = datetime.now(UTC).replace(microsecond=0)
        store.put(before, start + timedelta(seconds=15))
        store.put(after, start + timedelta(seconds=45))
        first = await started(settings, tmp_path)
        processes.append(first)
        second = await started(settings, tmp_path)
        processes.append(second)

        await slack.wait_for(
            "chat.postMessage", lambda p: p.get("channel") == "C0BEFORE", timeout=40
        )
        leader, follower = (first, second) if first.count("scheduler_leading") else (second, first)
        await leader.stop(signal.SIGKILL)
        # The leader died after posting but, as far as the job store knows, before the run was
        # done: its successor fires the same run again.
        store.put(before, start + timedelta(seconds=15))

        async def follower_leads():
            return follower.count("scheduler_leading") == 1

        await wait_until(follower_leads, timeout=30)
        await slack.wait_for(
            "chat.postMessage", lambda p: p.get("channel") == "C0AFTER", timeout=45
        )

        async def duplicate_refused():
            return follower.count("briefing_already_claimed") == 1

        await wait_until(duplicate_refused, timeout=10)
        assert len(posts(slack, "C0BEFORE")) == 1
        assert len(posts(slack, "C0AFTER")) == 1
        [killed_run] = await repos.briefings.deliveries(TENANT, before.id)

        async def next_run_recorded():
            # The follower records the outcome after chat.postMessage returns, not before.
            [run] = await repos.briefings.deliveries(TENANT, after.id)
            return run if run.state is not DeliveryState.SENDING else None

        next_run = await wait_until(next_run_recorded)
        assert killed_run.scheduled_for == start + timedelta(seconds=15)
        # Killed right after its post, the leader may not have recorded it as posted: the claim
        # alone keeps the successor from posting it again.
        assert killed_run.state in (DeliveryState.SENDING, DeliveryState.POSTED)
        assert (next_run.state, next_run.scheduled_for) == (
            DeliveryState.POSTED,
            start + timedelta(seconds=45),
        )
    finally:
        for process in processes:
            await process.stop()
        store.close()
        await engine.dispose()


async def subscribe_with(repos, channel):
    return await repos.briefings.create(
        TENANT,
        channel_id=channel,
        persona="nox",
        schedule="daily 09:00",
        timezone="Europe/Paris",
        sections=[{"kind": "approvals"}],
        created_by="U0ALICE",
    )
