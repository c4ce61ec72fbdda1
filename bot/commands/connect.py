"""``/nox-connect``: workspace admins connect Jira and the calendar (CalDAV).

* ``/nox-connect`` — what is connected, secrets masked (anyone may look);
* ``/nox-connect jira|calendar`` — a form (modal) for the credentials; on submit the
  connection is tested, then saved encrypted (see :mod:`bot.listeners.views`);
* ``/nox-connect jira|calendar remove`` — delete the workspace's stored credentials.

The same is available in a terminal as ``jamono connect``.
"""

from __future__ import annotations

import json
from typing import Any

import structlog
from slack_sdk.errors import SlackApiError

from agents.connections import INTEGRATIONS, LABELS, SECRET_KEY_HINT, Integration
from bot.commands.base import Invocation
from bot.render import Reply, section
from bot.slack_client import slack_error

log = structlog.get_logger(__name__)

USAGE = "[jira|calendar] [remove]"
CALLBACK_PREFIX = "nox_connect:"  # + the integration: the view_submission listener's key


async def run(invocation: Invocation) -> Reply:
    request = invocation.request
    connections = invocation.services.connections
    words = request.text.strip().lower().split()
    if not words or words == ["show"]:
        lines = await connections.describe(request.tenant)
        return _reply("*Integrations in this workspace*\n" + "\n".join(f"• {x}" for x in lines))
    integration = words[0]
    if integration not in INTEGRATIONS or len(words) > 2 or words[1:] not in ([], ["remove"]):
        return _reply(f"Usage: `/{invocation.persona.command_prefix}-connect {USAGE}`")
    if not await request.is_admin():
        return _reply("Only workspace admins and owners can connect integrations.")
    label = LABELS[integration]
    if words[1:] == ["remove"]:
        removed = await connections.disconnect(request.tenant, integration, request.user_id)
        return _reply(f"✅ {label} credentials removed from this workspace." if removed
                      else f"This workspace has no stored {label} credentials.")
    if not connections.can_store:
        return _reply(SECRET_KEY_HINT)
    if request.slack is None or not request.trigger_id:
        return _reply(f"The form opens in Slack only; in a terminal use "
                      f"`jamono connect {integration} --team {request.tenant.id} …`.")
    try:
        await request.slack.views_open(trigger_id=request.trigger_id,
                                       view=connection_view(integration, request.channel_id))
    except SlackApiError as exc:
        log.warning("views_open_failed", error=slack_error(exc))
        return _reply(f"Slack did not open the {label} form ({slack_error(exc)}); "
                      "please run the command again.")
    return _reply(f"Fill in the {label} form: the connection is tested before anything is "
                  "saved.")


def connection_view(integration: Integration, channel_id: str) -> dict[str, Any]:
    """The modal for ``integration``'s credentials; each input's block_id is the field name
    :meth:`agents.connections.Connections.connect` takes."""
    if integration == "jira":
        intro = (
            "*Jira Cloud*: the site URL, your Atlassian account email and an API token "
            "(id.atlassian.com → Security → API tokens).\n*Jira Data Center*: the base URL "
            "and a personal access token (profile → Personal Access Tokens).\n"
            "The connection is tested before anything is saved; secrets are stored encrypted."
        )
        inputs = [
            _input("url", "Site URL", "https://acme.atlassian.net"),
            _input("email", "Email (Cloud)", "you@acme.com", optional=True),
            _input("api_token", "API token (Cloud)", optional=True),
            _input("pat", "Personal access token (Data Center)", optional=True),
        ]
    else:
        intro = (
            "A CalDAV server and the calendar meetings go to (Nextcloud, Fastmail, Radicale, "
            "iCloud …). The connection is tested before anything is saved; the password is "
            "stored encrypted."
        )
        inputs = [
            _input("url", "CalDAV URL", "https://cal.example.com/dav/"),
            _input("username", "Username"),
            _input("password", "Password or app password", optional=True),
            _input("calendar", "Calendar name", "Incidents"),
        ]
    return {
        "type": "modal",
        "callback_id": CALLBACK_PREFIX + integration,
        "title": {"type": "plain_text", "text": f"Connect {LABELS[integration]}"},
        "submit": {"type": "plain_text", "text": "Test and save"},
        "close": {"type": "plain_text", "text": "Cancel"},
        "private_metadata": json.dumps({"channel_id": channel_id}),
        "blocks": [section(intro), *inputs],
    }


def _input(block_id: str, label: str, placeholder: str | None = None, *,
           optional: bool = False) -> dict[str, Any]:
    element: dict[str, Any] = {"type": "plain_text_input", "action_id": "value"}
    if placeholder:
        element["placeholder"] = {"type": "plain_text", "text": placeholder}
    return {"type": "input", "block_id": block_id, "optional": optional,
            "label": {"type": "plain_text", "text": label}, "element": element}


def _reply(text: str) -> Reply:
    return Reply(text, [section(text)])
