"""Multi-workspace install by OAuth v2, and isolation between the installed workspaces."""

from __future__ import annotations

import html
import re
from urllib.parse import parse_qs, urlparse

import pytest

from integrations.cross_session import TokenVerifier
from tests.cross_session_support import SECRET
from tests.e2e import (
    ACME,
    ACME_TOKEN,
    ALICE,
    BOT,
    CLIENT_ID,
    GLOBEX,
    GLOBEX_TOKEN,
    SIGNING_SECRET,
    oauth_settings,
    slash_command,
    started,
)
from tests.fakes import post_event

CAROL = "U0CAROL"


@pytest.fixture
async def jamono(slack, llm, sqlite_url, tmp_path):
    process = await started(oauth_settings(slack, llm, sqlite_url), tmp_path)
    yield process
    assert await process.stop() == 0, process.output


async def install(http, jamono, slack, team_id, token, code):
    slack.register_oauth_code(code, team_id, token, BOT)
    async with http.get(jamono.url + "/slack/install") as response:
        assert response.status == 200
        page = await response.text()
        cookie = response.headers["Set-Cookie"].split(";", 1)[0]
    link = html.unescape(re.search(r'<a href="([^"]+)"', page).group(1))
    authorize = urlparse(link)
    query = parse_qs(authorize.query)
    assert authorize.netloc == urlparse(slack.url).netloc
    assert authorize.path == "/oauth/v2/authorize"
    assert query["client_id"] == [CLIENT_ID]
    assert "app_mentions:read" in query["scope"][0].split(",")
    # Slack sends the browser back with the code and the state it was given.
    callback = f"/slack/oauth_redirect?code={code}&state={query['state'][0]}"
    async with http.get(jamono.url + callback, headers={"Cookie": cookie}) as response:
        assert response.status == 200, await response.text()
    (exchange,) = [c for c in slack.calls_to("oauth.v2.access") if c.params.get("code") == code]
    assert exchange.headers["Authorization"].startswith("Basic ")


async def mention(http, jamono, slack, team_id, text, ts, channel="C0SHARED", thread_ts=None):
    event = slack.app_mention_event(ALICE, channel, f"<@{BOT}> {text}", ts=ts, thread_ts=thread_ts)
    status, _ = await post_event(http, jamono.url + "/slack/events", SIGNING_SECRET,
                                 slack.event_callback(team_id, event))
    assert status == 200


async def command(http, jamono, slack, team_id, name, text=""):
    answer = await slash_command(http, jamono, slack, name, text, team=team_id, channel="C0SHARED")
    return answer["text"]


async def test_install_then_each_team_is_answered_with_its_own_token(http, jamono, slack):
    await install(http, jamono, slack, ACME, ACME_TOKEN, "code-acme")
    await mention(http, jamono, slack, ACME, "hello from acme", "1700000100.000100")
    (answer,) = await slack.wait_for("chat.postMessage",
                                     lambda p: p.get("thread_ts") == "1700000100.000100")
    assert answer.token == ACME_TOKEN

    await install(http, jamono, slack, GLOBEX, GLOBEX_TOKEN, "code-globex")
    await mention(http, jamono, slack, GLOBEX, "hello from globex", "1700000200.000100")
    (answer,) = await slack.wait_for("chat.postMessage",
                                     lambda p: p.get("thread_ts") == "1700000200.000100")
    assert answer.token == GLOBEX_TOKEN


async def test_a_used_code_or_a_forged_state_installs_nothing(http, jamono, slack):
    await install(http, jamono, slack, ACME, ACME_TOKEN, "code-acme")
    async with http.get(jamono.url + "/slack/oauth_redirect?code=code-acme&state=forged") as r:
        assert r.status >= 400
    # Events from a workspace that never installed the app get no answer.
    slack.add_workspace("T0NOINSTALL", "xoxb-unused", BOT)
    await mention(http, jamono, slack, "T0NOINSTALL", "anyone?", "1700000300.000100")
    await mention(http, jamono, slack, ACME, "sentinel", "1700000400.000100")
    await slack.wait_for("chat.postMessage", lambda p: p.get("thread_ts") == "1700000400.000100")
    assert not [c for c in slack.calls_to("chat.postMessage")
                if c.params.get("thread_ts") == "1700000300.000100"]


