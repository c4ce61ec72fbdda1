"""The "Reset circuit" button of ``/nox-status``, written as the misuse it stops: a member who is
not an admin resetting a circuit (or replaying an admin's button), and a workspace resetting
another workspace's circuit. Driven through the real process, the fake Slack and a Jira that
is down until its circuit opens."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import pytest
from redis.asyncio import Redis

from agents.connections import CIRCUITS_CHANNEL, Connections, Defaults
from integrations.resilience import BreakerPolicy, Failure, Resilience, RetryPolicy
from storage.db import create_engine, session_factory
from storage.repositories.credentials import CredentialRepository
from storage.tenancy import Tenant
from tests.cross_session_support import wait_until
from tests.e2e import (
    ACME,
    ALICE,
    BOB,
    BOT,
    GLOBEX,
    GLOBEX_TOKEN,
    SIGNING_SECRET,
    bot_token_settings,
    started,
)
from tests.fakes import ToolCall, post_event, post_form
from tests.fakes.slack import APP_ID
from tests.test_e2e_http import command
from tests.test_metrics import TOKEN, figures, get, value

SEARCH = {"jql": "project = OPS"}


def search_script(request):
    last = request["messages"][-1]
    if last["role"] == "tool":
        return f"Tool result: {last['content']}"
    return [ToolCall("jira_search", SEARCH)]


@pytest.fixture
async def jamono(slack, llm, jira, sqlite_url, tmp_path):
    llm.script = search_script
    slack.add_workspace(GLOBEX, GLOBEX_TOKEN, BOT, "Globex")
    settings = bot_token_settings(slack, llm, sqlite_url) | {
        "JIRA_URL": jira.url, "JIRA_PAT": jira.pat, "JAMONO_METRICS_TOKEN": TOKEN,
    }
    process = await started(settings, tmp_path)
    yield process
    assert await process.stop() == 0, process.output


async def break_jira(http, jamono, slack, team_id):
    """Ask for Jira searches in ``team_id`` until its Jira circuit opens (Jira is down)."""
    for _ in range(BreakerPolicy().failure_threshold):
        event = slack.app_mention_event(ALICE, "C0OPS", f"<@{BOT}> any open incidents?")
        status, _ = await post_event(http, jamono.url + "/slack/events", SIGNING_SECRET,
                                     slack.event_callback(team_id, event))
        assert status == 200
        answered = await slack.wait_for(
            "chat.postMessage", lambda p, ts=event["ts"]: p.get("thread_ts") == ts, timeout=20)
        if "circuit open" in answered[0].params["text"]:
            return
    raise AssertionError("the Jira circuit did not open")


async def circuits(http, jamono) -> dict[str, float | None]:
    _, body = await get(http, jamono.url + "/metrics", TOKEN)
    found = figures(body)
    return {team: value(found, "jamono_integration_circuit_open", team_id=team,
                        integration="jira") for team in (ACME, GLOBEX)}


def reset_buttons(reply) -> list[dict]:
    return [element for block in reply.get("blocks", []) if block["type"] == "actions"
            for element in block["elements"] if element["action_id"] == "circuit_reset"]


async def click_reset(http, jamono, slack, user, integration="jira") -> dict:
    """Press "Reset circuit" on the ephemeral /nox-status reply, as Slack posts the click."""
    response_url = slack.new_response_url()
    payload = {
        "type": "block_actions", "token": "verification-token-unused", "api_app_id": APP_ID,
        "is_enterprise_install": False, "enterprise": None,
        "team": {"id": ACME, "domain": "acme"},
        "user": {"id": user, "username": user.lower(), "name": user.lower(), "team_id": ACME},
        "container": {"type": "message", "message_ts": f"{time.time():.6f}",
                      "channel_id": "C0OPS", "is_ephemeral": True},
        "trigger_id": f"{uuid.uuid4().int % 10**13}.{uuid.uuid4().hex[:8]}",
        "channel": {"id": "C0OPS", "name": "c0ops"}, "state": {"values": {}},
        "response_url": response_url,
        "actions": [{"type": "button", "action_id": "circuit_reset", "block_id": "circuit_reset",
                     "text": {"type": "plain_text", "text": "Reset Jira circuit"},
                     "value": integration, "action_ts": f"{time.time():.6f}"}],
    }
    status, _ = await post_form(http, jamono.url + "/slack/events", SIGNING_SECRET,
                                {"payload": json.dumps(payload)})
    assert status == 200
    url_id = response_url.rsplit("/", 1)[1]
    await slack.wait_for_response(lambda body: any(i == url_id for i, _ in slack.responses))
    return next(body for i, body in slack.responses if i == url_id)


async def test_only_an_admin_resets_only_their_own_workspaces_circuit(
    http, jamono, slack, jira
):
    await jira.down()
    await break_jira(http, jamono, slack, ACME)
    await break_jira(http, jamono, slack, GLOBEX)
    assert await circuits(http, jamono) == {ACME: 1, GLOBEX: 1}

    # A member is not offered the button; an admin is.
    assert reset_buttons(await command(http, jamono, slack, "/nox-status", user=BOB)) == []
    (button,) = reset_buttons(await command(http, jamono, slack, "/nox-status", user=ALICE))
    assert button["value"] == "jira"

    # A member replaying the admin's button is refused, and nothing changes.
    refusal = await click_reset(http, jamono, slack, BOB)
    assert refusal["response_type"] == "ephemeral" and refusal["replace_original"] is False
    assert "Only workspace admins and owners" in refusal["text"]
    assert await circuits(http, jamono) == {ACME: 1, GLOBEX: 1}

    # A button naming something else than an integration is refused too.
    forged = await click_reset(http, jamono, slack, ALICE, integration=GLOBEX)
    assert "no integration named" in forged["text"]
    assert await circuits(http, jamono) == {ACME: 1, GLOBEX: 1}

    # The admin's click closes Acme's circuit only.
    done = await click_reset(http, jamono, slack, ALICE)
    assert "Jira circuit reset" in done["text"]
    after = await circuits(http, jamono)
    assert after[ACME] in (None, 0) and after[GLOBEX] == 1
    assert reset_buttons(await command(http, jamono, slack, "/nox-status", user=ALICE)) == []

    # The next Acme call goes to Jira again (and, Jira being up, works).
    await jira.up()
    requests_before = len(jira.requests)
    event = slack.app_mention_event(ALICE, "C0OPS", f"<@{BOT}> any open incidents?")
    await post_event(http, jamono.url + "/slack/events", SIGNING_SECRET,
                     slack.event_callback(ACME, event))
    (answer,) = await slack.wait_for("chat.postMessage",
                                     lambda p: p.get("thread_ts") == event["ts"], timeout=20)
    assert len(jira.requests) > requests_before
    assert "circuit open" not in answer.params["text"]


async def test_reset_touches_one_workspace_and_integration():
    resilience = Resilience(RetryPolicy(attempts=1), BreakerPolicy(failure_threshold=1))

    async def down():
        raise ConnectionRefusedError

    for workspace in (ACME, GLOBEX):
        for integration in ("jira", "calendar"):
            with pytest.raises(ConnectionRefusedError):
                await resilience.call(workspace, integration, down,
                                      classify=lambda _: Failure(transient=True))
    assert len(resilience.states()) == 4 and all(s.open for s in resilience.states())

    assert resilience.reset(ACME, "jira") is True
    assert resilience.reset(ACME, "jira") is False  # already closed
    still_open = {(s.workspace, s.integration) for s in resilience.states() if s.open}
    assert still_open == {(ACME, "calendar"), (GLOBEX, "jira"), (GLOBEX, "calendar")}
    assert resilience.health(ACME, "jira").state == "ok"
    assert resilience.health(GLOBEX, "jira").state == "circuit open"


async def test_a_reset_closes_the_circuit_on_every_replica_through_redis(sqlite_url, redis_url):
    """Circuits are per process: a reset clicked on one replica used to leave the others
    refusing calls until their own pause ended."""
    engine = create_engine(sqlite_url)
    clients = [Redis.from_url(redis_url) for _ in range(2)]
    replicas = [
        Connections(CredentialRepository(session_factory(engine), None),
                    Resilience(RetryPolicy(attempts=1), BreakerPolicy(failure_threshold=1)),
                    defaults=Defaults(), timeout=1.0, can_store=False, redis=client)
        for client in clients
    ]

    async def down():
        raise ConnectionRefusedError

    listening = asyncio.create_task(replicas[1].listen())
    try:
        for replica in replicas:
            for workspace in (ACME, GLOBEX):
                with pytest.raises(ConnectionRefusedError):
                    await replica.resilience.call(workspace, "jira", down,
                                                  classify=lambda _: Failure(transient=True))

        async def subscribed() -> int:
            return (await clients[0].pubsub_numsub(CIRCUITS_CHANNEL))[0][1]

        async def closed_there() -> bool:
            return replicas[1].resilience.health(ACME, "jira").state == "ok"

        await wait_until(subscribed, timeout=5)
        assert await replicas[0].reset_circuit(Tenant(ACME), "jira") is True
        await wait_until(closed_there, timeout=5)
        assert replicas[1].resilience.health(GLOBEX, "jira").state == "circuit open"
    finally:
        listening.cancel()
        for replica in replicas:
            replica.close()
        for client in clients:
            await client.aclose()
        await engine.dispose()
