"""Retries with backoff and a circuit breaker for every call to an outside service.

One :class:`Resilience` per process. Each call names the workspace and the integration; each
(workspace, integration) pair has its own circuit, so one workspace's broken Jira never blocks
another's. The policy is generic: a client passes a :data:`Classifier` that says, for one
exception it raised, whether the failure is transient (retry, count toward the circuit), whether
the service asked to wait (``Retry-After``), and whether repeating a write is safe.

Per call: up to :attr:`RetryPolicy.attempts` attempts; waits grow exponentially with jitter
(tenacity's ``wait_exponential_jitter``), or follow the service's ``Retry-After`` when it is at
most :attr:`RetryPolicy.max_retry_after` (a longer one is not waited for: the call fails at once
with the client's readable error). Each attempt passes the circuit first: after
:attr:`BreakerPolicy.failure_threshold` consecutive transient failures the circuit opens for
:attr:`BreakerPolicy.reset_timeout` seconds and calls fail at once with
:class:`CircuitOpenError`; then one probe call is let through (half-open) — success closes the
circuit, a transient failure opens it again.

Why our own circuit and not a library: pybreaker has no released asyncio support, aiobreaker is
unmaintained, and purgatory lets every concurrent caller through while half-open and keeps no
last error nor remaining open time, which the user message and ``/nox-status`` need.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

import structlog
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_before_delay,
    wait_exponential_jitter,
)

from integrations.errors import IntegrationError

log = structlog.get_logger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Failure:
    """A client's verdict on one failed attempt.

    ``transient``: the service is unwell (unreachable, timed out, 429, 5xx) — retry, and count
    toward the circuit. ``retry_after``: seconds the service asked to wait (HTTP ``Retry-After``,
    RFC 9110 §10.2.3). ``unprocessed``: the service certainly did not act on the request
    (connection refused, 429, 503), so repeating a write cannot duplicate it.
    ``caller_fault``: the request itself was wrong (400, 404) — the service is healthy.
    A failure that is none of these (401, 403, not a Jira URL) is not retried and shows as
    failing in :meth:`Resilience.health` without opening the circuit.
    """

    transient: bool = False
    retry_after: float | None = None
    unprocessed: bool = False
    caller_fault: bool = False


Classifier = Callable[[BaseException], Failure]
"""Maps an exception raised by a client's call to a :class:`Failure`."""


@dataclass(frozen=True)
class RetryPolicy:
    """Retry timing, in seconds. ``attempts`` counts the first call."""

    attempts: int = 3
    backoff: float = 0.5
    max_backoff: float = 8.0
    jitter: float = 0.5
    max_retry_after: float = 30.0


@dataclass(frozen=True)
class BreakerPolicy:
    """Open after ``failure_threshold`` consecutive transient failures, for ``reset_timeout``
    seconds."""

    failure_threshold: int = 5
    reset_timeout: float = 30.0


HealthState = Literal["ok", "failing", "circuit open", "not configured"]


@dataclass(frozen=True)
class Health:
    """One integration's state for ``/nox-status``; ``str()`` gives e.g. ``failing: <error>``."""

    state: HealthState
    detail: str | None = None

    def __str__(self) -> str:
        return f"{self.state}: {self.detail}" if self.detail else self.state


@dataclass(frozen=True)
class CircuitState:
    """One (workspace, integration) circuit as the metrics scrape reads it.

    ``open`` is true from the moment the circuit opens until a probe succeeds (half-open
    included); ``failures`` counts consecutive transient failures."""

    workspace: str
    integration: str
    open: bool
    failures: int


class CircuitOpenError(IntegrationError):
    """Raised at once, without calling the service, while its circuit is open.

    ``retry_in`` is the number of seconds until a probe call is let through (0 while a probe is
    under way).
    """

    def __init__(self, integration: str, failures: int, retry_in: float) -> None:
        label = integration.capitalize()
        when = (f"retrying in {math.ceil(retry_in)} s" if retry_in > 0
                else "checking whether it is back")
        super().__init__(integration,
                         f"{label} is unavailable (circuit open after {failures} failures; "
                         f"{when})")
        self.retry_in = retry_in


class _Circuit:
    """Consecutive-failure circuit of one (workspace, integration); asyncio-only, no locks."""

    def __init__(self, policy: BreakerPolicy, clock: Callable[[], float]) -> None:
        self.policy = policy
        self.clock = clock
        self.failures = 0
        self.opened_at: float | None = None
        self.probing = False
        self.last_error: str | None = None

    def retry_in(self) -> float:
        assert self.opened_at is not None
        return max(0.0, self.opened_at + self.policy.reset_timeout - self.clock())

    def admit(self, integration: str) -> None:
        """Let a call through, or raise :class:`CircuitOpenError`."""
        if self.opened_at is None:
            return
        if self.probing or self.retry_in() > 0:
            raise CircuitOpenError(integration, self.failures, self.retry_in())
        self.probing = True

    def succeeded(self) -> None:
        self.failures, self.opened_at, self.probing, self.last_error = 0, None, False, None

    def failed(self, failure: Failure, message: str) -> bool:
        """Record a failed attempt; True when this opened the circuit."""
        was_probe, self.probing = self.probing, False
        if failure.caller_fault:
            self.succeeded()
            return False
        self.last_error = message
        if not failure.transient:
            self.failures, self.opened_at = 0, None
            return False
        self.failures += 1
        if was_probe or self.failures >= self.policy.failure_threshold:
            self.opened_at = self.clock()
            return True
        return False

    def abandoned(self) -> None:
        """The attempt was cancelled: it proves nothing, so let the next call probe."""
        self.probing = False


