"""The real process in Socket Mode: hello, envelopes acked within 3 s, reconnect on disconnect."""

from __future__ import annotations

import pytest

from tests.e2e import ACME, ACME_TOKEN, ALICE, BOT, base_settings, started

APP_TOKEN = "xapp-1-A0JAMONO-test"


@pytest.fixture
async def jamono(slack, llm, sqlite_url, tmp_path):
    slack.add_app_token(APP_TOKEN)
    settings = base_settings(slack, llm, sqlite_url) | {
        "SLACK_BOT_TOKEN": ACME_TOKEN, "SLACK_APP_TOKEN": APP_TOKEN,
    }
    process = await started(settings, tmp_path)
    await slack.wait_for_socket_connections(1)
    yield process
    assert await process.stop() == 0, process.output


async def send_mention(slack, text):
    event = slack.app_mention_event(ALICE, "C0OPS", f"<@{BOT}> {text}")
    envelope_id = await slack.socket_send_envelope("events_api", slack.event_callback(ACME, event))
    ack, seconds = await slack.wait_for_ack(envelope_id)
    assert ack["envelope_id"] == envelope_id
    assert seconds < 3  # Slack's deadline; the figure itself is measured in bench/
    return event


async def test_envelopes_are_acked_and_answered_across_a_reconnect(jamono, slack, http):
    calls = slack.calls_to("apps.connections.open")
    assert calls[0].token == APP_TOKEN

    first = await send_mention(slack, "hello over the socket")
    (answer,) = await slack.wait_for("chat.postMessage",
                                     lambda p: p.get("thread_ts") == first["ts"])
    assert answer.token == ACME_TOKEN
    assert answer.params["text"] == "<echo> hello over the socket (user messages seen: 1)"

    await slack.socket_disconnect("refresh_requested")
    await slack.wait_for_socket_connections(2)
    second = await send_mention(slack, "still here?")
    await slack.wait_for("chat.postMessage", lambda p: p.get("thread_ts") == second["ts"])

    # The HTTP server still runs beside the socket, for probes.
    async with http.get(jamono.url + "/readyz") as response:
        assert response.status == 200
    async with http.post(jamono.url + "/slack/events", data=b"{}") as response:
        assert response.status == 404  # no signing secret: no HTTP events endpoint


async def test_retried_envelope_is_answered_once(jamono, slack, llm):
    event = slack.app_mention_event(ALICE, "C0OPS", f"<@{BOT}> once please")
    body = slack.event_callback(ACME, event)
    for attempt in range(3):
        envelope_id = await slack.socket_send_envelope(
            "events_api", body, retry_attempt=attempt, retry_reason="timeout" if attempt else ""
        )
        await slack.wait_for_ack(envelope_id)
    await slack.wait_for("chat.postMessage", lambda p: p.get("thread_ts") == event["ts"])
    assert len(llm.requests) == 1


async def test_slash_command_over_the_socket(jamono, slack):
    payload = slack.slash_command_payload(ACME, ALICE, "C0OPS", "/nox-help")
    envelope_id = await slack.socket_send_envelope("slash_commands", payload,
                                                   accepts_response_payload=True)
    await slack.wait_for_ack(envelope_id)
    body = await slack.wait_for_response(lambda b: "/nox-status" in b.get("text", ""))
    assert body["response_type"] == "ephemeral"
