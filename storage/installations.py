"""Slack OAuth installations with their tokens encrypted at rest.

slack_sdk's ``AsyncSQLAlchemyInstallationStore`` keeps bot, user and refresh tokens (and the
incoming webhook URL) as plain text. :class:`EncryptedInstallationStore` is the same store
(same tables and column names, same queries, its delete methods untouched) whose token columns
are typed :class:`EncryptedToken`:
SQLAlchemy encrypts a token with :class:`~storage.secrets.SecretBox` when a row is written and
decrypts it when a row is read, so every save and find of slack_sdk goes through the box without
copying its code. The columns are wider than slack_sdk's ``String(200)``: a Fernet token of a
150-character rotating token (``xoxe.xoxb-1-…``) is about 290 characters.

Bolt finds the installation on every event (twice when the person is not the installer):
two queries and a decryption each time, a third of what a refused event cost the process.
Finds are therefore kept :data:`FIND_CACHE_SECONDS`, and forgotten at once on every save or
delete here, and on an uninstall announced by another replica (:meth:`forget`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from slack_sdk.oauth.installation_store import Bot, Installation
from slack_sdk.oauth.installation_store.sqlalchemy import AsyncSQLAlchemyInstallationStore
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.types import TypeDecorator

from storage.repositories import events
from storage.secrets import SecretBox, UndecryptableSecret
from storage.tenancy import Tenant

FIND_CACHE_SECONDS = 60.0
_FIND_CACHE_PRUNE_AT = 10_000  # entries before the expired ones are dropped

# Migration 0005 widens these columns to this length and encrypts what they held.
TOKEN_LENGTH = 1000
_log = logging.getLogger(__name__)

# An incoming webhook URL lets whoever holds it post into its channel: a secret too.
INSTALLATION_TOKENS = (
    "bot_token",
    "bot_refresh_token",
    "user_token",
    "user_refresh_token",
    "incoming_webhook_url",
)
BOT_TOKENS = ("bot_token", "bot_refresh_token")
_TENANT_COLUMNS = ("team_id", "enterprise_id", "is_enterprise_install")
_TABLES = (
    (AsyncSQLAlchemyInstallationStore.default_installations_table_name, INSTALLATION_TOKENS),
    (AsyncSQLAlchemyInstallationStore.default_bots_table_name, BOT_TOKENS),
)


class EncryptedToken(TypeDecorator):
    """A ``VARCHAR(TOKEN_LENGTH)`` holding the Fernet token of a Slack token.

    Reading a value that no configured key opens raises
    :class:`~storage.secrets.UndecryptableSecret`, naming the column, never the value.
    """

    impl = sa.String(TOKEN_LENGTH)
    cache_ok = True  # the box is compared by identity: one per store

    def __init__(self, box: SecretBox, column: str) -> None:
        super().__init__()
        self.box = box
        self.column = column

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        return None if value is None else self.box.encrypt(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> str | None:
        if value is None:
            return None
        try:
            return self.box.decrypt(value)
        except UndecryptableSecret as exc:
            raise UndecryptableSecret(f"Slack installation {self.column}: {exc}") from None


class EncryptedInstallationStore(AsyncSQLAlchemyInstallationStore):
    """slack_sdk's SQLAlchemy installation store, tokens encrypted with ``box``.

    Args:
        client_id: the Slack app's client id (rows are scoped by it, as in slack_sdk).
        engine: the async engine of the migrated database.
        box: the keys of ``JAMONO_SECRET_KEY``.
    """

    def __init__(
        self,
        client_id: str,
        engine: AsyncEngine,
        box: SecretBox,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(client_id=client_id, engine=engine, logger=_log)
        for table, columns in self._token_columns():
            for name in columns:
                table.c[name].type = EncryptedToken(box, f"{table.name}.{name}")
        self._clock = clock
        # (enterprise_id, team_id, user_id, is_enterprise_install) -> (expires, found)
        self._found: dict[tuple[str | None, str | None, str | None, bool],
                          tuple[float, Installation | None]] = {}

    async def async_find_installation(
        self,
        *,
        enterprise_id: str | None,
        team_id: str | None,
        user_id: str | None = None,
        is_enterprise_install: bool | None = False,
    ) -> Installation | None:
        """slack_sdk's find, kept :data:`FIND_CACHE_SECONDS` (a miss too: Bolt asks for
        every person's own installation, which most people never make)."""
        key = (enterprise_id, team_id, user_id, bool(is_enterprise_install))
        now = self._clock()
        cached = self._found.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        found = await super().async_find_installation(
            enterprise_id=enterprise_id, team_id=team_id, user_id=user_id,
            is_enterprise_install=is_enterprise_install,
        )
        if len(self._found) >= _FIND_CACHE_PRUNE_AT:
            self._found = {k: v for k, v in self._found.items() if v[0] > now}
        self._found[key] = (now + FIND_CACHE_SECONDS, found)
        return found

    def forget(self, *ids: str | None) -> None:
        """Drop what was found for these workspaces or orgs (team or enterprise ids)."""
        gone = {i for i in ids if i is not None}
        self._found = {key: value for key, value in self._found.items()
                       if gone.isdisjoint(key[:2])}

    async def async_save(self, installation: Installation) -> None:
        await super().async_save(installation)
        self.forget(installation.team_id, installation.enterprise_id)

    async def async_save_bot(self, bot: Bot) -> None:
        await super().async_save_bot(bot)
        self.forget(bot.team_id, bot.enterprise_id)

    async def async_delete_bot(self, *, enterprise_id: str | None, team_id: str | None) -> None:
        await super().async_delete_bot(enterprise_id=enterprise_id, team_id=team_id)
        self.forget(team_id, enterprise_id)

    async def async_delete_installation(
        self, *, enterprise_id: str | None, team_id: str | None, user_id: str | None = None
    ) -> None:
        await super().async_delete_installation(
            enterprise_id=enterprise_id, team_id=team_id, user_id=user_id
        )
        self.forget(team_id, enterprise_id)

    @classmethod
    def build_installations_table(cls, metadata: sa.MetaData, table_name: str) -> sa.Table:
        """slack_sdk's declaration, token columns widened to :data:`TOKEN_LENGTH`."""
        table = super().build_installations_table(metadata, table_name)
        return _widened(table, INSTALLATION_TOKENS)

    @classmethod
    def build_bots_table(cls, metadata: sa.MetaData, table_name: str) -> sa.Table:
        """slack_sdk's declaration, token columns widened to :data:`TOKEN_LENGTH`."""
        return _widened(super().build_bots_table(metadata, table_name), BOT_TOKENS)

    def _token_columns(self) -> tuple[tuple[sa.Table, tuple[str, ...]], ...]:
        return ((self.installations, INSTALLATION_TOKENS), (self.bots, BOT_TOKENS))


