"""Approval requests for write actions, with guarded state transitions.

States: ``pending`` → ``approved`` → ``executing`` → ``executed`` | ``failed``; ``pending`` →
``rejected``; ``pending`` | ``approved`` → ``expired``. Every transition is one ``UPDATE … WHERE
state = …`` checked by its row count, so among concurrent callers (double clicks, two approvers,
Slack retrying an interaction, several replicas) exactly one wins, on SQLite and PostgreSQL alike.
The winner's audit event is written in the same transaction.

``expires_at`` bounds the start of the action, not only the decision: a request approved but
never started (the process died in between) expires like a pending one, and execution never
starts at or after ``expires_at``. An approval is consent to act soon, not days later.

A request whose execution started is never started again (at most one execution, never two).
When the process dies mid-action the request stays ``executing`` until the sweep's
:meth:`ApprovalRepository.fail_stalled` closes it as ``failed``, saying the action may or may
not have taken effect.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import ColumnElement, Update, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from storage.models import ApprovalRequest, utcnow
from storage.repositories import events
from storage.repositories._time import aware, to_utc
from storage.tenancy import Tenant

DEFAULT_TTL = timedelta(hours=24)


class State(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    EXPIRED = "expired"
    EXECUTING = "executing"
    EXECUTED = "executed"
    FAILED = "failed"


UNSTARTED = (State.PENDING, State.APPROVED)  # nothing ran yet: these expire at expires_at


@dataclass(frozen=True, slots=True)
class Approval:
    """One approval request as stored. Datetimes are aware UTC."""

    id: str  # uuid4 hex: safe to put in a Slack button's value
    tenant_id: str
    persona: str
    requested_by: str  # Slack user id
    channel_id: str
    thread_ts: str
    message_ts: str | None  # the approval message, once posted
    tool_call_id: str | None  # the model's tool call this request answers
    tool: str
    arguments: dict[str, Any]
    risk: str
    target: str  # e.g. "Jira project OPS"
    state: State
    expires_at: datetime
    decided_by: str | None
    decided_at: datetime | None
    result_summary: str | None
    created_at: datetime
    # The installation whose token updates the request's message (Enterprise Grid workspaces
    # are found by team and enterprise id together).
    enterprise_id: str | None = None
    is_enterprise_install: bool = False

    @property
    def tenant(self) -> Tenant:
        """The tenant that made the request, with its enterprise id (to find its installation)."""
        return Tenant.stored(self.tenant_id, self.enterprise_id, self.is_enterprise_install)


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of :meth:`ApprovalRepository.decide`.

    ``won``: this caller's decision took effect. Otherwise ``request`` shows why: already
    approved or rejected (``decided_by``, ``decided_at``), expired (possibly just now, by this
    late click), or further along. ``request`` is ``None`` when the id is unknown to the tenant.
    """

    won: bool
    request: Approval | None

    @property
    def state(self) -> State | None:
        return self.request.state if self.request else None


