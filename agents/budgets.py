"""Budgets and limits on LLM turns, checked before every LLM call a workspace causes.

A turn is admitted when the person and the workspace are under their turns per minute (moving
window, the ``limits`` library; in Redis across replicas when ``REDIS_URL`` is set, else in
process memory) and the workspace has a free slot among its concurrent turns (a Redis sorted
set with leases across replicas, else per process). Before each LLM call (every round of a tool
loop, and a briefing's opening) the workspace's tokens and cost since 00:00 UTC are checked
against its daily budgets; the cost comes from a price table per model. A model reply gets at
most ``tool_calls_per_reply`` of its tool calls executed.

Every limit has a deployment default (settings) that the operator may override per workspace
(``jamono config --team T limit NAME VALUE``, stored in ``workspace_limits``); a workspace's
admins cannot change them. A limit of 0 is off.

The decisions are plain functions (:func:`spend_refusal`, :func:`refusal_text`,
:meth:`PriceTable.price`, :meth:`ModelChoice.resolve`); :class:`Budgets` does the I/O.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Protocol

import structlog
from limits import RateLimitItem, RateLimitItemPerMinute, RateLimitItemPerSecond
from limits.aio.storage import MemoryStorage, RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter
from redis.asyncio import Redis

from agents.spend import DailySpend, Usage, add_usage, day_start
from storage.repositories.budgets import BudgetRepository
from storage.tenancy import Tenant

log = structlog.get_logger(__name__)

TURN_LEASE = 900.0
"""Seconds a concurrency slot is held at most: a replica that dies mid-turn frees it after this."""

#: A workspace's minute of turns is spread over its slices of BURST_SLICE_SECONDS: at most
#: that share of it (never fewer than BURST_FLOOR turns) starts in any one slice. A moving
#: minute alone lets a flood start the whole minute's turns at once, and their bursts of work
#: are what the other workspaces on the process feel.
BURST_SLICE_SECONDS = 5
BURST_FLOOR = 5

#: How long a person told of a limit with no reset time (concurrency) is not told again.
QUIET_WITHOUT_RESET = timedelta(minutes=1)
TOLD_PRUNE_AT = 10_000  # remembered notices before the expired ones are dropped

Price = tuple[float, float]
"""USD per million tokens: (input/prompt, output/completion)."""

# Public list prices, USD per million tokens (openai.com/api/pricing, anthropic.com/pricing).
DEFAULT_PRICES: dict[str, Price] = {
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "o3-mini": (1.10, 4.40),
    "o4-mini": (1.10, 4.40),
    "o3": (2.00, 8.00),
    "claude-3-5-haiku": (0.80, 4.00),
    "claude-3-5-sonnet": (3.00, 15.00),
    "claude-3-7-sonnet": (3.00, 15.00),
    "claude-sonnet-4": (3.00, 15.00),
    "claude-opus-4": (15.00, 75.00),
}


class Limit(StrEnum):
    """The names of the limits, as settings, overrides and rejection counts spell them."""

    TURNS_PER_MINUTE_USER = "turns_per_minute_user"
    TURNS_PER_MINUTE_WORKSPACE = "turns_per_minute_workspace"
    CONCURRENT_TURNS = "concurrent_turns"
    TOKENS_PER_DAY = "tokens_per_day"
    USD_PER_DAY = "usd_per_day"
    TOOL_CALLS_PER_REPLY = "tool_calls_per_reply"


@dataclass(frozen=True)
class Limits:
    """The limits in force for one workspace; 0 turns a limit off. Field names are
    :class:`Limit` values."""

    turns_per_minute_user: int
    turns_per_minute_workspace: int
    concurrent_turns: int
    tokens_per_day: int
    usd_per_day: float
    tool_calls_per_reply: int

    def with_overrides(self, overrides: Mapping[str, float]) -> Limits:
        """These limits with the operator's per-workspace values (unknown names ignored)."""
        known = {f.name: f.type for f in fields(self)}
        changes = {
            name: (float(value) if known[name] in (float, "float") else int(value))
            for name, value in overrides.items()
            if name in known
        }
        return replace(self, **changes)


