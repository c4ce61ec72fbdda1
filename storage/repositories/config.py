"""Per-workspace configuration: persona overrides, channel bindings, workspace settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from storage.models import ChannelBinding, PersonaOverride, WorkspaceSettings
from storage.repositories import events
from storage.tenancy import Tenant
from storage.workspace_cache import WorkspaceCache

OVERRIDE_FIELDS = ("enabled", "model", "temperature", "extra_instructions")

# Read for every turn, so built once (see storage/repositories/conversations.py).
_OVERRIDES = select(
    PersonaOverride.persona, *(getattr(PersonaOverride, name) for name in OVERRIDE_FIELDS)
).where(PersonaOverride.tenant_id == bindparam("tenant_id"))
_BINDINGS = select(ChannelBinding.channel_id, ChannelBinding.persona).where(
    ChannelBinding.tenant_id == bindparam("tenant_id")
)
_TIMEZONE = select(WorkspaceSettings.timezone).where(
    WorkspaceSettings.tenant_id == bindparam("tenant_id")
)


@dataclass(frozen=True)
class Override:
    """A workspace's override of one persona; ``None`` fields keep the built-in value."""

    persona: str
    enabled: bool | None = None
    model: str | None = None
    temperature: float | None = None
    extra_instructions: str | None = None


@dataclass(frozen=True)
class WorkspaceConfig:
    """Everything configured for one workspace, read in one go for a turn or ``/nox-config``."""

    overrides: dict[str, Override]
    bindings: dict[str, str]  # channel_id → persona
    timezone: str


class ConfigRepository:
    """``cache`` keeps what :meth:`load` read (see :mod:`storage.workspace_cache`); each
    change here drops it after its transaction commits."""

    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], cache: WorkspaceCache
    ) -> None:
        self._sessions = sessions
        self._cache = cache

    async def load(self, tenant: Tenant) -> WorkspaceConfig:
        """The workspace's configuration; at most the cache's ``ttl`` old when another process
        changed it without Redis, current otherwise."""
        return await self._cache.get(tenant.id, "config", lambda: self._read(tenant))

    async def _read(self, tenant: Tenant) -> WorkspaceConfig:
        parameters = {"tenant_id": tenant.id}
        async with self._sessions() as session:
            overrides = (await session.execute(_OVERRIDES, parameters)).all()
            bindings = (await session.execute(_BINDINGS, parameters)).all()
            timezone = await session.scalar(_TIMEZONE, parameters)
        return WorkspaceConfig(
            overrides={row.persona: Override(*row) for row in overrides},
            bindings=dict(bindings),
            timezone=timezone or "UTC",
        )

    async def channel_persona(self, tenant: Tenant, channel_id: str) -> str | None:
        async with self._sessions() as session:
            return await session.scalar(
                select(ChannelBinding.persona).where(
                    ChannelBinding.tenant_id == tenant.id, ChannelBinding.channel_id == channel_id
                )
            )

    async def update_persona(
        self, tenant: Tenant, persona: str, changed_by: str, **changes: Any
    ) -> None:
        """Set override fields (``enabled``, ``model``, ``temperature``, ``extra_instructions``).

        A value of ``None`` resets that field to the built-in default.

        Raises:
            TypeError: a field name outside :data:`OVERRIDE_FIELDS`.
        """
        unknown = set(changes) - set(OVERRIDE_FIELDS)
        if unknown:
            raise TypeError(f"unknown override fields: {sorted(unknown)}")
        async with self._cache.changing(self._sessions, tenant.id) as session:
            row = await session.get(PersonaOverride, (tenant.id, persona))
            if row is None:
                row = PersonaOverride(tenant_id=tenant.id, persona=persona)
                session.add(row)
            for name, value in changes.items():
                events.append_change(
                    session,
                    tenant,
                    events.PERSONA_CHANGED,
                    getattr(row, name),
                    value,
                    actor=changed_by,
                    subject=persona,
                    details={"field": name},
                )
                setattr(row, name, value)
            row.updated_by = changed_by

    async def bind_channel(
        self, tenant: Tenant, channel_id: str, persona: str | None, changed_by: str
    ) -> None:
        """Make ``persona`` answer mentions in ``channel_id``; ``None`` removes the binding."""
        async with self._cache.changing(self._sessions, tenant.id) as session:
            row = await session.get(ChannelBinding, (tenant.id, channel_id))
            events.append_change(
                session,
                tenant,
                events.CHANNEL_BOUND,
                row.persona if row else None,
                persona,
                actor=changed_by,
                subject=channel_id,
            )
            if persona is None:
                await session.execute(
                    delete(ChannelBinding).where(
                        ChannelBinding.tenant_id == tenant.id,
                        ChannelBinding.channel_id == channel_id,
                    )
                )
                return
            if row is None:
                session.add(
                    ChannelBinding(
                        tenant_id=tenant.id,
                        channel_id=channel_id,
                        persona=persona,
                        updated_by=changed_by,
                    )
                )
            else:
                row.persona, row.updated_by = persona, changed_by

    async def set_timezone(self, tenant: Tenant, timezone: str, changed_by: str) -> None:
        """Store the workspace's IANA timezone (validated by the caller)."""
        async with self._cache.changing(self._sessions, tenant.id) as session:
            row = await session.get(WorkspaceSettings, tenant.id)
            events.append_change(
                session,
                tenant,
                events.TIMEZONE_CHANGED,
                row.timezone if row else None,
                timezone,
                actor=changed_by,
            )
            if row is None:
                session.add(
                    WorkspaceSettings(tenant_id=tenant.id, timezone=timezone, updated_by=changed_by)
                )
            else:
                row.timezone, row.updated_by = timezone, changed_by
