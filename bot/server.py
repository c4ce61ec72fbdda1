"""The ``jamono run`` process: aiohttp server, Socket Mode connection, graceful shutdown.

Routes: ``POST /slack/events`` (Events API, slash commands and interactivity),
``GET /healthz`` (process alive), ``GET /readyz`` (database reachable, Slack auth ok) and,
with OAuth, ``GET /slack/install`` and ``GET /slack/oauth_redirect``; with the cross-session
gateway configured, ``GET /ws`` (docs/cross-session-protocol.md). ``jamono gateway`` serves
only ``/ws`` and the health routes. ``GET /metrics`` (Prometheus) is off unless configured,
on its own port or behind a bearer token (bot/metrics.py); ``jamono gateway`` serves it too.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import time
from contextlib import suppress
from typing import Any
from urllib.parse import parse_qs

import structlog
from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.adapter.socket_mode.aiohttp import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_sdk.signature import SignatureVerifier
from slack_sdk.web.async_client import AsyncWebClient

from bot.app import INSTALL_PATH, REDIRECT_PATH, build_app
from bot.briefings.clients import NotInstalled
from bot.lifecycle import TenantLifecycle
from bot.metrics import MetricsEndpoint
from bot.scheduler import AdvisoryLock, Lease, RedisLease, Scheduler, SoleProcess
from bot.services import Services
from bot.slack_client import web_client
from bot.turns import TurnWatch
from integrations import json_limits
from storage.db import ping
from storage.tenancy import Tenant

log = structlog.get_logger(__name__)

AUTH_CACHE_SECONDS = 60
PRUNE_INTERVAL = 600  # seconds between sweeps of expired claims and interrupted deliveries
EXPIRY_SWEEP_MAX = 60.0  # seconds between sweeps of overdue approval requests, at most


class Server:
    def __init__(self, services: Services, *, slack: bool = True) -> None:
        self.services = services
        self.settings = services.settings
        self.bolt: AsyncApp | None = (
            build_app(services, services.slack_http)
            if slack and self.settings.slack_configured
            else None
        )
        self.socket: AsyncSocketModeHandler | None = None
        self._runner: web.AppRunner | None = None
        self._auth: tuple[float, str] | None = None
        self._background: list[asyncio.Task] = []
        self.metrics = MetricsEndpoint(services.metrics, self.settings)
        self._verifier = (
            SignatureVerifier(self.settings.slack_signing_secret.get_secret_value())
            if self.settings.slack_signing_secret
            else None
        )
        if self.bolt is not None:
            services.status.register_check("slack", self.slack_state)

    # Lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        if self.bolt is not None:
            turns = TurnWatch(self.services, self._client_for, self.settings.turn_heartbeat)
            # Before taking work: what a previous life of this instance left running is dead.
            await turns.recover(startup=True)
            self._background.append(asyncio.create_task(turns.run(), name="turn-watch"))
        app = web.Application(client_max_size=self.settings.max_request_body)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        if self.bolt is not None and self.settings.http_events:
            app.router.add_post("/slack/events", self.slack_events)
        if self.bolt is not None and self.bolt.oauth_flow is not None:
            app.router.add_get(INSTALL_PATH, self.oauth)
            app.router.add_get(REDIRECT_PATH, self.oauth)
        if self.services.cross_session is not None:
            app.router.add_get("/ws", self.services.cross_session.gateway.handle)
            app.on_shutdown.append(self.services.cross_session.gateway.shutdown)
        self.metrics.mount(app)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.settings.host, self.settings.port).start()
        log.info(
            "http_listening",
            host=self.settings.host,
            port=self.settings.port,
            slack_events=self.settings.http_events and self.bolt is not None,
            oauth=self.settings.oauth_enabled,
            gateway=self.services.cross_session is not None,
        )
        await self.metrics.start()
        if self.bolt is not None and self.settings.socket_mode:
            self.socket = AsyncSocketModeHandler(
                self.bolt,
                self.settings.slack_app_token.get_secret_value(),
                web_client=web_client(
                    self.settings.slack_api_url, session=self.services.slack_http
                ),
            )
            await self.socket.connect_async()
            log.info("socket_mode_connected")
        self._background.append(asyncio.create_task(self._housekeeping(), name="housekeeping"))
        if self.services.redis is not None:  # what other replicas changed or uninstalled
            self._background.append(asyncio.create_task(
                self.services.workspace_cache.listen(), name="workspace-changes"
            ))
            self._background.append(asyncio.create_task(
                self.services.connections.listen(), name="circuit-resets"
            ))
            self._background.append(asyncio.create_task(
                TenantLifecycle(self.services).listen(
                    self.bolt.installation_store if self.bolt is not None else None
                ),
                name="tenant-lifecycle",
            ))
        if self.bolt is not None:
            self._background.append(
                asyncio.create_task(self._expire_approvals(), name="expire-approvals")
            )
            self.services.scheduler = Scheduler(
                briefings=self.services.briefings,
                lease=self._lease(),
                database_url=self.settings.database_url,
                lease_seconds=self.settings.leader_lease,
            )
            self.services.scheduler.start()

    def _lease(self) -> Lease:
        """Redis when configured; else the database's own means (see bot.scheduler)."""
        if self.services.redis is not None:
            return RedisLease(self.services.redis, self.settings.leader_lease)
        if self.services.engine.dialect.name == "postgresql":
            return AdvisoryLock(self.services.engine)
        return SoleProcess()

    async def stop(self) -> None:
        """Stop taking work, let in-flight turns finish within ``JAMONO_SHUTDOWN_GRACE`` s."""
        log.info("shutting_down", in_flight=len(self.services.inflight))
        self.services.inflight.draining = True
        if self.socket is not None:
            with suppress(Exception):
                await self.socket.close_async()
        if self._runner is not None:
            for site in list(self._runner.sites):
                await site.stop()
        # One grace for briefings being delivered and turns in flight, waited for together.
        grace = self.settings.shutdown_grace
        drains = [self.services.inflight.drain(grace)]
        if self.services.scheduler is not None:
            drains.append(self.services.scheduler.stop(grace))
        cancelled, *_ = await asyncio.gather(*drains)
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
        await self.metrics.stop()
        log.info("stopped", cancelled_turns=cancelled)

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(PRUNE_INTERVAL)
            try:
                await self.services.claims.prune()
            except Exception as exc:  # housekeeping; retry next round
                log.warning("claim_prune_failed", error=repr(exc))
            try:
                await self.services.briefings.close_interrupted()
            except Exception as exc:
                log.warning("briefing_sweep_failed", error=repr(exc))

    async def _expire_approvals(self) -> None:
        """Expire overdue approval requests, close orphaned executions, and say so on their
        messages (:meth:`bot.approvals.ApprovalDesk.sweep`).

        Runs every quarter of ``JAMONO_APPROVAL_TTL`` (1 s to 60 s), so a message says
        "expired" soon after its deadline even if nobody clicks. Safe with several replicas:
        each request is closed (and its message updated) by one of them.
        """
        interval = min(max(self.settings.approval_ttl * 3600 / 4, 1.0), EXPIRY_SWEEP_MAX)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.services.approvals.sweep(self._client_for)
            except Exception as exc:  # housekeeping; retry next round
                log.warning("approval_expiry_failed", error=repr(exc))

    async def _client_for(self, tenant: Tenant) -> AsyncWebClient | None:
        """The Web API client of a workspace (or org install), ``None`` when not installed.

        The same clients as scheduled briefings use: they refresh rotated tokens themselves.
        ``tenant`` names the installation fully (an Enterprise Grid workspace install is
        found by its team id and enterprise id together).
        """
        try:
            return await self.services.briefings.clients.for_tenant(tenant)
        except NotInstalled:
            return None

    # Handlers --------------------------------------------------------------------------

    async def slack_events(self, request: web.Request) -> web.Response:
        """Slack's one request URL: verify the signature, parse within limits, let Bolt dispatch.

        Nothing of the body is parsed before its signature is checked (a bad one is a 401;
        a body that is not even UTF-8 is a 400); a signed body that still does not parse, or
        nests deeper than ``JAMONO_MAX_JSON_DEPTH``, is a 400. Bodies over
        ``JAMONO_MAX_REQUEST_BODY`` bytes are
        a 413 (aiohttp's ``client_max_size``).
        """
        raw = await request.read()
        try:
            # Slack only sends UTF-8, and slack_sdk verifies text; decoding parses nothing.
            body = raw.decode("utf-8")
        except UnicodeDecodeError:
            log.warning("slack_request_malformed", reason="not UTF-8", size=len(raw))
            return _bad_request("body is not UTF-8")
        if not self._signed(body, request.headers):
            log.warning("slack_request_unsigned", remote=request.remote, size=len(raw))
            return web.json_response({"error": "invalid request"}, status=401)
        try:
            parse_slack_body(body, request.content_type, self.settings.max_json_depth)
        except ValueError as exc:
            log.warning("slack_request_malformed", reason=str(exc), size=len(raw))
            return _bad_request(f"body is not a Slack payload: {exc}")
        if self.services.inflight.draining:
            return web.json_response({"error": "shutting down"}, status=503)
        bolt_request = AsyncBoltRequest(
            body=body, query=request.query_string, headers=dict(request.headers)
        )
        return await to_aiohttp_response(await self.bolt.async_dispatch(bolt_request))

    def _signed(self, body: str, headers) -> bool:
        """Slack's ``v0`` signature of ``body`` (contracts.md, "Slack: HTTP"): valid and fresh."""
        try:
            return self._verifier.is_valid(
                body,
                headers.get("X-Slack-Request-Timestamp"),
                headers.get("X-Slack-Signature"),
            )
        except ValueError:  # a timestamp that is not an integer
            return False

    async def oauth(self, request: web.Request) -> web.Response:
        flow = self.bolt.oauth_flow
        bolt_request = await to_bolt_request(request)
        if request.path == INSTALL_PATH:
            response = await flow.handle_installation(bolt_request)
        else:
            response = await flow.handle_callback(bolt_request)
        return await to_aiohttp_response(response)

    async def healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, _: web.Request) -> web.Response:
        checks: dict[str, str] = {}
        checks["database"] = await _state(self._database())
        checks["slack"] = await _state(self.slack_state())
        ready = not self.services.inflight.draining and all(
            v == "ok" or v.startswith("not configured") for v in checks.values()
        )
        if self.services.inflight.draining:
            checks["process"] = "shutting down"
        return web.json_response(
            {"status": "ready" if ready else "not ready", "checks": checks},
            status=200 if ready else 503,
        )

    async def _database(self) -> str:
        await ping(self.services.engine)
        return "ok"

    async def slack_state(self) -> str:
        """``ok`` when Slack accepts our credentials (and Socket Mode is connected)."""
        if self.bolt is None:
            return "not configured"
        if self.socket is not None and not await self.socket.client.is_connected():
            return "failing: Socket Mode is not connected"
        if self.settings.oauth_enabled:
            return "ok"  # tokens are per workspace, in the installation store
        now = time.monotonic()
        if self._auth is None or now - self._auth[0] > AUTH_CACHE_SECONDS:
            try:
                await self.bolt.client.auth_test()
                state = "ok"
            except Exception as exc:
                state = f"failing: auth.test: {getattr(exc, 'response', {}).get('error', exc)}"
            self._auth = (now, state)
        return self._auth[1]


