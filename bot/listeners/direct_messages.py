"""``message.im``: the persona answers direct messages.

Messages in channels are ignored here: a mention there also arrives as ``app_mention``,
which :mod:`bot.listeners.mentions` answers.
"""

from __future__ import annotations

from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_bolt.context.async_context import AsyncBoltContext
from slack_sdk.web.async_client import AsyncWebClient

from bot.listeners.context import tenant_of
from bot.turns import IncomingMessage, SlackTurns


def register(app: AsyncApp, turns: SlackTurns) -> None:
    @app.event("message")
    async def on_message(
        event: dict[str, Any], context: AsyncBoltContext, client: AsyncWebClient
    ) -> None:
        if not is_user_dm(event, context.bot_user_id):
            return
        await turns.accept(
            IncomingMessage(
                tenant=tenant_of(context),
                channel_id=event["channel"],
                user_id=event["user"],
                text=event.get("text", ""),
                ts=event["ts"],
                thread_ts=event.get("thread_ts"),
                is_dm=True,
            ),
            client,
        )


def is_user_dm(event: dict[str, Any], bot_user_id: str | None) -> bool:
    """A person's new message in a DM: no subtype (edits, deletes, joins …), not from a bot."""
    return (
        event.get("channel_type") == "im"
        and "subtype" not in event
        and not event.get("bot_id")
        and bool(event.get("user"))
        and event.get("user") != bot_user_id
    )
