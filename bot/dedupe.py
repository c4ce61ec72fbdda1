"""Claim each Slack delivery once across retries and replicas.

Slack retries an event up to three times with the same ``event_id`` and, in Socket Mode,
hands each event to one of up to ten connections (contracts.md). The first replica to claim
the key acts; the others ack and drop it.

Keys: ``event:{event_id}`` for events, and for a user's message its identity
``msg:{tenant}:{channel_id}:{ts}``, which is the same in every retry *and* in the second
delivery of a mention as a ``message`` event (whose ``event_id`` differs), so one claim
covers both.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import structlog
from redis.asyncio import Redis

from storage.repositories.claims import ClaimRepository

log = structlog.get_logger(__name__)

CLAIM_TTL = timedelta(hours=1)  # Slack's last retry comes about 5 minutes after the first try


class EventClaims:
    """``await claims.claim(key)`` is ``True`` exactly once per key within :data:`CLAIM_TTL`.

    Uses Redis ``SET NX EX`` when a client is given, else a primary-key insert in the database.
    """

    def __init__(self, repository: ClaimRepository, redis: Redis | None = None) -> None:
        self._repository = repository
        self._redis = redis

    async def first_delivery(self, key: str) -> bool:
        """:meth:`claim`, logging ``duplicate_event_dropped`` when another delivery had it."""
        if await self.claim(key):
            return True
        log.info("duplicate_event_dropped", key=key)
        return False

    async def claim(self, key: str) -> bool:
        if self._redis is not None:
            ttl = int(CLAIM_TTL.total_seconds())
            return bool(await self._redis.set(f"jamono:claim:{key}", b"1", nx=True, ex=ttl))
        return await self._repository.claim(key)

    async def prune(self) -> int:
        """Drop expired database claims (Redis expires its own); returns how many."""
        if self._redis is not None:
            return 0
        return await self._repository.forget_before(datetime.now(UTC) - CLAIM_TTL)
