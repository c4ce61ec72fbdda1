"""The tenant: the unit of isolation for every row Jamono stores."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Tenant:
    """A Slack workspace (``team_id``) or an Enterprise Grid org install (``enterprise_id``).

    ``id`` is the key every tenant-scoped row carries: the ``enterprise_id`` for an org-wide
    install (one installation serves all of the org's workspaces), else the ``team_id``.
    """

    team_id: str | None
    enterprise_id: str | None = None
    is_enterprise_install: bool = False

    def __post_init__(self) -> None:
        if not self.id:
            raise ValueError("a tenant needs a team_id (or an enterprise_id for an org install)")

    @classmethod
    def stored(
        cls, tenant_id: str, enterprise_id: str | None, is_enterprise_install: bool
    ) -> Tenant:
        """The tenant of a row that keeps ``tenant_id`` with its enterprise id and install kind
        (what finding a Grid workspace's installation needs)."""
        if is_enterprise_install:
            return cls(team_id=None, enterprise_id=tenant_id, is_enterprise_install=True)
        return cls(team_id=tenant_id, enterprise_id=enterprise_id)

    @property
    def id(self) -> str:
        if self.is_enterprise_install and self.enterprise_id:
            return self.enterprise_id
        return self.team_id or ""


CONSOLE_TENANT = Tenant(team_id="T0CONSOLE")
"""The tenant of ``jamono console`` sessions: local, never a real Slack workspace."""
