"""``GET /metrics``: the Prometheus exposition of :mod:`agents.metrics`, kept from the public.

Off by default. Two ways to serve it (README, "Metrics"):

* ``JAMONO_METRICS_PORT``: a listener of its own on ``JAMONO_METRICS_HOST`` (``127.0.0.1``
  by default) that serves only ``/metrics``; the public port has no such route.
* ``JAMONO_METRICS_TOKEN`` alone: ``/metrics`` on the main port, answering 401 unless the
  request carries ``Authorization: Bearer <token>`` (RFC 6750 §2.1). With both set, the
  separate port asks for the token too.

The token is compared in constant time (``hmac.compare_digest``), so response timing tells
nothing about how much of a guess was right.
"""

from __future__ import annotations

import hmac

import structlog
from aiohttp import web
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from agents.metrics import Metrics
from bot.settings import Settings

log = structlog.get_logger(__name__)

PATH = "/metrics"


class MetricsEndpoint:
    """Mounts ``/metrics`` where the settings say; :meth:`start`/:meth:`stop` run its own
    listener when ``JAMONO_METRICS_PORT`` is set."""

    def __init__(self, metrics: Metrics, settings: Settings) -> None:
        self.metrics = metrics
        self.settings = settings
        token = settings.metrics_token
        self._token = token.get_secret_value().encode() if token is not None else None
        self._runner: web.AppRunner | None = None

    def mount(self, app: web.Application) -> None:
        """Add ``/metrics`` to the main application when only the token protects it."""
        if self.settings.metrics_port is None and self._token is not None:
            app.router.add_get(PATH, self.handle)

    async def start(self) -> None:
        """Listen on ``JAMONO_METRICS_HOST:JAMONO_METRICS_PORT`` when a port is set."""
        if self.settings.metrics_port is None:
            return
        app = web.Application()
        app.router.add_get(PATH, self.handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        host, port = self.settings.metrics_host, self.settings.metrics_port
        await web.TCPSite(self._runner, host, port).start()
        log.info("metrics_listening", host=host, port=port, token=self._token is not None)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def handle(self, request: web.Request) -> web.Response:
        if self._token is not None and not self._authorized(request):
            return web.json_response(
                {"error": "a bearer token is required (Authorization: Bearer <token>)"},
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
            )
        body = await self.metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4})

    def _authorized(self, request: web.Request) -> bool:
        scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
        # The auth scheme is case-insensitive (RFC 9110 §11.1); the token is not.
        offered = credentials.strip().encode() if scheme.lower() == "bearer" else b""
        return hmac.compare_digest(offered, self._token)
