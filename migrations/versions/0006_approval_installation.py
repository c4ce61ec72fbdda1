"""Approval requests remember their installation's enterprise id.

The expiry sweep updates a request's Slack message with its workspace's token; an Enterprise
Grid workspace install is found by team id and enterprise id together, so the request keeps
both (as briefing subscriptions do). Existing requests take them from the installation store.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("approval_requests") as table:
        table.add_column(sa.Column("enterprise_id", sa.String(32)))
        table.add_column(
            sa.Column(
                "is_enterprise_install", sa.Boolean(), nullable=False, server_default=sa.false()
            )
        )
    requests = sa.table(
        "approval_requests",
        sa.column("tenant_id", sa.String),
        sa.column("enterprise_id", sa.String),
        sa.column("is_enterprise_install", sa.Boolean),
    )
    bots = sa.table(
        "slack_bots",
        sa.column("team_id", sa.String),
        sa.column("enterprise_id", sa.String),
        sa.column("is_enterprise_install", sa.Boolean),
        sa.column("installed_at", sa.DateTime),
    )
    # A workspace of an Enterprise Grid org: its newest bot installation names the org.
    grid = (
        sa.select(bots.c.enterprise_id)
        .where(bots.c.team_id == requests.c.tenant_id, bots.c.enterprise_id.is_not(None))
        .order_by(bots.c.installed_at.desc())
        .limit(1)
        .scalar_subquery()
    )
    op.execute(requests.update().where(requests.c.enterprise_id.is_(None)).values(enterprise_id=grid))
    # An org-wide install: the tenant id is the enterprise id itself.
    org = (
        sa.select(bots.c.enterprise_id)
        .where(bots.c.enterprise_id == requests.c.tenant_id, bots.c.is_enterprise_install)
        .exists()
    )
    op.execute(
        requests.update()
        .where(org)
        .values(enterprise_id=requests.c.tenant_id, is_enterprise_install=sa.true())
    )


def downgrade() -> None:
    with op.batch_alter_table("approval_requests") as table:
        table.drop_column("is_enterprise_install")
        table.drop_column("enterprise_id")
