"""``block_actions``: Approve and Reject buttons of approval requests (see :mod:`bot.approvals`).

Acked at once (Slack's 3 s rule); the decision and the action run afterwards, tracked for
graceful shutdown.
"""

from __future__ import annotations

import re
from typing import Any

import structlog
from slack_bolt.async_app import AsyncApp
from slack_bolt.context.async_context import AsyncBoltContext
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.approvals import APPROVE, REJECT, ApprovalDesk, Click
from bot.listeners.context import tenant_of
from bot.slack_client import slack_error
from bot.work import InFlight, ShuttingDown

log = structlog.get_logger(__name__)

APPROVAL_ACTION = re.compile(rf"^({APPROVE}|{REJECT})$")


def register(app: AsyncApp, desk: ApprovalDesk, inflight: InFlight) -> None:
    @app.action(APPROVAL_ACTION)
    async def on_approval_click(
        ack,
        body: dict[str, Any],
        action: dict[str, Any],
        context: AsyncBoltContext,
        client: AsyncWebClient,
    ) -> None:
        await ack()
        click = click_of(body, action, context)
        try:
            inflight.spawn(
                desk.click(click, client),
                name=f"approval:{click.request_id}",
                tenant=click.tenant.id,
            )
        except ShuttingDown:
            try:
                await client.chat_postEphemeral(
                    channel=click.channel_id,
                    user=click.user_id,
                    text="I am restarting right now; please click again in a minute.",
                )
            except SlackApiError as exc:
                log.warning("approval_ephemeral_failed", error=slack_error(exc))


def click_of(body: dict[str, Any], action: dict[str, Any], context: AsyncBoltContext) -> Click:
    """The click in a ``block_actions`` payload (``user``, ``channel``, ``container``)."""
    container = body.get("container") or {}
    return Click(
        tenant=tenant_of(context),
        request_id=str(action.get("value", "")),
        user_id=body["user"]["id"],
        approve=action["action_id"] == APPROVE,
        channel_id=(body.get("channel") or {}).get("id") or container.get("channel_id", ""),
        message_ts=container.get("message_ts") or (body.get("message") or {}).get("ts"),
    )
