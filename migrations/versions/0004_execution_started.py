"""Approval requests remember when their execution started.

An execution is bounded by the tool timeout, so a request still ``executing`` well past that
was orphaned by a process that died mid-action; the approvals sweep closes it as failed.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("approval_requests") as table:
        table.add_column(sa.Column("execution_started_at", sa.DateTime(timezone=True)))


def downgrade() -> None:
    with op.batch_alter_table("approval_requests") as table:
        table.drop_column("execution_started_at")