def limit_named(name: str) -> Limit:
    """The limit called ``name``. Raises :class:`ValueError` listing the names otherwise."""
    try:
        return Limit(name)
    except ValueError:
        raise ValueError(
            f"unknown limit {name!r}; limits: {', '.join(limit.value for limit in Limit)}"
        ) from None


def parse_limit(name: str, text: str) -> float:
    """The value of limit ``name`` written as ``text`` (``"200000"``, ``"2.50"``).

    Raises:
        ValueError: an unknown name, or not a number ≥ 0 (whole for all but ``usd_per_day``);
            the message says what is accepted.
    """
    limit = limit_named(name)
    try:
        value = float(text) if limit is Limit.USD_PER_DAY else int(text)
    except ValueError:
        kind = "an amount in USD" if limit is Limit.USD_PER_DAY else "a whole number"
        raise ValueError(f"{name} takes {kind}, not {text!r}") from None
    if value < 0 or value != value:  # NaN
        raise ValueError(f"{name} must be 0 (off) or more")
    return value


@dataclass(frozen=True)
class PriceTable:
    """USD per million tokens by model; ``default`` prices any model not in ``prices``."""

    prices: Mapping[str, Price]
    default: Price

    def price(self, model: str) -> Price:
        """The price of ``model``: its own entry, else the longest entry it extends with a
        dated or versioned suffix (``gpt-4o-mini-2024-07-18`` → ``gpt-4o-mini``), else
        :attr:`default`."""
        if model in self.prices:
            return self.prices[model]
        extended = [name for name in self.prices if model.startswith(name + "-")]
        return self.prices[max(extended, key=len)] if extended else self.default

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int) -> float:
        """USD for one call (or a sum of calls) of ``model``."""
        prompt, completion = self.price(model)
        return (prompt_tokens * prompt + completion_tokens * completion) / 1_000_000


@dataclass(frozen=True)
class ModelChoice:
    """The deployment's model and the models a workspace admin may pick instead."""

    default: str
    allowed: frozenset[str]

    def __post_init__(self) -> None:
        object.__setattr__(self, "allowed", frozenset(self.allowed) | {self.default})

    def allows(self, model: str) -> bool:
        return model in self.allowed

    def resolve(self, requested: str | None) -> str:
        """The model a call uses: the workspace's pick while it is allowed, else the default
        (an override stored before the allow-list changed falls back)."""
        return requested if requested and requested in self.allowed else self.default


@dataclass(frozen=True)
class Refusal:
    """Why an LLM call does not happen. ``resets_at`` is ``None`` when the limit frees up on
    its own (a concurrent turn finishing), not at a known time."""

    limit: Limit
    message: str
    resets_at: datetime | None


