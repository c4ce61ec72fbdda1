"""``app_home_opened``: the Home tab introduces the workspace's personas and commands, and
lists briefings with their next run: the viewer's own, or all of the workspace's for an admin
(a briefing of a private channel or a DM is not every member's to see)."""

from __future__ import annotations

from typing import Any

import structlog
from slack_bolt.async_app import AsyncApp
from slack_bolt.context.async_context import AsyncBoltContext
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from agents import personas
from bot.briefings.manage import describe
from bot.briefings.render import list_text
from bot.listeners.context import tenant_of
from bot.render import context as context_block
from bot.render import header, section
from bot.services import Services
from bot.slack_client import is_workspace_admin, slack_error

log = structlog.get_logger(__name__)


def register(app: AsyncApp, services: Services) -> None:
    @app.event("app_home_opened")
    async def on_home_opened(
        body: dict[str, Any],
        event: dict[str, Any],
        context: AsyncBoltContext,
        client: AsyncWebClient,
    ) -> None:
        if event.get("tab") != "home":
            return
        if not await services.claims.first_delivery(f"event:{body['event_id']}"):
            return
        tenant = tenant_of(context)
        config = await services.repos.config.load(tenant)
        blocks: list[dict[str, Any]] = [header("Your agent colleagues")]
        for name in personas.BUILTIN:
            persona = personas.effective(name, config)
            state = "enabled" if persona.enabled else "not enabled"
            blocks.append(
                section(
                    f"*{persona.display_name}* — {persona.title} ({state})\n"
                    f"`/{persona.command_prefix}-help` lists what {persona.display_name} can do."
                )
            )
        everyone = await services.repos.briefings.list(tenant)
        briefings = [b for b in everyone if b.created_by == event["user"]]
        if len(briefings) < len(everyone) and await is_workspace_admin(client, event["user"]):
            briefings = everyone
        lines = [describe(b) for b in briefings]
        if len(briefings) < len(everyone):
            lines.append(
                f"{len(everyone) - len(briefings)} more by others: `/nox-brief list` in a "
                "channel shows its briefings"
            )
        blocks.append(
            section(
                list_text("Briefings", lines)
                if lines
                else "*Briefings*\nNone yet: `/nox-brief add` schedules one for a channel."
            )
        )
        blocks.append(
            context_block(
                "Mention a persona in a channel to get an answer in the thread, or write here in "
                "Messages. Workspace admins configure personas with `/nox-config`."
            )
        )
        try:
            await client.views_publish(
                user_id=event["user"], view={"type": "home", "blocks": blocks}
            )
        except SlackApiError as exc:
            log.warning("home_publish_failed", error=slack_error(exc))
