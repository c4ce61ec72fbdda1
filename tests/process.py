"""Run the real ``jamono run`` process the way an operator does, for end-to-end tests."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

import aiohttp

# Only what a process needs to run; Jamono's own settings come from the test, never from
# the developer's environment or a stray .env.
PASS_THROUGH = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "SYSTEMROOT")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class JamonoProcess:
    """``python -m bot run`` with the given settings, in ``workdir``.

    ``output`` accumulates the process's stdout and stderr (structured log lines).
    """

    def __init__(self, settings: dict[str, str], workdir: Path, port: int) -> None:
        self.settings = settings
        self.workdir = workdir
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.output = ""
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task | None = None

    async def start(self, timeout: float = 30.0) -> None:
        env = {k: v for k, v in os.environ.items() if k in PASS_THROUGH}
        env |= {"HOST": "127.0.0.1", "PORT": str(self.port), "LOG_FORMAT": "json"}
        env |= self.settings
        self._process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", "run",
            cwd=self.workdir, env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        self._reader = asyncio.create_task(self._read())
        deadline = asyncio.get_running_loop().time() + timeout
        async with aiohttp.ClientSession() as session:
            while True:
                if self._process.returncode is not None:
                    await self._reader
                    raise AssertionError(f"jamono exited early:\n{self.output}")
                try:
                    async with session.get(self.url + "/healthz") as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                if asyncio.get_running_loop().time() > deadline:
                    raise AssertionError(f"jamono did not become healthy:\n{self.output}")
                await asyncio.sleep(0.1)

    async def _read(self) -> None:
        assert self._process and self._process.stdout
        async for line in self._process.stdout:
            self.output += line.decode(errors="replace")

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send ``sig`` and wait for the exit code."""
        if self._process is None or self._process.returncode is not None:
            return self._process.returncode if self._process else 0
        self._process.send_signal(sig)
        try:
            code = await asyncio.wait_for(self._process.wait(), timeout)
        except TimeoutError:
            self._process.kill()
            await self._process.wait()
            raise AssertionError(
                f"jamono did not stop within {timeout} s:\n{self.output}"
            ) from None
        if self._reader:
            await self._reader
        return code

    def count(self, text: str) -> int:
        return self.output.count(text)

    async def wait_for_output(self, text: str, count: int = 1, timeout: float = 10.0) -> None:
        """Wait until ``text`` has appeared ``count`` times in the process's output."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self.count(text) < count:
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"{text!r} seen {self.count(text)} times, not {count}")
            await asyncio.sleep(0.05)
