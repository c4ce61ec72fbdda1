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

    @property
    def id(self) -> str:
        if self.is_enterprise_install and self.enterprise_id:
            return self.enterprise_id
        return self.team_id or ""


CONSOLE_TENANT = Tenant(team_id="T0CONSOLE")
"""The tenant of ``jamono console`` sessions: local, never a real Slack workspace."""
