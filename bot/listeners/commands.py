"""Slash commands: ack at once, answer through ``response_url`` when the work is done."""

from __future__ import annotations

import re
from typing import Any

import structlog
from slack_bolt.async_app import AsyncApp
from slack_bolt.context.async_context import AsyncBoltContext
from slack_bolt.context.respond.async_respond import AsyncRespond
from slack_sdk.web.async_client import AsyncWebClient

from agents import personas
from bot.commands import CommandRequest, CommandRouter
from bot.listeners.context import tenant_of
from bot.render import Reply
from bot.services import Services
from bot.slack_client import is_workspace_admin
from bot.work import ShuttingDown

log = structlog.get_logger(__name__)

PREFIXES = "|".join(p.command_prefix for p in personas.BUILTIN.values())
PERSONA_COMMAND = re.compile(rf"^/({PREFIXES})-[a-z]+$")


def register(app: AsyncApp, router: CommandRouter, services: Services) -> None:
    @app.command(PERSONA_COMMAND)
    async def on_command(
        ack,
        command: dict[str, Any],
        respond: AsyncRespond,
        context: AsyncBoltContext,
        client: AsyncWebClient,
    ) -> None:
        await ack()
        request = CommandRequest(
            tenant=tenant_of(context),
            command=command["command"],
            text=command.get("text", ""),
            user_id=command["user_id"],
            channel_id=command.get("channel_id", ""),
            is_admin=lambda: is_workspace_admin(client, command["user_id"]),
            trigger_id=command.get("trigger_id", ""),
            slack=client,
        )
        try:
            services.inflight.spawn(
                answer(router, request, respond),
                name=command["command"],
                tenant=request.tenant.id,
            )
        except ShuttingDown:
            await respond(
                text="I am restarting right now; please try again in a minute.",
                response_type="ephemeral",
            )


async def answer(router: CommandRouter, request: CommandRequest, respond: AsyncRespond) -> None:
    try:
        reply = await router.handle(request)
    except Exception:
        log.exception("command_failed", command=request.command)
        reply = Reply(f"Sorry, `{request.command}` failed on my side. Please try again.")
    await respond(response_type="ephemeral", **reply.as_kwargs())