class OverLimit(Exception):
    """An LLM call was refused by a budget or limit; :attr:`refusal` says which and until when."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal


def spend_refusal(
    limits: Limits, tokens_today: int, usd_today: float, now: datetime
) -> Refusal | None:
    """Whether the daily token or money budget refuses the next call at ``now`` (aware)."""
    resets = day_start(now) + timedelta(days=1)
    if limits.tokens_per_day and tokens_today >= limits.tokens_per_day:
        used = f"{tokens_today:,} of its {limits.tokens_per_day:,} LLM tokens for today"
        return Refusal(Limit.TOKENS_PER_DAY, refusal_text(Limit.TOKENS_PER_DAY, used, resets, now),
                       resets)
    if limits.usd_per_day and usd_today >= limits.usd_per_day:
        used = f"${usd_today:,.2f} of its ${limits.usd_per_day:,.2f} daily LLM budget"
        return Refusal(Limit.USD_PER_DAY, refusal_text(Limit.USD_PER_DAY, used, resets, now),
                       resets)
    return None


def workspace_burst(per_minute: int) -> int:
    """The most of a workspace's ``per_minute`` turns that may start in any
    :data:`BURST_SLICE_SECONDS` seconds."""
    slices = 60 // BURST_SLICE_SECONDS
    return min(per_minute, max(BURST_FLOOR, -(-per_minute // slices)))


def refusal_text(limit: Limit, detail: str, resets_at: datetime | None, now: datetime) -> str:
    """What the person reads: which limit, when it resets, and that their message is kept.

    ``detail`` completes the sentence naming the limit (a number and its unit).
    """
    lead = {
        Limit.TURNS_PER_MINUTE_USER: f"You have reached your limit of {detail}.",
        Limit.TURNS_PER_MINUTE_WORKSPACE: f"This workspace has reached its limit of {detail}.",
        Limit.CONCURRENT_TURNS: f"This workspace already has {detail}.",
        Limit.TOKENS_PER_DAY: f"This workspace has used {detail}.",
        Limit.USD_PER_DAY: f"This workspace has used {detail}.",
        Limit.TOOL_CALLS_PER_REPLY: f"At most {detail}.",
    }[limit]
    if resets_at is None:
        when = "It frees up as soon as one of those answers is finished (usually within a minute)."
    else:
        when = f"It resets at {resets_at:%H:%M:%S} UTC ({_in(resets_at - now)})."
    return (
        f"⏳ {lead} {when} Nothing is lost: your message is saved in this conversation, so "
        f"ask again after that (for example \"go on\") and I will pick it up. "
        f"The limit is `{limit.value}`; the operator of this Jamono deployment sets it."
    )


def _in(delta: timedelta) -> str:
    seconds = max(0, round(delta.total_seconds()))
    if seconds < 120:
        return f"in {seconds} s"
    hours, minutes = divmod(seconds // 60, 60)
    return f"in {hours} h {minutes} min" if hours else f"in {minutes} min"


@dataclass(frozen=True)
class SpendReport:
    """A workspace's usage today against its limits, for ``/nox-status``."""

    limits: Limits
    tokens_today: int
    usd_today: float
    resets_at: datetime  # next 00:00 UTC
    turns_running: int
    user_turns_left: int | None  # this minute; None when the limit is off
    workspace_turns_left: int | None


class _Slots(Protocol):
    async def acquire(self, tenant: Tenant, limit: int) -> str | None: ...
    async def release(self, tenant: Tenant, token: str) -> None: ...
    async def held(self, tenant: Tenant) -> int: ...


class _MemorySlots:
    """Concurrent turns per workspace in this process."""

    def __init__(self) -> None:
        self._held: dict[str, set[str]] = {}

    async def acquire(self, tenant: Tenant, limit: int) -> str | None:
        held = self._held.setdefault(tenant.id, set())
        if len(held) >= limit:
            return None
        token = uuid.uuid4().hex
        held.add(token)
        return token

    async def release(self, tenant: Tenant, token: str) -> None:
        held = self._held.get(tenant.id)
        if held is not None:
            held.discard(token)
            if not held:
                del self._held[tenant.id]

    async def held(self, tenant: Tenant) -> int:
        return len(self._held.get(tenant.id, ()))


# Leases expire on Redis's own clock (TIME), so replicas with skewed clocks agree.
_ACQUIRE = """
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', t)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], t + tonumber(ARGV[2]), ARGV[3])
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2])))
return 1
"""
_HELD = """
local now = redis.call('TIME')
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', tonumber(now[1]) + tonumber(now[2]) / 1000000)
return redis.call('ZCARD', KEYS[1])
"""


