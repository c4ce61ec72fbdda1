"""Health of a persona for ``/nox-status`` and the ``persona_status`` tool."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

import structlog

from agents.budgets import Budgets, SpendReport
from agents.llm import LLMClient
from agents.personas import Persona
from storage.repositories.metrics import LastError, MetricsRepository
from storage.tenancy import Tenant

HealthCheck = Callable[[], Awaitable[str]]
"""Returns a one-line state ("ok", "connected", …); raising means failing (message shown)."""

WorkspaceCheck = Callable[[Tenant], Awaitable[str]]
"""A :data:`HealthCheck` whose answer depends on the workspace (its own credentials)."""

log = structlog.get_logger(__name__)

CHECK_TIMEOUT = 3.0  # seconds; /nox-status must answer well within Slack's patience


@dataclass(frozen=True)
class PersonaStatus:
    persona: Persona
    model: str
    llm: str
    llm_ok: bool
    integrations: dict[str, str]
    uptime_seconds: float
    version: str
    last_error: LastError | None
    budget: SpendReport | str  # the figures, or why they could not be read

    def as_dict(self) -> dict[str, Any]:
        return {
            "persona": self.persona.display_name,
            "enabled": self.persona.enabled,
            "model": self.model,
            "llm": self.llm,
            "integrations": self.integrations,
            "uptime_seconds": round(self.uptime_seconds),
            "version": self.version,
            "llm_usage_today": (
                {
                    "tokens": self.budget.tokens_today,
                    "usd": round(self.budget.usd_today, 4),
                    "limits": asdict(self.budget.limits),
                }
                if isinstance(self.budget, SpendReport)
                else f"unavailable: {self.budget}"
            ),
            "last_error": (
                {
                    "at": self.last_error.at.isoformat(timespec="seconds"),
                    "source": self.last_error.source,
                    "message": self.last_error.message,
                }
                if self.last_error
                else None
            ),
        }


class StatusBoard:
    """Collects status from the LLM endpoint, registered health checks and the audit trail."""

    def __init__(
        self,
        *,
        version: str,
        llm: LLMClient | None,
        metrics: MetricsRepository,
        budgets: Budgets,
    ) -> None:
        self.version = version
        self.budgets = budgets
        self._llm = llm
        self._metrics = metrics
        self._checks: dict[str, WorkspaceCheck] = {}
        self._started = time.monotonic()

    def register_check(self, name: str, check: HealthCheck) -> None:
        """A check whose state is the same for every workspace (database, Redis, Slack)."""
        self._checks[name] = lambda _tenant: check()

    def register_workspace_check(self, name: str, check: WorkspaceCheck) -> None:
        """A check that receives the workspace asking (its integrations' states differ)."""
        self._checks[name] = check

    async def collect(
        self, tenant: Tenant, persona: Persona, user_id: str | None = None
    ) -> PersonaStatus:
        """The persona's health in ``tenant``, with the workspace's LLM usage today against
        its limits (``user_id``'s own turns left this minute when given)."""
        llm_state, checks, last_error, budget = await asyncio.gather(
            self._llm_state(),
            asyncio.gather(*(_run_check(check(tenant)) for check in self._checks.values())),
            self._metrics.last_error(tenant, persona.name),
            self._budget(tenant, user_id),
        )
        return PersonaStatus(
            persona=persona,
            model=self.budgets.models.resolve(persona.model),
            llm=llm_state[1],
            llm_ok=llm_state[0],
            integrations=dict(zip(self._checks, checks, strict=True)),
            uptime_seconds=time.monotonic() - self._started,
            version=self.version,
            last_error=last_error,
            budget=budget,
        )

    async def _budget(self, tenant: Tenant, user_id: str | None) -> SpendReport | str:
        # The usage figures come from the database and Redis: when either fails, the status
        # still answers, and its checks say which.
        try:
            return await self.budgets.report(tenant, user_id)
        except Exception as exc:
            log.warning("status_budget_unavailable", tenant=tenant.id, error=repr(exc))
            return type(exc).__name__

    async def _llm_state(self) -> tuple[bool, str]:
        if self._llm is None:
            return False, "not configured"
        problem = await self._llm.check(within=CHECK_TIMEOUT)
        if problem:
            return False, f"unreachable: {problem}"
        return True, f"reachable at {self._llm.endpoint}"


async def _run_check(check: Awaitable[str]) -> str:
    try:
        return await asyncio.wait_for(check, CHECK_TIMEOUT)
    except TimeoutError:
        return f"failing: no answer within {CHECK_TIMEOUT:g} s"
    except Exception as exc:  # a health check reports failures, it must not raise them
        return f"failing: {exc}"
