"""A hostile HTTP server that answers one byte at a time, ``interval`` seconds apart (one byte a
second by default), forever.

Each byte arrives well within any per-read socket timeout, so only an overall deadline stops a
client. Start with ``async with TrickleServer() as trickle``; :attr:`url` is its address.
:meth:`wait_open` waits until ``n`` connections are open at once; :meth:`wait_all_closed` until
every connection it accepted has been closed by its client. :attr:`accepted` counts
connections.
"""

from __future__ import annotations

import asyncio
import contextlib

# A status line and headers promising a body that never completes.
_ANSWER = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n"
           b"\r\n" + b" " * 1_000_000)


class TrickleServer:
    def __init__(self, interval: float = 1.0, host: str = "127.0.0.1") -> None:
        self.interval = interval
        self.host = host
        self.url = ""
        self.accepted = 0
        self._open = 0
        self._changed = asyncio.Condition()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task] = set()

    async def __aenter__(self) -> TrickleServer:
        self._server = await asyncio.start_server(self._serve, self.host, 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://{self.host}:{port}"
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    @property
    def open(self) -> int:
        """Connections open now."""
        return self._open

    async def wait_open(self, n: int) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self._open >= n)

    async def wait_all_closed(self) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self._open == 0)

    async def _count(self, delta: int) -> None:
        async with self._changed:
            self._open += delta
            self._changed.notify_all()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._tasks.add(asyncio.current_task())
        self.accepted += 1
        await self._count(+1)
        try:
            await reader.readuntil(b"\r\n\r\n")  # the request head; its body is ignored
            closed = asyncio.ensure_future(reader.read())  # EOF or reset: the client gave up
            for byte in _ANSWER:
                writer.write(bytes([byte]))
                await writer.drain()
                done, _ = await asyncio.wait({closed}, timeout=self.interval)
                if done:
                    break
            closed.cancel()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()
            self._tasks.discard(asyncio.current_task())
            await self._count(-1)
