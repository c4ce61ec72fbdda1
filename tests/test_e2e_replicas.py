"""Two ``jamono run`` replicas behind one Slack app share the event claims through Redis."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from tests.e2e import ACME, ALICE, BOT, SIGNING_SECRET, bot_token_settings, replicas
from tests.fakes import post_event


async def test_an_event_delivered_to_two_replicas_is_answered_once(
    http, slack, llm, sqlite_url, redis_url, tmp_path
):
    settings = bot_token_settings(slack, llm, sqlite_url) | {"REDIS_URL": redis_url}
    async with replicas(settings, tmp_path) as (first, second):
        for n in range(5):
            event = slack.app_mention_event(ALICE, "C0OPS", f"<@{BOT}> question {n}")
            body = slack.event_callback(ACME, event)
            statuses = await asyncio.gather(
                post_event(http, first.url + "/slack/events", SIGNING_SECRET, body),
                post_event(http, second.url + "/slack/events", SIGNING_SECRET, body,
                           retry_num=1, retry_reason="http_timeout"),
            )
            assert [s for s, _ in statuses] == [200, 200]
            await slack.wait_for("chat.postMessage", lambda p, ts=event["ts"]:
                                 p.get("thread_ts") == ts)
            redis = Redis.from_url(redis_url)
            key = f"jamono:claim:msg:{ACME}:C0OPS:{event['ts']}"
            try:
                assert await redis.exists(key)
                assert 0 < await redis.ttl(key) <= 3600
            finally:
                await redis.aclose()
        assert len(slack.calls_to("chat.postMessage")) == 5
        assert len(llm.requests) == 5
        for _ in range(100):  # the losing replica logs its drop right after its ack
            dropped = first.count("duplicate_event_dropped") + \
                second.count("duplicate_event_dropped")
            if dropped == 5:
                break
            await asyncio.sleep(0.05)
        assert dropped == 5