class ApprovalRepository:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def create(
        self,
        tenant: Tenant,
        *,
        persona: str,
        requested_by: str,
        channel_id: str,
        thread_ts: str,
        tool: str,
        arguments: dict[str, Any],
        risk: str,
        target: str,
        tool_call_id: str | None = None,
        ttl: timedelta = DEFAULT_TTL,
        now: datetime | None = None,
    ) -> Approval:
        """Store a ``pending`` request expiring ``ttl`` after ``now``; records
        ``approval_requested``.

        Raises:
            ValueError: ``ttl`` is not positive, or ``now`` is naive.
        """
        if ttl <= timedelta(0):
            raise ValueError(f"an approval request needs a positive time to live, not {ttl}")
        moment = _now(now)
        row = ApprovalRequest(
            id=uuid.uuid4().hex,
            tenant_id=tenant.id,
            enterprise_id=tenant.enterprise_id,
            is_enterprise_install=tenant.is_enterprise_install,
            persona=persona,
            requested_by=requested_by,
            channel_id=channel_id,
            thread_ts=thread_ts,
            tool_call_id=tool_call_id,
            tool=tool,
            arguments=arguments,
            risk=risk,
            target=target,
            state=State.PENDING.value,
            expires_at=moment + ttl,
            created_at=moment,
        )
        async with self._sessions.begin() as session:
            session.add(row)
            events.append(
                session,
                tenant,
                events.APPROVAL_REQUESTED,
                actor=requested_by,
                subject=row.id,
                details={"persona": persona, "tool": tool, "risk": risk, "target": target},
            )
        return _approval(row)

    async def get(self, tenant: Tenant, request_id: str) -> Approval | None:
        """The request, or ``None`` when the tenant has no request with that id."""
        async with self._sessions() as session:
            return await _current(session, tenant, request_id)

    async def set_message_ts(self, tenant: Tenant, request_id: str, message_ts: str) -> bool:
        """Remember the ``ts`` of the posted approval message; ``False`` for an unknown id."""
        async with self._sessions.begin() as session:
            result = await session.execute(
                _update(tenant, request_id).values(message_ts=message_ts)
            )
            return result.rowcount == 1

    async def decide(
        self,
        tenant: Tenant,
        request_id: str,
        user_id: str,
        approve: bool,
        now: datetime | None = None,
    ) -> Decision:
        """Approve or reject a pending request; exactly one concurrent caller wins.

        Whether ``user_id`` may decide is the caller's check (see the workspace policy). A
        click at or after ``expires_at`` on a request still ``pending``, or ``approved`` but
        never started, marks it ``expired`` (recording ``approval_expired``) and does not win.
        The winner records ``approval_decided``.

        Raises:
            ValueError: ``now`` is naive.
        """
        moment = _now(now)
        new_state = State.APPROVED if approve else State.REJECTED
        async with self._sessions.begin() as session:
            decided = await session.execute(
                _update(tenant, request_id, State.PENDING)
                .where(ApprovalRequest.expires_at > moment)
                .values(state=new_state.value, decided_by=user_id, decided_at=moment)
            )
            if decided.rowcount == 1:
                events.append(
                    session,
                    tenant,
                    events.APPROVAL_DECIDED,
                    actor=user_id,
                    subject=request_id,
                    details={"approved": approve},
                )
                return Decision(True, await _current(session, tenant, request_id))
            expired = await session.execute(
                _update(tenant, request_id, *UNSTARTED)
                .where(ApprovalRequest.expires_at <= moment)
                .values(state=State.EXPIRED.value)
            )
            if expired.rowcount == 1:
                events.append(
                    session,
                    tenant,
                    events.APPROVAL_EXPIRED,
                    actor=None,
                    subject=request_id,
                    details={"clicked_by": user_id},
                )
            return Decision(False, await _current(session, tenant, request_id))

    async def start_execution(
        self, tenant: Tenant, request_id: str, now: datetime | None = None
    ) -> Approval | None:
        """Move ``approved`` → ``executing`` before ``expires_at``: the request to run when
        this caller won, else ``None`` (another caller runs it, it was never approved, or it
        expired before it started: the sweep or the next click marks that ``expired``).

        Raises:
            ValueError: ``now`` is naive.
        """
        moment = _now(now)
        async with self._sessions.begin() as session:
            result = await session.execute(
                _update(tenant, request_id, State.APPROVED)
                .where(ApprovalRequest.expires_at > moment)
                .values(state=State.EXECUTING.value, execution_started_at=moment)
            )
            if result.rowcount != 1:
                return None
            return await _current(session, tenant, request_id)

    async def finish_execution(
        self, tenant: Tenant, request_id: str, result_summary: str, ok: bool
    ) -> bool:
        """Move ``executing`` → ``executed`` (``ok``) or ``failed`` with a readable summary;
        records ``action_executed``. ``False`` when the request was not executing."""
        async with self._sessions.begin() as session:
            result = await session.execute(
                _update(tenant, request_id, State.EXECUTING).values(
                    state=(State.EXECUTED if ok else State.FAILED).value,
                    result_summary=result_summary,
                )
            )
            if result.rowcount != 1:
                return False
            request = await _current(session, tenant, request_id)
            events.append(
                session,
                tenant,
                events.ACTION_EXECUTED,
                actor=request.decided_by if request else None,
                subject=request_id,
                details={"tool": request.tool if request else None, "ok": ok},
            )
            return True

    async def expire_due(self, now: datetime | None = None) -> list[Approval]:
        """Mark ``expired`` every request past ``expires_at`` that is still ``pending`` or
        ``approved`` but never started, in all workspaces.

        For the scheduler: returns the requests this call expired (each with its ``tenant_id``)
        so their Slack messages can say so; a request expired concurrently by a late click or
        another replica is reported by that caller only. Not tenant-scoped: it sweeps them all.

        Raises:
            ValueError: ``now`` is naive.
        """
        moment = _now(now)
        async with self._sessions.begin() as session:
            return await _close_all(
                session,
                UNSTARTED,
                ApprovalRequest.expires_at <= moment,
                {"state": State.EXPIRED.value},
                lambda tenant, request: events.append(
                    session, tenant, events.APPROVAL_EXPIRED, actor=None, subject=request.id
                ),
            )

    async def fail_stalled(self, started_before: datetime, result_summary: str) -> list[Approval]:
        """Mark ``failed`` every request still ``executing`` that started before
        ``started_before``, in all workspaces; returns the requests this call closed.

        For the sweep: an execution is bounded by the tool timeout, so one that started longer
        ago than that belongs to a process that died mid-action. ``result_summary`` says so.
        Requests that were executing before migration 0004 have no start time and count as
        stalled. Records ``action_executed`` with ``ok: false`` for each.

        Raises:
            ValueError: ``started_before`` is naive.
        """
        moment = to_utc(started_before)
        async with self._sessions.begin() as session:
            return await _close_all(
                session,
                (State.EXECUTING,),
                or_(
                    ApprovalRequest.execution_started_at.is_(None),
                    ApprovalRequest.execution_started_at < moment,
                ),
                {"state": State.FAILED.value, "result_summary": result_summary},
                lambda tenant, request: events.append(
                    session,
                    tenant,
                    events.ACTION_EXECUTED,
                    actor=request.decided_by,
                    subject=request.id,
                    details={"tool": request.tool, "ok": False, "stalled": True},
                ),
            )

    async def pending_for(self, tenant: Tenant, now: datetime | None = None) -> list[Approval]:
        """The tenant's requests still waiting for a decision at ``now``, oldest first.

        Raises:
            ValueError: ``now`` is naive.
        """
        moment = _now(now)
        async with self._sessions() as session:
            rows = (
                await session.scalars(
                    select(ApprovalRequest)
                    .where(
                        ApprovalRequest.tenant_id == tenant.id,
                        ApprovalRequest.state == State.PENDING.value,
                        ApprovalRequest.expires_at > moment,
                    )
                    .order_by(ApprovalRequest.created_at, ApprovalRequest.id)
                )
            ).all()
        return [_approval(row) for row in rows]


