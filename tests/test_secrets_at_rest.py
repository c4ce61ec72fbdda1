"""Secrets at rest, as the attack: someone reads the database (a backup, a replica, a dump).

They must find no Slack token (bot, user or refresh) of any installed workspace: tokens are
Fernet-encrypted by the installation store, a migration encrypts the rows stored in plain text
before, and ``jamono secrets rotate`` moves them to a new key like the integration credentials.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from alembic import command
from slack_sdk.oauth.installation_store import Installation
from slack_sdk.oauth.installation_store.sqlalchemy import AsyncSQLAlchemyInstallationStore
from sqlalchemy import text

from bot.settings import SettingsError, load_settings
from storage import migrate
from storage.db import create_engine, session_factory
from storage.installations import EncryptedInstallationStore, rotate_tokens
from storage.repositories import Repositories
from storage.secrets import SecretBox, UndecryptableSecret, generate_key
from storage.tenancy import Tenant
from tests.e2e import ACME, BOT, oauth_settings, started
from tests.test_cli import jamono
from tests.test_e2e_oauth import install

BOT_TOKEN = "xoxb-1111-2222-acmebotsecret"
# Token rotation issues long tokens; their Fernet tokens outgrow slack_sdk's VARCHAR(200).
ROTATING_BOT_TOKEN = "xoxe.xoxb-1-" + "M" * 150
REFRESH_TOKEN = "xoxe-1-" + "R" * 140
USER_TOKEN = "xoxp-1111-3333-acmeusersecret"
USER_REFRESH_TOKEN = "xoxe-1-" + "U" * 60
WEBHOOK = "https://hooks.slack.com/services/T0ACME/B0NOX/webhooksecret"
TOKENS = (BOT_TOKEN, ROTATING_BOT_TOKEN, REFRESH_TOKEN, USER_TOKEN, USER_REFRESH_TOKEN, WEBHOOK)


def installation(bot_token: str = ROTATING_BOT_TOKEN) -> Installation:
    return Installation(
        app_id="A0JAMONO",
        enterprise_id=None,
        team_id=ACME,
        team_name="Acme",
        bot_token=bot_token,
        bot_id="B0NOX",
        bot_user_id=BOT,
        bot_scopes=["chat:write"],
        bot_refresh_token=REFRESH_TOKEN,
        bot_token_expires_at=int(time.time()) + 43_200,
        user_id="U0ADMIN",
        user_token=USER_TOKEN,
        user_refresh_token=USER_REFRESH_TOKEN,
        user_token_expires_at=int(time.time()) + 43_200,
        incoming_webhook_url=WEBHOOK,
        installed_at=time.time(),
    )


async def stolen_rows(engine) -> list[str]:
    """Every value of both installation tables, as text, the way a dump shows them."""
    cells = []
    async with engine.connect() as conn:
        for table in ("slack_installations", "slack_bots"):
            for row in (await conn.execute(text(f"SELECT * FROM {table}"))).all():
                cells.extend(str(value) for value in row)
    return cells


def assert_no_token_in(cells: list[str], tokens=TOKENS) -> None:
    dump = "\n".join(cells)
    # Per cell: Fernet ciphertext is random base64, so "xox" turns up inside it now and then.
    assert not any(cell.startswith(("xox", "https://hooks.slack.com")) for cell in cells)
    for token in tokens:
        assert token not in dump


async def test_a_dump_of_the_database_holds_no_slack_token(engine):
    box = SecretBox([generate_key()])
    store = EncryptedInstallationStore("111.222", engine, box)
    await store.async_save(installation())

    cells = await stolen_rows(engine)
    assert any(cell.startswith("gAAAAA") for cell in cells)  # Fernet tokens were stored
    assert_no_token_in(cells)

    found = await store.async_find_installation(enterprise_id=None, team_id=ACME)
    assert (found.bot_token, found.bot_refresh_token) == (ROTATING_BOT_TOKEN, REFRESH_TOKEN)
    assert (found.user_token, found.user_refresh_token) == (USER_TOKEN, USER_REFRESH_TOKEN)
    assert found.incoming_webhook_url == WEBHOOK
    bot = await store.async_find_bot(enterprise_id=None, team_id=ACME)
    assert (bot.bot_token, bot.bot_refresh_token) == (ROTATING_BOT_TOKEN, REFRESH_TOKEN)
    by_user = await store.async_find_installation(
        enterprise_id=None, team_id=ACME, user_id="U0ADMIN"
    )
    assert by_user.user_token == USER_TOKEN

    # slack_sdk's delete methods (uninstall) still work on the encrypted store.
    await store.async_delete_bot(enterprise_id=None, team_id=ACME)
    await store.async_delete_installation(enterprise_id=None, team_id=ACME)
    assert await store.async_find_installation(enterprise_id=None, team_id=ACME) is None
    assert await stolen_rows(engine) == []


async def test_tokens_stored_under_another_key_are_not_readable(engine):
    await EncryptedInstallationStore("111.222", engine, SecretBox([generate_key()])).async_save(
        installation()
    )
    thief = EncryptedInstallationStore("111.222", engine, SecretBox([generate_key()]))
    with pytest.raises(UndecryptableSecret) as caught:
        await thief.async_find_bot(enterprise_id=None, team_id=ACME)
    assert "slack_bots.bot_token" in str(caught.value)
    assert "xox" not in str(caught.value)


def test_oauth_install_without_a_secret_key_is_refused():
    with pytest.raises(SettingsError) as caught:
        load_settings(
            _env_file=None, SLACK_CLIENT_ID="1.2", SLACK_CLIENT_SECRET="c",
            SLACK_SIGNING_SECRET="s",
        )
    assert any(
        "JAMONO_SECRET_KEY is needed with OAuth install" in p for p in caught.value.problems
    )
    assert load_settings(
        _env_file=None, SLACK_CLIENT_ID="1.2", SLACK_CLIENT_SECRET="c", SLACK_SIGNING_SECRET="s",
        JAMONO_SECRET_KEY=generate_key(),
    ).oauth_enabled


@pytest.mark.parametrize(
    "env",
    [
        {"DATABASE_URL": "mysql://jamono:pa55word@db/jamono"},
        {"REDIS_URL": "http://:pa55word@cache:6379"},
        {"JIRA_URL": "ftp://nox:pa55word@jira.example.com"},
    ],
)
def test_a_rejected_url_setting_is_shown_without_its_password(env):
    with pytest.raises(SettingsError) as caught:
        load_settings(_env_file=None, **env)
    (problem,) = caught.value.problems
    assert "pa55word" not in problem and "[redacted]@" in problem


async def plaintext_install_at_0004(database_url: str) -> None:
    """What a database written before tokens were encrypted holds: slack_sdk's plain rows."""
    await migrate.upgrade_async(database_url, "0004")
    engine = create_engine(database_url)
    try:
        store = AsyncSQLAlchemyInstallationStore(client_id="111.222", engine=engine)
        await store.async_save(installation(bot_token=BOT_TOKEN))
        assert BOT_TOKEN in await stolen_rows(engine)
    finally:
        await engine.dispose()


