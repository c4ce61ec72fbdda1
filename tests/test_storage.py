"""Migrations and repositories on a SQLite file and on PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from slack_sdk.oauth.installation_store import Installation
from slack_sdk.oauth.installation_store.sqlalchemy import AsyncSQLAlchemyInstallationStore
from slack_sdk.oauth.state_store.sqlalchemy import AsyncSQLAlchemyOAuthStateStore
from sqlalchemy import MetaData

from storage import migrate
from storage.db import create_engine, session_factory
from storage.installations import EncryptedInstallationStore
from storage.models import Base
from storage.repositories import Repositories
from storage.repositories.conversations import LLMCallUsage
from storage.tenancy import Tenant

ACME = Tenant(team_id="T0ACME")
GLOBEX = Tenant(team_id="T0GLOBEX")


@pytest.fixture
def repos(engine) -> Repositories:
    return Repositories.over(session_factory(engine))


def expected_metadata() -> MetaData:
    """Our models plus slack_sdk's own declaration of its OAuth tables."""
    metadata = MetaData()
    for table in Base.metadata.tables.values():
        table.to_metadata(metadata)
    # Our store: slack_sdk's tables with token columns wide enough for Fernet tokens.
    EncryptedInstallationStore.build_installations_table(metadata, "slack_installations")
    EncryptedInstallationStore.build_bots_table(metadata, "slack_bots")
    AsyncSQLAlchemyOAuthStateStore.build_oauth_states_table(metadata, "slack_oauth_states")
    return metadata


async def test_migrations_match_the_models_and_slack_sdk(engine, database_url):
    def diff(connection):
        return compare_metadata(MigrationContext.configure(connection), expected_metadata())

    async with engine.connect() as conn:
        changes = await conn.run_sync(diff)
    assert changes == []
    assert await migrate.applied_revisions(engine) == migrate.head_revisions(database_url)


async def test_downgrade_to_base_and_up_again(database_url):
    await migrate.upgrade_async(database_url)
    await migrate.upgrade_async(database_url)  # a second run has nothing to do
    import asyncio

    from alembic import command

    await asyncio.to_thread(command.downgrade, migrate.alembic_config(database_url), "base")
    await migrate.upgrade_async(database_url)
    engine = create_engine(database_url)
    try:
        assert await migrate.applied_revisions(engine) == migrate.head_revisions(database_url)
    finally:
        await engine.dispose()


async def test_slack_sdk_stores_work_on_migrated_tables(engine):
    store = AsyncSQLAlchemyInstallationStore(client_id="111.222", engine=engine)
    await store.async_save(
        Installation(
            app_id="A0JAMONO",
            enterprise_id=None,
            team_id="T0ACME",
            team_name="Acme",
            bot_token="xoxb-acme",
            bot_id="B0ACME",
            bot_user_id="U0NOX",
            bot_scopes=["chat:write"],
            user_id="U0ADMIN",
            installed_at=1_700_000_000.0,
        )
    )
    bot = await store.async_find_bot(enterprise_id=None, team_id="T0ACME")
    assert bot is not None and bot.bot_token == "xoxb-acme"
    assert await store.async_find_bot(enterprise_id=None, team_id="T0OTHER") is None

    states = AsyncSQLAlchemyOAuthStateStore(expiration_seconds=60, engine=engine)
    state = await states.async_issue()
    assert await states.async_consume(state) is True
    assert await states.async_consume(state) is False


async def test_conversation_history_is_per_tenant_and_thread(repos):
    turn, history = await repos.conversations.begin_turn(ACME, "C1", "100.1", "nox", "U1")
    assert history == []
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    await repos.conversations.finish_turn(ACME, turn, messages, [5, 6], "ok", None, 12)

    stored = await repos.conversations.recent_messages(ACME, "C1", "100.1")
    assert [(m.role, m.content, m.tokens) for m in stored] == [
        ("user", "hi", 5),
        ("assistant", "hello", 6),
    ]
    assert await repos.conversations.recent_messages(GLOBEX, "C1", "100.1") == []
    assert await repos.conversations.recent_messages(ACME, "C1", "200.2") == []
    with pytest.raises(LookupError):
        await repos.conversations.finish_turn(GLOBEX, turn, [], [], "ok", None, 1)


