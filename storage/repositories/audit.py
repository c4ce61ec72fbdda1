"""The audit trail: tool calls (one row each) and events (approvals, actions, configuration and
credential changes; see :mod:`storage.repositories.events`), read together newest first.

LLM token usage is stored with its turn.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from storage.models import AuditEvent, ToolCall
from storage.repositories._time import aware, to_utc
from storage.tenancy import Tenant

Source = Literal["event", "tool_call"]
MAX_PAGE = 500  # entries per page at most


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One entry of the trail. For a tool call ``kind`` is ``tool_call``, ``actor`` the user
    whose turn called it, ``subject`` the tool and ``details`` its persona, arguments, status,
    result summary, duration (ms) and turn id. ``created_at`` is aware UTC."""

    source: Source
    id: int
    created_at: datetime
    kind: str
    actor: str | None
    subject: str | None
    details: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        """The entry as one JSON object (``created_at`` in ISO 8601), for exports."""
        return {
            "source": self.source,
            "id": self.id,
            "created_at": self.created_at.isoformat(),
            "kind": self.kind,
            "actor": self.actor,
            "subject": self.subject,
            "details": self.details,
        }


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where the next page starts: the entries of each source older than these ids.

    ``str(cursor)`` is ``{event id}.{tool call id}`` (``0`` once a source is exhausted), short
    enough to type in a next-page command; :meth:`parse` reads it back.
    """

    event_id: int
    tool_call_id: int

    def __str__(self) -> str:
        return f"{self.event_id}.{self.tool_call_id}"

    @classmethod
    def parse(cls, text: str) -> Cursor:
        """Raises ValueError: ``text`` is not two non-negative integers joined by a dot."""
        event, dot, tool_call = text.partition(".")
        if not dot or not event.isdigit() or not tool_call.isdigit():
            raise ValueError(f"{text!r} is not a page cursor (like 120.345)")
        return cls(int(event), int(tool_call))


@dataclass(frozen=True, slots=True)
class AuditPage:
    """A page of entries, newest first; ``next`` is ``None`` on the last page."""

    entries: list[AuditEntry]
    next: Cursor | None


class AuditRepository:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def record_tool_call(
        self,
        tenant: Tenant,
        *,
        turn_id: int | None,
        persona: str,
        user_id: str,
        tool: str,
        arguments: dict[str, Any],
        result_summary: str,
        status: str,
        duration_ms: int,
    ) -> None:
        """``status``: ok | error | invalid_arguments | timeout | unknown_tool; duration in ms."""
        async with self._sessions.begin() as session:
            session.add(
                ToolCall(
                    tenant_id=tenant.id,
                    turn_id=turn_id,
                    persona=persona,
                    user_id=user_id,
                    tool=tool,
                    arguments=arguments,
                    result_summary=result_summary,
                    status=status,
                    duration_ms=duration_ms,
                )
            )

    async def page(
        self,
        tenant: Tenant,
        *,
        since: datetime,
        tool: str | None = None,
        user: str | None = None,
        after: Cursor | None = None,
        limit: int = 20,
    ) -> AuditPage:
        """The tenant's entries from ``since`` on, newest first, ``limit`` at a time.

        ``tool`` keeps the calls of that tool and the events about it (an approval of it, its
        auto-approve policy); ``user`` keeps what that Slack user did. ``after`` is the
        ``next`` of the previous page. Only ``tenant``'s rows are ever read.

        Raises:
            ValueError: ``since`` is naive or ``limit`` is not 1 to :data:`MAX_PAGE`.
        """
        if not 1 <= limit <= MAX_PAGE:
            raise ValueError(f"a page holds 1 to {MAX_PAGE} entries, not {limit}")
        moment = to_utc(since)
        events = select(AuditEvent).where(
            AuditEvent.tenant_id == tenant.id, AuditEvent.created_at >= moment
        )
        calls = select(ToolCall).where(
            ToolCall.tenant_id == tenant.id, ToolCall.created_at >= moment
        )
        if tool is not None:
            events = events.where(
                or_(AuditEvent.subject == tool, AuditEvent.details["tool"].as_string() == tool)
            )
            calls = calls.where(ToolCall.tool == tool)
        if user is not None:
            events = events.where(AuditEvent.actor == user)
            calls = calls.where(ToolCall.user_id == user)
        if after is not None:
            events = events.where(AuditEvent.id < after.event_id)
            calls = calls.where(ToolCall.id < after.tool_call_id)
        # One more than a page from each source tells whether anything is left.
        async with self._sessions() as session:
            event_rows = (
                await session.scalars(events.order_by(AuditEvent.id.desc()).limit(limit + 1))
            ).all()
            call_rows = (
                await session.scalars(calls.order_by(ToolCall.id.desc()).limit(limit + 1))
            ).all()
        merged = list(
            heapq.merge(
                [_event(row) for row in event_rows],
                [_call(row) for row in call_rows],
                key=lambda e: (e.created_at, e.source == "event", e.id),
                reverse=True,
            )
        )
        entries = merged[:limit]
        if len(merged) <= limit:
            return AuditPage(entries, None)
        shown_events = [e.id for e in entries if e.source == "event"]
        shown_calls = [e.id for e in entries if e.source == "tool_call"]
        cursor = Cursor(
            min(shown_events) if shown_events else _past(event_rows, after, "event_id"),
            min(shown_calls) if shown_calls else _past(call_rows, after, "tool_call_id"),
        )
        return AuditPage(entries, cursor)


def _past(rows: list[Any], after: Cursor | None, field: str) -> int:
    """The cursor of a source none of whose rows made this page: it starts where it was."""
    if after is not None:
        return getattr(after, field)
    return rows[0].id + 1 if rows else 0


def _event(row: AuditEvent) -> AuditEntry:
    return AuditEntry(
        "event", row.id, aware(row.created_at), row.kind, row.actor, row.subject, row.details
    )


def _call(row: ToolCall) -> AuditEntry:
    return AuditEntry(
        "tool_call",
        row.id,
        aware(row.created_at),
        "tool_call",
        row.user_id,
        row.tool,
        {
            "persona": row.persona,
            "turn_id": row.turn_id,
            "arguments": row.arguments,
            "status": row.status,
            "result_summary": row.result_summary,
            "duration_ms": row.duration_ms,
        },
    )
