"""``jamono console``: talk to a persona in a terminal through the same runtime as Slack.

Lines starting with ``/`` are slash commands (``/nox-status``); ``exit`` or end of input
quits. When stdin is not a terminal, lines are read as they come and no prompt is shown.
"""

from __future__ import annotations

import asyncio
import os
import stat
import sys
import time
from dataclasses import replace
from typing import TextIO

from agents import personas
from agents.runtime import TurnRequest
from bot import render
from bot.commands import CommandRequest, CommandRouter
from bot.services import Services
from bot.turns import keep_alive
from storage.tenancy import CONSOLE_TENANT

CONSOLE_USER = "U0CONSOLE"
CONSOLE_CHANNEL = "D0CONSOLE"


async def run_console(
    services: Services,
    persona_name: str = "nox",
    stdin: TextIO = sys.stdin,
    stdout: TextIO = sys.stdout,
) -> None:
    """Read lines until ``exit`` or EOF; answer each. ``persona_name`` is a built-in's name.

    The console is the operator's own: the persona answers even when it is not enabled for
    the console tenant, and configuration commands need no admin check.
    """
    interactive = stdin.isatty()
    router = CommandRouter(services)
    thread_ts = f"console:{time.time():.6f}"  # one conversation per console session
    config = await services.repos.config.load(CONSOLE_TENANT)
    persona = replace(personas.effective(persona_name, config), enabled=True)
    lines = _lines(stdin)

    def say(text: str) -> None:
        stdout.write(text + "\n")
        stdout.flush()

    if interactive:
        say(
            f"{persona.display_name} ({persona.title}). Type /{persona.command_prefix}-help for "
            "commands, exit to quit."
        )
    # A server sharing the database closes turns whose heartbeat stops: keep ours beating.
    alive = asyncio.create_task(keep_alive(services, services.settings.turn_heartbeat))
    try:
        while True:
            if interactive:
                stdout.write("you> ")
                stdout.flush()
            line = await anext(lines, None)
            if line is None:
                break
            line = line.strip()
            if not line:
                continue
            if line in ("exit", "quit"):
                break
            if line.startswith("/"):
                command, _, text = line.partition(" ")
                reply = await router.handle(
                    CommandRequest(
                        tenant=CONSOLE_TENANT,
                        command=command,
                        text=text,
                        user_id=CONSOLE_USER,
                        channel_id=CONSOLE_CHANNEL,
                        is_admin=_yes,
                    )
                )
                say(reply.text)
                continue
            outcome = await services.runtime.run(
                TurnRequest(
                    tenant=CONSOLE_TENANT,
                    persona=persona,
                    channel_id=CONSOLE_CHANNEL,
                    thread_ts=thread_ts,
                    user_id=CONSOLE_USER,
                    text=line,
                    timezone=config.timezone,
                )
            )
            say(f"{persona.display_name}> {outcome.text}")
            if outcome.tool_runs:
                say("    " + render.tools_used(outcome.tool_runs))
    finally:
        alive.cancel()


async def _yes() -> bool:
    return True


async def _lines(stdin: TextIO):
    """Lines of ``stdin`` without blocking the event loop (pipes, terminals and files)."""
    loop = asyncio.get_running_loop()
    if stat.S_ISREG(os.fstat(stdin.fileno()).st_mode):
        # A regular file never blocks, and the pipe transport refuses one.
        for line in stdin:
            yield line
        return
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), stdin)
    try:
        while line := await reader.readline():
            yield line.decode("utf-8", errors="replace")
    finally:
        transport.close()
