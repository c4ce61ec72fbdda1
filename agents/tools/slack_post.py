"""``slack_post_message``: post into a Slack channel (``chat.postMessage``), e.g. an incident
announcement. A write tool: it runs only after a human approved it (see :mod:`agents.policy`).
"""

from __future__ import annotations

from typing import Any

from slack_sdk.errors import SlackApiError

from agents.channels import canonical_id
from agents.tools.registry import Tool, ToolContext, ToolError


def target(arguments: dict[str, Any]) -> str:
    """What the approval message names: ``Slack channel <#C0123>`` (as written when the
    reference is not an id; the gate refuses those before any request is made)."""
    written = str(arguments.get("channel", ""))
    channel = canonical_id(written)
    return f"Slack channel <#{channel}>" if channel else f"Slack {written.strip()}"


def acts_in(arguments: dict[str, Any]) -> str:
    """Where the message goes, as written: the gate turns it into a canonical id or refuses."""
    return str(arguments.get("channel", ""))


async def slack_post_message(context: ToolContext, channel: str, text: str) -> dict[str, str]:
    """Post a message into a Slack channel, e.g. an incident announcement in #incidents.

    Returns ``channel`` (id) and ``ts`` of the posted message. Slack API: ``chat.postMessage``
    (https://api.slack.com/methods/chat.postMessage). It posts exactly to the conversation id
    the action policy checked, never to a name Slack would resolve later.

    Raises:
        ToolError: outside Slack, not a conversation id, or Slack refused (not in the channel,
            unknown channel …).
    """
    if context.slack is None:
        raise ToolError("Slack is not reachable from here (this conversation is not in Slack)")
    channel_id = canonical_id(channel)
    if channel_id is None:
        raise ToolError(f"{channel!r} is not a channel id; give the id (C0123…) or <#C0123|name>")
    if not text.strip():
        raise ToolError("the message text is empty")
    try:
        response = await context.slack.chat_postMessage(channel=channel_id, text=text)
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
                "description": "The conversation id (C0123…, G…, or D… for a direct "
                "message) or a <#C0123|name> reference; not a #name or a person.",
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
    acts_in=acts_in,
)
