"""Briefing subscriptions and their deliveries.

A delivery row is unique per (subscription, scheduled fire time) and is inserted *before* the
briefing is posted: :meth:`BriefingRepository.claim_delivery` returns ``True`` to exactly one
caller, on SQLite and PostgreSQL alike, so two replicas (or a leader and its successor) never
post the same run twice.

The approvals and activity a briefing shows are those of its own channel
(:meth:`BriefingRepository.pending_approvals_in`, ``MetricsRepository.usage_since`` with
``channel_id``): a briefing's readers are that channel's members, who saw those conversations
already.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from storage.models import (
    ApprovalRequest,
    BriefingDelivery,
    BriefingSubscription,
    LLMUsage,
    utcnow,
)
from storage.repositories import events
from storage.repositories._time import aware, to_utc
from storage.repositories.approvals import State
from storage.tenancy import Tenant


class BriefingLimitReached(Exception):
    """The workspace already has ``limit`` briefings; nothing was saved."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the workspace has {limit} briefings already")
        self.limit = limit


class DeliveryState(StrEnum):
    SENDING = "sending"
    POSTED = "posted"
    FAILED = "failed"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class Briefing:
    """A subscription as stored. ``sections`` is a list of ``{"kind": …, …}`` objects."""

    id: int
    tenant: Tenant
    channel_id: str
    persona: str
    schedule: str
    timezone: str
    sections: list[dict[str, Any]]
    enabled: bool
    paused_reason: str | None
    created_by: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class PendingApproval:
    """An approval request waiting for a decision, as a briefing lists it."""

    tool: str
    target: str
    requested_by: str
    expires_at: datetime


@dataclass(frozen=True)
class Delivery:
    subscription_id: int
    scheduled_for: datetime
    trigger: str  # schedule | now
    state: DeliveryState
    message_ts: str | None
    detail: str | None


