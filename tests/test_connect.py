"""Connecting Jira and the calendar (/nox-connect, jamono connect), /nox-status's integration
lines, and /nox-incident — in process through the command router, and through the real
``jamono run`` process the way Slack drives it."""

from __future__ import annotations

import asyncio
import json
import sqlite3

import pytest
import pytest_asyncio
from cryptography.fernet import Fernet

from agents.connections import HEALTH_TTL
from bot.commands import CommandRequest, CommandRouter
from bot.services import Services
from bot.settings import load_settings
from integrations.errors import IntegrationError
from storage.tenancy import Tenant
from tests.e2e import (
    ACME,
    ACME_TOKEN,
    ALICE,
    BOB,
    BOT,
    SIGNING_SECRET,
    approval_id,
    base_settings,
    click,
    has_buttons,
    started,
)
from tests.fakes import ToolCall, post_event, post_form
from tests.fakes.jira import FakeJira
from tests.radicale import running_radicale
from tests.test_cli import jamono as run_cli
from tests.test_tools import scripted

KEY = Fernet.generate_key().decode()
TENANT = Tenant(ACME)


@pytest.fixture(scope="module")
def radicale(tmp_path_factory):
    with running_radicale(tmp_path_factory.mktemp("radicale"), users={"nox": "s3cret-pass"},
                          calendars=("Incidents",)) as url:
        yield url


@pytest_asyncio.fixture
async def jira():
    async with FakeJira("cloud") as fake:
        yield fake


async def start(sqlite_url, **env) -> Services:
    return await Services.start(load_settings(_env_file=None, DATABASE_URL=sqlite_url, **env))


async def yes() -> bool:
    return True


async def no() -> bool:
    return False


async def command(services, name: str, text: str = "", admin=yes, tenant=TENANT) -> str:
    reply = await CommandRouter(services).handle(CommandRequest(
        tenant=tenant, command=name, text=text, user_id=ALICE, channel_id="C0OPS",
        is_admin=admin))
    return reply.text


def raw_rows(sqlite_url: str) -> list[tuple]:
    with sqlite3.connect(sqlite_url.split("///", 1)[1]) as db:
        return db.execute("SELECT * FROM credentials").fetchall()


# -- in process -----------------------------------------------------------------------------

async def test_connect_tests_before_saving_and_stores_nothing_in_clear(sqlite_url, jira,
                                                                       radicale):
    services = await start(sqlite_url, JAMONO_SECRET_KEY=KEY)
    connections = services.connections
    try:
        from agents.connections import ConnectionFailed

        with pytest.raises(ConnectionFailed) as wrong:
            await connections.connect(TENANT, "jira", {
                "url": jira.url, "email": jira.email, "api_token": "wrong-token"}, ALICE)
        assert wrong.value.errors == {"api_token": "Jira rejected the credentials (HTTP 401): "
                                                   "check the email and API token."}
        with pytest.raises(ConnectionFailed) as not_jira:
            await connections.connect(TENANT, "jira", {
                "url": jira.url + "/wiki", "email": jira.email, "api_token": "x"}, ALICE)
        assert "does not look like a Jira site" in not_jira.value.errors["url"]
        with pytest.raises(ConnectionFailed) as missing:
            await connections.connect(TENANT, "jira", {"url": jira.url, "email": "a@b.c"}, ALICE)
        assert set(missing.value.errors) == {"api_token"}
        with pytest.raises(ConnectionFailed) as bad_password:
            await connections.connect(TENANT, "calendar", {
                "url": radicale, "username": "nox", "password": "nope",
                "calendar": "Incidents"}, ALICE)
        assert "rejected the username or password" in bad_password.value.errors["password"]
        with pytest.raises(ConnectionFailed) as no_calendar:
            await connections.connect(TENANT, "calendar", {
                "url": radicale, "username": "nox", "password": "s3cret-pass",
                "calendar": "Standups"}, ALICE)
        assert "the calendars there are: Incidents" in no_calendar.value.errors["calendar"]
        assert raw_rows(sqlite_url) == []  # nothing saved

        done = await connections.connect(TENANT, "jira", {
            "url": jira.url, "email": jira.email, "api_token": jira.api_token}, ALICE)
        assert done.startswith(f"Jira Cloud at {jira.url} as {jira.email}, API token ••••-123")
        assert "signed in as Nox" in done
        await connections.connect(TENANT, "calendar", {
            "url": radicale, "username": "nox", "password": "s3cret-pass",
            "calendar": "Incidents"}, ALICE)
        rows = raw_rows(sqlite_url)
        assert len(rows) == 2
        dump = json.dumps(rows, default=str)
        assert jira.api_token not in dump and "s3cret-pass" not in dump
        client = await connections.jira(TENANT)
        assert client.credentials.api_token == jira.api_token

        shown = await command(services, "/nox-connect")
        assert f"Jira: {jira.url} as {jira.email} (secret ••••" in shown
        assert f"Calendar: {radicale} as nox" in shown
        assert jira.api_token not in shown and "s3cret-pass" not in shown

        assert "Only workspace admins" in await command(services, "/nox-connect", "jira remove",
                                                        admin=no)
        removed = await command(services, "/nox-connect", "jira remove")
        assert "Jira credentials removed" in removed
        assert len(raw_rows(sqlite_url)) == 1
        assert "Jira: not connected" in await command(services, "/nox-connect")
    finally:
        await services.close()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "169.254.169.254", "10.1.2.3"])
