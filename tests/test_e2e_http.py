"""The real ``jamono run`` process in HTTP mode, driven the way Slack drives it."""

from __future__ import annotations

import asyncio
import json
import signal
import time

import pytest

from tests.e2e import ACME, ACME_TOKEN, ALICE, BOB, BOT, SIGNING_SECRET, base_settings, started
from tests.fakes import post_event, post_form
from tests.fakes.signing import post_signed


@pytest.fixture
def settings(slack, llm, sqlite_url):
    return base_settings(slack, llm, sqlite_url) | {
        "SLACK_BOT_TOKEN": ACME_TOKEN, "SLACK_SIGNING_SECRET": SIGNING_SECRET,
    }


@pytest.fixture
async def jamono(settings, tmp_path):
    process = await started(settings, tmp_path)
    yield process
    assert await process.stop() == 0, process.output


def in_thread(ts):
    return lambda params: params.get("thread_ts") == ts


async def mention(http, jamono, slack, text, user=ALICE, channel="C0OPS", thread_ts=None, **kw):
    event = slack.app_mention_event(user, channel, f"<@{BOT}> {text}", thread_ts=thread_ts)
    status, _ = await post_event(http, jamono.url + "/slack/events", SIGNING_SECRET,
                                 slack.event_callback(ACME, event), **kw)
    assert status == 200
    return event


async def test_the_working_indicator_shows_only_while_an_answer_is_slow(
    http, settings, slack, llm, tmp_path
):
    jamono = await started(settings | {"JAMONO_WORKING_INDICATOR_DELAY": "0.2"}, tmp_path)
    try:
        quick = await mention(http, jamono, slack, "quick?")
        await slack.wait_for("chat.postMessage", in_thread(quick["ts"]))
        llm.delay(1.0)
        slow = await mention(http, jamono, slack, "slow?")
        await slack.wait_for("chat.postMessage", in_thread(slow["ts"]))
        await slack.wait_for("reactions.remove", lambda p: p["timestamp"] == slow["ts"])
    finally:
        assert await jamono.stop() == 0, jamono.output
    (added,) = slack.calls_to("reactions.add")  # the quick answer flashed none
    assert (added.params["channel"], added.params["timestamp"], added.params["name"]) == (
        "C0OPS", slow["ts"], "eyes"
    )
    posted = slack.calls_to("chat.postMessage")[-1]
    removed = slack.calls_to("reactions.remove")[0]
    assert added.at < posted.at <= removed.at  # up while waiting, down once answered


async def test_url_verification(http, jamono):
    body = {"token": "x", "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P",
            "type": "url_verification"}
    status, text = await post_event(http, jamono.url + "/slack/events", SIGNING_SECRET, body)
    assert status == 200 and body["challenge"] in text


async def test_mention_answered_once_in_its_thread_despite_retries(http, jamono, slack, llm):
    event = slack.app_mention_event(ALICE, "C0OPS", f"<@{BOT}> is the deploy green?")
    body = slack.event_callback(ACME, event)
    url = jamono.url + "/slack/events"
    statuses = await asyncio.gather(
        post_event(http, url, SIGNING_SECRET, body),
        post_event(http, url, SIGNING_SECRET, body, retry_num=1, retry_reason="http_timeout"),
        post_event(http, url, SIGNING_SECRET, body, retry_num=2, retry_reason="http_error"),
        post_event(http, url, SIGNING_SECRET, body, retry_num=3, retry_reason="http_timeout"),
    )
    assert [s for s, _ in statuses] == [200] * 4  # every delivery is acked ...
    (answer,) = await slack.wait_for("chat.postMessage", in_thread(event["ts"]))
    await jamono.wait_for_output("duplicate_event_dropped", 3)  # ... and handled once
    assert len(llm.requests) == 1
    assert answer.token == ACME_TOKEN and answer.params["channel"] == "C0OPS"
    assert answer.params["text"] == "<echo> is the deploy green? (user messages seen: 1)"
    # The same message delivered as `message` too (the bot reads the channel) is not answered.
    duplicate = slack.message_event(ALICE, "C0OPS", event["text"], channel_type="channel",
                                    ts=event["ts"])
    await post_event(http, url, SIGNING_SECRET, slack.event_callback(ACME, duplicate))
    assert len(slack.calls_to("chat.postMessage")) == 1