class _RedisSlots:
    """Concurrent turns per workspace across replicas: one sorted set of leases per workspace
    (member = turn token, score = lease end), trimmed and counted atomically in a script."""

    def __init__(self, redis: Redis, lease: float) -> None:
        self._redis = redis
        self._lease = lease
        self._acquire = redis.register_script(_ACQUIRE)
        self._held = redis.register_script(_HELD)

    @staticmethod
    def _key(tenant: Tenant) -> str:
        return f"jamono:turns:{tenant.id}"

    async def acquire(self, tenant: Tenant, limit: int) -> str | None:
        token = uuid.uuid4().hex
        got = await self._acquire(keys=[self._key(tenant)], args=[limit, self._lease, token])
        return token if got else None

    async def release(self, tenant: Tenant, token: str) -> None:
        await self._redis.zrem(self._key(tenant), token)

    async def held(self, tenant: Tenant) -> int:
        return int(await self._held(keys=[self._key(tenant)]))


class TurnBudget:
    """One admitted turn: its workspace's limits, the spend check before each LLM call and
    its concurrency slot (released when the ``async with`` block ends)."""

    def __init__(self, budgets: Budgets, tenant: Tenant, user_id: str) -> None:
        self._budgets = budgets
        self.tenant = tenant
        self.user_id = user_id
        self.limits = budgets.defaults
        self._slot: str | None = None

    async def __aenter__(self) -> TurnBudget:
        self.limits = await self._budgets.limits_for(self.tenant)
        await self._budgets._admit(self)
        return self

    async def __aexit__(self, *_: object) -> None:
        await self._release_slot()

    async def _release_slot(self) -> None:
        if self._slot is None:
            return
        slot, self._slot = self._slot, None
        try:
            await self._budgets._slots.release(self.tenant, slot)
        except Exception as exc:  # the turn is done; its lease expires on its own
            log.warning("turn_slot_release_failed", tenant=self.tenant.id, error=repr(exc))

    async def check(self, pending: Sequence[Usage] = ()) -> None:
        """Before an LLM call: raise :class:`OverLimit` when the workspace's daily tokens or
        cost, counting ``pending`` (this turn's calls, not stored yet), are used up."""
        refusal = await self._budgets._spend_refusal(self.tenant, self.limits, pending)
        if refusal is not None:
            raise OverLimit(refusal)

    def allowed_tool_calls(self, requested: int) -> int:
        """How many of a reply's ``requested`` tool calls run; counts a rejection when fewer."""
        cap = self.limits.tool_calls_per_reply
        if not cap or requested <= cap:
            return requested
        self._budgets._count(self.tenant, Limit.TOOL_CALLS_PER_REPLY)
        log.warning("tool_calls_over_limit", tenant=self.tenant.id, requested=requested, cap=cap)
        return cap