class BriefingRepository:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def create(
        self,
        tenant: Tenant,
        *,
        channel_id: str,
        persona: str,
        schedule: str,
        timezone: str,
        sections: list[dict[str, Any]],
        created_by: str,
        limit: int | None = None,
    ) -> Briefing:
        """Store a new, enabled subscription; records ``briefing_added`` by ``created_by``.
        Validation is the caller's (bot.briefings).

        With ``limit``, a workspace keeps at most that many subscriptions, also when several
        are added at once: the new row is kept only if at most ``limit`` rows of the workspace
        have an id up to its own (ids only grow), so of concurrent additions the later ones
        are removed again.

        Raises:
            BriefingLimitReached: the workspace has ``limit`` subscriptions already.
        """
        row = BriefingSubscription(
            tenant_id=tenant.id,
            team_id=tenant.team_id,
            enterprise_id=tenant.enterprise_id,
            is_enterprise_install=tenant.is_enterprise_install,
            channel_id=channel_id,
            persona=persona,
            schedule=schedule,
            timezone=timezone,
            sections=sections,
            enabled=True,
            created_by=created_by,
        )
        async with self._sessions.begin() as session:
            session.add(row)
            await session.flush()
            await session.refresh(row)
            briefing = _briefing(row)
            _record(session, briefing, events.BRIEFING_ADDED, created_by, old=None, new=briefing)
        if limit is None:
            return briefing
        async with self._sessions.begin() as session:
            rank = await session.scalar(
                select(func.count(BriefingSubscription.id)).where(
                    BriefingSubscription.tenant_id == tenant.id,
                    BriefingSubscription.id <= briefing.id,
                )
            )
            if rank <= limit:
                return briefing
            await session.execute(
                delete(BriefingSubscription).where(BriefingSubscription.id == briefing.id)
            )
            _record(session, briefing, events.BRIEFING_REMOVED, created_by,
                    details={"reason": f"over the workspace's limit of {limit}"},
                    old=briefing, new=None)
        raise BriefingLimitReached(limit)

    async def count(self, tenant: Tenant) -> int:
        """How many subscriptions the workspace has."""
        async with self._sessions() as session:
            return await session.scalar(
                select(func.count(BriefingSubscription.id)).where(
                    BriefingSubscription.tenant_id == tenant.id
                )
            )

    async def get(self, tenant: Tenant, subscription_id: int) -> Briefing | None:
        async with self._sessions() as session:
            row = await session.scalar(_one(tenant, subscription_id))
        return _briefing(row) if row is not None else None

    async def list(self, tenant: Tenant) -> list[Briefing]:
        """The workspace's subscriptions, oldest first."""
        async with self._sessions() as session:
            rows = await session.scalars(
                select(BriefingSubscription)
                .where(BriefingSubscription.tenant_id == tenant.id)
                .order_by(BriefingSubscription.id)
            )
            return [_briefing(row) for row in rows]

    async def all_enabled(self) -> list[Briefing]:
        """Every enabled subscription of every workspace, for the scheduler (not tenant-scoped)."""
        async with self._sessions() as session:
            rows = await session.scalars(
                select(BriefingSubscription)
                .where(BriefingSubscription.enabled.is_(True))
                .order_by(BriefingSubscription.id)
            )
            return [_briefing(row) for row in rows]

    async def find(self, subscription_id: int) -> Briefing | None:
        """A subscription by id in any workspace: scheduled jobs carry only the id."""
        async with self._sessions() as session:
            row = await session.get(BriefingSubscription, subscription_id)
        return _briefing(row) if row is not None else None

    async def delete(
        self, tenant: Tenant, subscription_id: int, actor: str | None = None
    ) -> bool:
        """``False`` when the workspace has no such subscription; else records
        ``briefing_removed`` by ``actor`` (``None``: the CLI or Jamono)."""
        async with self._sessions.begin() as session:
            row = await session.scalar(_one(tenant, subscription_id))
            before = _briefing(row) if row is not None else None
            result = await session.execute(
                delete(BriefingSubscription).where(
                    BriefingSubscription.tenant_id == tenant.id,
                    BriefingSubscription.id == subscription_id,
                )
            )
            if result.rowcount != 1 or before is None:
                return False
            _record(session, before, events.BRIEFING_REMOVED, actor, old=before, new=None)
            return True

    async def set_enabled(
        self, tenant: Tenant, subscription_id: int, enabled: bool, actor: str | None = None
    ) -> bool:
        """Pause or resume (clearing any ``paused_reason``); ``False`` when there is no such
        subscription. Records ``briefing_paused`` or ``briefing_resumed`` by ``actor``."""
        async with self._sessions.begin() as session:
            row = await session.scalar(_one(tenant, subscription_id))
            before = _briefing(row) if row is not None else None
            result = await session.execute(
                _update(tenant, subscription_id).values(
                    enabled=enabled, paused_reason=None, updated_at=utcnow()
                )
            )
            if result.rowcount != 1 or before is None:
                return False
            _record(
                session,
                before,
                events.BRIEFING_RESUMED if enabled else events.BRIEFING_PAUSED,
                actor,
                details={"old": {"enabled": before.enabled}, "new": {"enabled": enabled}},
            )
            return True

    async def pause_for(self, tenant: Tenant, subscription_id: int, reason: str) -> bool:
        """Pause an enabled subscription because of ``reason`` (a Slack error code).

        ``True`` for exactly one caller among concurrent ones: the one that should tell the
        subscription's creator.
        """
        async with self._sessions.begin() as session:
            result = await session.execute(
                _update(tenant, subscription_id)
                .where(BriefingSubscription.enabled.is_(True))
                .values(enabled=False, paused_reason=reason, updated_at=utcnow())
            )
            if result.rowcount != 1:
                return False
            events.append(
                session,
                tenant,
                events.BRIEFING_PAUSED,
                actor=None,
                subject=str(subscription_id),
                details={"reason": reason, "old": {"enabled": True}, "new": {"enabled": False}},
            )
            return True

    async def claim_delivery(
        self,
        tenant: Tenant,
        subscription_id: int,
        scheduled_for: datetime,
        trigger: str,
        state: DeliveryState = DeliveryState.SENDING,
        detail: str | None = None,
    ) -> bool:
        """Insert the delivery of one run; ``True`` for the first caller only.

        Raises:
            ValueError: ``scheduled_for`` is naive.
        """
        row = BriefingDelivery(
            tenant_id=tenant.id,
            subscription_id=subscription_id,
            scheduled_for=to_utc(scheduled_for),
            trigger=trigger,
            state=state.value,
            detail=detail,
            finished_at=None if state is DeliveryState.SENDING else utcnow(),
        )
        try:
            async with self._sessions.begin() as session:
                session.add(row)
        except IntegrityError:
            return False
        return True

    async def finish_delivery(
        self,
        tenant: Tenant,
        subscription_id: int,
        scheduled_for: datetime,
        state: DeliveryState,
        *,
        message_ts: str | None = None,
        detail: str | None = None,
    ) -> None:
        async with self._sessions.begin() as session:
            await session.execute(
                update(BriefingDelivery)
                .where(
                    BriefingDelivery.tenant_id == tenant.id,
                    BriefingDelivery.subscription_id == subscription_id,
                    BriefingDelivery.scheduled_for == to_utc(scheduled_for),
                )
                .values(
                    state=state.value, message_ts=message_ts, detail=detail, finished_at=utcnow()
                )
            )

    async def fail_stale_deliveries(self, *, claimed_before: datetime, detail: str) -> int:
        """Record as failed, with ``detail``, every delivery still ``sending`` that was claimed
        before ``claimed_before`` (aware): the process sending it died. Not tenant-scoped: it
        sweeps them all. Returns how many.

        Raises:
            ValueError: ``claimed_before`` is naive.
        """
        async with self._sessions.begin() as session:
            result = await session.execute(
                update(BriefingDelivery)
                .where(
                    BriefingDelivery.state == DeliveryState.SENDING.value,
                    BriefingDelivery.created_at < to_utc(claimed_before),
                )
                .values(state=DeliveryState.FAILED.value, detail=detail, finished_at=utcnow())
                .execution_options(synchronize_session=False)
            )
            return result.rowcount or 0

    async def record_llm_usage(
        self,
        tenant: Tenant,
        *,
        persona: str,
        model: str,
        prompt_tokens: int,
        completion_tokens: int,
        duration_ms: int,
    ) -> None:
        """Count the tokens of an LLM call a briefing made outside any turn (its opening), so
        that the workspace's usage figures include them."""
        async with self._sessions.begin() as session:
            session.add(
                LLMUsage(
                    tenant_id=tenant.id,
                    turn_id=None,
                    persona=persona,
                    model=model,
                    prompt_tokens=prompt_tokens,
                    completion_tokens=completion_tokens,
                    duration_ms=duration_ms,
                )
            )

    async def pending_approvals_in(
        self, tenant: Tenant, channel_id: str, now: datetime
    ) -> list[PendingApproval]:
        """Requests made in ``channel_id`` still waiting for a decision at ``now`` (aware),
        oldest first.

        Raises:
            ValueError: ``now`` is naive.
        """
        async with self._sessions() as session:
            rows = (
                await session.execute(
                    select(
                        ApprovalRequest.tool,
                        ApprovalRequest.target,
                        ApprovalRequest.requested_by,
                        ApprovalRequest.expires_at,
                    )
                    .where(
                        ApprovalRequest.tenant_id == tenant.id,
                        ApprovalRequest.channel_id == channel_id,
                        ApprovalRequest.state == State.PENDING.value,
                        ApprovalRequest.expires_at > to_utc(now),
                    )
                    .order_by(ApprovalRequest.created_at, ApprovalRequest.id)
                )
            ).all()
        return [
            PendingApproval(tool, target, requested_by, aware(expires_at))
            for tool, target, requested_by, expires_at in rows
        ]

    async def latest_run_before(
        self, tenant: Tenant, subscription_id: int, before: datetime
    ) -> datetime | None:
        """The scheduled time (aware UTC) of the subscription's latest run, scheduled or
        ``now``, before ``before`` (aware) that was not skipped; ``None`` when there is none.

        Raises:
            ValueError: ``before`` is naive.
        """
        async with self._sessions() as session:
            latest = await session.scalar(
                select(func.max(BriefingDelivery.scheduled_for)).where(
                    BriefingDelivery.tenant_id == tenant.id,
                    BriefingDelivery.subscription_id == subscription_id,
                    BriefingDelivery.scheduled_for < to_utc(before),
                    BriefingDelivery.state != DeliveryState.SKIPPED.value,
                )
            )
        return aware(latest) if latest is not None else None

    async def deliveries(self, tenant: Tenant, subscription_id: int) -> list[Delivery]:
        """The subscription's runs, oldest first."""
        async with self._sessions() as session:
            rows = await session.scalars(
                select(BriefingDelivery)
                .where(
                    BriefingDelivery.tenant_id == tenant.id,
                    BriefingDelivery.subscription_id == subscription_id,
                )
                .order_by(BriefingDelivery.scheduled_for, BriefingDelivery.id)
            )
            return [
                Delivery(
                    subscription_id=row.subscription_id,
                    scheduled_for=aware(row.scheduled_for),
                    trigger=row.trigger,
                    state=DeliveryState(row.state),
                    message_ts=row.message_ts,
                    detail=row.detail,
                )
                for row in rows
            ]


