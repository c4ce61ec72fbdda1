"""A workspace uninstalls the app (or revokes its tokens): everything for it stops at once.

The attack this stops: a workspace that removed Jamono (or was removed) keeps costing the
operator, its briefings calling the LLM every minute, its tokens and integration credentials
kept for nothing. Driven through the real ``jamono run`` process with OAuth installs, the fake
Slack and the fake LLM; GLOBEX, still installed, must not notice anything.
"""

from __future__ import annotations

import json

import aiohttp
import pytest
from sqlalchemy import select, text

from bot.settings import load_settings
from storage import migrate
from storage.db import create_engine, session_factory
from storage.models import BriefingSubscription
from storage.repositories import Repositories
from storage.repositories.tenant_data import TenantDataRepository
from storage.secrets import generate_key
from storage.tenancy import Tenant
from tests.cross_session_support import receive, register, token, wait_until
from tests.e2e import (
    ACME,
    ACME_TOKEN,
    ALICE,
    BOT,
    GLOBEX,
    GLOBEX_TOKEN,
    SIGNING_SECRET,
    bot_token_settings,
    oauth_settings,
    replicas,
    started,
)
from tests.fakes import post_event
from tests.test_e2e_oauth import install

KEY = generate_key()
EVERY_MINUTE = "cron * * * * *"


def prompt_of(team: str) -> str:
    return f"summarise the night for {team}"


@pytest.fixture
async def storage(sqlite_url):
    """The database the process will use, with a briefing and Jira credentials per team."""
    await migrate.upgrade_async(sqlite_url)
    engine = create_engine(sqlite_url)
    box = load_settings(_env_file=None, DATABASE_URL=sqlite_url, JAMONO_SECRET_KEY=KEY)
    repos = Repositories.over(session_factory(engine), box.secret_box())
    for team in (ACME, GLOBEX):
        await repos.briefings.create(
            Tenant(team), channel_id="C0OPS", persona="nox", schedule=EVERY_MINUTE,
            timezone="UTC", sections=[{"kind": "prompt", "prompt": prompt_of(team)}],
            created_by=ALICE,
        )
        await repos.credentials.save(Tenant(team), "jira", {"api_token": f"tok-{team}"}, ALICE,
                                     url="https://jira.example.com")
    yield engine, TenantDataRepository(session_factory(engine))
    await engine.dispose()


@pytest.fixture
async def jamono(slack, llm, sqlite_url, storage, tmp_path):
    settings = oauth_settings(slack, llm, sqlite_url) | {
        "JAMONO_SECRET_KEY": KEY,  # the one the storage fixture encrypted the credentials with
        # The test's sockets are read only at the end: no pings to miss in between.
        "JAMONO_GATEWAY_HEARTBEAT": "300",
        # Globex's briefing runs every minute, which the default minimum interval refuses.
        "JAMONO_BRIEFING_MIN_INTERVAL": "60",
    }
    process = await started(settings, tmp_path)
    yield process
    assert await process.stop() == 0, process.output
    assert "Traceback" not in process.output, process.output


async def lifecycle_event(http, jamono, slack, team: str, event: dict) -> None:
    status, _ = await post_event(http, jamono.url + "/slack/events", SIGNING_SECRET,
                                 slack.event_callback(team, event))
    assert status == 200


async def job_ids(engine) -> set[str]:
    async with engine.connect() as connection:
        return set((await connection.execute(text("SELECT id FROM apscheduler_jobs"))).scalars())


async def briefing_state(engine, team: str) -> tuple[bool, str | None]:
    async with engine.connect() as connection:
        row = (await connection.execute(
            select(BriefingSubscription.enabled, BriefingSubscription.paused_reason)
            .where(BriefingSubscription.tenant_id == team)
        )).one()
    return row.enabled, row.paused_reason


def uninstalled_line(output: str) -> dict:
    (line,) = [json.loads(x) for x in output.splitlines() if '"tenant_uninstalled"' in x]
    return line