async def test_with_many_workspaces_internal_hosts_are_refused(sqlite_url, jira, host):
    """With OAuth install, a workspace admin's URL must not reach the server's own network."""
    from agents.connections import ConnectionFailed

    services = await start(sqlite_url, JAMONO_SECRET_KEY=KEY, SLACK_CLIENT_ID="1.2",
                           SLACK_CLIENT_SECRET="s", SLACK_SIGNING_SECRET="x")
    url = jira.url.replace("127.0.0.1", host)
    try:
        with pytest.raises(ConnectionFailed) as refused:
            await services.connections.connect(TENANT, "jira", {
                "url": url, "email": jira.email, "api_token": jira.api_token}, ALICE)
    finally:
        await services.close()
    assert "connects only to servers on the public internet" in refused.value.errors["url"]
    assert jira.requests == []  # never contacted
    assert raw_rows(sqlite_url) == []


async def test_connect_jira_data_center(sqlite_url):
    services = await start(sqlite_url, JAMONO_SECRET_KEY=KEY)
    try:
        async with FakeJira("datacenter") as jira:
            from agents.connections import ConnectionFailed

            with pytest.raises(ConnectionFailed) as wrong:
                await services.connections.connect(TENANT, "jira", {
                    "url": jira.url, "pat": "stale-token"}, ALICE)
            assert "check the personal access token" in wrong.value.errors["pat"]
            done = await services.connections.connect(TENANT, "jira", {
                "url": jira.url, "pat": jira.pat}, ALICE)
            assert done.startswith(f"Jira Data Center at {jira.url}, personal access token "
                                   "••••-456")
            assert "(Server)" in done
            found = await (await services.connections.jira(TENANT)).search("project = PAY")
            assert [issue.key for issue in found.issues] == ["PAY-1"]
            assert jira.requests_to("GET", "/rest/api/2/search")
            assert jira.pat not in json.dumps(raw_rows(sqlite_url), default=str)
    finally:
        await services.close()


async def test_without_a_secret_key_nothing_is_saved_and_the_fix_is_named(sqlite_url, jira):
    services = await start(sqlite_url)
    try:
        from agents.connections import ConnectionFailed

        with pytest.raises(ConnectionFailed) as caught:
            await services.connections.connect(TENANT, "jira", {
                "url": jira.url, "email": jira.email, "api_token": jira.api_token}, ALICE)
        assert "JAMONO_SECRET_KEY is not set" in caught.value.errors["url"]
        assert "Fernet.generate_key()" in caught.value.errors["url"]
        assert "JAMONO_SECRET_KEY is not set" in await command(services, "/nox-connect", "jira")
        assert raw_rows(sqlite_url) == []
    finally:
        await services.close()


