"""``app_mention``: the channel's persona answers in the thread."""

from __future__ import annotations

from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_bolt.context.async_context import AsyncBoltContext
from slack_sdk.web.async_client import AsyncWebClient

from bot.listeners.context import tenant_of
from bot.turns import IncomingMessage, SlackTurns


def register(app: AsyncApp, turns: SlackTurns) -> None:
    @app.event("app_mention")
    async def on_app_mention(
        event: dict[str, Any], context: AsyncBoltContext, client: AsyncWebClient
    ) -> None:
        # Other bots' mentions and edits re-delivered as mentions are not questions to answer.
        if event.get("bot_id") or event.get("edited") or not event.get("user"):
            return
        await turns.accept(
            IncomingMessage(
                tenant=tenant_of(context),
                channel_id=event["channel"],
                user_id=event["user"],
                text=event.get("text", ""),
                ts=event["ts"],
                thread_ts=event.get("thread_ts"),
                is_dm=event.get("channel_type") == "im",
            ),
            client,
        )
