"""Reference client an application embeds to offer its actions to Jamono personas.

    client = SessionClient(["wss://jamono.example.com/ws"], token, app="excel",
                           title="Budget Q4.xlsx")

    @client.tool(input_schema={"type": "object", "properties": {"range": {"type": "string"}},
                               "required": ["range"]},
                 annotations={"readOnlyHint": True})
    async def read_range(range: str) -> dict:
        "Read the cells of a range."
        ...

    await client.run()  # connects, registers, serves tools/call, reconnects until close()

A tool returns a string (sent as text content), or a dict (sent as ``structuredContent``
with its JSON as text); an exception becomes an MCP result with ``isError: true``.
Reconnection uses exponential backoff with full jitter and tries the URLs in turn, so an
application moves to another instance when one dies.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import json
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from typing import Any

import aiohttp
import structlog

from integrations.cross_session import protocol as rpc

log = structlog.get_logger(__name__)

TokenSource = str | Callable[[], Awaitable[str]]
REFRESH_MARGIN = 60  # seconds before exp at which a new token is sent


class SessionAuthError(Exception):
    """The gateway refused the token (JSON-RPC -32001 / close 4401) and no new one can be had."""


class SessionClient:
    """A reconnecting cross-session client.

    ``token`` is a JWT string or an async function returning a fresh one (called on each
    connection and before ``exp``); with a plain string the client stops with
    :class:`SessionAuthError` once the gateway refuses it. Times are in seconds.
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        token: TokenSource,
        *,
        app: str,
        title: str = "",
        origin: str | None = None,
        heartbeat: float = 5.0,
        min_backoff: float = 0.2,
        max_backoff: float = 30.0,
    ) -> None:
        self.urls = [urls] if isinstance(urls, str) else list(urls)
        self.app = app
        self.title = title
        self.session_id: str | None = None
        self.expires_at: int | None = None
        self.registered = asyncio.Event()
        self.connections = 0  # successful registrations so far
        self._token = token
        self._origin = origin
        self._heartbeat = heartbeat
        self._min_backoff, self._max_backoff = min_backoff, max_backoff
        self._tools: dict[str, tuple[dict[str, Any], Callable[..., Awaitable[Any]]]] = {}
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future] = {}
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._closed = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()

    # Tools -----------------------------------------------------------------------------

    def tool(
        self,
        name: str | None = None,
        *,
        description: str | None = None,
        input_schema: dict[str, Any] | None = None,
        annotations: dict[str, Any] | None = None,
    ):
        """Decorator registering an async function as a tool (MCP ``name``, ``description``,
        ``inputSchema``, ``annotations``); the docstring is the default description."""

        def register(function: Callable[..., Awaitable[Any]]):
            spec: dict[str, Any] = {
                "name": name or function.__name__,
                "description": description or inspect.getdoc(function) or "",
                "inputSchema": input_schema or {"type": "object"},
            }
            if annotations:
                spec["annotations"] = annotations
            self._tools[spec["name"]] = (spec, function)
            return function

        return register

    @property
    def tools(self) -> list[dict[str, Any]]:
        return [spec for spec, _ in self._tools.values()]

    # Running ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, register and serve until :meth:`close`; reconnect after any failure.

        Raises:
            SessionAuthError: a fixed token was refused.
        """
        urls = itertools.cycle(self.urls)
        failures = 0
        async with aiohttp.ClientSession() as http:
            while not self._closed.is_set():
                url = next(urls)
                try:
                    served = await self._connect(http, url)
                except SessionAuthError:
                    if isinstance(self._token, str):
                        raise
                    served = False
                except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                    log.info("xs_client_connect_failed", url=url, error=repr(exc))
                    served = False
                if self._closed.is_set():
                    return
                failures = 0 if served else failures + 1
                ceiling = min(self._max_backoff, self._min_backoff * 2 ** min(failures, 10))
                with suppress(TimeoutError):  # close() ends the wait at once
                    await asyncio.wait_for(
                        self._closed.wait(), random.uniform(self._min_backoff / 2, ceiling)
                    )

    async def close(self) -> None:
        self._closed.set()
        if self._ws is not None:
            await self._ws.close()

    async def update(self, title: str | None = None) -> None:
        """Send ``session.update`` with the new title and the current tools."""
        if title is not None:
            self.title = title
        await self._request(rpc.UPDATE, {"title": self.title, "tools": self.tools})

    async def _token_now(self) -> str:
        return self._token if isinstance(self._token, str) else await self._token()

    async def _connect(self, http: aiohttp.ClientSession, url: str) -> bool:
        """One connection; returns whether it registered (and so served for a while)."""
        headers = {"Origin": self._origin} if self._origin else None
        async with http.ws_connect(
            url, heartbeat=self._heartbeat, compress=0, headers=headers, max_msg_size=0
        ) as ws:
            self._ws = ws
            reader = asyncio.create_task(self._read(ws))
            try:
                params = {"token": await self._token_now(), "app": self.app,
                          "title": self.title, "tools": self.tools}
                try:
                    answer = await self._request(rpc.REGISTER, params)
                except _RemoteError as exc:
                    if exc.code == rpc.AUTH_ERROR:
                        raise SessionAuthError(exc.message) from None
                    raise aiohttp.ClientError(f"register refused: {exc.message}") from None
                self.session_id, self.expires_at = answer["session_id"], answer["expires_at"]
                self.connections += 1
                self.registered.set()
                log.info("xs_client_registered", url=url, session_id=self.session_id)
                refresher = asyncio.create_task(self._refresh_loop())
                try:
                    await reader
                finally:
                    refresher.cancel()
                if ws.close_code == rpc.CLOSE_AUTH and isinstance(self._token, str):
                    raise SessionAuthError("the gateway closed the session: token expired")
                return True
            finally:
                self.registered.clear()
                self._ws = None
                reader.cancel()

    async def _refresh_loop(self) -> None:
        if isinstance(self._token, str):
            return
        while True:
            await asyncio.sleep(max(1.0, self.expires_at - REFRESH_MARGIN - time.time()))
            try:
                answer = await self._request(rpc.REFRESH, {"token": await self._token_now()})
            except (_RemoteError, ConnectionError) as exc:
                # The gateway closes the socket (4401); run() reconnects with a fresh token.
                log.warning("xs_client_refresh_failed", error=str(exc))
                return
            self.expires_at = answer["expires_at"]

    async def _request(self, method: str, params: dict[str, Any]) -> Any:
        if self._ws is None:
            raise ConnectionError("not connected")
        id_ = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._pending[id_] = future
        try:
            await self._ws.send_str(rpc.request(id_, method, params))
            return await future
        finally:
            self._pending.pop(id_, None)

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            await self._dispatch(ws)
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(ConnectionError("disconnected"))

    async def _dispatch(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for message in ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                continue
            try:
                data = json.loads(message.data)
            except json.JSONDecodeError:
                continue
            if not isinstance(data, dict):
                continue
            if "method" in data:
                if data["method"] == rpc.TOOLS_CALL and "id" in data:
                    task = asyncio.create_task(self._serve_call(ws, data))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                continue
            future = self._pending.get(data.get("id"))
            if future is None or future.done():
                if "error" in data:
                    log.warning("xs_client_error", error=data["error"])
                continue
            if "error" in data:
                error = data["error"]
                future.set_exception(_RemoteError(error.get("code"), error.get("message", "")))
            else:
                future.set_result(data.get("result"))

    async def _serve_call(self, ws: aiohttp.ClientWebSocketResponse, data: dict) -> None:
        params = data.get("params") or {}
        entry = self._tools.get(params.get("name"))
        if entry is None:
            reply = rpc.error(data["id"], rpc.INVALID_PARAMS,
                              f"unknown tool: {params.get('name')}")
        else:
            reply = rpc.result(data["id"], await _invoke(entry[1], params.get("arguments")))
        try:
            await ws.send_str(reply)
        except (ConnectionError, RuntimeError):
            log.info("xs_client_reply_lost", id=data["id"])


async def _invoke(function: Callable[..., Awaitable[Any]], arguments: Any) -> dict[str, Any]:
    """Run a tool and shape its outcome as an MCP ``tools/call`` result."""
    try:
        value = await function(**(arguments if isinstance(arguments, dict) else {}))
    except Exception as exc:
        return {"content": [{"type": "text", "text": f"{type(exc).__name__}: {exc}"}],
                "isError": True}
    if isinstance(value, str):
        return {"content": [{"type": "text", "text": value}], "isError": False}
    result = {"content": [{"type": "text", "text": json.dumps(value, default=str)}],
              "isError": False}
    if isinstance(value, dict):  # MCP's structuredContent is an object
        result["structuredContent"] = value
    return result


class _RemoteError(Exception):
    def __init__(self, code: int | None, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
