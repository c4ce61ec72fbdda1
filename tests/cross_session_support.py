"""Helpers for the cross-session tests: tokens, a gateway on a real port, raw sockets,
and private redis-server / ``jamono gateway`` processes for the fault tests."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import jwt
from aiohttp import web

from integrations.cross_session import (
    Gateway,
    GatewayLimits,
    LocalRouter,
    RedisRouter,
    TokenIssuer,
    TokenVerifier,
)
from integrations.cross_session.protocol import Owner
from integrations.cross_session.tokens import AUDIENCE
from tests.process import PASS_THROUGH, free_port

SECRET = "test-gateway-secret-0123456789abcdef"
ACME, GLOBEX = "T0ACME", "T0GLOBEX"
ALICE, BOB = "U0ALICE", "U0BOB"
VERIFIER = TokenVerifier(SECRET, "HS256")
ISSUER = TokenIssuer(SECRET, "HS256")

READ_RANGE = {
    "name": "read_range",
    "description": "Read cells",
    "inputSchema": {"type": "object", "properties": {"range": {"type": "string"}}},
    "annotations": {"readOnlyHint": True},
}
WRITE_RANGE = {
    "name": "write_range",
    "description": "Write cells",
    "inputSchema": {"type": "object", "properties": {"range": {"type": "string"}}},
}


def token(team: str = ACME, user: str = ALICE, ttl: int = 600) -> str:
    return ISSUER.issue(Owner(team, user), ttl)[0]


def raw_token(key: str = SECRET, algorithm: str = "HS256", drop: tuple[str, ...] = (),
              **claims: Any) -> str:
    """A token with chosen claims, for attacks: ``drop`` removes claims, ``claims`` override."""
    now = int(time.time())
    body = {"sub": f"{ACME}:{ALICE}", "aud": AUDIENCE, "iat": now, "exp": now + 600,
            "team_id": ACME, "slack_user_id": ALICE} | claims
    for name in drop:
        body.pop(name, None)
    return jwt.encode(body, key, algorithm=algorithm)


class GatewayInstance:
    """A gateway served on 127.0.0.1 (a real port), with in-process or Redis routing."""

    def __init__(self, limits: GatewayLimits | None = None, redis_url: str | None = None,
                 instance_id: str = "a") -> None:
        self.limits = limits or GatewayLimits(heartbeat=1.0)
        self.router = (
            RedisRouter(redis_url, instance_id, self.limits.heartbeat) if redis_url
            else LocalRouter()
        )
        self.gateway = Gateway(VERIFIER, self.router, self.limits)
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> GatewayInstance:
        await self.router.start()
        app = web.Application()
        app.router.add_get("/ws", self.gateway.handle)
        app.on_shutdown.append(self.gateway.shutdown)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"ws://127.0.0.1:{port}/ws"
        return self

    async def __aexit__(self, *_: object) -> None:
        await self._runner.cleanup()
        await self.router.close()


async def send(ws: aiohttp.ClientWebSocketResponse, id_: Any, method: str,
               params: dict[str, Any] | None = None) -> None:
    await ws.send_str(json.dumps({"jsonrpc": "2.0", "id": id_, "method": method,
                                  "params": params or {}}))


async def receive(ws: aiohttp.ClientWebSocketResponse, timeout: float = 5.0) -> dict | None:
    """The next JSON message, or None when the socket closed."""
    message = await ws.receive(timeout)
    if message.type != aiohttp.WSMsgType.TEXT:
        return None
    return json.loads(message.data)


async def register(http: aiohttp.ClientSession, url: str, jwt_token: str,
                   tools: list[dict] | None = None, app: str = "excel",
                   title: str = "Budget Q4.xlsx"):
    """A raw socket registered as a session; returns (ws, session_id)."""
    ws = await http.ws_connect(url)
    await send(ws, 1, "session.register", {"token": jwt_token, "app": app, "title": title,
                                            "tools": tools or [READ_RANGE, WRITE_RANGE]})
    answer = await receive(ws)
    assert answer and "result" in answer, answer
    return ws, answer["result"]["session_id"]


async def wait_until(predicate, timeout: float = 15.0, interval: float = 0.05):
    """Poll an async ``predicate`` until it returns a truthy value, which is returned; for
    what happens in another process or over Redis, where no clock can be injected.

    Raises:
        AssertionError: still falsy after ``timeout`` seconds.
    """
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not true within {timeout:g} s: {predicate.__name__}")
        await asyncio.sleep(interval)


class RedisServer:
    """A private ``redis-server`` on a free port (no persistence), to stop and restart."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed"
        self._process = await asyncio.create_subprocess_exec(
            binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(self.workdir),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )
        for _ in range(100):
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                return
            except OSError:
                await asyncio.sleep(0.05)
        raise AssertionError("redis-server did not start")

    async def stop(self) -> None:
        if self._process and self._process.returncode is None:
            self._process.kill()
            await self._process.wait()


class GatewayProcess:
    """The real ``jamono gateway`` process with the given settings."""

    def __init__(self, settings: dict[str, str], workdir: Path) -> None:
        self.port = free_port()
        self.settings = settings
        self.workdir = workdir
        self.url = f"ws://127.0.0.1:{self.port}/ws"
        self.output = b""
        self._process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k in PASS_THROUGH}
        env |= {"HOST": "127.0.0.1", "PORT": str(self.port), "LOG_FORMAT": "json"}
        env |= self.settings
        self._process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", "gateway", cwd=self.workdir, env=env,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        async with aiohttp.ClientSession() as http:
            for _ in range(300):
                assert self._process.returncode is None, "jamono gateway exited early"
                try:
                    async with http.get(f"http://127.0.0.1:{self.port}/healthz") as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise AssertionError("jamono gateway did not become healthy")

    async def kill(self) -> None:
        if self._process and self._process.returncode is None:
            self._process.kill()  # SIGKILL: no cleanup of its Redis keys
            await self._process.wait()


class BlackholeProxy:
    """A TCP proxy to Redis that can silently stop forwarding on its open connections
    (a half-open connection, as after a NAT or firewall drops its state); new connections
    still pass."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._open: list[dict] = []
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def stop(self) -> None:
        self._server.close()
        for link in self._open:
            for task in link["tasks"]:
                task.cancel()

    def blackhole(self) -> None:
        for link in self._open:
            link["dead"] = True

    async def _accept(self, reader, writer) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        link = {"dead": False, "tasks": []}
        link["tasks"] = [asyncio.create_task(self._pump(reader, up_writer, link)),
                         asyncio.create_task(self._pump(up_reader, writer, link))]
        self._open.append(link)

    @staticmethod
    async def _pump(reader, writer, link) -> None:
        while data := await reader.read(65536):
            if not link["dead"]:
                writer.write(data)
                await writer.drain()
