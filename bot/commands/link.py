"""``/nox-link``: a short-lived token for the user's applications, sent by direct message.

The token binds the application's sessions to the Slack user who asked, in this tenant
(see docs/cross-session-protocol.md). It goes to the user's DM with the app rather than the
channel, so nobody else sees it; in the console (no Slack) it is shown directly.
"""

from __future__ import annotations

import structlog
from slack_sdk.errors import SlackApiError

from bot.commands.base import Invocation
from bot.render import Reply, section
from bot.slack_client import slack_error
from integrations.cross_session import Owner

log = structlog.get_logger(__name__)


async def run(invocation: Invocation) -> Reply:
    services = invocation.services
    request = invocation.request
    cross_session = services.cross_session
    if cross_session is None:
        return Reply(
            "Linking applications is not set up on this deployment: an operator sets "
            "JAMONO_GATEWAY_SECRET to turn on the cross-session gateway."
        )
    if cross_session.issuer is None:
        return Reply(
            "This deployment accepts tokens from your organisation's identity provider; "
            "ask your administrator how to get one for your applications."
        )
    ttl = services.settings.gateway_link_ttl
    token, _ = cross_session.issuer.issue(Owner(request.tenant.id, request.user_id), ttl)
    minutes = ttl // 60
    message = (
        f"Here is your link token for Jamono, valid {minutes} minutes. Paste it into your "
        "application's Jamono connection settings; it lets personas see and act in the "
        "applications you connect, only when you ask them. Do not share it.\n"
        f"```{token}```"
    )
    if request.slack is None:  # the console or the CLI: the operator's own terminal
        return Reply(message)
    try:
        # The command's own client: the workspace's token, whatever the install mode.
        await request.slack.chat_postMessage(
            channel=request.user_id, text=message, blocks=[section(message)]
        )
    except SlackApiError as exc:
        log.warning("link_dm_failed", error=slack_error(exc))
        return Reply("I could not send you a direct message; please try again in a minute.")
    return Reply(f"I sent you a direct message with a link token (valid {minutes} minutes).")
