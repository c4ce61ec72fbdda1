"""Slack conversation references: one canonical id per conversation, and who is in one.

Slack writes conversation ids in upper case: ``C…`` channels, ``G…`` private channels and group
DMs of older workspaces, ``D…`` direct messages (https://api.slack.com/types/conversation).
People and models name a channel many ways (``<#C0123|prod>``, ``#prod``, ``prod``, ``c0123``);
action zones, tool policies and bindings are stored and compared by the canonical id only, so
every reference becomes one here first, and anything that is not a conversation (a person, an
unknown name) is refused rather than stored or compared as written.
"""

from __future__ import annotations

import re

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from storage.repositories.policy import CONVERSATION_ID

# Slack's escaped channel mention, as slash commands with should_escape send it
# (https://api.slack.com/interactivity/slash-commands#creating_commands): <#C0123|name> or <#C0123>.
_REFERENCE = re.compile(r"^<#(?P<id>[A-Za-z0-9]+)(?:\|[^>]*)?>$")
_PERSON = re.compile(r"^(?:<@[A-Za-z0-9]+(?:\|[^>]*)?>|@\S+)$")  # a mention, or @name
_USER_ID = re.compile(r"^[UW][A-Z0-9]{6,}$")  # user ids; upper case, so names never match
# Channel names: lower-case letters, digits, hyphens, underscores (and periods in older ones),
# at most 80 characters (https://api.slack.com/methods/conversations.create#naming).
_NAME = re.compile(r"^#?(?P<name>[a-z0-9][a-z0-9._-]{0,79})$")
LIST_PAGE = 200  # conversations.list / conversations.members page size (Slack advises ≤ 200)
MAX_PAGES = 50  # at most 10,000 channels or members are read; beyond that, ask for the id
CHANNEL_TYPES = "public_channel,private_channel"


class ChannelError(ValueError):
    """Not a conversation Slack knows; the message says why and how to name it instead."""


def canonical_id(reference: str) -> str | None:
    """The conversation id ``reference`` names without asking Slack: from ``<#C0123|name>`` or
    an id in any case, the id in upper case (``C0123…``); ``None`` for anything else (a name,
    a person, free text)."""
    text = reference.strip()
    match = _REFERENCE.match(text)
    candidate = (match["id"] if match else text).upper()
    return candidate if CONVERSATION_ID.match(candidate) else None


async def resolve(slack: AsyncWebClient | None, reference: str) -> str:
    """The canonical id of the conversation ``reference`` names, asking Slack when needed.

    Accepts Slack's escaped mention ``<#C0123|prod>``, an id in any case (checked with
    ``conversations.info`` when ``slack`` is given) and a channel name with or without ``#``
    (looked up with ``conversations.list``: public channels, and private ones the bot is in).
    A lower-case word shaped like an id is taken as an id only when Slack knows that id, else
    as a name. Without ``slack`` only mentions and upper-case ids are accepted (never a guess).

    Raises:
        ChannelError: a person, an unknown id or name, or not a channel reference at all.
    """
    text = reference.strip()
    if _PERSON.match(text) or _USER_ID.match(text):
        raise ChannelError(f"`{text}` is a person, not a channel.")
    if _REFERENCE.match(text):
        found = canonical_id(text)
        if found is None:
            raise ChannelError(f"`{text}` is not a channel.")
        return found
    candidate = canonical_id(text)
    if candidate is not None and candidate == text:  # an id as Slack writes it, never a name
        if slack is None or await _exists(slack, candidate):
            return candidate
        raise ChannelError(
            f"I cannot see a channel `{text}`; if it is private, invite me there first."
        )
    # A lower-case word shaped like an id may be an id typed in lower case, or a name.
    if candidate is not None and slack is not None and await _exists(slack, candidate):
        return candidate
    name = _NAME.match(text.lower())
    if name is None:
        raise ChannelError(f"`{text}` is not a channel; mention it like #ops.")
    if slack is None:
        raise ChannelError(
            f"`{text}` may be a channel name, and names are looked up in Slack, which is not "
            "reachable from here: give the channel id as Slack writes it (C0123…, upper case)."
        )
    return await _by_name(slack, name["name"])


async def is_member(slack: AsyncWebClient, channel_id: str, user_id: str) -> bool:
    """Whether ``user_id`` is in the conversation, by ``conversations.members`` (paged).

    ``False`` when Slack cannot tell (no access, unknown conversation, more than
    :data:`MAX_PAGES` pages): callers fall back to the stricter rule.
    """
    cursor = None
    try:
        for _ in range(MAX_PAGES):
            response = await slack.conversations_members(
                channel=channel_id, limit=LIST_PAGE, cursor=cursor
            )
            if user_id in (response.get("members") or []):
                return True
            cursor = (response.get("response_metadata") or {}).get("next_cursor")
            if not cursor:
                return False
    except SlackApiError:
        return False
    return False


async def _exists(slack: AsyncWebClient, channel_id: str) -> bool:
    try:
        await slack.conversations_info(channel=channel_id)
    except SlackApiError as exc:
        if _error(exc) == "channel_not_found":
            return False
        raise ChannelError(f"Slack could not check `{channel_id}` ({_error(exc)}).") from None
    return True


async def _by_name(slack: AsyncWebClient, name: str) -> str:
    cursor = None
    try:
        for _ in range(MAX_PAGES):
            response = await slack.conversations_list(
                types=CHANNEL_TYPES, exclude_archived=True, limit=LIST_PAGE, cursor=cursor
            )
            for channel in response.get("channels") or []:
                if channel.get("name") == name and channel.get("id"):
                    return str(channel["id"]).upper()
            cursor = (response.get("response_metadata") or {}).get("next_cursor")
            if not cursor:
                break
    except SlackApiError as exc:
        raise ChannelError(f"Slack could not look up `#{name}` ({_error(exc)}).") from None
    raise ChannelError(
        f"I found no channel named `#{name}`; if it is private, invite me there first, or "
        "mention it so Slack sends its id."
    )


def _error(exc: SlackApiError) -> str:
    return exc.response.get("error", "unknown_error") if exc.response else "unknown_error"
