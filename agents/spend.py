"""A workspace's LLM usage since 00:00 UTC, as the daily budgets check it before each call.

Summing the day's ``llm_usage`` rows for every call costs a query that grows with the day's
traffic. :class:`DailySpend` reads the sum at most once per :data:`REFRESH` per workspace and
adds what this process stores meanwhile, so a check is exact for this process's own turns
(up to the calls in flight, which no check can count) and lags other processes' by at most
:data:`REFRESH`. Usage stored while the sum is being read may be missed until the next read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

from storage.repositories.budgets import BudgetRepository
from storage.tenancy import Tenant

REFRESH = timedelta(seconds=10)
PRUNE_AT = 10_000  # workspaces remembered before those of earlier days are dropped

ByModel = dict[str, tuple[int, int]]
"""``{model: (prompt_tokens, completion_tokens)}``"""


class Usage(Protocol):
    """One LLM call's usage (:class:`storage.repositories.conversations.LLMCallUsage`)."""

    model: str
    prompt_tokens: int
    completion_tokens: int


def day_start(now: datetime) -> datetime:
    """00:00 UTC of ``now``'s day: daily budgets count from there."""
    return now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def add_usage(by_model: ByModel, usage: Sequence[Usage]) -> None:
    """Add each call of ``usage`` to ``by_model``, in place."""
    for call in usage:
        prompt, completion = by_model.get(call.model, (0, 0))
        by_model[call.model] = (prompt + call.prompt_tokens, completion + call.completion_tokens)


@dataclass
class _Day:
    day: datetime
    read_at: datetime
    by_model: ByModel = field(default_factory=dict)


class DailySpend:
    """``clock`` gives the aware time (injected in tests)."""

    def __init__(self, repo: BudgetRepository, clock: Callable[[], datetime]) -> None:
        self._repo = repo
        self._clock = clock
        self._days: dict[str, _Day] = {}

    async def by_model(self, tenant: Tenant) -> ByModel:
        """The workspace's tokens today by model (a copy, the caller's to change)."""
        now = self._clock()
        day = day_start(now)
        known = self._days.get(tenant.id)
        if known is None or known.day != day or now - known.read_at >= REFRESH:
            if len(self._days) >= PRUNE_AT:
                self._days = {key: d for key, d in self._days.items() if d.day == day}
            known = _Day(day, now, await self._repo.usage_by_model(tenant, day))
            self._days[tenant.id] = known
        return dict(known.by_model)

    def stored(self, tenant: Tenant, usage: Sequence[Usage]) -> None:
        """This process stored ``usage`` for the workspace (today's, as it just happened)."""
        known = self._days.get(tenant.id)
        if known is not None and known.day == day_start(self._clock()):
            add_usage(known.by_model, usage)
