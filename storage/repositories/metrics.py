"""Usage figures computed from the audit trail (nothing kept in memory).

:meth:`MetricsRepository.usage_since` and :meth:`MetricsRepository.last_error` answer for one
workspace (``/nox-metrics``, ``/nox-status``); :meth:`MetricsRepository.operator_totals` is the
operator's view over every workspace, read by the Prometheus scrape (``GET /metrics``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from storage.models import ApprovalRequest, BriefingDelivery, LLMUsage, ToolCall, Turn
from storage.repositories._time import aware
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
class OperatorTotals:
    """Every workspace's figures since the database began, one tuple per group.

    ``turns``: (tenant_id, persona, status, count) of finished turns; ``llm``: (tenant_id,
    model, calls, prompt_tokens, completion_tokens); ``tool_calls``: (tool, status, count);
    ``approvals``: (tenant_id, state, count) of approval requests as they stand now;
    ``briefings``: (state, count) of finished briefing runs.
    """

    turns: list[tuple[str, str, str, int]]
    llm: list[tuple[str, str, int, int, int]]
    tool_calls: list[tuple[str, str, int]]
    approvals: list[tuple[str, str, int]]
    briefings: list[tuple[str, int]]


class MetricsRepository:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def usage_since(self, tenant: Tenant, since: datetime) -> UsageFigures:
        """Figures for turns, tool calls and LLM calls at or after ``since`` (aware datetime)."""
        async with self._sessions() as session:
            turns = (
                await session.execute(
                    select(
                        func.count(func.distinct(Turn.conversation_id)),
                        func.count(Turn.id),
                        func.count(Turn.id).filter(Turn.status.in_(FAILED_TURN)),
                    ).where(
                        Turn.tenant_id == tenant.id,
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
                    .where(ToolCall.tenant_id == tenant.id, ToolCall.created_at >= since)
                    .group_by(ToolCall.tool)
                    .order_by(ToolCall.tool)
                )
            ).all()
            tokens = (
                await session.execute(
                    select(
                        func.coalesce(func.sum(LLMUsage.prompt_tokens), 0),
                        func.coalesce(func.sum(LLMUsage.completion_tokens), 0),
                    ).where(LLMUsage.tenant_id == tenant.id, LLMUsage.created_at >= since)
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

    async def operator_totals(self) -> OperatorTotals:
        """All workspaces' totals, aggregated in SQL (one grouped query per table).

        Deliberately not tenant-scoped: it is the operator's scrape, never shown in Slack, and
        it returns counts keyed by tenant id, no content. Each query groups by a handful of
        short columns, so the answer stays small however many rows the tables hold.
        """
        async with self._sessions() as session:
            turns = await session.execute(
                select(Turn.tenant_id, Turn.persona, Turn.status, func.count())
                .where(Turn.status.not_in(UNFINISHED_TURN))
                .group_by(Turn.tenant_id, Turn.persona, Turn.status)
            )
            llm = await session.execute(
                select(
                    LLMUsage.tenant_id,
                    LLMUsage.model,
                    func.count(),
                    func.coalesce(func.sum(LLMUsage.prompt_tokens), 0),
                    func.coalesce(func.sum(LLMUsage.completion_tokens), 0),
                ).group_by(LLMUsage.tenant_id, LLMUsage.model)
            )
            tools = await session.execute(
                select(ToolCall.tool, ToolCall.status, func.count()).group_by(
                    ToolCall.tool, ToolCall.status
                )
            )
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
            return OperatorTotals(
                turns=[(t, p, s, int(n)) for t, p, s, n in turns],
                llm=[(t, m, int(n), int(pt), int(ct)) for t, m, n, pt, ct in llm],
                tool_calls=[(tool, s, int(n)) for tool, s, n in tools],
                approvals=[(t, s, int(n)) for t, s, n in approvals],
                briefings=[(s, int(n)) for s, n in briefings],
            )
