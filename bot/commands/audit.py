"""``/nox-audit [since] [tool|@user]``: the workspace's audit trail, for workspace admins.

``since`` is ``24h``, ``7d`` (hours or days back) or an ISO date or date-time (UTC unless it
says otherwise); the default is the last 24 hours. A tool name keeps that tool's calls and the
events about it; a user mention keeps what that person did. Answers are ephemeral and paged:
the last line of a page gives the command for the next one (``more:CURSOR``).
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from bot.commands.base import Invocation
from bot.render import Reply, context, escape, header, section
from storage.repositories.audit import AuditEntry, AuditPage, Cursor

USAGE = "[24h|7d|YYYY-MM-DD] [tool|@user]"
PAGE_SIZE = 15
DEFAULT_SINCE = "24h"
MAX_BACK = timedelta(days=3650)
VALUE_LIMIT = 120  # characters of one old/new value shown on a line
RELATIVE = re.compile(r"^(?P<count>\d{1,5})(?P<unit>[hd])$")
USER = re.compile(r"^(?:<@(?P<ref>[UW][A-Z0-9]+)(?:\|[^>]*)?>|(?P<id>[UW][A-Z0-9]{6,}))$")
SLACK_USER = re.compile(r"^[UW][A-Z0-9]+$")
TOOL = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
MORE = "more:"


class AuditQueryError(ValueError):
    """The words after ``/nox-audit`` cannot be read; the message says how to write them."""


def parse_since(text: str, now: datetime) -> datetime:
    """``24h`` / ``7d`` before ``now`` (aware), or an ISO 8601 date (midnight UTC) or date-time
    (UTC when it has no offset); returns an aware UTC moment.

    Raises:
        AuditQueryError: anything else, a moment in the future or more than ten years back.
    """
    relative = RELATIVE.match(text.strip().lower())
    if relative:
        count = int(relative["count"])
        back = timedelta(hours=count) if relative["unit"] == "h" else timedelta(days=count)
        if back > MAX_BACK:
            raise AuditQueryError(f"`{text}` goes back more than ten years.")
        return now - back
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise AuditQueryError(
            f"`{text}` is not a time: use `24h`, `7d` or an ISO date like `2026-11-01`."
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    if moment > now:
        raise AuditQueryError(f"`{text}` is in the future.")
    return max(moment.astimezone(UTC), now - MAX_BACK)


class AuditQuery:
    """The parsed words: ``since`` (aware UTC, and as typed), ``tool``, ``user``, ``after``."""

    def __init__(self, words: str, now: datetime) -> None:
        self.since_text = DEFAULT_SINCE
        self.tool: str | None = None
        self.user: str | None = None
        self.after: Cursor | None = None
        for word in words.split():
            if word.lower().startswith(MORE):
                try:
                    self.after = Cursor.parse(word[len(MORE) :])
                except ValueError as exc:
                    raise AuditQueryError(str(exc)) from None
            elif (user := USER.match(word)) is not None:
                self.user = user["ref"] or user["id"]
            elif RELATIVE.match(word.lower()) or word[:1].isdigit():
                self.since_text = word
            elif TOOL.match(word):
                self.tool = word
            else:
                raise AuditQueryError(f"I cannot read `{escape(word)}`.")
        self.since = parse_since(self.since_text, now)

    def words(self, after: Cursor) -> str:
        """The command's words for the page after this one."""
        parts = [self.since_text, self.tool, f"<@{self.user}>" if self.user else None]
        return " ".join(p for p in parts if p) + f" {MORE}{after}"


async def run(invocation: Invocation) -> Reply:
    request = invocation.request
    command = f"/{invocation.persona.command_prefix}-audit"
    if not await request.is_admin():
        return _reply(
            "Only workspace admins and owners can read the audit trail. Ask one of them, or "
            "see what you ran yourself under each answer (the *Tools used* line)."
        )
    try:
        query = AuditQuery(request.text, datetime.now(UTC))
    except AuditQueryError as exc:
        return _reply(f"{exc}\nUsage: `{command} {USAGE}`")
    page = await invocation.services.repos.audit.page(
        request.tenant,
        since=query.since,
        tool=query.tool,
        user=query.user,
        after=query.after,
        limit=PAGE_SIZE,
    )
    return render(page, query, command)


def render(page: AuditPage, query: AuditQuery, command: str) -> Reply:
    """One line per entry, newest first, and the next page's command when there is one."""
    scope = " ".join(
        p for p in (query.tool and f"`{query.tool}`", query.user and f"<@{query.user}>") if p
    )
    title = f"Audit since {query.since:%Y-%m-%d %H:%M} UTC" + (f" · {scope}" if scope else "")
    if not page.entries:
        return _reply(f"{title}: nothing recorded" + (" further." if query.after else "."))
    lines = [entry_line(entry) for entry in page.entries]
    blocks: list[dict[str, Any]] = [header("Audit trail"), context(title)]
    blocks += [section("\n".join(lines[i : i + 5])) for i in range(0, len(lines), 5)]
    footer = (
        f"More: `{command} {query.words(page.next)}`" if page.next else "End of the trail."
    )
    blocks.append(context(footer))
    return Reply("\n".join([title, *lines, footer]), blocks)


def entry_line(entry: AuditEntry) -> str:
    """``• 2026-11-30 09:12 · <@U…> · *kind* subject · what changed`` (mrkdwn, escaped)."""
    who = _who(entry.actor)
    subject = f" `{escape(entry.subject)}`" if entry.subject else ""
    return (
        f"• {entry.created_at:%Y-%m-%d %H:%M} · {who} · *{entry.kind}*{subject}"
        f"{_what(entry)}"
    )


def _what(entry: AuditEntry) -> str:
    details = entry.details
    if entry.source == "tool_call":
        mark = "✓" if details.get("status") == "ok" else f"✗ {details.get('status')}"
        return f" {mark} · {_value(details.get('arguments'))}"
    if "old" in details or "new" in details:
        field = details.get("field") or details.get("channel_id")
        lead = f" {escape(str(field))}:" if field else ""
        return f" ·{lead} {_value(details.get('old'))} → {_value(details.get('new'))}"
    rest = {k: v for k, v in details.items() if v is not None}
    return f" · {_value(rest)}" if rest else ""


def _who(actor: str | None) -> str:
    """A Slack user as a mention; the operator's CLI (``cli``) and Jamono itself by name."""
    if actor is None:
        return "Jamono"
    if SLACK_USER.match(actor):
        return f"<@{actor}>"
    return "the operator (jamono CLI)" if actor == "cli" else f"`{escape(actor)}`"


def _value(value: Any) -> str:
    if value is None:
        return "_none_"
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    if len(text) > VALUE_LIMIT:
        text = text[: VALUE_LIMIT - 1] + "…"
    return "`" + escape(text).replace("`", "'") + "`"


def _reply(text: str) -> Reply:
    return Reply(text, [section(text)])

