"""Conversation memory within a context budget (approximate tokens), newest turns first."""

from __future__ import annotations

import json
from collections.abc import Iterable
from itertools import groupby
from typing import Any

from storage.repositories.conversations import StoredMessage

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
    ``tool`` results (Chat Completions rejects such a history).
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
    return [m.as_chat_message() for turn in reversed(kept) for m in turn]