class Budgets:
    """Enforces the limits of every workspace. One instance per process; safe for concurrent
    turns.

    ``redis`` (a connected client) shares the rate windows and concurrency slots across
    replicas; without it both live in this process. ``clock`` gives the aware
    time that daily budgets count from (injected in tests).

    Read API for metrics: :meth:`rejections` gives ``{(tenant id, limit name): count}`` of
    refusals in this process since start; :meth:`cost` prices a call in USD.
    """

    def __init__(
        self,
        *,
        defaults: Limits,
        prices: PriceTable,
        models: ModelChoice,
        repo: BudgetRepository,
        redis: Redis | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        lease: float = TURN_LEASE,
    ) -> None:
        self.defaults = defaults
        self.prices = prices
        self.models = models
        self._repo = repo
        self._clock = clock
        self._spend = DailySpend(repo, clock)
        if redis is not None:
            # Through Jamono's own redis-py pool, rather than the library's default coredis
            # client and a second set of connections.
            storage = RedisStorage(
                "async+redis://",
                implementation="redispy",
                key_prefix="jamono:limits",
                connection_pool=redis.connection_pool,
            )
            self._slots: _Slots = _RedisSlots(redis, lease)
        else:
            storage = MemoryStorage()
            self._slots = _MemorySlots()
        self._window = MovingWindowRateLimiter(storage)
        self._rejections: Counter[tuple[str, str]] = Counter()
        self._told: dict[tuple[str, str, Limit], datetime] = {}

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int) -> float:
        """USD for ``prompt_tokens`` + ``completion_tokens`` of ``model`` (the price table)."""
        return self.prices.cost(model, prompt_tokens, completion_tokens)

    def first_notice(self, tenant: Tenant, user_id: str, refusal: Refusal) -> bool:
        """Whether ``user_id`` should be told of ``refusal``: the first time, and again once
        the limit has reset (or, for a limit with no reset time, after
        :data:`QUIET_WITHOUT_RESET`). A flood hears its refusal once, rather than answering
        each message with a post Slack allows about once a second per channel."""
        now = self._clock()
        if len(self._told) > TOLD_PRUNE_AT:
            self._told = {key: until for key, until in self._told.items() if until > now}
        key = (tenant.id, user_id, refusal.limit)
        if self._told.get(key, now) > now:
            return False
        self._told[key] = refusal.resets_at or now + QUIET_WITHOUT_RESET
        return True

    def rejections(self) -> dict[tuple[str, str], int]:
        """Refusals in this process since start: ``{(tenant id, limit name): count}``."""
        return dict(self._rejections)

    async def limits_for(self, tenant: Tenant) -> Limits:
        """The defaults with the operator's overrides for ``tenant``."""
        return self.defaults.with_overrides(await self._repo.overrides(tenant))

    def turn(self, tenant: Tenant, user_id: str) -> TurnBudget:
        """``async with budgets.turn(tenant, user) as budget:`` admits one turn.

        Raises (on entering):
            OverLimit: a turns-per-minute or concurrent-turns limit refuses it.
        """
        return TurnBudget(self, tenant, user_id)

    async def spend_refusal(self, tenant: Tenant) -> Refusal | None:
        """The daily budget that refuses an LLM call outside a turn (a briefing's opening),
        counted as a rejection; ``None`` when the call may go ahead."""
        return await self._spend_refusal(tenant, await self.limits_for(tenant), ())

    async def report(self, tenant: Tenant, user_id: str | None) -> SpendReport:
        """Today's usage against the limits in force, for ``/nox-status``."""
        limits = await self.limits_for(tenant)
        tokens, usd = await self._spent_today(tenant, ())
        user_left = workspace_left = None
        if limits.turns_per_minute_user and user_id:
            stats = await self._window.get_window_stats(
                RateLimitItemPerMinute(limits.turns_per_minute_user), "user", tenant.id, user_id
            )
            user_left = stats.remaining
        if limits.turns_per_minute_workspace:
            stats = await self._window.get_window_stats(
                RateLimitItemPerMinute(limits.turns_per_minute_workspace), "workspace", tenant.id
            )
            workspace_left = stats.remaining
        return SpendReport(
            limits=limits,
            tokens_today=tokens,
            usd_today=usd,
            resets_at=day_start(self._clock()) + timedelta(days=1),
            turns_running=await self._slots.held(tenant),
            user_turns_left=user_left,
            workspace_turns_left=workspace_left,
        )

    async def _admit(self, turn: TurnBudget) -> None:
        """Admit ``turn`` or raise :class:`OverLimit`. A refused turn uses up no quota: the
        concurrency slot is taken first and given back on refusal, and both per-minute windows
        are tested before either records a hit.

        Across replicas one race remains, as the ``limits`` library offers no atomic
        test-and-hit of two windows nor a way to take a hit back: when another replica fills
        the workspace window between our test and our hit, the user's hit already recorded
        stays although the turn is refused (hits are recorded user first, so such a race costs
        only that person one turn of their minute, never the workspace). Each ``hit()`` still
        checks as it records, so no window is ever exceeded.
        """
        tenant, limits = turn.tenant, turn.limits
        if limits.concurrent_turns:
            turn._slot = await self._slots.acquire(tenant, limits.concurrent_turns)
            if turn._slot is None:
                detail = (
                    f"{limits.concurrent_turns} answer{_s(limits.concurrent_turns)} in progress, "
                    "the most it may have at once"
                )
                self._refuse(tenant, Refusal(
                    Limit.CONCURRENT_TURNS,
                    refusal_text(Limit.CONCURRENT_TURNS, detail, None, self._clock()),
                    None,
                ))
        windows: list[tuple[Limit, RateLimitItem, tuple[str, ...], str]] = []
        if amount := limits.turns_per_minute_user:
            windows.append((Limit.TURNS_PER_MINUTE_USER, RateLimitItemPerMinute(amount),
                            ("user", tenant.id, turn.user_id),
                            f"{_turns(amount)} per minute for one person"))
        if amount := limits.turns_per_minute_workspace:
            burst = workspace_burst(amount)
            windows.append((Limit.TURNS_PER_MINUTE_WORKSPACE, RateLimitItemPerMinute(amount),
                            ("workspace", tenant.id), f"{_turns(amount)} per minute"))
            if burst < amount:
                windows.append((
                    Limit.TURNS_PER_MINUTE_WORKSPACE,
                    RateLimitItemPerSecond(burst, BURST_SLICE_SECONDS),
                    ("workspace-burst", tenant.id),
                    f"{_turns(amount)} per minute, at most {burst} of them in "
                    f"{BURST_SLICE_SECONDS} seconds",
                ))
        try:
            for limit, item, identifiers, detail in windows:
                if not await self._window.test(item, *identifiers):
                    await self._window_refusal(tenant, limit, item, identifiers, detail)
            for limit, item, identifiers, detail in windows:
                if not await self._window.hit(item, *identifiers):
                    await self._window_refusal(tenant, limit, item, identifiers, detail)
        except BaseException:
            await turn._release_slot()
            raise

    async def _window_refusal(
        self, tenant: Tenant, limit: Limit, item: RateLimitItem,
        identifiers: tuple[str, ...], detail: str,
    ) -> None:
        stats = await self._window.get_window_stats(item, *identifiers)
        now = datetime.now(UTC)  # the window runs on the library's wall clock
        resets = max(datetime.fromtimestamp(stats.reset_time, UTC), now)
        self._refuse(tenant, Refusal(limit, refusal_text(limit, detail, resets, now), resets))

    async def _spend_refusal(
        self, tenant: Tenant, limits: Limits, pending: Sequence[Usage]
    ) -> Refusal | None:
        if not (limits.tokens_per_day or limits.usd_per_day):
            return None
        tokens, usd = await self._spent_today(tenant, pending)
        refusal = spend_refusal(limits, tokens, usd, self._clock())
        if refusal is not None:
            self._count(tenant, refusal.limit)
            log.info("llm_budget_refused", tenant=tenant.id, limit=refusal.limit.value)
        return refusal

    def stored(self, tenant: Tenant, usage: Sequence[Usage]) -> None:
        """The workspace's ``usage`` was just stored (the runtime says so as it stores each
        step): the next checks count it without reading the database again."""
        self._spend.stored(tenant, usage)

    async def _spent_today(self, tenant: Tenant, pending: Sequence[Usage]) -> tuple[int, float]:
        by_model = await self._spend.by_model(tenant)
        add_usage(by_model, pending)
        tokens = sum(prompt + completion for prompt, completion in by_model.values())
        usd = sum(self.cost(model, *used) for model, used in by_model.items())
        return tokens, usd

    def _refuse(self, tenant: Tenant, refusal: Refusal) -> None:
        self._count(tenant, refusal.limit)
        log.info("llm_turn_refused", tenant=tenant.id, limit=refusal.limit.value)
        raise OverLimit(refusal)

    def _count(self, tenant: Tenant, limit: Limit) -> None:
        self._rejections[(tenant.id, limit.value)] += 1


def _s(count: int) -> str:
    return "" if count == 1 else "s"


def _turns(count: int) -> str:
    return f"{count} turn{_s(count)}"
