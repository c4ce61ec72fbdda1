"""The process's long-lived parts, built once from :class:`~bot.settings.Settings`.

``jamono run``, ``jamono console`` and the admin CLI share them, so a turn in the console
goes through the same runtime, memory, tools and storage as one from Slack.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import timedelta

import aiohttp
import structlog
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from agents.budgets import DEFAULT_PRICES, Budgets, Limits, ModelChoice, PriceTable
from agents.connections import INTEGRATIONS, Connections, Defaults
from agents.llm import LLMClient
from agents.metrics import JamonoCollector, Metrics, TurnLatency
from agents.runtime import AgentRuntime, new_instance_id
from agents.status import StatusBoard
from agents.tools import build_registry
from bot import __version__
from bot.approvals import ApprovalDesk, SlackApprovalNotifier
from bot.briefings.clients import TeamClients
from bot.briefings.delivery import Briefings
from bot.briefings.sections import Sources
from bot.briefings.sources import (
    ActivitySource,
    ApprovalsSource,
    CalendarSource,
    JiraSource,
    PromptSource,
)
from bot.dedupe import EventClaims
from bot.scheduler import Scheduler
from bot.settings import Settings
from bot.work import InFlight
from integrations.calendar import CalDAVCredentials
from integrations.cross_session import (
    CrossSession,
    GatewayLimits,
    TokenIssuer,
    TokenVerifier,
)
from integrations.jira import CloudCredentials, DataCenterCredentials
from integrations.resilience import Resilience
from storage import migrate
from storage.db import create_engine, ping, session_factory
from storage.repositories import Repositories
from storage.workspace_cache import WorkspaceCache

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
    budgets: Budgets
    status: StatusBoard
    connections: Connections
    runtime: AgentRuntime
    claims: EventClaims
    inflight: InFlight
    approvals: ApprovalDesk
    briefings: Briefings
    slack_http: aiohttp.ClientSession  # one connection pool to Slack for every Web API client
    metrics: Metrics  # GET /metrics (bot/metrics.py)
    workspace_cache: WorkspaceCache  # the configuration turns read (storage/workspace_cache.py)
    cross_session: CrossSession | None = None
    scheduler: Scheduler | None = None  # set by the server that runs it
    # What start() opened, closed in reverse order by close().
    resources: AsyncExitStack = field(default_factory=AsyncExitStack, repr=False)

    @classmethod
    async def start(cls, settings: Settings) -> Services:
        """Connect storage (migrating SQLite), Redis and the LLM client.

        Raises:
            StartupError: the database is unreachable or behind the code's migrations, or
                Redis does not answer.
        """
        async with AsyncExitStack() as resources:  # on any failure, close what was opened
            services = await cls._build(settings, resources)
            services.resources = resources.pop_all()
        return services

    @classmethod
    async def _build(cls, settings: Settings, resources: AsyncExitStack) -> Services:
        engine = create_engine(settings.database_url)
        resources.push_async_callback(engine.dispose)
        await _prepare_schema(settings, engine)
        redis = await _connect_redis(settings.redis_url)
        if redis is not None:
            resources.push_async_callback(redis.aclose)
        workspace_cache = WorkspaceCache(redis=redis)
        repos = Repositories.over(session_factory(engine), settings.secret_box(), workspace_cache)
        llm = (
            LLMClient(
                settings.openai_api_key.get_secret_value() if settings.openai_api_key else None,
                settings.openai_base_url,
                timeout=settings.llm_timeout,
            )
            if settings.llm_configured
            else None
        )
        if llm is not None:
            resources.push_async_callback(llm.close)
        budgets = build_budgets(settings, repos, redis)
        status = StatusBoard(
            version=__version__, llm=llm, metrics=repos.metrics, budgets=budgets
        )
        # One id per process: cross-session routing and the turns it owns (bot.turns).
        instance_id = settings.instance_id or new_instance_id()
        cross_session = build_cross_session(settings, instance_id)
        status.register_check("database", lambda: _ok(ping(engine)))
        if redis is not None:
            status.register_check("redis", lambda: _ok(redis.ping()))
        connections = Connections(
            repos.credentials,
            Resilience(),  # one per process: circuits outlive the clients
            defaults=integration_defaults(settings),
            timeout=settings.integration_timeout,
            can_store=settings.secret_key is not None,
            egress=settings.egress_policy,
            limits=settings.pool_limits,
            redis=redis,
        )
        resources.callback(connections.close)
        for integration in INTEGRATIONS:
            status.register_workspace_check(integration, _health(connections, integration))
        if cross_session is not None:
            sessions = cross_session.router.sessions
            status.register_check("cross-session", lambda: _held(sessions))
        turn_latency = TurnLatency()
        runtime = AgentRuntime(
            llm=llm,
            registry=build_registry(
                status,
                connections=connections,
                session_router=cross_session.router if cross_session else None,
                # Under the runtime's own limit, so the model hears which session timed out.
                action_time_limit=settings.tool_timeout * 0.9,
            ),
            repos=repos,
            default_model=settings.model,
            tool_timeout=settings.tool_timeout,
            context_tokens=settings.context_tokens,
            notifier=SlackApprovalNotifier(repos),
            approval_ttl=timedelta(hours=settings.approval_ttl),
            budgets=budgets,
            owner=instance_id,
            observe_turn=turn_latency.observe,
        )
        metrics = Metrics(
            JamonoCollector(
                repository=repos.metrics,
                resilience=connections.resilience,
                turn_latency=turn_latency,
                tool_names=[tool.name for tool in runtime.registry],
                cross_session=cross_session,
                cost_of=budgets.cost,
                budget_rejections=budgets.rejections,
            )
        )
        if cross_session is not None:
            await cross_session.start()
            resources.push_async_callback(cross_session.close)
        slack_http = aiohttp.ClientSession()
        resources.push_async_callback(slack_http.close)
        briefings = Briefings(
            repos=repos,
            sources=Sources(
                {
                    "approvals": ApprovalsSource(repos),
                    "activity": ActivitySource(repos),
                    "prompt": PromptSource(runtime),
                    "jira": JiraSource(connections),
                    "calendar": CalendarSource(connections),
                }
            ),
            clients=TeamClients(settings, engine, slack_http),
            llm=llm,
            default_model=settings.model,
            grace=timedelta(seconds=settings.briefing_grace),
            min_interval=timedelta(seconds=settings.briefing_min_interval),
            budgets=budgets,
        )
        return cls(
            settings=settings,
            engine=engine,
            repos=repos,
            redis=redis,
            llm=llm,
            budgets=budgets,
            status=status,
            connections=connections,
            runtime=runtime,
            claims=EventClaims(repos.claims, redis),
            inflight=InFlight(),
            approvals=ApprovalDesk(repos, runtime.gate),
            cross_session=cross_session,
            briefings=briefings,
            slack_http=slack_http,
            metrics=metrics,
            workspace_cache=workspace_cache,
        )

    async def close(self) -> None:
        """Close what :meth:`start` opened, newest first (Slack's pool before the database)."""
        await self.resources.aclose()


def build_budgets(settings: Settings, repos: Repositories, redis: Redis | None) -> Budgets:
    """The limits on LLM turns from the ``JAMONO_…`` budget settings (agents/budgets.py)."""
    return Budgets(
        defaults=Limits(
            turns_per_minute_user=settings.turns_per_minute_user,
            turns_per_minute_workspace=settings.turns_per_minute_workspace,
            concurrent_turns=settings.concurrent_turns,
            tokens_per_day=settings.tokens_per_day,
            usd_per_day=settings.usd_per_day,
            tool_calls_per_reply=settings.tool_calls_per_reply,
        ),
        prices=PriceTable({**DEFAULT_PRICES, **settings.llm_prices}, settings.llm_default_price),
        models=ModelChoice(settings.model, settings.model_choices),
        repo=repos.budgets,
        redis=redis,
    )


def integration_defaults(settings: Settings) -> Defaults:
    """Jira and CalDAV credentials from the environment (``JIRA_*``, ``CALDAV_*``)."""
    jira = None
    if settings.jira_url and settings.jira_pat:
        jira = DataCenterCredentials(settings.jira_url, settings.jira_pat.get_secret_value())
    elif settings.jira_url and settings.jira_email and settings.jira_api_token:
        jira = CloudCredentials(
            settings.jira_url, settings.jira_email, settings.jira_api_token.get_secret_value()
        )
    caldav = None
    if settings.caldav_url and settings.caldav_calendar:
        caldav = CalDAVCredentials(
            settings.caldav_url,
            settings.caldav_username or "",
            settings.caldav_password.get_secret_value() if settings.caldav_password else "",
            settings.caldav_calendar,
        )
    return Defaults(jira=jira, caldav=caldav)


def _health(connections: Connections, integration):
    async def check(tenant) -> str:
        return str(await connections.health(tenant, integration))

    return check


def gateway_tokens(settings: Settings) -> tuple[TokenVerifier, TokenIssuer | None]:
    """The session-token verifier, and the issuer when this process holds a signing key.

    Raises:
        ValueError: the gateway is not configured (no ``JAMONO_GATEWAY_SECRET`` or public key).
    """
    if not settings.gateway_enabled:
        raise ValueError(
            "the cross-session gateway is off: set JAMONO_GATEWAY_SECRET (HS256, 32+ characters)"
            " or JAMONO_GATEWAY_ALGORITHM with JAMONO_GATEWAY_PUBLIC_KEY"
        )
    algorithm, issuer_name = settings.gateway_algorithm, settings.gateway_issuer
    if algorithm == "HS256":
        secret = settings.gateway_secret.get_secret_value()
        return TokenVerifier(secret, algorithm, issuer_name), TokenIssuer(
            secret, algorithm, issuer_name
        )
    private = settings.gateway_private_key
    issuer = TokenIssuer(private.get_secret_value(), algorithm, issuer_name) if private else None
    return TokenVerifier(settings.gateway_public_key, algorithm, issuer_name), issuer


def build_cross_session(settings: Settings, instance_id: str) -> CrossSession | None:
    """The cross-session gateway when a token key is configured (see docs/cross-session-
    protocol.md); Redis routing across instances when ``REDIS_URL`` is set."""
    if not settings.gateway_enabled:
        return None
    verifier, issuer = gateway_tokens(settings)
    limits = GatewayLimits(
        max_message=settings.gateway_max_message,
        heartbeat=settings.gateway_heartbeat,
        max_sessions_per_user=settings.gateway_max_sessions_per_user,
        rate=settings.gateway_rate,
        burst=settings.gateway_burst,
        allowed_origins=settings.gateway_origins,
        allow_missing_origin=settings.gateway_allow_missing_origin,
        register_timeout=settings.gateway_register_timeout,
        max_json_depth=settings.max_json_depth,
        max_unauthenticated=settings.gateway_max_unauthenticated,
        max_unauthenticated_per_address=settings.gateway_max_unauthenticated_per_address,
    )
    return CrossSession.build(
        verifier, issuer, limits, redis_url=settings.redis_url, instance_id=instance_id
    )


async def _held(sessions) -> str:
    return f"ok ({len(sessions)} sessions connected to this instance)"


async def _ok(check) -> str:
    await check
    return "ok"


async def _prepare_schema(settings: Settings, engine: AsyncEngine) -> None:
    """Migrate the embedded SQLite database; refuse to run on an outdated PostgreSQL one."""
    try:
        await ping(engine)
        if engine.dialect.name == "sqlite":
            await migrate.upgrade_async(settings.database_url, secrets=settings.secret_box())
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