@pytest.mark.parametrize("text", ["github", "jira now", "calendar remove please"])
async def test_connect_usage(sqlite_url, text):
    services = await start(sqlite_url, JAMONO_SECRET_KEY=KEY)
    try:
        assert "Usage: `/nox-connect [jira|calendar] [remove]`" in await command(
            services, "/nox-connect", text)
    finally:
        await services.close()


async def test_status_lists_each_integration_per_workspace(sqlite_url, jira, radicale):
    services = await start(sqlite_url, JAMONO_SECRET_KEY=KEY)
    try:
        status = await command(services, "/nox-status")
        assert "• jira: not configured" in status and "• calendar: not configured" in status

        await services.connections.connect(TENANT, "jira", {
            "url": jira.url, "email": jira.email, "api_token": jira.api_token}, ALICE)
        await services.connections.connect(TENANT, "calendar", {
            "url": radicale, "username": "nox", "password": "s3cret-pass",
            "calendar": "Incidents"}, ALICE)
        status = await command(services, "/nox-status")
        assert "• jira: ok" in status and "• calendar: ok" in status
        other = await command(services, "/nox-status", tenant=Tenant("T0GLOBEX"))
        assert "• jira: not configured" in other  # credentials are per workspace

        jira.api_token = "revoked"  # the token was revoked in Jira
        assert "• jira: ok" in await command(services, "/nox-status")  # checked just now
        later = services.connections.clock() + HEALTH_TTL
        services.connections.clock = lambda: later
        status = await command(services, "/nox-status")
        assert "• jira: failing: Jira rejected the credentials (HTTP 401)" in status

        jira.api_token = "cloud-api-token-123"
        await jira.down()
        client = await services.connections.jira(TENANT)
        for _ in range(2):  # 3 + 2 attempts: five failures open the circuit
            with pytest.raises(IntegrationError, match="Jira"):
                await client.search("project = OPS")
        status = await command(services, "/nox-status")
        assert "• jira: circuit open: retrying in" in status

        await jira.up()  # new credentials saved: the old circuit is forgotten
        await services.connections.connect(TENANT, "jira", {
            "url": jira.url, "email": jira.email, "api_token": jira.api_token}, ALICE)
        assert "• jira: ok" in await command(services, "/nox-status")
    finally:
        await services.close()


async def test_incident_without_a_summary_shows_the_usage(sqlite_url):
    services = await start(sqlite_url)
    try:
        text = await command(services, "/nox-incident", "  ")
        assert text.startswith("Usage: `/nox-incident <what is happening>`, e.g.")
        assert not services.runtime.llm  # no turn can have started: no LLM configured
    finally:
        await services.close()


# -- the CLI --------------------------------------------------------------------------------

async def test_cli_connect_tests_then_saves(tmp_path, sqlite_url, jira):
    env = {"DATABASE_URL": sqlite_url}
    args = ("connect", "jira", "--team", ACME, "--url", jira.url, "--email", jira.email)
    code, _, err = await run_cli(*args, "--api-token", jira.api_token, env=env, cwd=tmp_path)
    assert code == 1
    assert "JAMONO_SECRET_KEY is not set" in err and "Fernet.generate_key()" in err

    env["JAMONO_SECRET_KEY"] = KEY
    code, _, err = await run_cli(*args, "--api-token", "wrong", env=env, cwd=tmp_path)
    assert code == 1
    assert "Not saved" in err and "--api-token: Jira rejected the credentials (HTTP 401)" in err
    assert raw_rows(sqlite_url) == []

    code, out, err = await run_cli(*args, "--api-token", jira.api_token, env=env, cwd=tmp_path)
    assert code == 0, err
    assert f"Connected: Jira Cloud at {jira.url}" in out and "••••-123" in out
    assert jira.api_token not in out + err
    code, out, _ = await run_cli("connect", "show", "--team", ACME, env=env, cwd=tmp_path)
    assert code == 0 and f"Jira: {jira.url} as {jira.email}" in out
    assert "Calendar: not connected" in out


# -- through the real process ---------------------------------------------------------------

