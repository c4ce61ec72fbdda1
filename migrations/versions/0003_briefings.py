"""Briefings: subscriptions, deliveries, and APScheduler's job table.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# BIGINT on PostgreSQL, INTEGER on SQLite (where only INTEGER PRIMARY KEY autoincrements).
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
NOW = sa.func.now()


def _ts(name: str) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=False, server_default=NOW)


def upgrade() -> None:
    op.create_table(
        "briefing_subscriptions",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("tenant_id", sa.String(32), nullable=False),
        sa.Column("team_id", sa.String(32)),
        sa.Column("enterprise_id", sa.String(32)),
        sa.Column("is_enterprise_install", sa.Boolean(), nullable=False),
        sa.Column("channel_id", sa.String(32), nullable=False),
        sa.Column("persona", sa.String(32), nullable=False),
        sa.Column("schedule", sa.String(100), nullable=False),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("sections", sa.JSON(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("paused_reason", sa.String(64)),
        sa.Column("created_by", sa.String(32), nullable=False),
        _ts("created_at"),
        _ts("updated_at"),
    )
    op.create_index("ix_briefing_subscriptions_tenant", "briefing_subscriptions", ["tenant_id"])
    op.create_table(
        "briefing_deliveries",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("tenant_id", sa.String(32), nullable=False),
        sa.Column(
            "subscription_id",
            ID,
            sa.ForeignKey("briefing_subscriptions.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("scheduled_for", sa.DateTime(timezone=True), nullable=False),
        sa.Column("trigger", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("message_ts", sa.String(32)),
        sa.Column("detail", sa.Text()),
        _ts("created_at"),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.UniqueConstraint("subscription_id", "scheduled_for"),
    )
    # APScheduler 3.11's SQLAlchemyJobStore table (apscheduler/jobstores/sqlalchemy.py).
    op.create_table(
        "apscheduler_jobs",
        sa.Column("id", sa.Unicode(191), primary_key=True),
        sa.Column("next_run_time", sa.Float(25)),
        sa.Column("job_state", sa.LargeBinary(), nullable=False),
    )
    op.create_index("ix_apscheduler_jobs_next_run_time", "apscheduler_jobs", ["next_run_time"])


def downgrade() -> None:
    for table in ("apscheduler_jobs", "briefing_deliveries", "briefing_subscriptions"):
        op.drop_table(table)
