"""What budgets are checked against: a workspace's LLM usage by model, and the operator's
overrides of its limits (table ``workspace_limits``)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from storage.models import LLMUsage, WorkspaceLimit
from storage.repositories import events
from storage.repositories._upsert import insert_for
from storage.tenancy import Tenant
from storage.workspace_cache import WorkspaceCache


class BudgetRepository:
    """``cache`` keeps what :meth:`overrides` read (see :mod:`storage.workspace_cache`);
    :meth:`set_override` drops it after its transaction commits."""

    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], cache: WorkspaceCache
    ) -> None:
        self._sessions = sessions
        self._cache = cache

    async def usage_by_model(
        self, tenant: Tenant, since: datetime
    ) -> dict[str, tuple[int, int]]:
        """Tokens of the workspace's LLM calls at or after ``since`` (aware datetime), as
        ``{model: (prompt_tokens, completion_tokens)}``; turns and briefing openings alike."""
        query = (
            select(
                LLMUsage.model,
                func.coalesce(func.sum(LLMUsage.prompt_tokens), 0),
                func.coalesce(func.sum(LLMUsage.completion_tokens), 0),
            )
            .where(LLMUsage.tenant_id == tenant.id, LLMUsage.created_at >= since)
            .group_by(LLMUsage.model)
        )
        async with self._sessions() as session:
            rows = (await session.execute(query)).all()
        return {model: (int(prompt), int(completion)) for model, prompt, completion in rows}

    async def overrides(self, tenant: Tenant) -> dict[str, float]:
        """The operator's overrides for the workspace: ``{limit name: value}``; at most the
        cache's ``ttl`` old when another process changed them without Redis."""
        return await self._cache.get(tenant.id, "limits", lambda: self._read_overrides(tenant))

    async def _read_overrides(self, tenant: Tenant) -> dict[str, float]:
        query = select(WorkspaceLimit.name, WorkspaceLimit.value).where(
            WorkspaceLimit.tenant_id == tenant.id
        )
        async with self._sessions() as session:
            return {name: value for name, value in (await session.execute(query)).all()}

    async def set_override(
        self, tenant: Tenant, name: str, value: float | None, changed_by: str
    ) -> None:
        """Store ``value`` for limit ``name``; ``None`` removes the override (the default
        applies again). The caller validates name and value. Audited (``limit_changed``) with
        the old and new override in the same transaction."""
        async with self._cache.changing(self._sessions, tenant.id) as session:
            old = await session.scalar(
                select(WorkspaceLimit.value).where(
                    WorkspaceLimit.tenant_id == tenant.id, WorkspaceLimit.name == name
                )
            )
            events.append_change(
                session, tenant, events.LIMIT_CHANGED, old, value, actor=changed_by, subject=name
            )
            if value is None:
                await session.execute(
                    delete(WorkspaceLimit).where(
                        WorkspaceLimit.tenant_id == tenant.id, WorkspaceLimit.name == name
                    )
                )
                return
            statement = insert_for(session.bind.dialect.name, WorkspaceLimit).values(
                tenant_id=tenant.id, name=name, value=value, updated_by=changed_by
            )
            await session.execute(
                statement.on_conflict_do_update(
                    index_elements=["tenant_id", "name"],
                    set_={"value": value, "updated_by": changed_by, "updated_at": func.now()},
                )
            )