async def test_the_migration_encrypts_tokens_stored_in_plain_text(database_url):
    await plaintext_install_at_0004(database_url)
    box = SecretBox([generate_key()])
    await migrate.upgrade_async(database_url, secrets=box)

    engine = create_engine(database_url)
    try:
        assert_no_token_in(await stolen_rows(engine))
        store = EncryptedInstallationStore("111.222", engine, box)
        bot = await store.async_find_bot(enterprise_id=None, team_id=ACME)
        assert (bot.bot_token, bot.bot_refresh_token) == (BOT_TOKEN, REFRESH_TOKEN)
        found = await store.async_find_installation(enterprise_id=None, team_id=ACME)
        assert found.user_refresh_token == USER_REFRESH_TOKEN
        # Long rotated tokens fit the widened columns (VARCHAR(200) on PostgreSQL before).
        await store.async_save(installation())
        bot = await store.async_find_bot(enterprise_id=None, team_id=ACME)
        assert bot.bot_token == ROTATING_BOT_TOKEN
    finally:
        await engine.dispose()

    # Downgrading gives slack_sdk's plain rows back.
    await asyncio.to_thread(
        command.downgrade, migrate.alembic_config(database_url, box), "0004"
    )
    engine = create_engine(database_url)
    try:
        stock = AsyncSQLAlchemyInstallationStore(client_id="111.222", engine=engine)
        bot = await stock.async_find_bot(enterprise_id=None, team_id=ACME)
        assert bot.bot_token == ROTATING_BOT_TOKEN
    finally:
        await engine.dispose()


