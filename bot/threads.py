"""Conversation keys and the Slack threads they live in.

A conversation's key (``thread_ts`` in storage) is the thread root's ``ts``, except for rolling
top-level DM sessions, keyed ``dm:{ts}`` (see :mod:`bot.turns`): those are answered top-level.
"""

from __future__ import annotations

DM_PREFIX = "dm:"


def slack_thread(conversation_key: str) -> str | None:
    """The ``thread_ts`` to post into for a conversation; ``None`` for a top-level DM session."""
    return None if conversation_key.startswith(DM_PREFIX) else conversation_key
