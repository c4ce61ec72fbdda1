"""Listening on a Redis pub/sub channel for the life of the process, through Redis restarts."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import suppress

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

log = structlog.get_logger(__name__)

RESUBSCRIBE_DELAY = 2.0  # seconds before subscribing again after Redis failed


async def listen(
    redis: Redis,
    channel: str,
    on_message: Callable[[bytes | str], Awaitable[None]],
    on_subscribed: Callable[[], None] = lambda: None,
) -> None:
    """Call ``on_message(data)`` for each message published on ``channel``, until cancelled.

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
                message = await pubsub.get_message(timeout=1.0)
                if message is not None:
                    await on_message(message["data"])
        except (RedisError, OSError) as exc:
            log.warning("pubsub_listener_lost", channel=channel, error=repr(exc))
        finally:
            with suppress(RedisError, OSError):
                await pubsub.aclose()
        await asyncio.sleep(RESUBSCRIBE_DELAY)