def parse_slack_body(body: str, content_type: str, max_depth: int) -> dict[str, Any]:
    """The body as Bolt will read it (``slack_bolt.request.internals.parse_body``), checked.

    JSON when the content type says so or it starts with ``{``; else a form, whose ``payload``
    field is JSON (interactivity) or which carries ``command`` or ``ssl_check``.

    Raises:
        ValueError: not such a body, or JSON nested deeper than ``max_depth`` levels.
    """
    if content_type == "application/json" or body.startswith("{"):
        value = json_limits.loads(body, max_depth)
    else:
        # Bolt reads the first value of a repeated field: so does this check.
        form = {name: values[0] for name, values in parse_qs(body, keep_blank_values=True).items()}
        if "payload" in form:
            value = json_limits.loads(form["payload"], max_depth)
        elif "command" in form or "ssl_check" in form:
            return form
        else:
            raise ValueError("neither JSON nor a form with payload, command or ssl_check")
    if not isinstance(value, dict):
        raise ValueError("JSON that is not an object")
    return value


def _bad_request(reason: str) -> web.Response:
    # X-Slack-No-Retry: a body that does not parse will not parse on retry either.
    return web.json_response({"error": reason}, status=400, headers={"X-Slack-No-Retry": "1"})


async def _state(check) -> str:
    try:
        return await asyncio.wait_for(check, 3)
    except Exception as exc:
        return f"failing: {exc!r}"


def settle_heap() -> None:
    """Exempt everything alive once the server has started from the cyclic collector.

    Modules, mappers, models and clients are most of the heap (about 230,000 objects) and
    live as long as the process; a full collection walked them all, a pause of about 150 ms
    of the loop for every workspace. Frozen (``gc.freeze``, Python's remedy for long-lived
    start-up objects), a full collection walks only what turns create: about 7 ms measured.
    """
    gc.collect()
    gc.freeze()


async def serve(
    services: Services, until: asyncio.Event | None = None, *, slack: bool = True
) -> None:
    """Run the server until SIGTERM/SIGINT (or ``until`` is set), then shut down gracefully.

    ``slack=False`` serves without the Slack routes (``jamono gateway``).
    """
    stop = until or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = Server(services, slack=slack)
    await server.start()
    settle_heap()
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await server.stop()