async def rotate_tokens(engine: AsyncEngine, box: SecretBox) -> int:
    """Re-encrypt every stored Slack token under the newest key of ``box``; returns how many
    rows changed.

    Not scoped by workspace or client id: it serves ``jamono secrets rotate``. A row is
    rewritten only if it still holds the tokens that were read (a token refreshed meanwhile is
    already under the newest key). All rows change in one transaction: if one cannot be
    decrypted nothing changes. Each workspace whose tokens moved gets a
    ``credentials_rotated`` audit event with subject ``slack``.

    Raises:
        UndecryptableSecret: a token no configured key opens (the message names the table,
            column and row id, never the token).
    """
    rotated, tenants = 0, set()
    async with AsyncSession(engine) as session, session.begin():
        conn = await session.connection()
        for name, columns in _TABLES:
            # The stored text as it is: lightweight columns carry no EncryptedToken type.
            raw = sa.table(name, *(sa.column(c) for c in ("id", *_TENANT_COLUMNS, *columns)))
            for row in (await conn.execute(sa.select(raw))).mappings().all():
                stored = {c: row[c] for c in columns if row[c] is not None}
                if not stored:
                    continue
                fresh = {}
                for column, token in stored.items():
                    try:
                        fresh[column] = box.rotate(token)
                    except UndecryptableSecret as exc:
                        raise UndecryptableSecret(
                            f"Slack installation {name}.{column} (row {row['id']}): {exc}"
                        ) from None
                result = await conn.execute(
                    raw.update()
                    .where(raw.c.id == row["id"], *(raw.c[c] == t for c, t in stored.items()))
                    .values(**fresh)
                )
                if result.rowcount:
                    rotated += result.rowcount
                    tenants.add(
                        Tenant(row["team_id"], row["enterprise_id"], row["is_enterprise_install"])
                    )
        for tenant in sorted(tenants, key=lambda t: t.id):
            events.append(session, tenant, events.CREDENTIALS_ROTATED, actor=None, subject="slack")
    return rotated


def _widened(table: sa.Table, columns: tuple[str, ...]) -> sa.Table:
    for name in columns:
        table.c[name].type = sa.String(TOKEN_LENGTH)
    return table
