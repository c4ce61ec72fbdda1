"""Block Kit for a briefing, within Slack's message limits.

Limits (contracts.md, "Slack: limits"): at most 50 blocks, section text 3,000 characters,
header 150. A list longer than fits ends with "…and N more".
"""

from __future__ import annotations

from typing import Any

from bot.briefings.sections import SectionContent
from bot.render import (
    MAX_BLOCKS,
    SECTION_LIMIT,
    Reply,
    context,
    header,
    no_broadcasts,
    section,
    split_text,
)

MAX_LINES = 15  # items shown per list before "and N more"
MAX_TEXT_BLOCKS = 3  # section blocks one free-text section may take


def render_briefing(
    title: str, opening: str | None, sections: list[SectionContent], footer: str
) -> Reply:
    """The briefing message: header, optional opening, one part per section, footer.

    ``text`` (the notification fallback) repeats the content in plain mrkdwn.
    """
    blocks: list[dict[str, Any]] = [header(title)]
    opening = no_broadcasts(opening) if opening else None  # the model's words: no broadcasts
    if opening:
        blocks.append(section(opening))
    # Leave room for the footer, and for a note when sections do not fit.
    budget = MAX_BLOCKS - len(blocks) - 2
    shown = 0
    for content in sections:
        part = [{"type": "divider"}, *_section_blocks(content)]
        if len(part) > budget:
            break
        blocks += part
        budget -= len(part)
        shown += 1
    if shown < len(sections):
        blocks.append(context(f"{len(sections) - shown} more sections did not fit in one message."))
    blocks.append(context(footer))
    text_parts = [title, opening or ""] + [_plain(content) for content in sections]
    return Reply(text="\n\n".join(part for part in text_parts if part), blocks=blocks)


def list_text(title: str, lines: list[str], limit: int = SECTION_LIMIT) -> str:
    """``*title*`` and a bullet list of at most :data:`MAX_LINES` lines within ``limit``
    characters; what is left out is counted in a final "…and N more" line."""
    head = f"*{title}*"
    kept: list[str] = []
    for index, line in enumerate(lines):
        remaining = len(lines) - index
        more = f"\n…and {remaining} more" if remaining else ""
        candidate = f"• {line}"
        if (
            len(kept) == MAX_LINES
            or len("\n".join([head, *kept, candidate])) + len(f"\n…and {remaining - 1} more")
            > limit
        ):
            return "\n".join([head, *kept]) + more
        kept.append(candidate)
    return "\n".join([head, *kept])


def _section_blocks(content: SectionContent) -> list[dict[str, Any]]:
    if content.unavailable:
        return [section(f"*{content.title}*\n_unavailable: {content.unavailable}_")]
    if content.text:
        pieces = split_text(f"*{content.title}*\n{content.text}")
        if len(pieces) > MAX_TEXT_BLOCKS:
            pieces = pieces[:MAX_TEXT_BLOCKS]
            pieces[-1] = pieces[-1][: SECTION_LIMIT - 2] + " …"
        return [section(piece) for piece in pieces]
    if not content.lines:
        return [section(f"*{content.title}*\n_{content.empty}_")]
    return [section(list_text(content.title, content.lines))]


def _plain(content: SectionContent) -> str:
    if content.unavailable:
        return f"{content.title}: unavailable: {content.unavailable}"
    if content.text:
        return f"{content.title}\n{content.text}"
    if not content.lines:
        return f"{content.title}: {content.empty}"
    return list_text(content.title, content.lines)
