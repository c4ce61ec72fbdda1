"""Aware UTC datetimes in and out of the database.

SQLite stores timestamps as text without an offset and hands them back naive; comparisons there
are textual, so every moment is converted to UTC before it is bound.
"""

from __future__ import annotations

from datetime import UTC, datetime


def aware(moment: datetime) -> datetime:
    """A timestamp read back from the database, as aware UTC (they are always written in UTC)."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def to_utc(moment: datetime) -> datetime:
    """``moment`` in UTC, for binding into a query.

    Raises:
        ValueError: ``moment`` is naive (its zone would be a guess).
    """
    if moment.tzinfo is None:
        raise ValueError("a naive datetime was given; pass an aware one (e.g. datetime.now(UTC))")
    return moment.astimezone(UTC)
