"""Block Kit for answers, help, status and metrics, within Slack's limits.

Limits (contracts.md, "Slack: limits"): 50 blocks per message, section text 3,000
characters, message text 40,000.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from agents.runtime import ToolRun, TurnOutcome

SECTION_LIMIT = 3000
MAX_BLOCKS = 50
CONTEXT_LIMIT = 2000


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
    """The persona's answer, followed by a line naming the tools it ran (audit by default)."""
    blocks = [section(piece) for piece in split_text(outcome.text)]
    if outcome.tool_runs:
        blocks = blocks[: MAX_BLOCKS - 1]
        blocks.append(context(tools_used(outcome.tool_runs)))
    return Reply(text=outcome.text, blocks=blocks[:MAX_BLOCKS])


def tools_used(runs: list[ToolRun]) -> str:
    marks = {"ok": "✓", "awaiting_approval": "⏳ awaiting approval"}
    parts = [
        f"`{run.name}({_arguments(run.arguments)})` {marks.get(run.status, '✗ ' + run.status)}"
        f" {run.duration_ms} ms"
        for run in runs
    ]
    return "Tools used: " + ", ".join(parts)


def _arguments(arguments: dict[str, Any]) -> str:
    text = ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in arguments.items())
    return text if len(text) <= 120 else text[:117] + "…"


def escape(text: str) -> str:
    """Slack's mrkdwn control characters shown literally, so text from tools or people cannot
    ping (``<!channel>``) or link (https://api.slack.com/reference/surfaces/formatting#escaping)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
