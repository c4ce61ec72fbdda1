"""Turns remember which process runs them and when it last showed it was alive.

A process killed mid-turn leaves its turn ``running`` forever; with ``owner`` (the instance id)
and ``heartbeat_at`` (bumped while the turn runs), a restarted instance closes its own orphans
and any replica closes turns whose owner stopped heartbeating (bot.turns).

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("turns") as table:
        table.add_column(sa.Column("enterprise_id", sa.String(32)))
        table.add_column(sa.Column(
            "is_enterprise_install", sa.Boolean(), nullable=False, server_default=sa.false()
        ))
        table.add_column(sa.Column("owner", sa.String(64)))
        table.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True)))
    op.create_index("ix_turns_status_heartbeat", "turns", ["status", "heartbeat_at"])


def downgrade() -> None:
    op.drop_index("ix_turns_status_heartbeat", table_name="turns")
    with op.batch_alter_table("turns") as table:
        table.drop_column("heartbeat_at")
        table.drop_column("owner")
        table.drop_column("is_enterprise_install")
        table.drop_column("enterprise_id")