async def test_begin_turn_reuses_the_conversation(repos):
    first, _ = await repos.conversations.begin_turn(ACME, "C1", "100.1", "nox", "U1")
    await repos.conversations.finish_turn(
        ACME, first, [{"role": "user", "content": "a"}], [1], "ok", None, 1
    )
    second, history = await repos.conversations.begin_turn(ACME, "C1", "100.1", "nox", "U2")
    assert [m.content for m in history] == ["a"]  # the new turn sees the earlier one
    await repos.conversations.finish_turn(
        ACME, second, [{"role": "user", "content": "b"}], [1], "ok", None, 1
    )
    stored = await repos.conversations.recent_messages(ACME, "C1", "100.1")
    assert [m.content for m in stored] == ["a", "b"]
    assert {m.turn_id for m in stored} == {first, second}


async def test_metrics_count_only_the_tenant_and_period(repos):
    turn, _ = await repos.conversations.begin_turn(ACME, "C1", "1.1", "nox", "U1")
    await repos.conversations.finish_turn(
        ACME, turn, [], [], "ok", None, 5, [LLMCallUsage("m", 100, 20, 3)]
    )
    failed, _ = await repos.conversations.begin_turn(ACME, "C1", "2.2", "nox", "U1")
    await repos.conversations.finish_turn(ACME, failed, [], [], "error", "model down", 5)
    for status in ("ok", "ok", "timeout"):
        await repos.audit.record_tool_call(
            ACME,
            turn_id=turn,
            persona="nox",
            user_id="U1",
            tool="get_time",
            arguments={},
            result_summary="x",
            status=status,
            duration_ms=1,
        )
    other, _ = await repos.conversations.begin_turn(GLOBEX, "C9", "9.9", "nox", "U9")
    await repos.conversations.finish_turn(
        GLOBEX, other, [], [], "ok", None, 5, [LLMCallUsage("m", 999, 999, 3)]
    )

    figures = await repos.metrics.usage_since(ACME, datetime.now(UTC) - timedelta(days=1))
    assert figures.conversations == 2
    assert figures.turns == 2
    assert figures.tool_calls == {"get_time": 3}
    assert (figures.prompt_tokens, figures.completion_tokens) == (100, 20)
    assert figures.errors == 2  # the failed turn and the timed-out tool call
    later = await repos.metrics.usage_since(ACME, datetime.now(UTC) + timedelta(minutes=1))
    assert later.turns == 0 and later.tool_calls == {}

    last = await repos.metrics.last_error(ACME)
    assert last is not None and last.source == "get_time"
    assert await repos.metrics.last_error(Tenant(team_id="T0NEW")) is None


async def test_configuration_is_per_tenant(repos):
    await repos.config.update_persona(ACME, "atlas", "U1", enabled=True, model="big")
    await repos.config.update_persona(ACME, "atlas", "U1", model=None, temperature=0.9)
    await repos.config.bind_channel(ACME, "C1", "atlas", "U1")
    await repos.config.set_timezone(ACME, "Europe/Paris", "U1")

    acme = await repos.config.load(ACME)
    assert acme.overrides["atlas"].enabled is True
    assert acme.overrides["atlas"].model is None
    assert acme.overrides["atlas"].temperature == 0.9
    assert acme.bindings == {"C1": "atlas"}
    assert acme.timezone == "Europe/Paris"

    globex = await repos.config.load(GLOBEX)
    assert globex.overrides == {} and globex.bindings == {} and globex.timezone == "UTC"

    await repos.config.bind_channel(ACME, "C1", None, "U1")
    assert (await repos.config.load(ACME)).bindings == {}
    with pytest.raises(TypeError):
        await repos.config.update_persona(ACME, "atlas", "U1", tools=["x"])


async def test_claims_are_granted_once(repos):
    assert await repos.claims.claim("event:Ev1") is True
    assert await repos.claims.claim("event:Ev1") is False
    assert await repos.claims.claim("event:Ev2") is True
    assert await repos.claims.forget_before(datetime.now(UTC) + timedelta(seconds=1)) == 2
    assert await repos.claims.claim("event:Ev1") is True
