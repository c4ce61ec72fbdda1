"""The WebSocket gateway: ``GET /ws``, one socket per application session (protocol v1).

The first message must be ``session.register`` with a valid token, within
``register_timeout`` seconds; otherwise the client gets JSON-RPC error -32001 and close code
4401. Sockets that have not authenticated yet are capped per remote address and overall: over
either cap the upgrade is refused with HTTP 503 before any message is read. The session's
owner comes only from the verified token. The socket is closed with 4401 at the token's
``exp`` unless ``session.refresh`` brought a newer token for the same owner.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiohttp import WSMsgType, web

from integrations.cross_session import protocol as rpc
from integrations.cross_session.protocol import CrossSessionError, ProtocolError
from integrations.cross_session.sessions import LiveSession, Router
from integrations.cross_session.tokens import Identity, TokenError, TokenVerifier

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class GatewayLimits:
    """Per-connection limits. Seconds for times, bytes for sizes, messages per second for
    ``rate``; ``burst`` messages may arrive at once. An empty ``allowed_origins`` refuses
    every browser ``Origin``. ``max_json_depth`` bounds the nesting of every message;
    ``max_unauthenticated`` (overall) and ``max_unauthenticated_per_address`` bound the sockets
    still waiting for ``session.register``."""

    max_message: int = 64 * 1024
    heartbeat: float = 5.0
    register_timeout: float = 5.0
    max_sessions_per_user: int = 20
    rate: float = 20.0
    burst: int = 40
    allowed_origins: frozenset[str] = frozenset()
    allow_missing_origin: bool = True
    max_json_depth: int = 64
    max_unauthenticated: int = 256
    max_unauthenticated_per_address: int = 16


@dataclass
class GatewayStats:
    """What this process's gateway saw since it started, read by the metrics scrape.

    ``messages``: text messages received; ``registered``: sessions admitted; ``refusals``:
    connections refused or closed by policy, by reason (``origin``, ``auth``, ``rate_limited``,
    ``too_many_sessions``, ``binary``).
    """

    messages: int = 0
    registered: int = 0
    refusals: Counter[str] = field(default_factory=Counter)


class _Bucket:
    """Token bucket (``rate`` tokens a second, ``burst`` at most)."""

    __slots__ = ("rate", "burst", "tokens", "at")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self.tokens, self.at = float(burst), time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class _Closed(Exception):
    """The connection was closed on purpose; the handler returns."""


class Connection:
    """One socket: registration, the client's requests, and our ``tools/call`` requests."""

    def __init__(self, gateway: Gateway, ws: web.WebSocketResponse, address: str) -> None:
        self.gateway = gateway
        self.ws = ws
        self.address = address
        self.waiting = True  # counted against the unauthenticated caps until it registers
        self.session: LiveSession | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future] = {}
        self._bucket = _Bucket(gateway.limits.rate, gateway.limits.burst)
        self._expiry: asyncio.TimerHandle | None = None
        self._closing: asyncio.Task | None = None

    # Peer ------------------------------------------------------------------------------

    async def call_tool(
        self, name: str, arguments: dict[str, Any], time_limit: float
    ) -> dict[str, Any]:
        """MCP ``tools/call`` on this socket; ``time_limit`` in seconds.

        Raises:
            CrossSessionError: ``timeout``, ``session_gone`` or ``tool_error``.
        """
        id_ = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._pending[id_] = future
        try:
            try:
                await self.ws.send_str(
                    rpc.request(id_, rpc.TOOLS_CALL, {"name": name, "arguments": arguments})
                )
            except (ConnectionError, RuntimeError):
                raise self._gone() from None
            try:
                return await asyncio.wait_for(future, time_limit)
            except TimeoutError:
                raise CrossSessionError(
                    "timeout", f"the application did not answer {name} within {time_limit:g} s"
                ) from None
        finally:
            self._pending.pop(id_, None)

    def _gone(self) -> CrossSessionError:
        sid = self.session.session_id if self.session else "?"
        return CrossSessionError("session_gone", f"session {sid} disconnected during the call")

    # Lifecycle -------------------------------------------------------------------------

    async def serve(self) -> None:
        try:
            await self._register()
            async for message in self.ws:
                if message.type == WSMsgType.TEXT:
                    self.gateway.stats.messages += 1
                    await self._on_text(message.data)
                elif message.type == WSMsgType.BINARY:
                    self.gateway.stats.refusals["binary"] += 1
                    await self.close(rpc.CLOSE_UNSUPPORTED, "text frames only")
                    return
        except _Closed:
            return
        finally:
            await self._cleanup()

    async def close(self, code: int, reason: str) -> None:
        await self.ws.close(code=code, message=reason.encode()[:120])

    async def _refuse(self, id_: Any, reason: str) -> None:
        """Auth failure: error -32001, then close 4401."""
        log.info("xs_auth_refused", reason=reason)
        self.gateway.stats.refusals["auth"] += 1
        await self._send(rpc.error(id_, rpc.AUTH_ERROR, reason))
        await self.close(rpc.CLOSE_AUTH, "unauthorized")
        raise _Closed

    async def _send(self, text: str) -> None:
        try:
            await self.ws.send_str(text)
        except (ConnectionError, RuntimeError):
            raise _Closed from None

    async def _register(self) -> None:
        gateway = self.gateway
        loop = asyncio.get_running_loop()
        deadline = loop.time() + gateway.limits.register_timeout
        while True:
            try:
                message = await asyncio.wait_for(self.ws.receive(), deadline - loop.time())
            except TimeoutError:
                await self._refuse(None, "session.register with a valid token is required "
                                         f"within {gateway.limits.register_timeout:g} s")
            if not self._bucket.take():
                gateway.stats.refusals["rate_limited"] += 1
                await self.close(rpc.CLOSE_POLICY, "rate limit exceeded")
                raise _Closed
            if message.type != WSMsgType.TEXT:
                if message.type == WSMsgType.BINARY:
                    gateway.stats.refusals["binary"] += 1
                    await self.close(rpc.CLOSE_UNSUPPORTED, "text frames only")
                raise _Closed
            gateway.stats.messages += 1
            try:
                request = rpc.parse(message.data, gateway.limits.max_json_depth)
            except ProtocolError as exc:
                await self._refuse(None, f"the first message must be session.register ({exc})")
            if request.get("method") != rpc.REGISTER or "id" not in request:
                await self._refuse(
                    request.get("id"), "the first message must be a session.register request"
                )
            params = request.get("params", {})
            try:
                identity = gateway.verifier.verify(params.get("token"))
            except TokenError as exc:
                await self._refuse(request["id"], str(exc))
            try:
                app = rpc.text_param(params, "app", rpc.MAX_APP)
                title = rpc.text_param(params, "title", rpc.MAX_TITLE)
                tools = rpc.tool_specs(params.get("tools", []))
                if not app:
                    raise ProtocolError(rpc.INVALID_PARAMS, "app is required (e.g. excel)")
            except ProtocolError as exc:
                await self._send(rpc.error(request["id"], exc.code, exc.message))
                continue  # a corrected register may follow before the deadline
            await self._open(request["id"], identity, app, title, tools)
            return

    async def _open(
        self, id_: Any, identity: Identity, app: str, title: str, tools: list[dict[str, Any]]
    ) -> None:
        gateway = self.gateway
        limit = gateway.limits.max_sessions_per_user
        session = LiveSession(
            secrets.token_urlsafe(18), identity.owner, app, title, tools, identity.expires_at,
            self,
        )
        self.session = session  # set first: a connection lost while admitting cleans it up
        gateway.stop_waiting(self)
        if not await gateway.router.admit(session, limit):
            self.session = None
            gateway.stats.refusals["too_many_sessions"] += 1
            await self._send(rpc.error(id_, rpc.SERVER_ERROR, f"at most {limit} sessions per "
                                       "user are allowed", {"reason": "too_many_sessions"}))
            await self.close(rpc.CLOSE_POLICY, "too many sessions")
            raise _Closed
        self._expire_at(identity.expires_at)
        gateway.stats.registered += 1
        log.info("xs_session_registered", session_id=session.session_id, app=app,
                 team_id=identity.owner.team_id, user_id=identity.owner.slack_user_id)
        await self._send(rpc.result(id_, {"session_id": session.session_id,
                                          "expires_at": identity.expires_at}))

    def _expire_at(self, expires_at: int) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
        loop = asyncio.get_running_loop()
        delay = max(0.0, expires_at - time.time())
        self._expiry = loop.call_later(delay, self._expired)

    def _expired(self) -> None:
        log.info("xs_token_expired", session_id=self.session and self.session.session_id)
        self._closing = asyncio.create_task(self.close(rpc.CLOSE_AUTH, "token expired"))

    async def _cleanup(self) -> None:
        self.gateway.stop_waiting(self)  # registered or gone: no longer waiting
        if self._expiry is not None:
            self._expiry.cancel()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(self._gone())
        if self.session is not None:
            self.gateway.router.sessions.remove(self.session)
            await self.gateway.router.removed(self.session)
            log.info("xs_session_closed", session_id=self.session.session_id,
                     close_code=self.ws.close_code)

    # Messages after registration -------------------------------------------------------

    async def _on_text(self, text: str) -> None:
        try:
            message = rpc.parse(text, self.gateway.limits.max_json_depth)
        except ProtocolError as exc:
            message, problem = None, exc
        # Answers to our own tools/call are bounded by our calls; everything else is metered.
        awaited = message is not None and "method" not in message and message["id"] in (
            self._pending
        )
        if not awaited and not self._bucket.take():
            log.warning("xs_rate_limited", session_id=self.session.session_id)
            self.gateway.stats.refusals["rate_limited"] += 1
            await self._send(rpc.error(None, rpc.SERVER_ERROR, "rate limit exceeded",
                                       {"reason": "rate_limited"}))
            await self.close(rpc.CLOSE_POLICY, "rate limit exceeded")
            raise _Closed
        if message is None:
            await self._send(rpc.error(None, problem.code, problem.message))
            return
        if "method" not in message:
            self._on_response(message)
            return
        id_ = message.get("id")
        try:
            value = await self._on_request(message["method"], message.get("params", {}))
        except ProtocolError as exc:
            if id_ is not None:
                await self._send(rpc.error(id_, exc.code, exc.message, exc.data))
            return
        if id_ is not None:
            await self._send(rpc.result(id_, value))

    def _on_response(self, message: dict[str, Any]) -> None:
        future = self._pending.get(message["id"])
        if future is None or future.done():
            return  # an answer after its timeout: nobody waits for it any more
        if "error" in message:
            error = message["error"] if isinstance(message["error"], dict) else {}
            future.set_exception(CrossSessionError(
                "tool_error", f"the application refused the call: {error.get('message', error)}"
            ))
            return
        try:
            future.set_result(rpc.call_result(message["result"]))
        except CrossSessionError as exc:
            future.set_exception(exc)

    async def _on_request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        session = self.session
        router = self.gateway.router
        if method == rpc.PING:
            return {}
        if method == rpc.UPDATE:
            title = rpc.text_param(params, "title", rpc.MAX_TITLE, session.title)
            tools = rpc.tool_specs(params["tools"]) if "tools" in params else None
            session.title = title
            if tools is not None:
                session.tools = {tool["name"]: tool for tool in tools}
            await router.updated(session)
            return {}
        if method == rpc.REFRESH:
            try:
                identity = self.gateway.verifier.verify(params.get("token"))
            except TokenError as exc:
                await self._refuse(None, str(exc))
            if identity.owner != session.owner:
                await self._refuse(None, "the new token is for another user")
            session.expires_at = identity.expires_at
            self._expire_at(identity.expires_at)
            return {"expires_at": identity.expires_at}
        if method == rpc.REGISTER:
            raise ProtocolError(rpc.INVALID_REQUEST, "this socket is already registered")
        raise ProtocolError(rpc.METHOD_NOT_FOUND, f"method not found: {method}")


