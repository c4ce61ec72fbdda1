"""``view_submission``: the ``/nox-connect`` form. Test the credentials, then save them.

Slack waits 3 s for the answer to a submission, and only that answer can show errors in the
form (``response_action: errors``, keyed by block_id), so the connection test runs within it
(:data:`agents.connections.TEST_TIMEOUT`). On success the form closes and the admin gets a
direct message confirming what was saved, secrets masked.
"""

from __future__ import annotations

import re
from typing import Any

import structlog
from slack_bolt.async_app import AsyncApp
from slack_bolt.context.async_context import AsyncBoltContext
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from agents.connections import LABELS, ConnectionFailed
from bot.commands.connect import CALLBACK_PREFIX
from bot.listeners.commands import is_workspace_admin
from bot.listeners.context import tenant_of
from bot.services import Services
from bot.slack_client import slack_error

log = structlog.get_logger(__name__)

CONNECT_VIEW = re.compile("^" + re.escape(CALLBACK_PREFIX) + "(jira|calendar)$")


def register(app: AsyncApp, services: Services) -> None:
    @app.view(CONNECT_VIEW)
    async def on_connect_submitted(
        ack, body: dict[str, Any], context: AsyncBoltContext, client: AsyncWebClient
    ) -> None:
        view = body["view"]
        integration = CONNECT_VIEW.match(view["callback_id"])[1]
        user_id = body["user"]["id"]
        if not await is_workspace_admin(client, user_id):
            await ack(response_action="errors",
                      errors={"url": "Only workspace admins and owners can connect integrations."})
            return
        try:
            confirmation = await services.connections.connect(
                tenant_of(context), integration, submitted(view), user_id
            )
        except ConnectionFailed as exc:
            log.info("connect_refused", integration=integration, fields=sorted(exc.errors))
            await ack(response_action="errors", errors=exc.errors)
            return
        except Exception:  # the form must get an answer, never a silent failure
            log.exception("connect_failed", integration=integration)
            await ack(response_action="errors",
                      errors={"url": "Saving failed on our side; nothing was saved. Please try "
                                     "again, or ask the operator to check Jamono's logs."})
            return
        await ack()
        try:
            await client.chat_postMessage(
                channel=user_id, text=f"✅ {LABELS[integration]} connected: {confirmation}"
            )
        except SlackApiError as exc:
            log.warning("connect_confirmation_failed", error=slack_error(exc))


def submitted(view: dict[str, Any]) -> dict[str, str | None]:
    """block_id → the text typed into that block's input (``None`` when left empty)."""
    return {
        block_id: next(iter(actions.values()), {}).get("value")
        for block_id, actions in view.get("state", {}).get("values", {}).items()
    }