@pytest_asyncio.fixture
async def process(slack, llm, sqlite_url, tmp_path, jira):
    settings = base_settings(slack, llm, sqlite_url) | {
        "SLACK_BOT_TOKEN": ACME_TOKEN, "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "JAMONO_SECRET_KEY": KEY,
    }
    process = await started(settings, tmp_path)
    yield process
    assert await process.stop() == 0, process.output


async def slash(http, process, slack, name, text="", user=ALICE):
    fields = slack.slash_command_payload(ACME, user, "C0OPS", name, text)
    status, _ = await post_form(http, process.url + "/slack/events", SIGNING_SECRET, fields)
    assert status == 200
    url_id = fields["response_url"].rsplit("/", 1)[1]
    for _ in range(200):
        for posted, body in slack.responses:
            if posted == url_id:
                return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"no answer to {name} {text}")


async def submit(http, process, slack, view, values, user=ALICE) -> tuple[int, str]:
    payload = slack.view_submission_payload(ACME, user, view, values)
    return await post_form(http, process.url + "/slack/events", SIGNING_SECRET,
                           {"payload": json.dumps(payload)})


async def test_nox_connect_modal_end_to_end(http, process, slack, llm, jira, sqlite_url):
    refused = await slash(http, process, slack, "/nox-connect", "jira", user=BOB)
    assert "Only workspace admins" in refused["text"]
    assert not slack.calls_to("views.open")

    await slash(http, process, slack, "/nox-connect", "jira")
    await slack.wait_for("views.open", answered=True)
    (view,) = slack.views
    assert view["callback_id"] == "nox_connect:jira"
    assert [b["block_id"] for b in view["blocks"] if b["type"] == "input"] == [
        "url", "email", "api_token", "pat"]

    wrong = {"url": jira.url, "email": jira.email, "api_token": "wrong-token", "pat": None}
    status, body = await submit(http, process, slack, view, wrong)
    assert status == 200
    answer = json.loads(body)
    assert answer["response_action"] == "errors"
    assert "Jira rejected the credentials (HTTP 401)" in answer["errors"]["api_token"]
    assert raw_rows(sqlite_url) == []

    right = wrong | {"api_token": jira.api_token}
    status, body = await submit(http, process, slack, view, right)
    assert status == 200 and "errors" not in body
    (dm,) = await slack.wait_for("chat.postMessage", lambda p: p["channel"] == ALICE)
    assert "Jira connected: Jira Cloud at" in dm.params["text"]
    assert "••••-123" in dm.params["text"] and jira.api_token not in dm.params["text"]
    (row,) = raw_rows(sqlite_url)
    assert jira.api_token not in json.dumps(row, default=str)

    # Connected: a mention asking for a Jira search is answered with linked keys.
    llm.script = scripted(ToolCall("jira_search", {"jql": "project = OPS AND status != Done"}))
    event = slack.app_mention_event(ALICE, "C0OPS", f"<@{BOT}> open OPS issues?")
    await post_event(http, process.url + "/slack/events", SIGNING_SECRET,
                     slack.event_callback(ACME, event))
    (reply,) = await slack.wait_for("chat.postMessage",
                                    lambda p: p.get("thread_ts") == event["ts"])
    assert f"<{jira.url}/browse/OPS-2|OPS-2>" in reply.params["text"]