def _one(tenant: Tenant, subscription_id: int):
    return select(BriefingSubscription).where(
        BriefingSubscription.tenant_id == tenant.id, BriefingSubscription.id == subscription_id
    )


def _update(tenant: Tenant, subscription_id: int):
    return (
        update(BriefingSubscription)
        .where(
            BriefingSubscription.tenant_id == tenant.id,
            BriefingSubscription.id == subscription_id,
        )
        .execution_options(synchronize_session=False)
    )


def _record(
    session: AsyncSession,
    briefing: Briefing,
    kind: str,
    actor: str | None,
    *,
    details: dict[str, Any] | None = None,
    **change: Briefing | None,
) -> None:
    """Append ``kind`` about ``briefing``; ``old``/``new`` briefings are audited as settings."""
    described = {name: _settings(value) for name, value in change.items()}
    events.append(
        session,
        briefing.tenant,
        kind,
        actor=actor,
        subject=str(briefing.id),
        details=(details or {}) | described,
    )


def _settings(briefing: Briefing | None) -> dict[str, Any] | None:
    if briefing is None:
        return None
    return {
        "channel_id": briefing.channel_id,
        "persona": briefing.persona,
        "schedule": briefing.schedule,
        "timezone": briefing.timezone,
        "sections": briefing.sections,
        "enabled": briefing.enabled,
    }


def _briefing(row: BriefingSubscription) -> Briefing:
    return Briefing(
        id=row.id,
        tenant=Tenant(
            team_id=row.team_id,
            enterprise_id=row.enterprise_id,
            is_enterprise_install=row.is_enterprise_install,
        ),
        channel_id=row.channel_id,
        persona=row.persona,
        schedule=row.schedule,
        timezone=row.timezone,
        sections=list(row.sections),
        enabled=row.enabled,
        paused_reason=row.paused_reason,
        created_by=row.created_by,
        created_at=aware(row.created_at),
        updated_at=aware(row.updated_at),
    )
