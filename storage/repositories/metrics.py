"""Usage figures computed from the audit trail (nothing kept in memory).

:meth:`MetricsRepository.usage_since` and :meth:`MetricsRepository.last_error` answer for one
workspace (``/nox-metrics``, ``/nox-status``); :meth:`MetricsRepository.marks`,
:meth:`MetricsRepository.counts` and :meth:`MetricsRepository.states` are the operator's view
over every workspace, read by the Prometheus scrape (``GET /metrics``, agents/metrics.py).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, fields
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from storage.models import (
    ApprovalRequest,
    BriefingDelivery,
    Conversation,
    LLMUsage,
    ToolCall,
    Turn,
)
from storage.repositories._time import aware, to_utc
from storage.repositories.conversations import NOTE
from storage.tenancy import Tenant

FAILED_TURN = ("error", "interrupted")
FAILED_TOOL_CALL = ("error", "timeout", "invalid_arguments")
# States a row leaves again: counting them would make a counter go down.
UNFINISHED_TURN = ("running", NOTE)
UNFINISHED_DELIVERY = ("sending",)


@dataclass(frozen=True)
class UsageFigures:
    """Counts for one period. ``tool_calls`` maps tool name → number of calls."""

    conversations: int = 0
    turns: int = 0
    tool_calls: dict[str, int] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: int = 0


@dataclass(frozen=True)
class LastError:
    at: datetime
    source: str  # "turn" or the tool's name
    message: str


@dataclass(frozen=True)
class Marks:
    """The highest row ids of the tables the stored counters read: a point in their history.

    Those rows are only ever appended (a turn's status changes once, from ``running``), so
    the rows up to a mark, once settled, are counted once and never again."""

    turns: int = 0
    llm_usage: int = 0
    tool_calls: int = 0


@dataclass
class Counts:
    """Counter totals of a range of rows, keyed by their label values.

    ``turns``: (tenant_id, persona, status) of finished turns; ``llm_calls``,
    ``prompt_tokens``, ``completion_tokens``: (tenant_id, model); ``tool_calls``: (tool,
    status). Adding two ``Counts`` sums them key by key."""

    turns: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    llm_calls: Counter[tuple[str, str]] = field(default_factory=Counter)
    prompt_tokens: Counter[tuple[str, str]] = field(default_factory=Counter)
    completion_tokens: Counter[tuple[str, str]] = field(default_factory=Counter)
    tool_calls: Counter[tuple[str, str]] = field(default_factory=Counter)

    def __add__(self, other: Counts) -> Counts:
        return Counts(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))


@dataclass(frozen=True)
class States:
    """What stands now: approval requests per (tenant_id, state), finished briefing runs per
    state (``posted``, ``failed``, ``skipped``)."""

    approvals: list[tuple[str, str, int]]
    briefings: list[tuple[str, int]]


class MetricsRepository:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def usage_since(
        self, tenant: Tenant, since: datetime, *, channel_id: str | None = None
    ) -> UsageFigures:
        """Figures for turns, tool calls and LLM calls at or after ``since`` (aware datetime):
        of the whole workspace, or of the conversations in ``channel_id`` only (a briefing's
        activity section, whose readers are that channel's members).

        Raises:
            ValueError: ``since`` is naive.
        """
        turn_scope = [Turn.tenant_id == tenant.id]
        tool_scope = [ToolCall.tenant_id == tenant.id]
        llm_scope = [LLMUsage.tenant_id == tenant.id]
        if channel_id is not None:
            in_channel = (
                select(Conversation.id)
                .where(Conversation.tenant_id == tenant.id, Conversation.channel_id == channel_id)
                .scalar_subquery()
            )
            turns_in_channel = (
                select(Turn.id)
                .where(Turn.tenant_id == tenant.id, Turn.conversation_id.in_(in_channel))
                .scalar_subquery()
            )
            turn_scope.append(Turn.conversation_id.in_(in_channel))
            tool_scope.append(ToolCall.turn_id.in_(turns_in_channel))
            llm_scope.append(LLMUsage.turn_id.in_(turns_in_channel))
        since = to_utc(since)
        async with self._sessions() as session:
            turns = (
                await session.execute(
                    select(
                        func.count(func.distinct(Turn.conversation_id)),
                        func.count(Turn.id),
                        func.count(Turn.id).filter(Turn.status.in_(FAILED_TURN)),
                    ).where(
                        *turn_scope,
                        Turn.started_at >= since,
                        Turn.status != NOTE,  # notes record events, not exchanges
                    )
                )
            ).one()
            tools = (
                await session.execute(
                    select(
                        ToolCall.tool,
                        func.count(ToolCall.id),
                        func.count(ToolCall.id).filter(ToolCall.status.in_(FAILED_TOOL_CALL)),
                    )
                    .where(*tool_scope, ToolCall.created_at >= since)
                    .group_by(ToolCall.tool)
                    .order_by(ToolCall.tool)
                )
            ).all()
            tokens = (
                await session.execute(
                    select(
                        func.coalesce(func.sum(LLMUsage.prompt_tokens), 0),
                        func.coalesce(func.sum(LLMUsage.completion_tokens), 0),
                    ).where(*llm_scope, LLMUsage.created_at >= since)
                )
            ).one()
        return UsageFigures(
            conversations=turns[0],
            turns=turns[1],
            tool_calls={name: count for name, count, _ in tools},
            prompt_tokens=int(tokens[0]),
            completion_tokens=int(tokens[1]),
            errors=turns[2] + sum(failed for _, _, failed in tools),
        )

    async def last_error(self, tenant: Tenant, persona: str | None = None) -> LastError | None:
        """The newest failed turn or tool call of the workspace (optionally of one persona)."""
        turn_q = select(Turn.started_at, Turn.error).where(
            Turn.tenant_id == tenant.id, Turn.status.in_(FAILED_TURN)
        )
        tool_q = select(ToolCall.created_at, ToolCall.tool, ToolCall.result_summary).where(
            ToolCall.tenant_id == tenant.id, ToolCall.status.in_(FAILED_TOOL_CALL)
        )
        if persona:
            turn_q = turn_q.where(Turn.persona == persona)
            tool_q = tool_q.where(ToolCall.persona == persona)
        async with self._sessions() as session:
            turn = (await session.execute(turn_q.order_by(Turn.id.desc()).limit(1))).first()
            tool = (await session.execute(tool_q.order_by(ToolCall.id.desc()).limit(1))).first()
        candidates = []
        if turn:
            candidates.append(LastError(aware(turn[0]), "turn", turn[1] or "failed"))
        if tool:
            candidates.append(LastError(aware(tool[0]), tool[1], tool[2]))
        return max(candidates, key=lambda e: e.at, default=None)

    # The operator's figures over every workspace, for the Prometheus scrape. Deliberately not
    # tenant-scoped: they are never shown in Slack, and hold counts keyed by tenant id, no
    # content.

    async def marks(self) -> Marks:
        """The current highest ids (0 for an empty table); each is one primary-key lookup."""
        async with self._sessions() as session:
            row = (
                await session.execute(
                    select(
                        select(func.coalesce(func.max(Turn.id), 0)).scalar_subquery(),
                        select(func.coalesce(func.max(LLMUsage.id), 0)).scalar_subquery(),
                        select(func.coalesce(func.max(ToolCall.id), 0)).scalar_subquery(),
                    )
                )
            ).one()
        return Marks(*(int(value) for value in row))

    async def first_running_turn(
        self, after: int, upto: int, started_since: datetime
    ) -> int | None:
        """The lowest id in (``after``, ``upto``] of a turn still running that started at or
        after ``started_since`` (older ones are taken as dead: a killed process's turn)."""
        async with self._sessions() as session:
            return await session.scalar(
                select(func.min(Turn.id)).where(
                    Turn.id > after,
                    Turn.id <= upto,
                    Turn.status == UNFINISHED_TURN[0],
                    Turn.started_at >= to_utc(started_since),
                )
            )

    async def counts(self, after: Marks, upto: Marks | None = None) -> Counts:
        """Counter totals of the rows with ids above ``after`` and up to ``upto`` (no upper
        bound when ``None``), grouped in SQL. Primary-key ranges: the work grows with the
        rows in the range, not with the tables."""

        def within(column, low: int, high: int | None):
            return (column > low) if high is None else ((column > low) & (column <= high))

        async with self._sessions() as session:
            turns = await session.execute(
                select(Turn.tenant_id, Turn.persona, Turn.status, func.count())
                .where(
                    within(Turn.id, after.turns, upto and upto.turns),
                    Turn.status.not_in(UNFINISHED_TURN),
                )
                .group_by(Turn.tenant_id, Turn.persona, Turn.status)
            )
            llm = await session.execute(
                select(
                    LLMUsage.tenant_id,
                    LLMUsage.model,
                    func.count(),
                    func.coalesce(func.sum(LLMUsage.prompt_tokens), 0),
                    func.coalesce(func.sum(LLMUsage.completion_tokens), 0),
                )
                .where(within(LLMUsage.id, after.llm_usage, upto and upto.llm_usage))
                .group_by(LLMUsage.tenant_id, LLMUsage.model)
            )
            tools = await session.execute(
                select(ToolCall.tool, ToolCall.status, func.count())
                .where(within(ToolCall.id, after.tool_calls, upto and upto.tool_calls))
                .group_by(ToolCall.tool, ToolCall.status)
            )
            counts = Counts()
            for tenant_id, persona, status, n in turns:
                counts.turns[(tenant_id, persona, status)] = int(n)
            for tenant_id, model, n, prompt, completion in llm:
                counts.llm_calls[(tenant_id, model)] = int(n)
                counts.prompt_tokens[(tenant_id, model)] = int(prompt)
                counts.completion_tokens[(tenant_id, model)] = int(completion)
            for tool, status, n in tools:
                counts.tool_calls[(tool, status)] = int(n)
        return counts

    async def states(self) -> States:
        """Approval requests by (tenant, state) — read from the (tenant_id, state) index —
        and finished briefing runs by state."""
        async with self._sessions() as session:
            approvals = await session.execute(
                select(ApprovalRequest.tenant_id, ApprovalRequest.state, func.count()).group_by(
                    ApprovalRequest.tenant_id, ApprovalRequest.state
                )
            )
            briefings = await session.execute(
                select(BriefingDelivery.state, func.count())
                .where(BriefingDelivery.state.not_in(UNFINISHED_DELIVERY))
                .group_by(BriefingDelivery.state)
            )
            return States(
                approvals=[(t, s, int(n)) for t, s, n in approvals],
                briefings=[(s, int(n)) for s, n in briefings],
            )
