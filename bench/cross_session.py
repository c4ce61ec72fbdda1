"""Cross-session benchmark: two instances and Redis on loopback.

(a) Round trip of a cross-instance call, the way ``execute_on_session`` makes it: instance A
    (this process) routes through Redis to instance B (a real ``jamono gateway`` process)
    which holds the application's socket (a reference client in a third process).
    p50/p99 in milliseconds with 1 and with 10 calls in flight.
(b) Resident memory (RSS) of instance B holding 10,000 registered idle sessions.

    python bench/cross_session.py [--calls 2000] [--sessions 10000] [--redis-url URL]

Without ``--redis-url`` a private ``redis-server`` is started on a free port. Targets:
p50 ≤ 1.5 ms and p99 ≤ 5 ms with 1 in flight; ≤ 300 MiB for 10,000 sessions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from integrations.cross_session import RedisRouter, TokenIssuer  # noqa: E402
from integrations.cross_session.client import SessionClient  # noqa: E402
from integrations.cross_session.protocol import Owner  # noqa: E402

SECRET = "bench-gateway-secret-0123456789abcdef"
OWNER = Owner("T0BENCH", "U0BENCH")
PER_USER = 20  # sessions per user in (b), the default limit


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def wait_port(port: int, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


async def start_redis(workdir: str) -> tuple[asyncio.subprocess.Process, str]:
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        shutil.which("redis-server") or "redis-server", "--port", str(port),
        "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", workdir,
        stdout=asyncio.subprocess.DEVNULL,
    )
    await wait_port(port)
    return process, f"redis://127.0.0.1:{port}/0"


async def start_gateway(redis_url: str, workdir: str) -> tuple[asyncio.subprocess.Process, int]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
    env |= {
        "HOST": "127.0.0.1", "PORT": str(port), "REDIS_URL": redis_url,
        "JAMONO_GATEWAY_SECRET": SECRET, "JAMONO_INSTANCE_ID": "bench-b",
        "JAMONO_GATEWAY_MAX_SESSIONS_PER_USER": str(PER_USER),
        "DATABASE_URL": f"sqlite+aiosqlite:///{workdir}/bench.db", "LOG_LEVEL": "WARNING",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "gateway", cwd=workdir, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )
    await wait_port(port)
    return process, port


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# The application (third process) ------------------------------------------------------


async def run_client(url: str, jwt_token: str) -> None:
    client = SessionClient(url, jwt_token, app="bench", title="echo")

    @client.tool(annotations={"readOnlyHint": True})
    async def echo(n: int) -> str:
        """Echo n"""
        return str(n)

    runner = asyncio.create_task(client.run())
    await client.registered.wait()
    print("SESSION", client.session_id, flush=True)
    await runner


# (a) latency ---------------------------------------------------------------------------


async def latency(router: RedisRouter, session_id: str, calls: int, in_flight: int):
    timings: list[float] = []

    async def worker(count: int) -> None:
        for i in range(count):
            started = time.perf_counter()
            result = await router.call(OWNER, session_id, "echo", {"n": i}, 5)
            timings.append((time.perf_counter() - started) * 1000)
            assert result["content"][0]["text"] == str(i)

    await asyncio.gather(*(worker(calls // in_flight) for _ in range(in_flight)))
    return timings


# (b) memory ----------------------------------------------------------------------------


async def hold_sessions(url: str, issuer: TokenIssuer, count: int, gateway_pid: int):
    before = rss_mib(gateway_pid)
    connector = aiohttp.TCPConnector(limit=0)
    sockets = []
    tool = {"name": "echo", "description": "Echo n", "inputSchema": {
        "type": "object", "properties": {"n": {"type": "integer"}}}}
    async with aiohttp.ClientSession(connector=connector) as http:
        semaphore = asyncio.Semaphore(200)

        async def one(i: int) -> None:
            jwt_token, _ = issuer.issue(Owner("T0BENCH", f"U{i // PER_USER:05d}"), 3600)
            async with semaphore:
                ws = await http.ws_connect(url, autoping=True)
                await ws.send_str(json.dumps({
                    "jsonrpc": "2.0", "id": 1, "method": "session.register",
                    "params": {"token": jwt_token, "app": "excel", "title": f"Book {i}.xlsx",
                               "tools": [tool]}}))
                answer = json.loads((await ws.receive()).data)
                assert "result" in answer, answer
                sockets.append(ws)

        started = time.monotonic()
        await asyncio.gather(*(one(i) for i in range(count)))
        took = time.monotonic() - started

        async def keep_reading(ws):
            async for _ in ws:  # answers heartbeat pings
                pass

        readers = [asyncio.create_task(keep_reading(ws)) for ws in sockets]
        await asyncio.sleep(12)  # a couple of heartbeats and directory refreshes
        after = rss_mib(gateway_pid)
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    return before, after, took


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as workdir:
        redis_process = None
        redis_url = args.redis_url
        if redis_url is None:
            redis_process, redis_url = await start_redis(workdir)
        gateway, port = await start_gateway(redis_url, workdir)
        url = f"ws://127.0.0.1:{port}/ws"
        issuer = TokenIssuer(SECRET, "HS256")
        client = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--client", url, issuer.issue(OWNER, 3600)[0],
            stdout=asyncio.subprocess.PIPE,
        )
        router = RedisRouter(redis_url, "bench-a", heartbeat=5.0)
        try:
            line = ""
            while not line.startswith("SESSION "):  # other lines are the client's logs
                line = (await client.stdout.readline()).decode()
            session_id = line.split()[1]
            await router.start()
            await latency(router, session_id, 200, 1)  # warm-up
            print(f"(a) cross-instance execute_on_session round trip, {args.calls} calls")
            for in_flight in (1, 10):
                timings = await latency(router, session_id, args.calls, in_flight)
                print(f"    {in_flight:>2} in flight: p50 {statistics.median(timings):.3f} ms  "
                      f"p99 {percentile(timings, 0.99):.3f} ms  "
                      f"max {max(timings):.3f} ms")
            client.kill()
            await client.wait()
            before, after, took = await hold_sessions(url, issuer, args.sessions, gateway.pid)
            print(f"(b) instance B RSS: {before:.1f} MiB idle, {after:.1f} MiB holding "
                  f"{args.sessions} registered sessions (registered in {took:.1f} s)")
        finally:
            await router.close()
            for process in (client, gateway, redis_process):
                if process is not None and process.returncode is None:
                    process.kill()
                    await process.wait()


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--client":
        asyncio.run(run_client(sys.argv[2], sys.argv[3]))
        raise SystemExit(0)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--redis-url", default=None)
    asyncio.run(main(parser.parse_args()))
