"""The append-only audit trail of approvals, actions, configuration and credential changes,
per tenant.

Repositories that change approvals, configuration or credentials append their event in the same
transaction (:func:`append`), so a recorded change always has its event and a lost race never
does. A configuration change records its ``old`` and ``new`` values (:func:`append_change`);
never a secret.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from storage.models import AuditEvent
from storage.repositories._time import aware
from storage.tenancy import Tenant

# The kinds this package records itself; callers may record others (at most 32 characters).
APPROVAL_REQUESTED = "approval_requested"
APPROVAL_DECIDED = "approval_decided"
APPROVAL_EXPIRED = "approval_expired"
ACTION_EXECUTED = "action_executed"
CREDENTIALS_SAVED = "credentials_saved"
CREDENTIALS_DELETED = "credentials_deleted"
CREDENTIALS_ROTATED = "credentials_rotated"
# Configuration changes: ``details`` holds ``old`` and ``new`` (``None``: not set before/after).
PERSONA_CHANGED = "persona_changed"  # subject: persona; one entry per field changed
CHANNEL_BOUND = "channel_binding_changed"  # subject: channel id
TIMEZONE_CHANGED = "timezone_changed"
AUTO_APPROVE_CHANGED = "auto_approve_changed"  # subject: tool; details.channel_id
ZONE_CHANGED = "zone_changed"  # subject: persona; details.channel_id
APPROVERS_CHANGED = "approvers_changed"
LIMIT_CHANGED = "limit_changed"  # subject: limit name; set by the operator (jamono config)
BRIEFING_ADDED = "briefing_added"  # subject: subscription id
BRIEFING_REMOVED = "briefing_removed"
BRIEFING_PAUSED = "briefing_paused"
BRIEFING_RESUMED = "briefing_resumed"


@dataclass(frozen=True, slots=True)
class Event:
    """One audit entry; ``actor`` is a Slack user id or ``None`` for Jamono itself."""

    id: int
    kind: str
    actor: str | None
    subject: str | None
    details: dict[str, Any]
    created_at: datetime  # aware UTC


def append(
    session: AsyncSession,
    tenant: Tenant,
    kind: str,
    *,
    actor: str | None,
    subject: str | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """Add an event to ``session``'s transaction (it is written when that commits).

    Raises:
        ValueError: ``kind`` is empty or longer than 32 characters.
    """
    if not kind or len(kind) > 32:
        raise ValueError(f"an audit event kind has 1 to 32 characters, not {kind!r}")
    session.add(
        AuditEvent(
            tenant_id=tenant.id, kind=kind, actor=actor, subject=subject, details=details or {}
        )
    )


def append_change(
    session: AsyncSession,
    tenant: Tenant,
    kind: str,
    old: Any,
    new: Any,
    *,
    actor: str | None,
    subject: str | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """Add a configuration change to ``session``'s transaction as :func:`append` does, with
    ``details`` plus its ``old`` and ``new`` values (JSON; ``None``: not set); nothing when
    they are equal, so setting a value again leaves no event.

    Raises:
        ValueError: ``kind`` is empty or longer than 32 characters.
    """
    if old != new:
        append(
            session,
            tenant,
            kind,
            actor=actor,
            subject=subject,
            details=(details or {}) | {"old": old, "new": new},
        )


class EventRepository:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def record(
        self,
        tenant: Tenant,
        kind: str,
        *,
        actor: str | None,
        subject: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        """Append one event. ``details`` is JSON; never put secrets in it.

        Raises:
            ValueError: ``kind`` is empty or longer than 32 characters.
        """
        async with self._sessions.begin() as session:
            append(session, tenant, kind, actor=actor, subject=subject, details=details)

    async def recent(
        self,
        tenant: Tenant,
        *,
        limit: int = 50,
        kind: str | None = None,
        subject: str | None = None,
    ) -> list[Event]:
        """The tenant's newest ``limit`` events, newest first, optionally of one kind or subject."""
        query = select(AuditEvent).where(AuditEvent.tenant_id == tenant.id)
        if kind is not None:
            query = query.where(AuditEvent.kind == kind)
        if subject is not None:
            query = query.where(AuditEvent.subject == subject)
        async with self._sessions() as session:
            rows = (await session.scalars(query.order_by(AuditEvent.id.desc()).limit(limit))).all()
        return [
            Event(row.id, row.kind, row.actor, row.subject, row.details, aware(row.created_at))
            for row in rows
        ]