async def test_bad_requests_are_refused_and_the_process_stays_healthy(http, jamono, slack):
    url = jamono.url + "/slack/events"
    body = json.dumps(slack.event_callback(ACME, slack.app_mention_event(ALICE, "C0OPS", "hi")))
    status, _ = await post_signed(http, url, "wrong-secret", body.encode(), "application/json")
    assert status == 401
    stale = int(time.time()) - 600
    status, _ = await post_signed(http, url, SIGNING_SECRET, body.encode(), "application/json",
                                  timestamp=stale)
    assert status == 401
    async with http.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
        assert r.status == 401  # unsigned
    for garbage in (b"\x00\xff not json", b"{broken", b"[1, 2]"):
        status, _ = await post_signed(http, url, SIGNING_SECRET, garbage, "application/json")
        assert status == 400
    async with http.get(jamono.url + "/healthz") as response:
        assert response.status == 200
    event = await mention(http, jamono, slack, "still there?")
    await slack.wait_for("chat.postMessage", in_thread(event["ts"]))


async def test_direct_messages(http, jamono, slack, llm):
    url = jamono.url + "/slack/events"
    ignored = [
        slack.message_event(BOB, "D0BOB", "edited", subtype="message_changed"),
        slack.message_event(None, "D0BOB", "from a bot", bot_id="B0OTHER"),
        slack.message_event(BOT, "D0BOB", "my own words"),
        slack.message_event(BOB, "C0OPS", "channel chatter", channel_type="channel"),
    ]
    for event in ignored:
        assert (await post_event(http, url, SIGNING_SECRET, slack.event_callback(ACME, event)))[0] \
            == 200
    first = slack.message_event(BOB, "D0BOB", "hello NOX")
    await post_event(http, url, SIGNING_SECRET, slack.event_callback(ACME, first))
    (answer,) = await slack.wait_for("chat.postMessage", lambda p: p["channel"] == "D0BOB")
    assert "thread_ts" not in answer.params  # top-level DMs are answered top-level
    assert answer.params["text"] == "<echo> hello NOX (user messages seen: 1)"
    # The next top-level DM continues the same DM conversation.
    second = slack.message_event(BOB, "D0BOB", "and again")
    await post_event(http, url, SIGNING_SECRET, slack.event_callback(ACME, second))
    answers = await slack.wait_for("chat.postMessage", lambda p: p["channel"] == "D0BOB", count=2)
    assert answers[1].params["text"].endswith("(user messages seen: 2)")
    assert len(llm.requests) == 2  # nothing from the ignored messages reached the model


async def test_thread_follow_up_carries_the_earlier_turn(http, jamono, slack, llm):
    root = await mention(http, jamono, slack, "we have a 502 on checkout")
    await slack.wait_for("chat.postMessage", in_thread(root["ts"]))
    await mention(http, jamono, slack, "what did I say?", user=BOB, thread_ts=root["ts"])
    answers = await slack.wait_for("chat.postMessage", in_thread(root["ts"]), count=2)
    assert answers[1].params["text"] == "<echo> what did I say? (user messages seen: 2)"
    users = [m["content"] for m in llm.requests[1]["messages"] if m["role"] == "user"]
    assert users == ["we have a 502 on checkout", "what did I say?"]


async def test_tool_calling_turn(http, jamono, slack):
    event = await mention(http, jamono, slack, "what time is it?")
    (answer,) = await slack.wait_for("chat.postMessage", in_thread(event["ts"]))
    assert answer.params["text"].startswith("Tool result: {")
    footer = answer.params["blocks"][-1]["elements"][0]["text"]
    assert footer.startswith("Tools used: `get_time()` ✓")


async def command(http, jamono, slack, name, text="", user=ALICE):
    fields = slack.slash_command_payload(ACME, user, "C0OPS", name, text)
    started_at = time.monotonic()
    status, _ = await post_form(http, jamono.url + "/slack/events", SIGNING_SECRET, fields)
    assert status == 200
    assert time.monotonic() - started_at < 3  # Slack's ack deadline
    url_id = fields["response_url"].rsplit("/", 1)[1]
    await slack.wait_for_response(lambda body: True)
    for posted_id, body in slack.responses:
        if posted_id == url_id:
            return body
    return await asyncio.wait_for(_response(slack, url_id), 10)


