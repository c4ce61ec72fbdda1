"""Slack OAuth installations with their tokens encrypted at rest.

slack_sdk's ``AsyncSQLAlchemyInstallationStore`` keeps bot, user and refresh tokens (and the
incoming webhook URL) as plain text. :class:`EncryptedInstallationStore` is the same store
(same tables and column names, same queries, its delete methods untouched) whose token columns
are typed :class:`EncryptedToken`:
SQLAlchemy encrypts a token with :class:`~storage.secrets.SecretBox` when a row is written and
decrypts it when a row is read, so every save and find of slack_sdk goes through the box without
copying its code. The columns are wider than slack_sdk's ``String(200)``: a Fernet token of a
150-character rotating token (``xoxe.xoxb-1-…``) is about 290 characters.
"""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy as sa
from slack_sdk.oauth.installation_store.sqlalchemy import AsyncSQLAlchemyInstallationStore
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.types import TypeDecorator

from storage.repositories import events
from storage.secrets import SecretBox, UndecryptableSecret
from storage.tenancy import Tenant

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
    ) -> None:
        super().__init__(client_id=client_id, engine=engine, logger=_log)
        for table, columns in self._token_columns():
            for name in columns:
                table.c[name].type = EncryptedToken(box, f"{table.name}.{name}")

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
