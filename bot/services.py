"""The process's long-lived parts, built once from :class:`~bot.settings.Settings`.

``jamono run``, ``jamono console`` and the admin CLI share them, so a turn in the console
goes through the same runtime, memory, tools and storage as one from Slack.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import aiohttp
import structlog
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from agents.llm import LLMClient
from agents.runtime import AgentRuntime
from agents.status import StatusBoard
from agents.tools import build_registry
from bot import __version__
from bot.briefings.clients import TeamClients
from bot.briefings.delivery import Briefings
from bot.briefings.sections import Sources
from bot.briefings.sources import ActivitySource, ApprovalsSource, PromptSource
from bot.dedupe import EventClaims
from bot.scheduler import Scheduler
from bot.settings import Settings
from bot.work import InFlight
from storage import migrate
from storage.db import create_engine, ping, session_factory
from storage.repositories import Repositories

log = structlog.get_logger(__name__)


class StartupError(Exception):
    """A dependency is unusable at start; the message says what to do."""


@dataclass
class Services:
    settings: Settings
    engine: AsyncEngine
    repos: Repositories
    redis: Redis | None
    llm: LLMClient | None
    status: StatusBoard
    runtime: AgentRuntime
    claims: EventClaims
    inflight: InFlight
    briefings: Briefings
    slack_http: aiohttp.ClientSession  # Web API calls made outside Bolt (briefings)
    scheduler: Scheduler | None = None  # set by the server that runs it

    @classmethod
    async def start(cls, settings: Settings) -> Services:
        """Connect storage (migrating SQLite), Redis and the LLM client.

        Raises:
            StartupError: the database is unreachable or behind the code's migrations, or
                Redis does not answer.
        """
        engine = create_engine(settings.database_url)
        try:
            await _prepare_schema(settings, engine)
            redis = await _connect_redis(settings.redis_url)
        except BaseException:
            await engine.dispose()
            raise
        repos = Repositories.over(session_factory(engine))
        llm = (
            LLMClient(
                settings.openai_api_key.get_secret_value() if settings.openai_api_key else None,
                settings.openai_base_url,
                timeout=settings.llm_timeout,
            )
            if settings.llm_configured
            else None
        )
        status = StatusBoard(
            version=__version__, default_model=settings.model, llm=llm, metrics=repos.metrics
        )
        status.register_check("database", lambda: _ok(ping(engine)))
        if redis is not None:
            status.register_check("redis", lambda: _ok(redis.ping()))
        runtime = AgentRuntime(
            llm=llm,
            registry=build_registry(status),
            repos=repos,
            default_model=settings.model,
            tool_timeout=settings.tool_timeout,
            context_tokens=settings.context_tokens,
        )
        slack_http = aiohttp.ClientSession()
        briefings = Briefings(
            repos=repos,
            sources=Sources(
                {
                    "approvals": ApprovalsSource(repos),
                    "activity": ActivitySource(repos),
                    "prompt": PromptSource(runtime),
                }
            ),
            clients=TeamClients(settings, engine, slack_http),
            llm=llm,
            default_model=settings.model,
            grace=timedelta(seconds=settings.briefing_grace),
        )
        return cls(
            settings=settings,
            engine=engine,
            repos=repos,
            redis=redis,
            llm=llm,
            status=status,
            runtime=runtime,
            claims=EventClaims(repos.claims, redis),
            inflight=InFlight(),
            briefings=briefings,
            slack_http=slack_http,
        )

    async def close(self) -> None:
        await self.slack_http.close()
        if self.llm is not None:
            await self.llm.close()
        if self.redis is not None:
            await self.redis.aclose()
        await self.engine.dispose()


async def _ok(check) -> str:
    await check
    return "ok"


async def _prepare_schema(settings: Settings, engine: AsyncEngine) -> None:
    """Migrate the embedded SQLite database; refuse to run on an outdated PostgreSQL one."""
    try:
        await ping(engine)
        if engine.dialect.name == "sqlite":
            await migrate.upgrade_async(settings.database_url)
            return
        applied = await migrate.applied_revisions(engine)
    except Exception as exc:
        raise StartupError(f"database {engine.url.render_as_string()} is unusable: {exc}") from exc
    if applied != migrate.head_revisions(settings.database_url):
        raise StartupError(
            f"the database schema is at {sorted(applied) or 'nothing'}, the code needs "
            f"{sorted(migrate.head_revisions(settings.database_url))}: run `jamono db upgrade`"
        )


async def _connect_redis(url: str | None) -> Redis | None:
    if not url:
        return None
    redis = Redis.from_url(
        url, socket_connect_timeout=3, socket_timeout=3, health_check_interval=30
    )
    try:
        await redis.ping()
    except Exception as exc:
        await redis.aclose()
        raise StartupError(f"Redis at REDIS_URL does not answer: {exc}") from exc
    return redis