class Gateway:
    """The aiohttp handler for ``GET /ws``; sessions go into ``router``."""

    def __init__(self, verifier: TokenVerifier, router: Router, limits: GatewayLimits) -> None:
        self.verifier = verifier
        self.router = router
        self.limits = limits
        self._connections: set[Connection] = set()
        self.stats = GatewayStats()
        self._waiting: Counter[str] = Counter()  # unauthenticated sockets per remote address

    @property
    def unauthenticated(self) -> int:
        """Sockets on this instance that have not authenticated yet."""
        return self._waiting.total()

    def stop_waiting(self, connection: Connection) -> None:
        """``connection`` registered or closed: it no longer counts against the
        unauthenticated caps (idempotent)."""
        if not connection.waiting:
            return
        connection.waiting = False
        self._waiting[connection.address] -= 1
        if self._waiting[connection.address] <= 0:
            del self._waiting[connection.address]

    def _refusal(self, address: str) -> str | None:
        limits = self.limits
        if self._waiting[address] >= limits.max_unauthenticated_per_address:
            return (f"at most {limits.max_unauthenticated_per_address} unauthenticated "
                    "sockets per address")
        if self.unauthenticated >= limits.max_unauthenticated:
            return f"at most {limits.max_unauthenticated} unauthenticated sockets"
        return None

    async def close_tenant(self, tenant_id: str) -> int:
        """Close this instance's sessions of ``tenant_id`` (the app was uninstalled there);
        returns how many. Their tokens stay valid until ``exp``, but a session of a tenant
        without an installation is never offered to a turn."""
        closing = [
            c for c in self._connections
            if c.session is not None and c.session.owner.team_id == tenant_id
        ]
        await asyncio.gather(
            *(c.close(rpc.CLOSE_AUTH, "the app was uninstalled") for c in closing),
            return_exceptions=True,
        )
        return len(closing)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if origin is None and not self.limits.allow_missing_origin:
            self.stats.refusals["origin"] += 1
            return web.json_response({"error": "an Origin header is required"}, status=403)
        if origin is not None and origin not in self.limits.allowed_origins:
            log.info("xs_origin_refused", origin=origin)
            self.stats.refusals["origin"] += 1
            return web.json_response({"error": f"origin {origin} is not allowed"}, status=403)
        address = request.remote or "unknown"
        refusal = self._refusal(address)
        if refusal is not None:
            log.warning("xs_unauthenticated_refused", remote=address, reason=refusal,
                        waiting=self.unauthenticated)
            return web.json_response(
                {"error": f"{refusal}; retry later"}, status=503, headers={"Retry-After": "5"}
            )
        ws = web.WebSocketResponse(
            heartbeat=self.limits.heartbeat,
            max_msg_size=self.limits.max_message,
            compress=False,
            autoping=True,
        )
        connection = Connection(self, ws, address)
        self._waiting[address] += 1  # counted before the upgrade's first await
        self._connections.add(connection)
        try:
            await ws.prepare(request)
        except BaseException:
            self._connections.discard(connection)
            self.stop_waiting(connection)
            raise
        try:
            await connection.serve()
        finally:
            self._connections.discard(connection)
        return ws

    async def shutdown(self, _: web.Application | None = None) -> None:
        """Close every socket with 1001 so applications reconnect to another instance."""
        await asyncio.gather(
            *(c.close(rpc.CLOSE_GOING_AWAY, "server shutting down") for c in self._connections),
            return_exceptions=True,
        )
