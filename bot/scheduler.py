"""The briefing scheduler: APScheduler 3.11 on one leader process among the replicas.

Jobs live in APScheduler's ``SQLAlchemyJobStore`` in Jamono's own database (table
``apscheduler_jobs``, created by migration 0003), so schedules and their next run times
survive restarts. APScheduler 3 needs a synchronous engine for it: ``sqlite`` (the standard
library driver) for SQLite files and ``postgresql+psycopg`` (psycopg 3, maintained, binary
wheels) for PostgreSQL, where the rest of Jamono uses asyncpg. Those synchronous calls run in
worker threads (:class:`OffLoopScheduler`, :meth:`Scheduler.sync`), never on the event loop:
there a job-store write could wait for a write transaction that only the loop can finish.

Exactly one process runs the scheduler, the holder of a lease (:class:`Lease`):

* with Redis, a key set with ``SET NX PX`` and renewed every third of its time to live
  (``JAMONO_LEADER_LEASE`` seconds); a killed leader's key expires and a follower, trying every
  third of the lease, takes over: hand-over within about 1⅓ leases (20 s by default);
* without Redis on PostgreSQL, a session advisory lock (``pg_try_advisory_lock``) held on one
  connection; it is released when the leader's connection closes, also when it is killed;
* on SQLite, the only process that may use the file leads.

The leader mirrors enabled subscriptions into the job store (:meth:`Scheduler.sync`) when it
takes over, when this process changes a subscription, and every :data:`SYNC_INTERVAL` seconds
for changes made through another replica. Runs go to :meth:`Briefings.run_scheduled` with their
scheduled fire time; it applies the misfire grace and records every run, so a hand-over never
posts a run twice.
"""

from __future__ import annotations

import asyncio
import uuid
from contextlib import suppress
from datetime import datetime
from typing import Protocol

import structlog
from apscheduler.executors.base import BaseExecutor
from apscheduler.job import Job
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.asyncio import AsyncIOScheduler, run_in_event_loop
from apscheduler.schedulers.base import STATE_STOPPED
from redis.asyncio import Redis
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy import event, text
from sqlalchemy.engine import URL, Engine
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bot.briefings.delivery import Briefings
from bot.briefings.schedule import ScheduleError, parse_schedule
from storage.db import async_url
from storage.repositories.briefings import Briefing

log = structlog.get_logger(__name__)

LEASE_KEY = "jamono:scheduler:leader"
ADVISORY_LOCK_KEY = 0x4A414D4F  # "JAMO": one lock for the whole deployment
SYNC_INTERVAL = 30.0  # seconds between two mirrors of the subscriptions into the job store
JOB_PREFIX = "briefing:"


async def run_briefing(
    subscription_id: int,
    briefings: Briefings | None = None,
    scheduled_for: datetime | None = None,
):
    """The job every briefing schedules (stored by reference in the job store).

    :class:`BriefingExecutor` supplies the process's :class:`Briefings` and the run's
    scheduled fire time, which APScheduler does not hand to job functions itself; they have
    defaults only because APScheduler checks a job's arguments when the job is added.

    Raises:
        RuntimeError: called other than by :class:`BriefingExecutor`.
    """
    if briefings is None or scheduled_for is None:
        raise RuntimeError("run_briefing runs under BriefingExecutor")
    return await briefings.run_scheduled(subscription_id, scheduled_for)


