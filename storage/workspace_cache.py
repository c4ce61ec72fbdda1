"""What every turn reads of its workspace (configuration, limit overrides), kept in memory.

A turn used to read its workspace's persona overrides, channel bindings, timezone and limit
overrides from the database each time: four statements for values that change a few times a
month. :class:`WorkspaceCache` keeps each per workspace, and drops a workspace's values

* at once in the process that changed them (the repositories call :meth:`changed` after
  their transaction commits);
* in every other process when Redis is configured: :meth:`changed` publishes the team on
  :data:`CHANNEL` and each process's :meth:`listen` drops it (all of them after it
  subscribes again, since pub/sub drops what is sent while a listener is away);
* after ``ttl`` seconds whatever happened: the safety net for a change made by a process
  without Redis (the CLI beside a server on SQLite), or missed in flight.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import structlog
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from storage import pubsub

log = structlog.get_logger(__name__)

CHANNEL = "jamono:workspaces:changed"  # Redis pub/sub: {"tenant": id}
TTL = 30.0  # seconds a cached value serves at most
PRUNE_AT = 10_000  # entries before expired ones are swept

T = TypeVar("T")


class WorkspaceCache:
    """``await cache.get(tenant_id, kind, load)``: ``load()``'s value, cached per workspace
    and ``kind`` for ``ttl`` seconds (``ttl=0``: never cached, for tools that must read what
    another process just wrote). ``clock`` is monotonic seconds (injected in tests).

    Callers missing the same value at once share one ``load()`` and resume in the order they
    asked: turns arriving together start in their order, and read the database once.
    """

    def __init__(
        self,
        ttl: float = TTL,
        redis: Redis | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self._redis = redis
        self._clock = clock
        self._entries: dict[tuple[str, str], tuple[float, Any]] = {}
        self._loading: dict[tuple[str, str], asyncio.Future[Any]] = {}
        # Bumped by each forget (the epoch by forgetting all): a load that began before a
        # change must not store what it read.
        self._generations: dict[str, int] = {}
        self._epoch = 0

    async def get(self, tenant_id: str, kind: str, load: Callable[[], Awaitable[T]]) -> T:
        if self.ttl <= 0:
            return await load()
        key = (tenant_id, kind)
        entry = self._entries.get(key)
        if entry is not None and entry[0] > self._clock():
            return entry[1]
        loading = self._loading.get(key)
        if loading is None:
            loading = self._loading[key] = asyncio.ensure_future(self._load(key, load))
        # Shielded: one caller cancelled must not cancel the others' load.
        return await asyncio.shield(loading)

    async def _load(self, key: tuple[str, str], load: Callable[[], Awaitable[T]]) -> T:
        tenant_id = key[0]
        generation = self._generation(tenant_id)
        try:
            value = await load()
        finally:
            if self._loading.get(key) is asyncio.current_task():
                del self._loading[key]
        if self._generation(tenant_id) == generation:
            now = self._clock()
            if len(self._entries) >= PRUNE_AT:
                self._entries = {k: e for k, e in self._entries.items() if e[0] > now}
            self._entries[key] = (now + self.ttl, value)
        return value

    def forget(self, tenant_id: str | None = None) -> None:
        """Drop ``tenant_id``'s values here (every workspace's when ``None``)."""
        # A load under way read before the change: later callers start one of their own.
        if tenant_id is None:
            self._entries.clear()
            self._loading.clear()
            self._generations.clear()
            self._epoch += 1
            return
        self._generations[tenant_id] = self._generations.get(tenant_id, 0) + 1
        for table in (self._entries, self._loading):
            for key in [key for key in table if key[0] == tenant_id]:
                del table[key]

    def _generation(self, tenant_id: str) -> tuple[int, int]:
        return self._epoch, self._generations.get(tenant_id, 0)

    @asynccontextmanager
    async def changing(
        self, sessions: async_sessionmaker[AsyncSession], tenant_id: str
    ) -> AsyncIterator[AsyncSession]:
        """``async with cache.changing(sessions, tenant_id) as session:`` a transaction that
        changes cached values of the workspace: :meth:`changed` once it committed."""
        async with sessions.begin() as session:
            yield session
        await self.changed(tenant_id)

    async def changed(self, tenant_id: str) -> None:
        """A workspace's cached values were changed in the database: forget them here and,
        with Redis, in every other process. A failed announcement is logged, not raised: the
        change is stored, and the others see it within ``ttl``."""
        self.forget(tenant_id)
        if self._redis is not None:
            await pubsub.publish(self._redis, CHANNEL, {"tenant": tenant_id})

    async def listen(self) -> None:
        """Forget what other processes announce, for the life of the process (needs Redis)."""
        await pubsub.listen(self._redis, CHANNEL, self._heard, on_subscribed=self.forget)

    async def _heard(self, announcement: pubsub.Message) -> None:
        tenant_id = announcement.get("tenant")
        if not isinstance(tenant_id, str):
            log.warning("workspace_change_malformed")
            return
        self.forget(tenant_id)