async def test_app_uninstalled_stops_everything_for_that_workspace_only(
    http, jamono, slack, llm, storage
):
    engine, data = storage
    await install(http, jamono, slack, ACME, ACME_TOKEN, "code-acme")
    await install(http, jamono, slack, GLOBEX, GLOBEX_TOKEN, "code-globex")
    assert (await data.counts(Tenant(ACME)))["slack_bots"] == 1
    ws_url = jamono.url.replace("http", "ws") + "/ws"
    acme_app, _ = await register(http, ws_url, token(ACME, ALICE))
    globex_app, _ = await register(http, ws_url, token(GLOBEX, ALICE))

    async def both_scheduled() -> bool:
        return len(await job_ids(engine)) == 2

    await wait_until(both_scheduled)

    # A turn is in flight in ACME: the model is still thinking when the app is removed.
    llm.delay(30)
    asked = len(llm.requests)
    thread = slack.new_ts()
    mention = slack.app_mention_event(ALICE, "C0ASK", f"<@{BOT}> a long question", ts=thread)
    await lifecycle_event(http, jamono, slack, ACME, mention)
    await llm.wait_for_requests(asked + 1)

    slack.deactivate(ACME)  # Slack revokes the tokens, then sends the event
    await lifecycle_event(http, jamono, slack, ACME, {"type": "app_uninstalled",
                                                      "event_ts": slack.new_ts()})
    await jamono.wait_for_output("tenant_uninstalled")
    llm.delay(0)
    mark = len(llm.requests)
    line = uninstalled_line(jamono.output)
    assert line["tenant"] == ACME and line["turns_cancelled"] == 1
    assert line["credentials_deleted"] == 1 and line["briefings_paused"] == 1
    assert line["sessions_closed"] == 1

    # Tokens and credentials are gone; the briefing is paused and its job removed.
    acme, globex = await data.counts(Tenant(ACME)), await data.counts(Tenant(GLOBEX))
    assert acme["slack_installations"] == acme["slack_bots"] == acme["credentials"] == 0
    assert globex["slack_installations"] == globex["slack_bots"] == globex["credentials"] == 1
    assert await briefing_state(engine, ACME) == (False, "app_uninstalled")
    assert await briefing_state(engine, GLOBEX) == (True, None)

    async def only_globex_scheduled() -> bool:
        return len(await job_ids(engine)) == 1

    await wait_until(only_globex_scheduled)
    # The ACME application's session was closed; GLOBEX's goes on.
    closing = await acme_app.receive(5)
    assert (closing.type, closing.data) == (aiohttp.WSMsgType.CLOSE, 4401)
    await globex_app.send_str('{"jsonrpc":"2.0","id":7,"method":"ping","params":{}}')
    assert (await receive(globex_app))["result"] == {}

    # GLOBEX's next minutely run still calls the model and posts; ACME's never does, and the
    # model's answer to the cancelled turn is never posted.
    def briefing_post(params) -> bool:
        return params.get("channel") == "C0OPS"

    posted = len(slack.calls_to("chat.postMessage"))
    earlier = len([c for c in slack.calls_to("chat.postMessage") if briefing_post(c.params)])
    await slack.wait_for("chat.postMessage", briefing_post, count=earlier + 1, timeout=75)
    later = [c for c in slack.calls_to("chat.postMessage")[posted:] if briefing_post(c.params)]
    assert later and all(call.token == GLOBEX_TOKEN for call in later)
    after = [json.dumps(r) for r in llm.requests[mark:]]
    assert any(prompt_of(GLOBEX) in r for r in after)
    assert not any(prompt_of(ACME) in r for r in after)
    answers = [c for c in slack.calls_to("chat.postMessage") if c.params.get("thread_ts") == thread]
    assert not answers  # neither the model's answer nor an "interrupted" notice
    await acme_app.close()
    await globex_app.close()


async def test_revoked_user_tokens_delete_only_those_users(http, jamono, slack, storage):
    _, data = storage
    await install(http, jamono, slack, GLOBEX, GLOBEX_TOKEN, "code-globex")
    revoked = {"type": "tokens_revoked", "tokens": {"oauth": ["U0ADMIN"], "bot": []}}
    await lifecycle_event(http, jamono, slack, GLOBEX, revoked)
    await jamono.wait_for_output("user_tokens_revoked")
    counts = await data.counts(Tenant(GLOBEX))
    assert counts["slack_installations"] == 0  # the installer's row (its user token) is gone
    assert counts["slack_bots"] == 1 and counts["credentials"] == 1
    assert "tenant_uninstalled" not in jamono.output

    revoked["tokens"] = {"oauth": [], "bot": [BOT]}
    await lifecycle_event(http, jamono, slack, GLOBEX, revoked)
    await jamono.wait_for_output("tenant_uninstalled")
    counts = await data.counts(Tenant(GLOBEX))
    assert counts["slack_bots"] == counts["credentials"] == 0


async def test_an_uninstall_handled_by_one_replica_cancels_turns_on_the_other(
    http, slack, llm, sqlite_url, redis_url, tmp_path
):
    settings = bot_token_settings(slack, llm, sqlite_url) | {"REDIS_URL": redis_url}
    async with replicas(settings, tmp_path) as (first, second):
        llm.delay(30)
        mention = slack.app_mention_event(ALICE, "C0ASK", f"<@{BOT}> a long question")
        await lifecycle_event(http, first, slack, ACME, mention)
        await llm.wait_for_requests(1)
        slack.deactivate(ACME)
        await lifecycle_event(http, second, slack, ACME, {"type": "app_uninstalled",
                                                          "event_ts": slack.new_ts()})
        await second.wait_for_output("tenant_uninstalled")
        await first.wait_for_output("tenant_stopped_here")
        (heard,) = [json.loads(x) for x in first.output.splitlines()
                    if '"tenant_stopped_here"' in x]
        assert heard["tenant"] == ACME and heard["turns_cancelled"] == 1
        assert uninstalled_line(second.output)["turns_cancelled"] == 0
        assert "tenant_stopped_here" not in second.output  # its own announcement
        llm.delay(0)


async def test_an_uninstall_on_one_replica_ends_the_installation_the_other_had_found(
    http, slack, llm, sqlite_url, redis_url, tmp_path
):
    settings = oauth_settings(slack, llm, sqlite_url) | {"REDIS_URL": redis_url}
    async with replicas(settings, tmp_path) as (first, second):
        await install(http, first, slack, ACME, ACME_TOKEN, "code-acme")
        await install(http, first, slack, GLOBEX, GLOBEX_TOKEN, "code-globex")

        async def ask(team: str, ts: str) -> None:
            event = slack.app_mention_event(ALICE, "C0ASK", f"<@{BOT}> hello", ts=ts)
            await lifecycle_event(http, first, slack, team, event)

        await ask(ACME, "1700000100.000100")  # the first replica finds and keeps ACME's
        await slack.wait_for("chat.postMessage",
                             lambda p: p.get("thread_ts") == "1700000100.000100")
        await lifecycle_event(http, second, slack, ACME, {"type": "app_uninstalled",
                                                          "event_ts": slack.new_ts()})
        await first.wait_for_output("tenant_stopped_here")
        await ask(ACME, "1700000200.000100")
        await ask(GLOBEX, "1700000300.000100")  # answered: the first replica is working
        await slack.wait_for("chat.postMessage",
                             lambda p: p.get("thread_ts") == "1700000300.000100")
        assert not [c for c in slack.calls_to("chat.postMessage")
                    if c.params.get("thread_ts") == "1700000200.000100"]