async def test_workspaces_never_see_each_other(http, jamono, slack, llm):
    await install(http, jamono, slack, ACME, ACME_TOKEN, "code-acme")
    await install(http, jamono, slack, GLOBEX, GLOBEX_TOKEN, "code-globex")
    slack.add_user(ACME, ALICE, "alice", is_admin=True)
    slack.add_user(GLOBEX, ALICE, "alice", is_admin=True)
    thread = "1700000500.000100"  # the same channel id and thread_ts in both workspaces

    await mention(http, jamono, slack, ACME, "the launch code is alpha", thread)
    await slack.wait_for("chat.postMessage", lambda p: p.get("thread_ts") == thread)
    await mention(http, jamono, slack, ACME, "and the backup is beta", slack.new_ts(),
                  thread_ts=thread)
    await slack.wait_for("chat.postMessage", lambda p: p.get("thread_ts") == thread, count=2)
    assert "ATLAS is now enabled" in await command(http, jamono, slack, ACME, "/nox-config",
                                                   "atlas enable")

    await mention(http, jamono, slack, GLOBEX, "what is the launch code?", thread)
    answers = await slack.wait_for("chat.postMessage", lambda p: p.get("thread_ts") == thread,
                                   count=3)
    assert answers[2].token == GLOBEX_TOKEN
    globex_request = llm.requests[-1]
    users = [m["content"] for m in globex_request["messages"] if m["role"] == "user"]
    assert users == ["what is the launch code?"]
    assert "alpha" not in str(globex_request)

    assert "ATLAS is not enabled" in await command(http, jamono, slack, GLOBEX, "/atlas-status")
    globex_metrics = await command(http, jamono, slack, GLOBEX, "/nox-metrics")
    acme_metrics = await command(http, jamono, slack, ACME, "/nox-metrics")
    assert "Turns: 1" in globex_metrics and "Turns: 2" in acme_metrics


async def test_a_link_token_is_sent_with_the_workspace_token_and_binds_its_team(
    http, jamono, slack
):
    await install(http, jamono, slack, ACME, ACME_TOKEN, "code-acme")
    await install(http, jamono, slack, GLOBEX, GLOBEX_TOKEN, "code-globex")
    said = await command(http, jamono, slack, GLOBEX, "/nox-link")
    assert "I sent you a direct message" in said
    (dm,) = await slack.wait_for("chat.postMessage", lambda p: p.get("channel") == ALICE)
    assert dm.token == GLOBEX_TOKEN
    token = re.search(r"```(.+?)```", dm.params["text"]).group(1)
    identity = TokenVerifier(SECRET, "HS256").verify(token)
    assert (identity.owner.team_id, identity.owner.slack_user_id) == (GLOBEX, ALICE)


async def test_auth_test_is_asked_once_per_token_and_an_uninstall_still_ends_authorization(
    http, jamono, slack
):
    def auth_tests() -> list[str]:
        return [call.token for call in slack.calls_to("auth.test")]

    await install(http, jamono, slack, ACME, ACME_TOKEN, "code-acme")
    installed = auth_tests()  # the OAuth flow asks once for the bot's id
    for n in range(3):
        ts = f"170000050{n}.000100"
        await mention(http, jamono, slack, ACME, f"question {n}", ts)
        await slack.wait_for("chat.postMessage", lambda p, ts=ts: p.get("thread_ts") == ts)
    assert auth_tests() == [*installed, ACME_TOKEN]

    status, _ = await post_event(http, jamono.url + "/slack/events", SIGNING_SECRET,
                                 slack.event_callback(ACME, {"type": "app_uninstalled",
                                                             "event_ts": slack.new_ts()}))
    assert status == 200
    await jamono.wait_for_output("tenant_uninstalled")
    await mention(http, jamono, slack, ACME, "still there?", "1700000600.000100")

    renewed = "xoxb-acme-reinstalled"
    await install(http, jamono, slack, ACME, renewed, "code-acme-again")
    reinstalled = auth_tests()
    await mention(http, jamono, slack, ACME, "back again", "1700000700.000100")
    (answer,) = await slack.wait_for("chat.postMessage",
                                     lambda p: p.get("thread_ts") == "1700000700.000100")
    assert answer.token == renewed
    # The cached authorization of the removed token let nothing through.
    assert not [c for c in slack.calls_to("chat.postMessage")
                if c.params.get("thread_ts") == "1700000600.000100"]
    assert auth_tests() == [*reinstalled, renewed]
