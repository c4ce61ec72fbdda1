"""``slack_post_message``: post into a Slack channel (``chat.postMessage``), e.g. an incident
announcement. A write tool: it runs only after a human approved it (see :mod:`agents.policy`).
"""

from __future__ import annotations

import re
from typing import Any

from slack_sdk.errors import SlackApiError

from agents.tools.registry import Tool, ToolContext, ToolError

# Slack's channel reference in mrkdwn (``<#C0123|incidents>``) or a bare conversation id.
_REFERENCE = re.compile(r"^<#(?P<id>[CGD][A-Z0-9]+)(?:\|[^>]*)?>$")
_CHANNEL_ID = re.compile(r"^[CGD][A-Z0-9]+$")  # Slack channel names are lowercase


def channel_id_of(channel: str) -> str:
    """The conversation id in ``<#C0123|name>`` or ``C0123``; a ``#name`` is passed on as
    written (``chat.postMessage`` resolves public channel names)."""
    channel = channel.strip()
    match = _REFERENCE.match(channel)
    return match["id"] if match else channel


def target(arguments: dict[str, Any]) -> str:
    channel = channel_id_of(str(arguments.get("channel", "")))
    return f"Slack channel <#{channel}>" if _CHANNEL_ID.match(channel) else f"Slack {channel}"


async def slack_post_message(context: ToolContext, channel: str, text: str) -> dict[str, str]:
    """Post a message into a Slack channel, e.g. an incident announcement in #incidents.

    Returns ``channel`` (id) and ``ts`` of the posted message. Slack API: ``chat.postMessage``
    (https://api.slack.com/methods/chat.postMessage).

    Raises:
        ToolError: outside Slack, or Slack refused (not in the channel, unknown channel …).
    """
    if context.slack is None:
        raise ToolError("Slack is not reachable from here (this conversation is not in Slack)")
    if not text.strip():
        raise ToolError("the message text is empty")
    try:
        response = await context.slack.chat_postMessage(channel=channel_id_of(channel), text=text)
    except SlackApiError as exc:
        error = exc.response.get("error", "unknown_error") if exc.response else "unknown_error"
        hint = {
            "channel_not_found": "; check the channel, and invite me there if it is private",
            "not_in_channel": "; invite me to the channel first",
        }.get(error, "")
        raise ToolError(f"Slack refused the message ({error}){hint}") from None
    return {"channel": response["channel"], "ts": response["ts"]}


TOOL = Tool.from_function(
    slack_post_message,
    parameters={
        "type": "object",
        "properties": {
            "channel": {
                "type": "string",
                "minLength": 1,
                "description": "Channel id (C0123…), a <#C0123|name> reference, or #name.",
            },
            "text": {
                "type": "string",
                "minLength": 1,
                "maxLength": 40000,
                "description": "The message, in Slack mrkdwn.",
            },
        },
        "required": ["channel", "text"],
        "additionalProperties": False,
    },
    risk="write",
    target=target,
    acts_in=lambda arguments: channel_id_of(str(arguments.get("channel", ""))),
)