async def test_nox_incident_end_to_end(http, process, slack, llm, jira):
    await slash(http, process, slack, "/nox-connect", "jira")
    await slack.wait_for("views.open", answered=True)
    (view,) = slack.views
    await submit(http, process, slack, view, {"url": jira.url, "email": jira.email,
                                              "api_token": jira.api_token, "pat": None})
    llm.script = scripted(
        ToolCall("jira_create_issue", {"project": "PAY", "issue_type": "Incident",
                                       "summary": "Payments API down", "priority": "Highest",
                                       "labels": ["incident"]}),
        ToolCall("calendar_schedule_meeting", {
            "title": "Post-mortem: Payments API down", "start": "2030-01-08T10:00",
            "duration": 60, "attendees": [f"<@{ALICE}>", f"<@{BOB}>"],
            "description": f"{jira.url}/browse/PAY-2"}),
    )
    answer = await slash(http, process, slack, "/nox-incident", "payments API down since 14:05")
    assert "Incident declared" in answer["text"]
    (opening,) = await slack.wait_for(
        "chat.postMessage", lambda p: "Incident* declared by" in p.get("text", ""))
    assert opening.params["channel"] == "C0OPS" and "thread_ts" not in opening.params

    # Each write waits for its approval in the thread; nothing has happened yet.
    requests = await slack.wait_for("chat.postMessage", has_buttons, count=2)
    instructions = llm.requests[0]["messages"][-1]["content"]
    assert "payments API down since 14:05" in instructions
    assert "jira_create_issue" in instructions and "calendar_schedule_meeting" in instructions
    thread = requests[0].params["thread_ts"]
    assert {r.params["thread_ts"] for r in requests} == {thread}
    assert "`jira_create_issue`" in str(requests[0].blocks)
    assert "`calendar_schedule_meeting`" in str(requests[1].blocks)
    assert jira.requests_to("POST", "/rest/api/2/issue") == [] and not slack.files

    for request in requests:
        await click(http, process, slack, request, approval_id(request))
    await slack.wait_for("chat.postMessage", lambda p: p.get("thread_ts") == thread
                         and "ran" in p.get("text", ""), count=2)
    assert len(jira.requests_to("POST", "/rest/api/2/issue")) == 1
    (upload,) = slack.files.values()
    assert upload.channel_id == "C0OPS" and upload.thread_ts == thread
    assert b"METHOD:REQUEST" in upload.content and b"PAY-2" in upload.content


async def test_connect_form_errors_over_socket_mode(slack, llm, sqlite_url, tmp_path, jira):
    from bot.commands.connect import connection_view

    slack.add_app_token("xapp-1-A0JAMONO-test")
    settings = base_settings(slack, llm, sqlite_url) | {
        "SLACK_BOT_TOKEN": ACME_TOKEN, "SLACK_APP_TOKEN": "xapp-1-A0JAMONO-test",
        "JAMONO_SECRET_KEY": KEY,
    }
    process = await started(settings, tmp_path)
    try:
        await slack.wait_for_socket_connections(1)
        view = {"id": "V0CONNECT", **connection_view("jira", "C0OPS")}
        payload = slack.view_submission_payload(ACME, ALICE, view, {
            "url": jira.url, "email": jira.email, "api_token": "wrong-token"})
        envelope_id = await slack.socket_send_envelope("interactive", payload,
                                                       accepts_response_payload=True)
        ack, _ = await slack.wait_for_ack(envelope_id)
        assert ack["payload"]["response_action"] == "errors"
        assert "HTTP 401" in ack["payload"]["errors"]["api_token"]
        assert raw_rows(sqlite_url) == []
    finally:
        assert await process.stop() == 0, process.output


async def test_jira_from_the_environment_down_then_back(slack, llm, sqlite_url, tmp_path, jira,
                                                        http):
    settings = base_settings(slack, llm, sqlite_url) | {
        "SLACK_BOT_TOKEN": ACME_TOKEN, "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "JIRA_URL": jira.url, "JIRA_EMAIL": jira.email, "JIRA_API_TOKEN": jira.api_token,
    }
    process = await started(settings, tmp_path)
    try:
        async def ask() -> str:
            event = slack.app_mention_event(ALICE, "C0OPS", f"<@{BOT}> payments issues?")
            await post_event(http, process.url + "/slack/events", SIGNING_SECRET,
                             slack.event_callback(ACME, event))
            (reply,) = await slack.wait_for("chat.postMessage",
                                            lambda p: p.get("thread_ts") == event["ts"])
            return json.dumps(reply.params, ensure_ascii=False)

        llm.script = scripted(ToolCall("jira_search", {"jql": "project = PAY"}))
        await jira.down()
        down = await ask()
        assert "Jira is unavailable: Cannot reach Jira at" in down
        assert "jira_search" in down and "✗ error" in down  # the tools line under the answer
        assert "Traceback" not in down

        await jira.up()
        back = await ask()
        assert f"<{jira.url}/browse/PAY-1|PAY-1> Refund job retries forever" in back
        async with http.get(process.url + "/healthz") as response:
            assert response.status == 200
    finally:
        assert await process.stop() == 0, process.output
