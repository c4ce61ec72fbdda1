"""The deployment's Prometheus figures, rendered for ``GET /metrics`` (see bot/metrics.py).

Two kinds of figure, told apart in each metric's help text:

* **Stored** — turns, LLM calls, tokens and cost, tool calls, approval requests, briefing runs.
  Read from the database at scrape time, so they survive restarts and need no hook in the
  code that writes them. Every replica reports the same totals: aggregate them across
  instances with ``max``, never ``sum``.

  The counters are kept cheap by counting each row once (:class:`StoredCounters`): rows up to
  the highest ids seen :data:`SETTLE` seconds ago are *settled* and added to running sums;
  each scrape groups only the rows after them. A process's first scrape counts everything
  once. ``SETTLE`` covers transactions that commit after a later id (PostgreSQL sequences
  hand ids out before commit); a turn still running holds its range back, unless it started
  more than :data:`STUCK` ago (a process killed mid-turn leaves such a row).
* **Process** — the turn latency histogram, integration circuits, the cross-session gateway
  and the ``process_*`` figures. Each process reports its own: ``sum`` them.
* **Budgets** — rejections by workspace and limit, as ``budget_rejections`` reports them.

Labels are bounded: ``team_id`` (the tenant id — a workspace's team id, or the enterprise id
of an org-wide install), persona, model, tool (names outside the tool registry become
``other``), and the fixed sets of outcomes and states. No user id or free text is ever a label.
Metric names follow https://prometheus.io/docs/practices/naming/ (base units, ``_total``).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import astuple, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import structlog
from prometheus_client import CollectorRegistry, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from integrations.resilience import Resilience
from storage.repositories.metrics import Counts, Marks, MetricsRepository, States

if TYPE_CHECKING:
    from integrations.cross_session import CrossSession

log = structlog.get_logger(__name__)

CostOf = Callable[[str, int, int], float | None]
"""``cost(model, prompt_tokens, completion_tokens)`` → US dollars, ``None`` for an unpriced
model. Prices are linear in tokens, so the cost of summed tokens is the summed cost."""

BudgetRejections = Callable[[], Mapping[tuple[str, str], int]]
"""Returns the number of refused turns per ``(team_id, limit)`` so far
(:meth:`agents.budgets.Budgets.rejections`)."""

OTHER_TOOL = "other"
TURN_BUCKETS = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)  # seconds
STORED = "Stored figure, the same on every replica (aggregate with max)."
SETTLE = 300.0  # seconds after which rows up to the ids then seen are counted for good
STUCK = timedelta(hours=1)  # a turn running longer is taken as dead for settling


class StoredCounters:
    """Running sums of the stored counters: settled rows are added once, newer ones are
    grouped at each :meth:`read`. ``clock`` is monotonic seconds (injected by tests)."""

    def __init__(
        self, repository: MetricsRepository, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.repository = repository
        self._clock = clock
        self._settled = Counts()
        self._marks = Marks()
        self._seen: deque[tuple[float, Marks]] = deque()

    async def read(self) -> Counts:
        """Every counter's total now. Raises what the database raises."""
        now = self._clock()
        self._seen.append((now, await self.repository.marks()))
        target: Marks | None = None
        while self._seen and now - self._seen[0][0] >= SETTLE:
            target = self._seen.popleft()[1]
        if target is not None:
            # Marks only move forward (erasing a workspace may lower a table's highest id).
            target = Marks(*(max(new, old) for new, old in zip(
                astuple(target), astuple(self._marks), strict=True)))
            running = await self.repository.first_running_turn(
                self._marks.turns, target.turns, datetime.now(UTC) - STUCK
            )
            if running is not None:
                target = replace(target, turns=running - 1)
            added = await self.repository.counts(self._marks, target)
            self._settled, self._marks = self._settled + added, target
        return self._settled + await self.repository.counts(self._marks)


