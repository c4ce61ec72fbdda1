"""``jamono tenant export`` and ``jamono tenant erase``, on SQLite and PostgreSQL.

The attack this stops: a workspace asks for its data, or to be forgotten, and gets part of it,
or another workspace's with it, or its tokens in clear. Every table that carries a tenant
(and every table hanging off one by foreign key) gets a row for ACME and for GLOBEX, built
from the metadata so that a table added later is filled and checked too; slack_sdk's store
holds an installation of each. Counts per table are compared before and after.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from itertools import count

from slack_sdk.oauth.installation_store import Installation
from slack_sdk.oauth.installation_store.sqlalchemy import AsyncSQLAlchemyInstallationStore
from sqlalchemy import JSON, Boolean, DateTime, Float, Integer, LargeBinary, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.db import session_factory
from storage.models import Base, Credential, EventClaim
from storage.repositories.tenant_data import TenantDataRepository, tenant_tables
from storage.tenancy import Tenant
from tests.test_cli import jamono

ACME, GLOBEX = Tenant("T0ACME"), Tenant("T0GLOBEX")
CLIENT_ID = "1111.2222"


def _value(column, tenant: Tenant, serial: int):
    kind = column.type
    if isinstance(kind, Boolean):
        return False
    if isinstance(kind, Integer):
        return serial
    if isinstance(kind, Float):
        return 1.5
    if isinstance(kind, DateTime):
        return datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    if isinstance(kind, JSON):
        return {"from": tenant.id}
    if isinstance(kind, LargeBinary):
        return b"\x00bytes"
    text = f"{tenant.id}-{column.table.name}-{serial}"
    length = getattr(kind, "length", None)
    return text[-length:] if length else text


async def fill(engine: AsyncEngine, tenant: Tenant, serials) -> None:
    """One row per tenant table of Jamono's metadata, parents first, children pointing at them."""
    keys: dict[str, int | str] = {}  # table name -> primary key of this tenant's row
    async with engine.begin() as connection:
        for tenant_table in tenant_tables():
            table = tenant_table.table
            if table.metadata is not Base.metadata:
                continue
            serial = next(serials)
            row = {}
            for column in table.c:
                if column.name == "tenant_id":
                    row[column.name] = tenant.id
                elif column.foreign_keys:
                    (fk,) = column.foreign_keys
                    row[column.name] = keys[fk.column.table.name]
                else:
                    row[column.name] = _value(column, tenant, serial)
            await connection.execute(table.insert().values(**row))
            (pk,) = table.primary_key.columns if len(table.primary_key.columns) == 1 else (None,)
            if pk is not None:
                keys[table.name] = row[pk.name]
        # A row with no tenant: never exported nor erased.
        await connection.execute(EventClaim.__table__.insert().values(key=f"claim:{tenant.id}"))


async def install(engine: AsyncEngine, tenant: Tenant, bot_token: str) -> None:
    store = AsyncSQLAlchemyInstallationStore(client_id=CLIENT_ID, engine=engine)
    await store.async_save(Installation(
        app_id="A0JAMONO", team_id=tenant.team_id, user_id="U0ADMIN", bot_token=bot_token,
        bot_id="B0NOX", bot_user_id="U0NOX", bot_scopes="chat:write", user_token="xoxp-user-"
        + tenant.id, incoming_webhook_url="https://hooks.slack.test/" + tenant.id,
    ))


async def counts(engine: AsyncEngine, tenant: Tenant) -> dict[str, int]:
    """Rows per table, counted here by hand (not by the code under test)."""
    found = {}
    async with engine.connect() as connection:
        for table in Base.metadata.sorted_tables:
            if "tenant_id" in table.c:
                where = table.c.tenant_id == tenant.id
            elif table.name == "messages":
                conversations = Base.metadata.tables["conversations"]
                where = table.c.conversation_id.in_(
                    select(conversations.c.id).where(conversations.c.tenant_id == tenant.id)
                )
            else:
                continue
            found[table.name] = await connection.scalar(
                select(func.count()).select_from(table).where(where)
            )
        for name in ("slack_installations", "slack_bots"):
            table = next(t.table for t in tenant_tables() if t.table.name == name)
            found[name] = await connection.scalar(
                select(func.count()).select_from(table).where(table.c.team_id == tenant.team_id)
            )
    return found


async def test_export_then_erase_one_workspace_only(engine, database_url, tmp_path):
    serials = count(1)
    for tenant in (ACME, GLOBEX):
        await fill(engine, tenant, serials)
        await install(engine, tenant, f"xoxb-secret-{tenant.id}")
    acme_before, globex_before = await counts(engine, ACME), await counts(engine, GLOBEX)
    assert all(n >= 1 for n in acme_before.values()), acme_before  # every table is exercised
    assert await TenantDataRepository(session_factory(engine)).counts(ACME) == acme_before
    env = {"DATABASE_URL": database_url}

    code, out, err = await jamono("tenant", "export", "--team", ACME.id, env=env, cwd=tmp_path)
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    exported: dict[str, int] = {}
    for line in lines:
        exported[line["table"]] = exported.get(line["table"], 0) + 1
    assert exported == {table: n for table, n in acme_before.items() if n}
    assert GLOBEX.id not in out
    # Secrets: Jamono's stay encrypted as stored; Slack's tokens and webhook are left out.
    async with engine.connect() as connection:
        stored = await connection.scalar(
            select(Credential.secret).where(Credential.tenant_id == ACME.id)
        )
    (credential,) = [line["row"] for line in lines if line["table"] == "credentials"]
    assert credential["secret"] == stored
    for secret in ("xoxb-secret", "xoxp-user", "hooks.slack.test"):
        assert secret not in out
    (bot,) = [line["row"] for line in lines if line["table"] == "slack_bots"]
    assert bot["bot_user_id"] == "U0NOX" and "bot_token" not in bot

    code, _, err = await jamono("tenant", "erase", "--team", ACME.id, env=env, cwd=tmp_path)
    assert code == 2 and "--yes" in err
    assert await counts(engine, ACME) == acme_before  # nothing without the confirmation

    code, _, err = await jamono("tenant", "erase", "--team", ACME.id, "--yes", env=env,
                                cwd=tmp_path)
    assert code == 0, err
    assert f"Erased workspace {ACME.id}" in err
    assert await counts(engine, ACME) == {table: 0 for table in acme_before}
    assert await counts(engine, GLOBEX) == globex_before
    async with engine.connect() as connection:
        assert await connection.scalar(select(func.count()).select_from(EventClaim)) == 2
