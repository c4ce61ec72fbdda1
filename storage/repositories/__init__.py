"""Tenant-scoped repositories: every public method takes the :class:`~storage.tenancy.Tenant` first.

:class:`Repositories` bundles them over one session factory so callers pass a single object.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from storage.repositories.audit import AuditRepository
from storage.repositories.claims import ClaimRepository
from storage.repositories.config import ConfigRepository
from storage.repositories.conversations import ConversationRepository
from storage.repositories.metrics import MetricsRepository


@dataclass(frozen=True)
class Repositories:
    conversations: ConversationRepository
    audit: AuditRepository
    config: ConfigRepository
    metrics: MetricsRepository
    claims: ClaimRepository

    @classmethod
    def over(cls, sessions: async_sessionmaker[AsyncSession]) -> Repositories:
        return cls(
            conversations=ConversationRepository(sessions),
            audit=AuditRepository(sessions),
            config=ConfigRepository(sessions),
            metrics=MetricsRepository(sessions),
            claims=ClaimRepository(sessions),
        )
