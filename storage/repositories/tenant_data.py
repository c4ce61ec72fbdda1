"""Everything stored for one tenant: what an uninstall stops, export, and erasure.

Which tables hold a tenant's rows is derived, not listed, so a new table is covered as soon as
it exists:

* every table of Jamono's metadata (:mod:`storage.models`) with a ``tenant_id`` column;
* every table of that metadata without one whose foreign keys point at such a table (a
  ``messages`` row belongs to its conversation's tenant);
* slack_sdk's installation store tables (``slack_installations``, ``slack_bots``), matched by
  ``team_id``, or by ``enterprise_id`` for an org-wide install.

Tables with neither (``event_claims``, ``apscheduler_jobs``, ``slack_oauth_states``) hold no
tenant data: claims expire, and a scheduled job of an erased briefing finds no subscription and
does nothing until the scheduler drops it at its next sync.
"""

from __future__ import annotations

import base64
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from slack_sdk.oauth.installation_store.sqlalchemy import AsyncSQLAlchemyInstallationStore
from sqlalchemy import (
    ColumnElement,
    MetaData,
    Table,
    delete,
    false,
    func,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from storage.models import ApprovalRequest, Base, BriefingSubscription, Credential
from storage.repositories import events
from storage.repositories.approvals import State
from storage.tenancy import Tenant

UNINSTALLED = "app_uninstalled"  # audit kind, and why the tenant's briefings were paused

# slack_sdk's own table definitions (the migrations create the same tables).
_SLACK = MetaData()
SLACK_TABLES: tuple[Table, ...] = (
    AsyncSQLAlchemyInstallationStore.build_installations_table(_SLACK, "slack_installations"),
    AsyncSQLAlchemyInstallationStore.build_bots_table(_SLACK, "slack_bots"),
)
# Slack tokens (and the incoming-webhook URL, a bearer secret) are never exported.
_SLACK_SECRET = re.compile(r"(?:^|_)token$|^incoming_webhook_url$")


@dataclass(frozen=True, slots=True)
class TenantTable:
    """A table holding tenant rows: the condition selecting one tenant's, the columns an
    export leaves out (secrets that are not encrypted at rest by Jamono)."""

    table: Table
    omitted: tuple[str, ...] = ()

    def rows_of(self, tenant: Tenant) -> ColumnElement[bool]:
        c = self.table.c
        if self.table.metadata is _SLACK:
            if tenant.is_enterprise_install:
                return (c.enterprise_id == tenant.enterprise_id) & (
                    c.is_enterprise_install == true()
                )
            return (c.team_id == tenant.team_id) & (
                or_(c.is_enterprise_install.is_(None), c.is_enterprise_install == false())
            )
        if "tenant_id" in c:
            return c.tenant_id == tenant.id
        links = [
            fk.parent.in_(select(fk.column).where(fk.column.table.c.tenant_id == tenant.id))
            for fk in self.table.foreign_keys
            if "tenant_id" in fk.column.table.c
        ]
        return or_(*links)


def tenant_tables() -> list[TenantTable]:
    """The tables holding tenant rows, parents before children (children last to insert,
    first to delete)."""
    found: list[TenantTable] = []
    for table in Base.metadata.sorted_tables:
        linked = any("tenant_id" in fk.column.table.c for fk in table.foreign_keys)
        if "tenant_id" in table.c or linked:
            found.append(TenantTable(table))
    for table in SLACK_TABLES:
        omitted = tuple(c.name for c in table.c if _SLACK_SECRET.search(c.name))
        found.append(TenantTable(table, omitted))
    return found


@dataclass(frozen=True, slots=True)
class Suspended:
    """What :meth:`TenantDataRepository.suspend` changed."""

    briefings_paused: int
    approvals_expired: int
    credentials_deleted: int


class TenantDataRepository:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def suspend(self, tenant: Tenant) -> Suspended:
        """Stop what runs on its own for ``tenant`` (the app was uninstalled): pause its
        briefings (``paused_reason`` ``app_uninstalled``), expire its approval requests that
        are pending or approved but not started, delete its integration credentials. One
        transaction, audited as ``app_uninstalled``. Rows are kept for export and erasure."""
        async with self._sessions.begin() as session:
            paused = await session.execute(
                update(BriefingSubscription)
                .where(BriefingSubscription.tenant_id == tenant.id, BriefingSubscription.enabled)
                .values(enabled=False, paused_reason=UNINSTALLED)
                .execution_options(synchronize_session=False)
            )
            expired = await session.execute(
                update(ApprovalRequest)
                .where(
                    ApprovalRequest.tenant_id == tenant.id,
                    ApprovalRequest.state.in_([State.PENDING.value, State.APPROVED.value]),
                )
                .values(state=State.EXPIRED.value)
                .execution_options(synchronize_session=False)
            )
            deleted = await session.execute(
                delete(Credential)
                .where(Credential.tenant_id == tenant.id)
                .execution_options(synchronize_session=False)
            )
            result = Suspended(paused.rowcount, expired.rowcount, deleted.rowcount)
            events.append(
                session,
                tenant,
                UNINSTALLED,
                actor=None,
                details={
                    "briefings_paused": result.briefings_paused,
                    "approvals_expired": result.approvals_expired,
                    "credentials_deleted": result.credentials_deleted,
                },
            )
        return result

    async def counts(self, tenant: Tenant) -> dict[str, int]:
        """Rows per table held for ``tenant`` (every table of :func:`tenant_tables`)."""
        async with self._sessions() as session:
            return {
                t.table.name: await _count(session, t, tenant) for t in tenant_tables()
            }

    async def export(self, tenant: Tenant) -> AsyncIterator[dict[str, Any]]:
        """Every row held for ``tenant`` as ``{"table": name, "row": {column: value}}``.

        Values are JSON-ready: datetimes in ISO 8601, bytes in base64. Jamono's credentials
        stay Fernet-encrypted as stored (``credentials.secret``); Slack's tokens and the
        incoming-webhook URL are left out (:attr:`TenantTable.omitted`).
        """
        async with self._sessions() as session:
            for tenant_table in tenant_tables():
                table = tenant_table.table
                columns = [c for c in table.c if c.name not in tenant_table.omitted]
                statement = select(*columns).where(tenant_table.rows_of(tenant))
                if table.primary_key.columns:
                    statement = statement.order_by(*table.primary_key.columns)
                # Streamed: a workspace's conversations need not fit in memory at once.
                async for row in (await session.stream(statement)).mappings():
                    yield {
                        "table": table.name,
                        "row": {key: _json_ready(value) for key, value in row.items()},
                    }

    async def erase(self, tenant: Tenant) -> dict[str, int]:
        """Delete every row held for ``tenant``, children first, in one transaction; returns
        rows deleted per table."""
        deleted: dict[str, int] = {}
        async with self._sessions.begin() as session:
            for tenant_table in reversed(tenant_tables()):
                result = await session.execute(
                    delete(tenant_table.table)
                    .where(tenant_table.rows_of(tenant))
                    .execution_options(synchronize_session=False)
                )
                deleted[tenant_table.table.name] = result.rowcount
        return deleted


async def _count(session: AsyncSession, tenant_table: TenantTable, tenant: Tenant) -> int:
    statement = (
        select(func.count()).select_from(tenant_table.table).where(tenant_table.rows_of(tenant))
    )
    return int(await session.scalar(statement) or 0)


def _json_ready(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, Decimal):
        return str(value)
    return value
