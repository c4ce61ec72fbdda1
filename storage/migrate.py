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
from storage.secrets import SecretBox


def alembic_config(database_url: str, secrets: SecretBox | None = None) -> Config:
    """An Alembic config pointing at the ``migrations`` package and ``database_url``.

    ``secrets`` (the keys of ``JAMONO_SECRET_KEY``) reaches the migrations that encrypt stored
    secrets as ``config.attributes["secret_box"]``; such a migration fails with a message
    naming the setting when it has secrets to encrypt and no box.
    """
    config = Config()
    config.attributes["secret_box"] = secrets
    config.set_main_option("script_location", str(files("migrations")))
    url = async_url(database_url).render_as_string(hide_password=False)
    # ConfigParser interpolation would read '%' in passwords as a format directive.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(
    database_url: str, revision: str = "head", secrets: SecretBox | None = None
) -> None:
    """Upgrade the database to ``revision``. Blocking: call it outside the event loop.

    Raises:
        RuntimeError: a migration has secrets to encrypt and ``secrets`` is ``None``.
    """
    command.upgrade(alembic_config(database_url, secrets), revision)


async def upgrade_async(
    database_url: str, revision: str = "head", secrets: SecretBox | None = None
) -> None:
    """:func:`upgrade` from a running event loop (Alembic's env runs its own loop in a thread)."""
    await asyncio.to_thread(upgrade, database_url, revision, secrets)


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