def _now(now: datetime | None) -> datetime:
    return utcnow() if now is None else to_utc(now)


def _update(tenant: Tenant, request_id: str, *states: State) -> Update:
    """``UPDATE approval_requests`` of one tenant's request, guarded by ``states`` when given."""
    statement = (
        update(ApprovalRequest)
        .where(ApprovalRequest.tenant_id == tenant.id, ApprovalRequest.id == request_id)
        .execution_options(synchronize_session=False)
    )
    if states:
        statement = statement.where(ApprovalRequest.state.in_([s.value for s in states]))
    return statement


async def _close_all(
    session: AsyncSession,
    states: tuple[State, ...],
    due: ColumnElement[bool],
    values: dict[str, Any],
    record: Callable[[Tenant, Approval], None],
) -> list[Approval]:
    """Move every request in one of ``states`` matching ``due`` to ``values``, each by a
    guarded update, calling ``record`` for each one this caller moved; returns those requests.

    A request moved concurrently (a late click, another replica's sweep) is left to that
    caller, so each is reported once.
    """
    rows = (
        await session.execute(
            select(
                ApprovalRequest.tenant_id,
                ApprovalRequest.enterprise_id,
                ApprovalRequest.is_enterprise_install,
                ApprovalRequest.id,
            ).where(ApprovalRequest.state.in_([s.value for s in states]), due)
        )
    ).all()
    moved: list[Approval] = []
    for tenant_id, enterprise_id, is_enterprise_install, request_id in rows:
        tenant = Tenant.stored(tenant_id, enterprise_id, bool(is_enterprise_install))
        result = await session.execute(
            _update(tenant, request_id, *states).where(due).values(**values)
        )
        if result.rowcount != 1:
            continue
        request = await _current(session, tenant, request_id)
        if request is not None:
            record(tenant, request)
            moved.append(request)
    return moved


async def _current(session: AsyncSession, tenant: Tenant, request_id: str) -> Approval | None:
    row = (
        await session.execute(
            select(ApprovalRequest)
            .where(ApprovalRequest.tenant_id == tenant.id, ApprovalRequest.id == request_id)
            .execution_options(populate_existing=True)
        )
    ).scalar_one_or_none()
    return _approval(row) if row is not None else None


def _approval(row: ApprovalRequest) -> Approval:
    return Approval(
        id=row.id,
        tenant_id=row.tenant_id,
        persona=row.persona,
        requested_by=row.requested_by,
        channel_id=row.channel_id,
        thread_ts=row.thread_ts,
        message_ts=row.message_ts,
        tool_call_id=row.tool_call_id,
        tool=row.tool,
        arguments=row.arguments,
        risk=row.risk,
        target=row.target,
        state=State(row.state),
        expires_at=aware(row.expires_at),
        decided_by=row.decided_by,
        decided_at=aware(row.decided_at) if row.decided_at else None,
        result_summary=row.result_summary,
        created_at=aware(row.created_at),
        enterprise_id=row.enterprise_id,
        is_enterprise_install=bool(row.is_enterprise_install),
    )
