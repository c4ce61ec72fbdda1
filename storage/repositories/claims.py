"""Claims on Slack deliveries in the database, for deployments without Redis."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from storage.models import EventClaim


class ClaimRepository:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def claim(self, key: str) -> bool:
        """Insert ``key``; ``True`` for the first caller, ``False`` when it was claimed before.

        The primary key makes this atomic across processes sharing the database. Keys are
        already tenant-qualified by the caller (they embed ``team_id`` or an ``event_id``).
        """
        try:
            async with self._sessions.begin() as session:
                session.add(EventClaim(key=key))
        except IntegrityError:
            return False
        return True

    async def forget_before(self, moment: datetime) -> int:
        """Delete claims older than ``moment``; returns how many. Slack retries within minutes."""
        async with self._sessions.begin() as session:
            result = await session.execute(delete(EventClaim).where(EventClaim.claimed_at < moment))
            return result.rowcount or 0
