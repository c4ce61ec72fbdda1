"""Block Kit for answers, help, status and metrics, within Slack's limits.

Limits (contracts.md, "Slack: limits"): 50 blocks per message, section text 3,000
characters, message text 40,000.

Text from people, tools and the model goes into mrkdwn through :func:`escape` (shown
literally), :func:`safe_mrkdwn` (only links, channels and mentions kept) or, for the persona's
own words, :func:`no_broadcasts` (as written, minus ``<!channel>``-style special mentions):
Slack turns ``<…>`` sequences into mentions and links
(https://api.slack.com/reference/surfaces/formatting#escaping).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from agents.runtime import ToolRun, TurnOutcome

SECTION_LIMIT = 3000
MAX_BLOCKS = 50
CONTEXT_LIMIT = 2000
# What safe_mrkdwn keeps of Slack's <…> sequences: links, channel references, user mentions.
_SEQUENCE = re.compile(r"<([^<>]*)>")
_LINK = re.compile(r"^(?:https?://|mailto:)[^\s|]+(?:\|.*)?$")
_CHANNEL = re.compile(r"^#[CGD][A-Z0-9]+(?:\|.*)?$")
_USER = re.compile(r"^@[UW][A-Z0-9]+(?:\|.*)?$")
_ENTITY = re.compile(r"&(?!(?:amp|lt|gt);)")
_SPECIAL = re.compile(r"<![^<>]*>")  # <!here>, <!channel>, <!everyone>, <!subteam^…>, <!date…>


def escape(text: str) -> str:
    """``text`` shown literally in mrkdwn: ``&``, ``<`` and ``>`` as entities, so text from tools
    or people can neither ping (``<!channel>``) nor link
    (https://api.slack.com/reference/surfaces/formatting#escaping)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def safe_mrkdwn(text: str) -> str:
    """``text`` (mrkdwn from a tool) with its links, channel references and user mentions
    kept, and every other ``<…>`` sequence (``<!channel>``, ``<!here>``, ``<!subteam^…>``,
    stray angle brackets) shown literally. Entities already written (``&amp;``) stay."""
    pieces: list[str] = []
    last = 0
    for match in _SEQUENCE.finditer(text):
        pieces.append(_outside(text[last : match.start()]))
        inner = match[1]
        kept = _LINK.match(inner) or _CHANNEL.match(inner) or _USER.match(inner)
        pieces.append(match[0] if kept else escape(match[0]))
        last = match.end()
    pieces.append(_outside(text[last:]))
    return "".join(pieces)


def no_broadcasts(text: str) -> str:
    """The persona's mrkdwn as written, except Slack's special mentions (``<!here>``,
    ``<!channel>``, ``<!everyone>``, user groups), shown as text: a ticket or a document the
    model repeats cannot make Jamono notify a whole channel."""
    return _SPECIAL.sub(lambda match: escape(match[0]), text)


def _outside(text: str) -> str:
    """Text between sequences: brackets as entities, ``&`` too unless it starts one."""
    return _ENTITY.sub("&amp;", text).replace("<", "&lt;").replace(">", "&gt;")


@dataclass(frozen=True)
class Reply:
    """What a surface posts: ``text`` is the notification/fallback text, ``blocks`` Block Kit."""

    text: str
    blocks: list[dict[str, Any]] = field(default_factory=list)

    def as_kwargs(self) -> dict[str, Any]:
        return (
            {"text": self.text[:40_000], "blocks": self.blocks}
            if self.blocks
            else {"text": self.text[:40_000]}
        )


def section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text[:SECTION_LIMIT]}}


def context(text: str) -> dict[str, Any]:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": text[:CONTEXT_LIMIT]}]}


def header(text: str) -> dict[str, Any]:
    return {"type": "header", "text": {"type": "plain_text", "text": text[:150]}}


def split_text(text: str, limit: int = SECTION_LIMIT) -> list[str]:
    """Split at paragraph, then line, then hard boundaries so each piece fits a section."""
    pieces: list[str] = []
    rest = text.strip()
    while len(rest) > limit:
        cut = rest.rfind("\n\n", 0, limit)
        if cut <= 0:
            cut = rest.rfind("\n", 0, limit)
        if cut <= 0:
            cut = limit
        pieces.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip("\n")
    if rest:
        pieces.append(rest)
    return pieces


def answer(outcome: TurnOutcome) -> Reply:
    """The persona's answer, followed by a line naming the tools it ran (audit by default).

    The answer is the model's mrkdwn (it may repeat what a ticket or a document said): shown
    as written, except broadcasts such as ``<!channel>``, shown as text.
    """
    text = no_broadcasts(outcome.text)
    blocks = [section(piece) for piece in split_text(text)]
    if outcome.tool_runs:
        blocks = blocks[: MAX_BLOCKS - 1]
        blocks.append(context(tools_used(outcome.tool_runs)))
    return Reply(text=text, blocks=blocks[:MAX_BLOCKS])


def tools_used(runs: list[ToolRun]) -> str:
    marks = {"ok": "✓", "awaiting_approval": "⏳ awaiting approval"}
    parts = [
        f"`{escape(run.name)}({escape(_arguments(run.arguments))})` "
        f"{marks.get(run.status, '✗ ' + run.status)} {run.duration_ms} ms"
        for run in runs
    ]
    return "Tools used: " + ", ".join(parts)


def _arguments(arguments: dict[str, Any]) -> str:
    text = ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in arguments.items())
    return text if len(text) <= 120 else text[:117] + "…"
