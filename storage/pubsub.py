"""Announcements between processes over Redis pub/sub: JSON objects, published and heard for
the life of the process, through Redis restarts."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

log = structlog.get_logger(__name__)

RESUBSCRIBE_DELAY = 2.0  # seconds before subscribing again after Redis failed

Message = dict[str, Any]


async def publish(redis: Redis, channel: str, message: Message) -> None:
    """Publish ``message`` as JSON. A failure is logged, not raised: what was announced is
    already stored, and every listener has its own way to catch up."""
    try:
        await redis.publish(channel, json.dumps(message))
    except (RedisError, OSError) as exc:
        log.warning("pubsub_publish_failed", channel=channel, error=repr(exc))


async def listen(
    redis: Redis,
    channel: str,
    on_message: Callable[[Message], Awaitable[None]],
    on_subscribed: Callable[[], None] = lambda: None,
) -> None:
    """Call ``on_message`` with each JSON object published on ``channel``, until cancelled;
    anything else is logged and skipped.

    Pub/sub delivers at most once and only to connected subscribers: after Redis failed, the
    listener subscribes again ``RESUBSCRIBE_DELAY`` seconds later and calls ``on_subscribed``
    (also on the first subscription), where the caller makes up for what it may have missed.
    A failure of ``on_message`` is the caller's to handle; it ends the listener.
    """
    while True:
        pubsub = redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(channel)
            on_subscribed()
            while True:
                received = await pubsub.get_message(timeout=1.0)
                if received is None:
                    continue
                message = _object(received["data"])
                if message is None:
                    log.warning("pubsub_message_malformed", channel=channel)
                else:
                    await on_message(message)
        except (RedisError, OSError) as exc:
            log.warning("pubsub_listener_lost", channel=channel, error=repr(exc))
        finally:
            with suppress(RedisError, OSError):
                await pubsub.aclose()
        await asyncio.sleep(RESUBSCRIBE_DELAY)


def _object(data: bytes | str) -> Message | None:
    try:
        value = json.loads(data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
