"""Conversation memory within a context budget (approximate tokens), newest turns first."""

from __future__ import annotations

import json
from collections.abc import Iterable
from itertools import groupby
from typing import Any

from storage.repositories.conversations import StoredMessage

NOT_RECORDED = (
    "no result: the turn was interrupted before this call's result was recorded; "
    "it may or may not have run"
)
CHARS_PER_TOKEN = 4  # the usual rule of thumb for English text with BPE tokenizers
MESSAGE_OVERHEAD = 4  # role and separators per message in the chat format


def estimate_tokens(message: dict[str, Any]) -> int:
    """Approximate token count of one chat message (no tokenizer: any model may be behind)."""
    size = len(message.get("content") or "")
    if message.get("tool_calls"):
        size += len(json.dumps(message["tool_calls"]))
    return MESSAGE_OVERHEAD + size // CHARS_PER_TOKEN


def fit_history(messages: Iterable[StoredMessage], budget: int) -> list[dict[str, Any]]:
    """The newest whole turns whose estimated tokens fit ``budget``, oldest first.

    Turns are kept whole so an assistant ``tool_calls`` message is never separated from its
    ``tool`` results (Chat Completions rejects such a history). A turn interrupted between a
    tool call and its recorded result (the process died) gets a ``tool`` message saying so in
    place of the missing result.
    """
    turns = [list(group) for _, group in groupby(messages, key=lambda m: m.turn_id)]
    kept: list[list[StoredMessage]] = []
    used = 0
    for turn in reversed(turns):
        cost = sum(m.tokens for m in turn)
        if used + cost > budget:
            break
        kept.append(turn)
        used += cost
    return [m for turn in reversed(kept) for m in _answered(turn)]


def _answered(turn: list[StoredMessage]) -> list[dict[str, Any]]:
    """The turn's messages, each ``tool_calls`` message followed by a result for every call."""
    messages: list[dict[str, Any]] = []
    waiting: list[str] = []  # tool_call ids of the last tool_calls message still unanswered
    for stored in turn:
        message = stored.as_chat_message()
        if message["role"] == "tool":
            if message.get("tool_call_id") in waiting:
                waiting.remove(message["tool_call_id"])
        else:
            messages.extend(_missing(waiting))
            waiting = [call["id"] for call in message.get("tool_calls") or ()]
        messages.append(message)
    messages.extend(_missing(waiting))
    return messages


def _missing(call_ids: list[str]) -> list[dict[str, Any]]:
    return [{"role": "tool", "tool_call_id": i, "content": NOT_RECORDED} for i in call_ids]