class BriefingExecutor(BaseExecutor):
    """APScheduler executor that runs :func:`run_briefing` jobs as tasks on the event loop.

    Jobs are coalesced, so ``run_times`` holds one time: the latest missed one. The misfire
    grace is applied by :meth:`Briefings.run_scheduled` (jobs carry no grace of their own), so
    that a run missed beyond it is recorded as skipped rather than silently dropped.
    """

    def __init__(self, briefings: Briefings) -> None:
        super().__init__()
        self._briefings = briefings
        self._loop = asyncio.get_running_loop()
        self._tasks: set[asyncio.Task] = set()

    def _do_submit_job(self, job: Job, run_times: list[datetime]) -> None:
        # Called from the scheduler's worker thread (OffLoopScheduler): start on the loop.
        self._loop.call_soon_threadsafe(self._launch, job, run_times)

    def _launch(self, job: Job, run_times: list[datetime]) -> None:
        task = self._loop.create_task(
            job.func(*job.args, briefings=self._briefings, scheduled_for=run_times[-1]),
            name=f"briefing-job:{job.id}",
        )
        self._tasks.add(task)

        def done(finished: asyncio.Task) -> None:
            self._tasks.discard(finished)
            if finished.cancelled():
                self._run_job_error(job.id, asyncio.CancelledError())
            elif finished.exception() is not None:
                self._run_job_error(job.id, finished.exception())
            else:
                self._run_job_success(job.id, [])

        task.add_done_callback(done)

    def shutdown(self, wait: bool = True) -> None:
        # Runs already started go on (their delivery is claimed; cancelling would lose it):
        # :meth:`drain` waits for them.
        return None

    async def drain(self, grace: float) -> None:
        """Wait up to ``grace`` seconds for runs in progress."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace)


class OffLoopScheduler(AsyncIOScheduler):
    """``AsyncIOScheduler`` whose passes over the job store run in a worker thread.

    APScheduler 3 looks for due jobs, and updates them, synchronously on the event loop. With
    the job store in Jamono's SQLite file, such a write waits (up to the 30 s busy timeout)
    for a write transaction of ours that only the blocked loop can finish, then fails, and
    APScheduler, which does not catch that error, never wakes again. Here each pass runs in a
    thread; a failed pass is logged and retried after :attr:`RETRY` seconds.
    """

    RETRY = 10.0  # seconds

    @run_in_event_loop
    def wakeup(self) -> None:
        self._stop_timer()
        self._eventloop.run_in_executor(None, self._process_jobs).add_done_callback(
            self._processed
        )

    def _processed(self, future: asyncio.Future) -> None:
        if self.state == STATE_STOPPED or self._eventloop is None:
            return
        try:
            wait_seconds = future.result()
        except Exception as exc:  # the database was away: try again rather than stop firing
            log.warning("scheduler_pass_failed", error=repr(exc))
            wait_seconds = self.RETRY
        self._start_timer(wait_seconds)


class Lease(Protocol):
    """Leadership among replicas. Every method answers or raises; none blocks for long."""

    async def acquire(self) -> bool:
        """Try once to become the leader."""
        ...

    async def renew(self) -> bool:
        """Keep leadership; ``False`` when it was lost."""
        ...

    async def release(self) -> None: ...


class RedisLease:
    """A Redis key holding this process's token, with a time to live of ``ttl`` seconds."""

    _RENEW = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end"  # noqa: E501
    _RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"  # noqa: E501

    def __init__(self, redis: Redis, ttl: float, key: str = LEASE_KEY) -> None:
        self._redis = redis
        self._ttl_ms = int(ttl * 1000)
        self._key = key
        self._token = uuid.uuid4().hex

    async def acquire(self) -> bool:
        return bool(await self._redis.set(self._key, self._token, nx=True, px=self._ttl_ms))

    async def renew(self) -> bool:
        return bool(await self._redis.eval(self._RENEW, 1, self._key, self._token, self._ttl_ms))

    async def release(self) -> None:
        await self._redis.eval(self._RELEASE, 1, self._key, self._token)


# A bigint advisory key shows in pg_locks as classid (high 32 bits) and objid (low 32 bits).
_HOLDS_LOCK = text(
    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted"
    " AND pid = pg_backend_pid() AND objsubid = 1"
    " AND classid::bigint = CAST(:classid AS bigint) AND objid::bigint = CAST(:objid AS bigint))"
)


class AdvisoryLock:
    """PostgreSQL session advisory lock held on one dedicated connection."""

    def __init__(self, engine: AsyncEngine, key: int = ADVISORY_LOCK_KEY) -> None:
        self._engine = engine
        self._key = key
        self._connection: AsyncConnection | None = None

    async def acquire(self) -> bool:
        connection = await self._engine.connect()
        try:
            locked = await connection.scalar(
                text("SELECT pg_try_advisory_lock(:key)"), {"key": self._key}
            )
            await connection.commit()
        except BaseException:
            await connection.close()
            raise
        if not locked:
            await connection.close()
            return False
        self._connection = connection
        return True

    async def renew(self) -> bool:
        if self._connection is None:
            return False
        try:
            # SQLAlchemy reconnects a dropped connection silently; the new session would not
            # hold the lock, so ask PostgreSQL whether this session holds it.
            held = await self._connection.scalar(
                _HOLDS_LOCK, {"classid": self._key >> 32, "objid": self._key & 0xFFFFFFFF}
            )
            await self._connection.commit()
        except Exception:
            held = False
        if not held:
            # The connection is gone, and the lock with it: another replica may hold it now.
            await self._drop()
            return False
        return True

    async def release(self) -> None:
        if self._connection is None:
            return
        with suppress(Exception):
            await self._connection.execute(
                text("SELECT pg_advisory_unlock(:key)"), {"key": self._key}
            )
            await self._connection.commit()
        await self._drop()

    async def _drop(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with suppress(Exception):
                await connection.close()


class SoleProcess:
    """SQLite: one process uses the file, so it always leads."""

    async def acquire(self) -> bool:
        return True

    async def renew(self) -> bool:
        return True

    async def release(self) -> None:
        return None


def job_store_url(database_url: str) -> URL:
    """The synchronous URL of ``database_url`` for APScheduler's job store."""
    url = async_url(database_url)
    if url.get_backend_name() == "sqlite":
        return url.set(drivername="sqlite")
    return url.set(drivername="postgresql+psycopg")


def job_store_engine(database_url: str) -> Engine:
    url = job_store_url(database_url)
    if url.get_backend_name() == "sqlite":
        # Other connections (the async engine) write the same file: wait for them. APScheduler
        # commits once per job it runs, on the event loop's thread: in WAL mode
        # synchronous=NORMAL spares those commits an fsync each (as storage.db does).
        engine = create_sync_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):  # pragma: no cover - driver callback
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine
    return create_sync_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=2)


