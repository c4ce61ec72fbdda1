"""``jamono secrets``: key generation and re-encryption of stored credentials."""

from __future__ import annotations

from sqlalchemy import select

from bot.services import Services
from bot.settings import load_settings
from storage.models import Credential
from storage.secrets import generate_key, parse_keys
from storage.tenancy import Tenant
from tests.test_cli import jamono

ACME = Tenant("T0ACME")


async def test_generate_key_prints_a_new_fernet_key(tmp_path):
    first = await jamono("secrets", "generate-key", env={}, cwd=tmp_path)
    second = await jamono("secrets", "generate-key", env={}, cwd=tmp_path)
    assert first[0] == second[0] == 0
    keys = [first[1].strip(), second[1].strip()]
    assert parse_keys(",".join(keys)) == keys and keys[0] != keys[1]


async def saved_with(database_url: str, key: str) -> Services:
    services = await Services.start(
        load_settings(_env_file=None, DATABASE_URL=database_url, JAMONO_SECRET_KEY=key)
    )
    await services.repos.credentials.save(
        ACME, "jira", {"api_token": "tok-plain-123"}, "U0ADMIN", url="https://acme.atlassian.net"
    )
    return services


async def raw_secret(services: Services) -> str:
    async with services.repos.audit._sessions() as session:
        return await session.scalar(select(Credential.secret))


async def test_rotate_re_encrypts_with_the_newest_key(tmp_path, sqlite_url):
    old, new = generate_key(), generate_key()
    services = await saved_with(sqlite_url, old)
    before = await raw_secret(services)
    env = {"DATABASE_URL": sqlite_url, "JAMONO_SECRET_KEY": f"{new}, {old}"}
    code, out, err = await jamono("secrets", "rotate", env=env, cwd=tmp_path)
    assert code == 0, err
    assert "re-encrypted 1 stored credential(s)" in out
    after = await raw_secret(services)
    assert after != before and "tok-plain-123" not in after
    await services.close()
    only_new = await Services.start(
        load_settings(_env_file=None, DATABASE_URL=sqlite_url, JAMONO_SECRET_KEY=new)
    )
    try:
        assert await only_new.repos.credentials.load(ACME, "jira") == {"api_token": "tok-plain-123"}
        kinds = [e.kind for e in await only_new.repos.events.recent(ACME)]
        assert kinds[0] == "credentials_rotated"
    finally:
        await only_new.close()


async def test_rotate_refuses_without_a_key_or_with_the_wrong_one(tmp_path, sqlite_url):
    services = await saved_with(sqlite_url, generate_key())
    await services.close()
    code, _, err = await jamono("secrets", "rotate", env={"DATABASE_URL": sqlite_url},
                                cwd=tmp_path)
    assert code == 2 and "JAMONO_SECRET_KEY is not set" in err
    other = generate_key()
    code, _, err = await jamono(
        "secrets", "rotate", env={"DATABASE_URL": sqlite_url, "JAMONO_SECRET_KEY": other},
        cwd=tmp_path,
    )
    assert code == 1 and "Cannot rotate" in err and "jira credentials of T0ACME" in err
    assert other not in err


async def test_a_malformed_key_is_refused_without_showing_it(tmp_path):
    good = generate_key()
    code, _, err = await jamono(
        "secrets", "rotate", env={"JAMONO_SECRET_KEY": f"{good},not-a-key-at-all"}, cwd=tmp_path
    )
    assert code == 2
    assert "JAMONO_SECRET_KEY=(hidden): key #2 of 2 is not a Fernet key" in err
    assert good not in err and "not-a-key-at-all" not in err
