"""``INSERT … ON CONFLICT`` for the two databases Jamono runs on.

SQLAlchemy spells it per dialect (``sqlalchemy.dialects.postgresql.insert`` and
``sqlalchemy.dialects.sqlite.insert``); both take the same ``on_conflict_do_*`` arguments.
"""

from __future__ import annotations

from sqlalchemy.dialects.postgresql import Insert as PostgresInsert
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import Insert as SQLiteInsert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert


def insert_for(dialect: str, table) -> PostgresInsert | SQLiteInsert:
    """An ``INSERT`` into ``table`` (a mapped class or ``Table``) that takes ``on_conflict_*``.

    ``dialect`` is ``engine.dialect.name``: ``postgresql`` or ``sqlite``.
    """
    return pg_insert(table) if dialect == "postgresql" else sqlite_insert(table)
