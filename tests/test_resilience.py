"""The retry and circuit-breaker policy on its own: scripted failures, a settable clock and a
sleep that records the waits the policy computed (nothing here depends on wall-clock speed)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from integrations.errors import IntegrationError
from integrations.resilience import (
    BreakerPolicy,
    CircuitOpenError,
    Failure,
    Health,
    Resilience,
    RetryPolicy,
)

TRANSIENT = Failure(transient=True)
UNPROCESSED = Failure(transient=True, unprocessed=True)
CALLER = Failure(caller_fault=True)
PERMANENT = Failure()


class Broken(IntegrationError):
    def __init__(self, failure: Failure, message: str = "thing is broken") -> None:
        super().__init__("thing", message)
        self.failure = failure


def classify(exc: BaseException) -> Failure:
    return exc.failure if isinstance(exc, Broken) else Failure()


class Script:
    """An async callable that raises the scripted failures in turn, then returns "done"."""

    def __init__(self, *failures: Failure) -> None:
        self.failures = list(failures)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.failures:
            raise Broken(self.failures.pop(0))
        return "done"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def waits() -> list[float]:
    return []


def make(waits: list[float], *, attempts=3, threshold=5, reset=30.0, clock=None,
         max_retry_after=30.0) -> Resilience:
    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    return Resilience(
        RetryPolicy(attempts=attempts, backoff=0.5, max_backoff=8.0, jitter=0.5,
                    max_retry_after=max_retry_after),
        BreakerPolicy(failure_threshold=threshold, reset_timeout=reset),
        sleep=sleep, clock=clock or Clock(),
    )


@pytest.mark.parametrize(
    ("failure", "idempotent", "calls"),
    [
        (TRANSIENT, True, 3),
        (TRANSIENT, False, 1),  # a write that may have reached the service is never repeated
        (UNPROCESSED, False, 3),
        (CALLER, True, 1),
        (PERMANENT, True, 1),
        (Failure(transient=True, retry_after=5), True, 3),
        (Failure(transient=True, retry_after=31), True, 1),  # longer than the cap: fail now
    ],
)
async def test_which_failures_are_retried(waits, failure, idempotent, calls):
    resilience = make(waits)
    script = Script(*[failure] * 5)
    with pytest.raises(Broken):
        await resilience.call("T1", "thing", script, classify=classify, idempotent=idempotent)
    assert script.calls == calls
    assert len(waits) == calls - 1


async def test_backoff_grows_exponentially_with_bounded_jitter(waits):
    resilience = make(waits, attempts=5, threshold=10)
    assert await resilience.call("T1", "thing", Script(*[TRANSIENT] * 4),
                                 classify=classify) == "done"
    assert len(waits) == 4
    for n, wait in enumerate(waits):
        base = min(0.5 * 2**n, 8.0)
        assert base <= wait <= min(base + 0.5, 8.0)


async def test_retry_after_is_waited_exactly(waits):
    resilience = make(waits)
    script = Script(Failure(transient=True, retry_after=7), Failure(transient=True,
                                                                     retry_after=2))
    assert await resilience.call("T1", "thing", script, classify=classify) == "done"
    assert waits == [7, 2]


async def test_circuit_opens_after_consecutive_failures_and_answers_at_once(waits):
    clock = Clock()
    resilience = make(waits, attempts=1, threshold=3, reset=30, clock=clock)
    script = Script(*[TRANSIENT] * 10)
    for _ in range(3):
        with pytest.raises(Broken):
            await resilience.call("T1", "thing", script, classify=classify)
    clock.now += 6
    with pytest.raises(CircuitOpenError) as raised:
        await resilience.call("T1", "thing", script, classify=classify)
    assert script.calls == 3
    assert str(raised.value) == ("Thing is unavailable (circuit open after 3 failures; "
                                 "retrying in 24 s)")
    assert raised.value.integration == "thing"
    assert isinstance(raised.value, IntegrationError)
    assert resilience.health("T1", "thing") == Health("circuit open", "retrying in 24 s")


async def test_a_success_resets_the_consecutive_count(waits):
    resilience = make(waits, attempts=1, threshold=3)
    for failure in (TRANSIENT, TRANSIENT, None, TRANSIENT, TRANSIENT):
        script = Script(failure) if failure else Script()
        with contextlib.suppress(Broken):
            await resilience.call("T1", "thing", script, classify=classify)
    assert resilience.health("T1", "thing") == Health("failing", "thing is broken")


async def test_retries_stop_when_the_circuit_opens(waits):
    resilience = make(waits, attempts=5, threshold=2)
    script = Script(*[TRANSIENT] * 10)
    with pytest.raises(CircuitOpenError):
        await resilience.call("T1", "thing", script, classify=classify)
    assert script.calls == 2


async def test_half_open_lets_one_probe_through_then_closes(waits):
    clock = Clock()
    resilience = make(waits, attempts=1, threshold=1, reset=10, clock=clock)
    with pytest.raises(Broken):
        await resilience.call("T1", "thing", Script(TRANSIENT), classify=classify)
    clock.now += 10
    release = asyncio.Event()
    probed = 0

    async def probe() -> str:
        nonlocal probed
        probed += 1
        await release.wait()
        return "back"

    first = asyncio.create_task(resilience.call("T1", "thing", probe, classify=classify))
    await asyncio.sleep(0)
    with pytest.raises(CircuitOpenError, match="checking whether it is back"):
        await resilience.call("T1", "thing", probe, classify=classify)
    release.set()
    assert await first == "back"
    assert probed == 1
    assert resilience.health("T1", "thing") == Health("ok")
    assert await resilience.call("T1", "thing", Script(), classify=classify) == "done"


async def test_a_failed_probe_opens_the_circuit_again(waits):
    clock = Clock()
    resilience = make(waits, attempts=3, threshold=2, reset=10, clock=clock)
    with pytest.raises(CircuitOpenError):
        await resilience.call("T1", "thing", Script(*[TRANSIENT] * 9), classify=classify)
    clock.now += 10
    probe = Script(*[TRANSIENT] * 9)
    with pytest.raises(CircuitOpenError, match="circuit open after 3 failures; retrying in 10 s"):
        await resilience.call("T1", "thing", probe, classify=classify)
    assert probe.calls == 1


async def test_a_cancelled_probe_lets_the_next_call_probe(waits):
    clock = Clock()
    resilience = make(waits, attempts=1, threshold=1, reset=10, clock=clock)
    with pytest.raises(Broken):
        await resilience.call("T1", "thing", Script(TRANSIENT), classify=classify)
    clock.now += 10

    async def hang() -> str:
        await asyncio.Event().wait()
        return "never"

    task = asyncio.create_task(resilience.call("T1", "thing", hang, classify=classify))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await resilience.call("T1", "thing", Script(), classify=classify) == "done"


async def test_circuits_are_per_workspace_and_integration(waits):
    resilience = make(waits, attempts=1, threshold=1)
    with pytest.raises(Broken):
        await resilience.call("T1", "thing", Script(TRANSIENT), classify=classify)
    assert resilience.health("T1", "thing").state == "circuit open"
    assert await resilience.call("T2", "thing", Script(), classify=classify) == "done"
    assert await resilience.call("T1", "other", Script(), classify=classify) == "done"
    assert resilience.health("T2", "thing") == Health("ok")


@pytest.mark.parametrize(
    ("failures", "expected"),
    [
        ([], "ok"),
        ([PERMANENT], "failing: thing is broken"),
        ([CALLER], "ok"),  # a bad request says nothing about the service's health
        ([TRANSIENT], "failing: thing is broken"),
        ([TRANSIENT, CALLER], "ok"),
    ],
)
async def test_health(waits, failures, expected):
    resilience = make(waits, attempts=1)
    for failure in failures:
        with pytest.raises(Broken):
            await resilience.call("T1", "thing", Script(failure), classify=classify)
    assert str(resilience.health("T1", "thing")) == expected
    assert str(resilience.health("T1", "thing", configured=False)) == "not configured"


async def test_a_permanent_failure_does_not_count_toward_the_circuit(waits):
    resilience = make(waits, attempts=1, threshold=2)
    for failure in (TRANSIENT, PERMANENT, TRANSIENT):
        with pytest.raises(Broken):
            await resilience.call("T1", "thing", Script(failure), classify=classify)
    assert resilience.health("T1", "thing").state == "failing"


async def test_forget_closes_the_circuit(waits):
    resilience = make(waits, attempts=1, threshold=1)
    with pytest.raises(Broken):
        await resilience.call("T1", "thing", Script(TRANSIENT), classify=classify)
    resilience.forget("T1", "thing")
    assert resilience.health("T1", "thing") == Health("ok")
    assert await resilience.call("T1", "thing", Script(), classify=classify) == "done"


async def test_unknown_exceptions_pass_through_without_leaking_their_text(waits):
    resilience = make(waits)

    async def boom() -> None:
        raise RuntimeError("Authorization: Basic c2VjcmV0")

    with pytest.raises(RuntimeError):
        await resilience.call("T1", "thing", boom, classify=classify)
    assert str(resilience.health("T1", "thing")) == "failing: RuntimeError"
