"""Apply Alembic migrations from code (``jamono db upgrade`` and start-up on SQLite)."""

from __future__ import annotations

import asyncio
from importlib.resources import files

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.db import async_url


def alembic_config(database_url: str) -> Config:
    """An Alembic config pointing at the ``migrations`` package and ``database_url``."""
    config = Config()
    config.set_main_option("script_location", str(files("migrations")))
    url = async_url(database_url).render_as_string(hide_password=False)
    # ConfigParser interpolation would read '%' in passwords as a format directive.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Upgrade the database to ``revision``. Blocking: call it outside the event loop."""
    command.upgrade(alembic_config(database_url), revision)


async def upgrade_async(database_url: str, revision: str = "head") -> None:
    """:func:`upgrade` from a running event loop (Alembic's env runs its own loop in a thread)."""
    await asyncio.to_thread(upgrade, database_url, revision)


def current(database_url: str) -> None:
    """Print the database's current revision (``jamono db current``)."""
    command.current(alembic_config(database_url))


def head_revisions(database_url: str) -> set[str]:
    """The revisions the code expects (Alembic heads)."""
    return set(ScriptDirectory.from_config(alembic_config(database_url)).get_heads())


async def applied_revisions(engine: AsyncEngine) -> set[str]:
    """The revisions recorded in the database's ``alembic_version`` (empty for a new database)."""
    async with engine.connect() as conn:
        return await conn.run_sync(
            lambda sync_conn: set(MigrationContext.configure(sync_conn).get_current_heads())
        )
