"""The audit trail of tool calls (LLM token usage is stored with its turn)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from storage.models import ToolCall
from storage.tenancy import Tenant


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