async def test_the_migration_refuses_to_run_without_the_key_and_says_which(database_url):
    await plaintext_install_at_0004(database_url)
    with pytest.raises(RuntimeError) as caught:
        await migrate.upgrade_async(database_url)
    assert "JAMONO_SECRET_KEY is not set" in str(caught.value)
    assert "xox" not in str(caught.value)

    # With the key set, the same upgrade goes through.
    box = SecretBox([generate_key()])
    await migrate.upgrade_async(database_url, secrets=box)
    engine = create_engine(database_url)
    try:
        assert await migrate.applied_revisions(engine) == migrate.head_revisions(database_url)
        assert_no_token_in(await stolen_rows(engine))
    finally:
        await engine.dispose()


async def test_db_upgrade_without_the_key_exits_with_the_setting_named(tmp_path, sqlite_url):
    await plaintext_install_at_0004(sqlite_url)
    code, _, err = await jamono("db", "upgrade", env={"DATABASE_URL": sqlite_url}, cwd=tmp_path)
    assert code == 1
    assert "Cannot upgrade" in err and "JAMONO_SECRET_KEY" in err
    assert "Traceback" not in err and "xox" not in err
    key = generate_key()
    code, out, err = await jamono(
        "db", "upgrade", env={"DATABASE_URL": sqlite_url, "JAMONO_SECRET_KEY": key}, cwd=tmp_path
    )
    assert code == 0, err


async def test_rotate_moves_the_tokens_to_the_new_key(tmp_path, sqlite_url):
    await migrate.upgrade_async(sqlite_url)
    old, new = generate_key(), generate_key()
    engine = create_engine(sqlite_url)
    try:
        await EncryptedInstallationStore("111.222", engine, SecretBox([old])).async_save(
            installation()
        )
        before = await stolen_rows(engine)
        env = {"DATABASE_URL": sqlite_url, "JAMONO_SECRET_KEY": f"{new}, {old}"}
        code, out, err = await jamono("secrets", "rotate", env=env, cwd=tmp_path)
        assert code == 0, err
        assert "re-encrypted the Slack tokens of 2 installation row(s)" in out
        after = await stolen_rows(engine)
        assert after != before
        assert_no_token_in(after)
        # The old key is gone: everything still opens with the new one alone.
        only_new = EncryptedInstallationStore("111.222", engine, SecretBox([new]))
        found = await only_new.async_find_installation(enterprise_id=None, team_id=ACME)
        assert (found.bot_token, found.user_refresh_token) == (
            ROTATING_BOT_TOKEN, USER_REFRESH_TOKEN
        )
        # Nothing left to move: a second run rewrites the same rows, and they still open.
        assert await rotate_tokens(engine, SecretBox([new])) == 2
        audit = await Repositories.over(session_factory(engine)).events.recent(
            Tenant(ACME), kind="credentials_rotated"
        )
        assert [(e.subject, e.actor) for e in audit] == [("slack", None), ("slack", None)]
    finally:
        await engine.dispose()


async def test_rotate_with_the_wrong_key_changes_nothing_and_shows_no_token(
    tmp_path, sqlite_url
):
    await migrate.upgrade_async(sqlite_url)
    engine = create_engine(sqlite_url)
    try:
        await EncryptedInstallationStore(
            "111.222", engine, SecretBox([generate_key()])
        ).async_save(installation())
        before = await stolen_rows(engine)
        env = {"DATABASE_URL": sqlite_url, "JAMONO_SECRET_KEY": generate_key()}
        code, _, err = await jamono("secrets", "rotate", env=env, cwd=tmp_path)
        assert code == 1
        assert "Cannot rotate" in err and "slack_installations.bot_token" in err
        assert "xox" not in err
        assert await stolen_rows(engine) == before
    finally:
        await engine.dispose()


async def test_an_oauth_install_through_the_running_process_stores_no_token(
    http, slack, llm, sqlite_url, tmp_path
):
    token = "xoxb-acme-installed-by-oauth"
    process = await started(oauth_settings(slack, llm, sqlite_url), tmp_path)
    try:
        await install(http, process, slack, ACME, token, "code-acme")
    finally:
        assert await process.stop() == 0, process.output
    engine = create_engine(sqlite_url)
    try:
        cells = await stolen_rows(engine)
    finally:
        await engine.dispose()
    assert any(cell.startswith("gAAAAA") for cell in cells)
    assert_no_token_in(cells, (token,))
