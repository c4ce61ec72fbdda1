"""Tenant-scoped repositories: every public method takes the :class:`~storage.tenancy.Tenant` first.

:class:`Repositories` bundles them over one session factory so callers pass a single object.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from storage.repositories.approvals import ApprovalRepository
from storage.repositories.audit import AuditRepository
from storage.repositories.briefings import BriefingRepository
from storage.repositories.budgets import BudgetRepository
from storage.repositories.claims import ClaimRepository
from storage.repositories.config import ConfigRepository
from storage.repositories.conversations import ConversationRepository
from storage.repositories.credentials import CredentialRepository
from storage.repositories.events import EventRepository
from storage.repositories.metrics import MetricsRepository
from storage.repositories.policy import PolicyRepository
from storage.secrets import SecretBox
from storage.workspace_cache import WorkspaceCache


@dataclass(frozen=True)
class Repositories:
    conversations: ConversationRepository
    audit: AuditRepository
    config: ConfigRepository
    metrics: MetricsRepository
    claims: ClaimRepository
    credentials: CredentialRepository
    approvals: ApprovalRepository
    policy: PolicyRepository
    events: EventRepository
    briefings: BriefingRepository
    budgets: BudgetRepository

    @classmethod
    def over(
        cls,
        sessions: async_sessionmaker[AsyncSession],
        secrets: SecretBox | None = None,
        cache: WorkspaceCache | None = None,
    ) -> Repositories:
        """``secrets`` opens stored credentials; without it they can be listed, not read.
        ``cache`` keeps the workspace configuration every turn reads (the default caches
        nothing: each read sees what any process stored)."""
        cache = cache or WorkspaceCache(ttl=0)
        return cls(
            conversations=ConversationRepository(sessions),
            audit=AuditRepository(sessions),
            config=ConfigRepository(sessions, cache),
            metrics=MetricsRepository(sessions),
            claims=ClaimRepository(sessions),
            credentials=CredentialRepository(sessions, secrets),
            approvals=ApprovalRepository(sessions),
            policy=PolicyRepository(sessions),
            events=EventRepository(sessions),
            briefings=BriefingRepository(sessions),
            budgets=BudgetRepository(sessions, cache),
        )
