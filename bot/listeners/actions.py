"""``block_actions``: Approve and Reject buttons of approval requests (see :mod:`bot.approvals`),
and the "Reset circuit" button of ``/nox-status``.

Acked at once (Slack's 3 s rule); the decision and the action run afterwards, tracked for
graceful shutdown.
"""

from __future__ import annotations

import re
from typing import Any

import structlog
from slack_bolt.async_app import AsyncApp
from slack_bolt.context.async_context import AsyncBoltContext
from slack_bolt.context.respond.async_respond import AsyncRespond
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from agents.connections import INTEGRATIONS, LABELS, Connections
from bot.approvals import APPROVE, REJECT, ApprovalDesk, Click
from bot.commands.status import CIRCUIT_RESET
from bot.listeners.context import tenant_of
from bot.slack_client import is_workspace_admin, slack_error
from bot.work import InFlight, ShuttingDown
from storage.repositories.events import EventRepository

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


def register_circuit_reset(
    app: AsyncApp, connections: Connections, events: EventRepository
) -> None:
    @app.action(CIRCUIT_RESET)
    async def on_circuit_reset(
        ack, body: dict[str, Any], action: dict[str, Any], context: AsyncBoltContext,
        client: AsyncWebClient, respond: AsyncRespond,
    ) -> None:
        """Close the clicking workspace's circuit for the button's integration, for admins.

        The workspace is the one Slack signed the click for, never read from the button: a
        replayed or edited value can name an integration, not another workspace.
        """
        await ack()
        tenant, user_id = tenant_of(context), body["user"]["id"]
        integration = str(action.get("value", ""))
        if integration not in INTEGRATIONS:
            await _tell(respond, f"There is no integration named `{integration[:40]}`.")
            return
        label = LABELS[integration]
        if not await is_workspace_admin(client, user_id):
            log.info("circuit_reset_refused", tenant=tenant.id, integration=integration,
                     user_id=user_id)
            await _tell(respond, f"Only workspace admins and owners can reset the {label} "
                                 "circuit. Ask one of them, or wait: it retries by itself.")
            return
        was_open = await connections.reset_circuit(tenant, integration)
        await events.record(tenant, "circuit_reset", actor=user_id, subject=integration,
                            details={"was_open": was_open})
        await _tell(respond, f"{label} circuit reset: the next call goes straight to {label}."
                    if was_open else f"The {label} circuit was not open; nothing to reset.")


async def _tell(respond: AsyncRespond, text: str) -> None:
    """An ephemeral note to the clicker, leaving the status message as it was."""
    await respond(text=text, response_type="ephemeral", replace_original=False)


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