async def _response(slack, url_id):
    while True:
        for posted_id, body in slack.responses:
            if posted_id == url_id:
                return body
        await asyncio.sleep(0.05)


async def test_status_help_and_metrics(http, jamono, slack):
    event = await mention(http, jamono, slack, "what time is it?")
    await slack.wait_for("chat.postMessage", in_thread(event["ts"]))

    status = await command(http, jamono, slack, "/nox-status")
    assert status["response_type"] == "ephemeral"
    for part in ("*Model:* `fake-model`", "reachable at", "database: ok", "slack: ok",
                 "*Version:*", "*Uptime:*", "*Last error:* none"):
        assert part in status["text"], status["text"]

    help_text = (await command(http, jamono, slack, "/nox-help"))["text"]
    for part in ("/nox-status", "/nox-metrics", "/nox-config", "`get_time`", "`persona_status`",
                 "Current date and time"):
        assert part in help_text

    metrics = (await command(http, jamono, slack, "/nox-metrics"))
    assert "Turns: 1" in metrics["text"] and "Tool calls: 1" in metrics["text"]
    assert "`get_time`: 1" in json.dumps(metrics["blocks"])

    usage = (await command(http, jamono, slack, "/nox-frobnicate"))["text"]
    assert "is not a command I know" in usage and "/nox-help" in usage


async def test_config_by_admins_only_and_disabled_personas(http, jamono, slack, llm):
    atlas = (await command(http, jamono, slack, "/atlas-status"))["text"]
    assert "ATLAS is not enabled" in atlas and "/atlas-config enable" in atlas

    refused = await command(http, jamono, slack, "/nox-config", "atlas enable", user=BOB)
    assert "Only workspace admins" in refused["text"], jamono.output
    done = await command(http, jamono, slack, "/nox-config", "atlas enable")
    assert "ATLAS is now enabled" in done["text"]
    bound = await command(http, jamono, slack, "/nox-config", "atlas bind <#C0CLOUD|cloud>")
    assert "ATLAS now answers mentions in <#C0CLOUD>" in bound["text"]
    for name in ("Mars/Base", "Europe"):  # Europe: a directory, once an IsADirectoryError
        bad = await command(http, jamono, slack, "/nox-config", f"timezone {name}")
        assert "is not an IANA timezone" in bad["text"] and "Usage:" in bad["text"]

    event = await mention(http, jamono, slack, "which cloud?", channel="C0CLOUD")
    (answer,) = await slack.wait_for("chat.postMessage", in_thread(event["ts"]))
    assert "You are ATLAS" in llm.requests[-1]["messages"][0]["content"]
    assert answer.params["blocks"][0]["elements"][0]["text"].startswith("*ATLAS*")
    assert "ATLAS" in (await command(http, jamono, slack, "/atlas-status"))["text"]


async def test_readyz(http, jamono, slack):
    async with http.get(jamono.url + "/readyz") as response:
        body = await response.json()
    assert response.status == 200
    assert body["checks"] == {"database": "ok", "slack": "ok"}
    assert slack.calls_to("auth.test")[0].token == ACME_TOKEN


async def test_conversation_survives_a_restart(http, settings, tmp_path, slack):
    first = await started(settings, tmp_path)
    root = await mention(http, first, slack, "remember: the canary is at 10%")
    await slack.wait_for("chat.postMessage", in_thread(root["ts"]))
    assert await first.stop() == 0

    second = await started(settings, tmp_path)
    try:
        await mention(http, second, slack, "where is the canary?", thread_ts=root["ts"])
        answers = await slack.wait_for("chat.postMessage", in_thread(root["ts"]), count=2)
        assert answers[1].params["text"].endswith("(user messages seen: 2)")
    finally:
        assert await second.stop() == 0


async def test_sigterm_lets_the_in_flight_turn_finish(http, settings, tmp_path, slack, llm):
    llm.delay(1.5)
    process = await started(settings, tmp_path)
    event = await mention(http, process, slack, "slow question")
    await llm.wait_for_requests(1)
    assert await process.stop(signal.SIGTERM) == 0
    (answer,) = slack.calls_to("chat.postMessage")
    assert answer.params["thread_ts"] == event["ts"]
    assert answer.params["text"].startswith("<echo> slow question")