def _describe(exc: BaseException) -> str:
    # Only our own errors promise a message without credentials (a JIRAError's str() holds the
    # request headers, Authorization included).
    return str(exc) if isinstance(exc, IntegrationError) else type(exc).__name__


class Resilience:
    """Retry and circuit-breaker policy shared by the integration clients.

    ``sleep`` and ``clock`` (monotonic seconds) default to ``asyncio.sleep`` and
    ``time.monotonic``; tests pass a sleep that records the waits the policy computed.
    """

    def __init__(
        self,
        retry: RetryPolicy | None = None,
        breaker: BreakerPolicy | None = None,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.retry = retry or RetryPolicy()
        self.breaker = breaker or BreakerPolicy()
        self._sleep = sleep
        self._clock = clock
        self._circuits: dict[tuple[str, str], _Circuit] = {}
        self._backoff = wait_exponential_jitter(
            multiplier=self.retry.backoff, max=self.retry.max_backoff, jitter=self.retry.jitter
        )

    def _circuit(self, workspace: str, integration: str) -> _Circuit:
        key = (workspace, integration)
        if key not in self._circuits:
            self._circuits[key] = _Circuit(self.breaker, self._clock)
        return self._circuits[key]

    async def call(
        self,
        workspace: str,
        integration: str,
        fn: Callable[[], Awaitable[T]],
        *,
        classify: Classifier,
        idempotent: bool = True,
        within: float | None = None,
    ) -> T:
        """Await ``fn()`` under the retry policy and the (workspace, integration) circuit.

        Writes pass ``idempotent=False``: they are repeated only after failures the classifier
        marks ``unprocessed``, so a request that may have reached the service is never sent
        twice. With ``within`` (seconds), no attempt starts after that long from the first
        (tenacity's ``stop_before_delay``): the caller's deadline covers the retries too.
        Returns ``fn``'s result; raises :class:`CircuitOpenError` while the circuit is open,
        else the last exception ``fn`` raised.
        """
        circuit = self._circuit(workspace, integration)

        def worth_retrying(exc: BaseException) -> bool:
            if isinstance(exc, CircuitOpenError):
                return False
            failure = classify(exc)
            if not failure.transient or not (idempotent or failure.unprocessed):
                return False
            return failure.retry_after is None or failure.retry_after <= self.retry.max_retry_after

        def wait(state: RetryCallState) -> float:
            assert state.outcome is not None
            retry_after = classify(state.outcome.exception()).retry_after
            return retry_after if retry_after is not None else self._backoff(state)

        def before_sleep(state: RetryCallState) -> None:
            assert state.outcome is not None and state.next_action is not None
            log.warning("integration_retry", workspace=workspace, integration=integration,
                        attempt=state.attempt_number, wait_s=round(state.next_action.sleep, 3),
                        error=_describe(state.outcome.exception()))

        async def attempt() -> T:
            circuit.admit(integration)
            try:
                result = await fn()
            except Exception as exc:
                if circuit.failed(classify(exc), _describe(exc)):
                    log.warning("circuit_opened", workspace=workspace, integration=integration,
                                failures=circuit.failures,
                                reset_timeout_s=self.breaker.reset_timeout)
                raise
            except BaseException:
                circuit.abandoned()
                raise
            if circuit.failures or circuit.opened_at is not None:
                log.info("circuit_closed", workspace=workspace, integration=integration)
            circuit.succeeded()
            return result

        stop = stop_after_attempt(self.retry.attempts)
        if within is not None:
            stop = stop | stop_before_delay(within)
        retrying = AsyncRetrying(
            stop=stop,
            wait=wait,
            retry=retry_if_exception(worth_retrying),
            sleep=self._sleep,
            before_sleep=before_sleep,
            reraise=True,
        )
        return await retrying(attempt)

    def health(self, workspace: str, integration: str, *, configured: bool = True) -> Health:
        """``ok``, ``failing: <last error>``, ``circuit open: retrying in N s`` or
        ``not configured`` (when the caller says the workspace has no credentials)."""
        if not configured:
            return Health("not configured")
        circuit = self._circuits.get((workspace, integration))
        if circuit is None:
            return Health("ok")
        if circuit.opened_at is not None:
            retry_in = circuit.retry_in()
            return Health("circuit open", f"retrying in {math.ceil(retry_in)} s"
                          if retry_in > 0 and not circuit.probing else "checking")
        if circuit.last_error:
            return Health("failing", circuit.last_error)
        return Health("ok")

    def forget(self, workspace: str, integration: str) -> None:
        """Drop the circuit and last error, e.g. after the workspace saved new credentials."""
        self._circuits.pop((workspace, integration), None)

    def reset(self, workspace: str, integration: str) -> bool:
        """Close the (workspace, integration) circuit at once, as a workspace admin asked from
        ``/nox-status``; the next call goes straight to the service. Only that pair is touched.

        Returns whether the circuit was open.
        """
        circuit = self._circuits.pop((workspace, integration), None)
        was_open = circuit is not None and circuit.opened_at is not None
        if was_open:
            log.info("circuit_reset", workspace=workspace, integration=integration)
        return was_open

    def states(self) -> list[CircuitState]:
        """Every circuit this process keeps (a workspace appears once it called the service)."""
        return [
            CircuitState(workspace, integration, circuit.opened_at is not None, circuit.failures)
            for (workspace, integration), circuit in list(self._circuits.items())
        ]
