"""Actions: encrypted credentials, approval requests, action policy, audit events.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# BIGINT on PostgreSQL, INTEGER on SQLite (where only INTEGER PRIMARY KEY autoincrements).
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
NOW = sa.func.now()


def _ts(name: str) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=False, server_default=NOW)


def _updated() -> list[sa.Column]:
    return [sa.Column("updated_by", sa.String(32)), _ts("updated_at")]


def upgrade() -> None:
    op.create_table(
        "credentials",
        sa.Column("tenant_id", sa.String(32), primary_key=True),
        sa.Column("kind", sa.String(16), primary_key=True),
        sa.Column("secret", sa.Text(), nullable=False),
        sa.Column("url", sa.String(500), nullable=False),
        sa.Column("account", sa.String(200)),
        *_updated(),
    )
    op.create_table(
        "approval_requests",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("tenant_id", sa.String(32), nullable=False),
        sa.Column("persona", sa.String(32), nullable=False),
        sa.Column("requested_by", sa.String(32), nullable=False),
        sa.Column("channel_id", sa.String(32), nullable=False),
        sa.Column("thread_ts", sa.String(32), nullable=False),
        sa.Column("message_ts", sa.String(32)),
        sa.Column("tool_call_id", sa.String(64)),
        sa.Column("tool", sa.String(64), nullable=False),
        sa.Column("arguments", sa.JSON(), nullable=False),
        sa.Column("risk", sa.String(16), nullable=False),
        sa.Column("target", sa.Text(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decided_by", sa.String(32)),
        sa.Column("decided_at", sa.DateTime(timezone=True)),
        sa.Column("result_summary", sa.Text()),
        _ts("created_at"),
    )
    op.create_index(
        "ix_approval_requests_tenant_state", "approval_requests", ["tenant_id", "state"]
    )
    op.create_index(
        "ix_approval_requests_state_expires", "approval_requests", ["state", "expires_at"]
    )
    op.create_table(
        "tool_policies",
        sa.Column("tenant_id", sa.String(32), primary_key=True),
        sa.Column("tool", sa.String(64), primary_key=True),
        sa.Column("channel_id", sa.String(32), primary_key=True),
        sa.Column("auto_approve", sa.Boolean(), nullable=False),
        *_updated(),
    )
    op.create_table(
        "action_zones",
        sa.Column("tenant_id", sa.String(32), primary_key=True),
        sa.Column("persona", sa.String(32), primary_key=True),
        sa.Column("channel_id", sa.String(32), primary_key=True),
        sa.Column("tools", sa.JSON()),
        *_updated(),
    )
    op.create_table(
        "approval_settings",
        sa.Column("tenant_id", sa.String(32), primary_key=True),
        sa.Column("approvers", sa.String(32), nullable=False, server_default="requester_or_admin"),
        *_updated(),
    )
    op.create_table(
        "audit_events",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("tenant_id", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("actor", sa.String(32)),
        sa.Column("subject", sa.String(64)),
        sa.Column("details", sa.JSON(), nullable=False),
        _ts("created_at"),
    )
    op.create_index("ix_audit_events_tenant_created", "audit_events", ["tenant_id", "created_at"])


def downgrade() -> None:
    for table in (
        "audit_events",
        "approval_settings",
        "action_zones",
        "tool_policies",
        "approval_requests",
        "credentials",
    ):
        op.drop_table(table)