class TurnLatency:
    """``jamono_turn_duration_seconds{persona, outcome}``: wall time of each turn, observed by
    the agent runtime as the turn ends (:meth:`observe` is its ``observe_turn`` hook)."""

    def __init__(self) -> None:
        self.histogram = Histogram(
            "jamono_turn_duration_seconds",
            "Seconds from a message reaching the agent loop to its answer (this process).",
            ["persona", "outcome"],
            buckets=TURN_BUCKETS,
            registry=None,  # rendered by JamonoCollector, not by a global registry
        )

    def observe(self, persona: str, outcome: str, seconds: float) -> None:
        self.histogram.labels(persona=persona, outcome=outcome).observe(seconds)


class JamonoCollector(Collector):
    """A prometheus_client collector over a snapshot taken by :meth:`refresh`.

    ``collect()`` is synchronous (prometheus_client's contract) while the database is not, so
    the scrape handler awaits :meth:`refresh` first and renders afterwards. ``cost_of`` and
    ``budget_rejections`` are optional: without them their metrics are declared but empty.
    """

    def __init__(
        self,
        *,
        repository: MetricsRepository,
        resilience: Resilience,
        turn_latency: TurnLatency,
        tool_names: Iterable[str],
        cross_session: CrossSession | None = None,
        cost_of: CostOf | None = None,
        budget_rejections: BudgetRejections | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.repository = repository
        self.counters = StoredCounters(repository, clock=clock)
        self.resilience = resilience
        self.turn_latency = turn_latency
        self.tool_names = frozenset(tool_names)
        self.cross_session = cross_session
        self.cost_of = cost_of
        self.budget_rejections = budget_rejections
        self._snapshot: tuple[Counts, States] | None = None
        self._rejections: Mapping[tuple[str, str], int] = {}

    async def refresh(self) -> None:
        """Read the stored figures and the budget rejections; a failing read is logged and
        shows as ``jamono_metrics_storage_up 0`` (the process figures are still served)."""
        try:
            self._snapshot = (await self.counters.read(), await self.repository.states())
        except Exception as exc:  # a scrape reports the database down, it must not fail
            log.warning("metrics_storage_failed", error=repr(exc))
            self._snapshot = None
        if self.budget_rejections is not None:
            try:
                self._rejections = self.budget_rejections()
            except Exception as exc:
                log.warning("metrics_budget_rejections_failed", error=repr(exc))

    def collect(self) -> Iterator[Metric]:
        yield from self._stored()
        yield from self.turn_latency.histogram.collect()
        yield from self._circuits()
        yield from self._gateway()
        rejections = CounterMetricFamily(
            "jamono_budget_rejections",
            "Turns refused by a budget or rate limit, by workspace and limit, as the budgets "
            "module counts them.",
            labels=["team_id", "limit"],
        )
        for (team_id, limit), count in sorted(self._rejections.items()):
            rejections.add_metric([team_id, limit], count)
        yield rejections

    def _stored(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "jamono_metrics_storage_up",
            "1 when this scrape read the stored figures from the database, else 0.",
        )
        up.add_metric([], 0 if self._snapshot is None else 1)
        yield up
        counts, states = self._snapshot or (Counts(), States([], []))
        turns = CounterMetricFamily(
            "jamono_turns", f"Finished turns by workspace, persona and outcome. {STORED}",
            labels=["team_id", "persona", "outcome"],
        )
        for (team_id, persona, status), count in sorted(counts.turns.items()):
            turns.add_metric([team_id, persona, status], count)
        calls = CounterMetricFamily(
            "jamono_llm_calls", f"Chat Completions calls by workspace and model. {STORED}",
            labels=["team_id", "model"],
        )
        tokens = CounterMetricFamily(
            "jamono_llm_tokens",
            f"LLM tokens by workspace, model and kind (prompt, completion). {STORED}",
            labels=["team_id", "model", "kind"],
        )
        cost = CounterMetricFamily(
            "jamono_llm_cost_usd",
            f"LLM cost in US dollars by workspace and model, from the price table. {STORED}",
            labels=["team_id", "model"],
        )
        for (team_id, model), n in sorted(counts.llm_calls.items()):
            prompt = counts.prompt_tokens[(team_id, model)]
            completion = counts.completion_tokens[(team_id, model)]
            calls.add_metric([team_id, model], n)
            tokens.add_metric([team_id, model, "prompt"], prompt)
            tokens.add_metric([team_id, model, "completion"], completion)
            usd = self.cost_of(model, prompt, completion) if self.cost_of else None
            if usd is not None:
                cost.add_metric([team_id, model], usd)
        tools = CounterMetricFamily(
            "jamono_tool_calls", f"Tool calls by tool and outcome. {STORED}",
            labels=["tool", "outcome"],
        )
        by_tool: dict[tuple[str, str], int] = {}
        for (tool, status), count in counts.tool_calls.items():
            # A model may name any tool; only registered names become label values.
            key = (tool if tool in self.tool_names else OTHER_TOOL, status)
            by_tool[key] = by_tool.get(key, 0) + count
        for (tool, status), count in sorted(by_tool.items()):
            tools.add_metric([tool, status], count)
        approvals = GaugeMetricFamily(
            "jamono_approval_requests",
            f"Approval requests by workspace and current state. {STORED}",
            labels=["team_id", "state"],
        )
        for team_id, state, count in states.approvals:
            approvals.add_metric([team_id, state], count)
        briefings = CounterMetricFamily(
            "jamono_briefing_runs",
            f"Finished briefing runs by outcome (posted, failed, skipped). {STORED}",
            labels=["outcome"],
        )
        for state, count in states.briefings:
            briefings.add_metric([state], count)
        yield from (turns, calls, tokens, cost, tools, approvals, briefings)

    def _circuits(self) -> Iterator[Metric]:
        opened = GaugeMetricFamily(
            "jamono_integration_circuit_open",
            "1 while a workspace's integration circuit is open or half-open (this process).",
            labels=["team_id", "integration"],
        )
        failures = GaugeMetricFamily(
            "jamono_integration_consecutive_failures",
            "Consecutive transient failures of a workspace's integration (this process).",
            labels=["team_id", "integration"],
        )
        for state in self.resilience.states():
            opened.add_metric([state.workspace, state.integration], int(state.open))
            failures.add_metric([state.workspace, state.integration], state.failures)
        yield from (opened, failures)

    def _gateway(self) -> Iterator[Metric]:
        sessions = GaugeMetricFamily(
            "jamono_gateway_sessions", "Cross-session sessions connected to this process."
        )
        messages = CounterMetricFamily(
            "jamono_gateway_messages", "WebSocket text messages received (this process)."
        )
        registered = CounterMetricFamily(
            "jamono_gateway_sessions_registered", "Sessions admitted (this process)."
        )
        refusals = CounterMetricFamily(
            "jamono_gateway_refusals",
            "Connections refused or closed by policy, by reason (this process).",
            labels=["reason"],
        )
        if self.cross_session is not None:
            stats = self.cross_session.gateway.stats
            sessions.add_metric([], len(self.cross_session.router.sessions))
            messages.add_metric([], stats.messages)
            registered.add_metric([], stats.registered)
            for reason, count in sorted(stats.refusals.items()):
                refusals.add_metric([reason], count)
        yield from (sessions, messages, registered, refusals)


class Metrics:
    """The process's registry: :class:`JamonoCollector` and prometheus_client's process
    collector (CPU, memory, open files). One scrape at a time reads the database."""

    def __init__(self, collector: JamonoCollector) -> None:
        self.collector = collector
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)
        ProcessCollector(registry=self.registry)
        self._lock = asyncio.Lock()

    async def exposition(self) -> bytes:
        """The Prometheus text format (version 0.0.4) of every metric, freshly read."""
        async with self._lock:
            await self.collector.refresh()
            return generate_latest(self.registry)
