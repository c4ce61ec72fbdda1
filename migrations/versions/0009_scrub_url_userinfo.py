"""Remove ``user:password@`` from the URLs kept in clear: credentials' ``url`` and the audit trail.

Before user information in integration URLs was refused, a CalDAV URL such as
``https://nox:secret@cal.example.com/dav/`` was stored as given: in ``credentials.url`` (shown
by ``/nox-connect``) and in the details of ``credentials_*`` audit events (shown by
``/nox-audit``, exported by ``jamono audit export`` and ``jamono tenant export``). The
encrypted settings are left as they are: using such a row asks the admin to connect again.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30
"""

from typing import Any

import sqlalchemy as sa
from alembic import op

from storage.secrets import without_userinfo

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

credentials = sa.table(
    "credentials", sa.column("tenant_id", sa.String), sa.column("kind", sa.String),
    sa.column("url", sa.String),
)
audit_events = sa.table(
    "audit_events", sa.column("id", sa.BigInteger), sa.column("kind", sa.String),
    sa.column("details", sa.JSON),
)


def _scrubbed(value: Any) -> Any:
    """``value`` with every string under a ``url`` key stripped of user information."""
    if isinstance(value, dict):
        return {
            key: without_userinfo(item) if key == "url" and isinstance(item, str)
            else _scrubbed(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_scrubbed(item) for item in value]
    return value


def upgrade() -> None:
    connection = op.get_bind()
    for tenant_id, kind, url in connection.execute(
        sa.select(credentials.c.tenant_id, credentials.c.kind, credentials.c.url)
    ).all():
        if without_userinfo(url) != url:
            connection.execute(
                credentials.update()
                .where(credentials.c.tenant_id == tenant_id, credentials.c.kind == kind)
                .values(url=without_userinfo(url))
            )
    for event_id, details in connection.execute(
        sa.select(audit_events.c.id, audit_events.c.details).where(
            audit_events.c.kind.like("credentials%")
        )
    ).all():
        if _scrubbed(details) != details:
            connection.execute(
                audit_events.update()
                .where(audit_events.c.id == event_id)
                .values(details=_scrubbed(details))
            )


def downgrade() -> None:
    """Nothing to undo: the passwords removed are not kept anywhere in clear."""
