"""Slack OAuth tokens are encrypted at rest.

Widens the token columns of slack_sdk's installation tables (a Fernet token is about twice as
long as the token it holds) and encrypts the tokens stored in plain text until now with the
newest key of ``JAMONO_SECRET_KEY``. The key reaches this script as the ``secret_box``
attribute of the Alembic config (``storage.migrate``); a database holding tokens cannot be
upgraded without it. Downgrading decrypts them again.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# As of this revision: the token columns of each slack_sdk table and their lengths.
TOKENS = {
    "slack_installations": (
        "bot_token",
        "bot_refresh_token",
        "user_token",
        "user_refresh_token",
        "incoming_webhook_url",  # whoever holds it can post into its channel
    ),
    "slack_bots": ("bot_token", "bot_refresh_token"),
}
PLAIN_LENGTH, ENCRYPTED_LENGTH = 200, 1000


Rows = list[tuple[sa.TableClause, int, dict[str, str]]]


def upgrade() -> None:
    # Checked before any DDL: SQLite does not roll a batch table copy back.
    rows = _token_rows("encrypt")
    _resize(PLAIN_LENGTH, ENCRYPTED_LENGTH)
    _convert(rows, "encrypt")


def downgrade() -> None:
    _convert(_token_rows("decrypt"), "decrypt")
    _resize(ENCRYPTED_LENGTH, PLAIN_LENGTH)


def _resize(old: int, new: int) -> None:
    for name, columns in TOKENS.items():
        with op.batch_alter_table(name) as table:
            for column in columns:
                table.alter_column(
                    column,
                    existing_type=sa.String(old),
                    type_=sa.String(new),
                    existing_nullable=True,
                )


def _token_rows(direction: str) -> Rows:
    """(table, row id, its non-null tokens) for every row holding a token.

    Raises:
        RuntimeError: there are tokens and no box to encrypt (or decrypt) them with.
    """
    bind = op.get_bind()
    found = []
    for name, columns in TOKENS.items():
        table = sa.table(name, sa.column("id"), *(sa.column(c) for c in columns))
        for row in bind.execute(sa.select(table)).mappings().all():
            stored = {c: row[c] for c in columns if row[c] is not None}
            if stored:
                found.append((table, row["id"], stored))
    if found and op.get_context().config.attributes.get("secret_box") is None:
        raise RuntimeError(
            "the database holds Slack tokens of OAuth installs and JAMONO_SECRET_KEY is not "
            "set: set it to a Fernet key (`jamono secrets generate-key`) so they can be "
            f"{direction}ed, then run `jamono db upgrade` again"
        )
    return found


def _convert(rows: Rows, direction: str) -> None:
    """Encrypt (or decrypt) ``rows`` in place with the box handed over by storage.migrate."""
    if not rows:
        return
    convert = getattr(op.get_context().config.attributes["secret_box"], direction)
    bind = op.get_bind()
    for table, row_id, stored in rows:
        bind.execute(
            table.update()
            .where(table.c.id == row_id)
            .values({c: convert(v) for c, v in stored.items()})
        )