class Scheduler:
    """Runs APScheduler while this process holds the lease; see the module docstring.

    ``lease_seconds`` is the lease's time to live: it is renewed every third of it, and a
    follower tries to take it every third of it.
    """

    def __init__(
        self,
        *,
        briefings: Briefings,
        lease: Lease,
        database_url: str,
        lease_seconds: float,
        sync_interval: float = SYNC_INTERVAL,
    ) -> None:
        self._briefings = briefings
        self._lease = lease
        self._database_url = database_url
        self._tick = lease_seconds / 3
        self._sync_interval = sync_interval
        self._engine: Engine | None = None
        self._scheduler: AsyncIOScheduler | None = None
        self._executor: BriefingExecutor | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="scheduler")

    async def stop(self, grace: float = 20.0) -> None:
        """Step down and wait up to ``grace`` seconds for briefings being delivered."""
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
        await self._step_down()
        if self._executor is not None:
            await self._executor.drain(grace)
        if self._engine is not None:
            self._engine.dispose()

    def sync_soon(self) -> None:
        """Mirror the subscriptions into the job store now (after a change made here)."""
        self._wake.set()

    async def _run(self) -> None:
        last_sync = 0.0
        loop = asyncio.get_running_loop()
        while True:
            try:
                if self._scheduler is None:
                    if await self._lease.acquire():
                        await self._lead()
                        last_sync = loop.time()
                elif not await self._lease.renew():
                    log.warning("scheduler_lease_lost")
                    await self._step_down()
                elif self._wake.is_set() or loop.time() - last_sync >= self._sync_interval:
                    self._wake.clear()
                    await self.sync()
                    last_sync = loop.time()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis or the database away: not leading is the safe side
                log.warning("scheduler_lease_failed", error=repr(exc))
                await self._step_down()
            with suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._tick)

    async def _lead(self) -> None:
        if self._engine is None:
            self._engine = job_store_engine(self._database_url)
        self._executor = BriefingExecutor(self._briefings)
        scheduler = OffLoopScheduler(
            jobstores={"default": SQLAlchemyJobStore(engine=self._engine)},
            executors={"default": self._executor},
            job_defaults={"coalesce": True, "misfire_grace_time": None, "max_instances": 1},
            timezone="UTC",
        )
        scheduler.start(paused=True)
        self._scheduler = scheduler
        log.info("scheduler_leading")
        await self.sync()
        scheduler.resume()

    async def _step_down(self) -> None:
        scheduler, self._scheduler = self._scheduler, None
        if scheduler is not None:
            with suppress(Exception):
                scheduler.shutdown(wait=False)
            log.info("scheduler_stopped")
        with suppress(Exception):
            await self._lease.release()

    async def sync(self) -> None:
        """Make the job store hold exactly one job per enabled subscription, with its trigger.

        A job whose trigger is unchanged keeps its stored next run time, so a run that fell
        due while no process led is still fired (and judged against the grace time).
        """
        scheduler = self._scheduler
        if scheduler is None:
            return
        wanted = {
            JOB_PREFIX + str(b.id): b for b in await self._briefings.repos.briefings.all_enabled()
        }
        # The job store's SQL is synchronous: off the event loop (see OffLoopScheduler).
        await asyncio.to_thread(_mirror, scheduler, wanted)


def _mirror(scheduler: OffLoopScheduler, wanted: dict[str, Briefing]) -> None:
    """Make the job store hold ``wanted`` (job id → briefing), in a worker thread."""
    jobs = {job.id: job for job in scheduler.get_jobs()}
    for job_id in jobs.keys() - wanted.keys():
        scheduler.remove_job(job_id)
    for job_id, briefing in wanted.items():
        try:
            trigger = parse_schedule(briefing.schedule).trigger(briefing.timezone)
        except ScheduleError as exc:  # stored before a rule changed: say so, keep others
            log.error("briefing_schedule_invalid", subscription_id=briefing.id, error=str(exc))
            continue
        job = jobs.get(job_id)
        if job is not None and repr(job.trigger) == repr(trigger):
            continue
        scheduler.add_job(
            run_briefing,
            trigger,
            args=[briefing.id],
            id=job_id,
            name=f"briefing {briefing.id}",
            replace_existing=True,
            next_run_time=_first_run(trigger, briefing),
        )


def _first_run(trigger, briefing: Briefing) -> datetime | None:
    """The first fire time after the subscription was last changed: one that fell due while
    the leader had not seen the subscription yet is fired (within the grace time)."""
    return trigger.get_next_fire_time(None, briefing.updated_at)
