"""Routing across instances through Redis: a session directory, liveness keys and inboxes.

Keys (all under ``jamono:xs:``), with TTL = 3 heartbeats, refreshed every heartbeat:

* ``s:{session_id}`` — JSON ``{team_id, slack_user_id, instance, app, title, tools,
  connected_at}``;
* ``u:{team_id}:{slack_user_id}`` — sorted set of the owner's session ids, scored by the
  Unix second their record expires; a session enters it by the :data:`ADMIT` script, which
  enforces the per-user limit atomically;
* ``i:{instance_id}`` — the instance is alive.

Each instance subscribes to ``inbox:{instance_id}`` (calls for sessions it holds) and
``reply:{instance_id}`` (answers to its own calls, and a probe it sends itself every
heartbeat: three heartbeats without a message mean the subscription is dead, so it
reconnects). A call is ``{request_id, reply_to,
deadline, team_id, slack_user_id, session_id, tool, arguments}``; the answer is
``{request_id, result}`` or ``{request_id, error:{reason, message}}``. A PUBLISH that reaches
no subscriber fails the call at once (``session_gone``); answers for calls no longer
waited for are dropped.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections import Counter
from contextlib import suppress
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from integrations.cross_session.protocol import CrossSessionError, Owner
from integrations.cross_session.sessions import (
    DEFAULT_CALL_TIMEOUT,
    LiveSession,
    LocalSessions,
    describe,
    not_found,
)

log = structlog.get_logger(__name__)

PREFIX = "jamono:xs:"
REFRESH_BATCH = 1000  # sessions per pipeline when refreshing
RESUBSCRIBE_MAX_DELAY = 2.0  # seconds between subscriber reconnection attempts, at most
ROUTE_CACHE_SIZE = 10_000  # session → instance entries kept for calls
PROBE = '{"probe":true}'

# Admission to an owner's sorted set (see the module docstring), atomic in Redis so that
# registrations on several instances cannot together exceed the limit.
# KEYS: owner key; ARGV: now, limit, session id, its expiry score, key TTL in ms.
ADMIT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
"""


def _unavailable(exc: BaseException) -> CrossSessionError:
    return CrossSessionError(
        "routing_unavailable",
        "sessions on other Jamono instances cannot be reached right now (Redis is "
        f"unavailable: {type(exc).__name__}); try again shortly",
    )


class RedisRouter:
    """Routing over Redis for several instances sharing ``redis_url``.

    ``heartbeat`` is in seconds; a session or instance not refreshed for three heartbeats is
    gone. Local sessions are always served without Redis, so they keep working while Redis
    is down.
    """

    def __init__(
        self,
        redis_url: str,
        instance_id: str,
        heartbeat: float,
        sessions: LocalSessions | None = None,
    ) -> None:
        self.sessions = sessions or LocalSessions()
        self.instance_id = instance_id
        self.heartbeat = heartbeat
        self.ttl_ms = max(1, round(heartbeat * 3 * 1000))
        self._redis = Redis.from_url(
            redis_url, socket_connect_timeout=2, socket_timeout=5, decode_responses=True
        )
        # Pub/sub blocks reading, so it gets its own connection without a read timeout.
        self._sub_redis = Redis.from_url(
            redis_url, socket_connect_timeout=2, decode_responses=True
        )
        self._admit = self._redis.register_script(ADMIT)
        self._inbox = f"{PREFIX}inbox:{instance_id}"
        self._reply = f"{PREFIX}reply:{instance_id}"
        self._pending: dict[str, asyncio.Future] = {}
        self._admitting: Counter[Owner] = Counter()  # registrations awaiting the ADMIT script
        # session_id → (owner, instance, cached at): saves a Redis round trip per call. Ids are
        # random and never reused, and the holding instance checks the owner again, so a stale
        # entry can only lead to session_gone or not_found, never to another user's session.
        self._routes: dict[str, tuple[Owner, str, float]] = {}
        self._subscribed = asyncio.Event()
        self._last_heard = 0.0  # monotonic seconds of the last message on our channels
        self._tasks: set[asyncio.Task] = set()
        self._loops: list[asyncio.Task] = []

    # Lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Subscribe and start heartbeats; waits up to one heartbeat for the subscription."""
        self._loops = [
            asyncio.create_task(self._listen(), name="xs-subscriber"),
            asyncio.create_task(self._beat(), name="xs-heartbeat"),
        ]
        with suppress(TimeoutError):
            await asyncio.wait_for(self._subscribed.wait(), max(self.heartbeat, 2.0))

    async def close(self) -> None:
        for task in self._loops:
            task.cancel()
        for task in self._loops:
            with suppress(asyncio.CancelledError):
                await task
        with suppress(RedisError, OSError):
            pipe = self._redis.pipeline(transaction=False)
            pipe.delete(f"{PREFIX}i:{self.instance_id}")
            for session in self.sessions:
                self._forget(pipe, session)
            await pipe.execute()
        await self._redis.aclose()
        await self._sub_redis.aclose()

    # Directory -------------------------------------------------------------------------

    async def admit(self, session: LiveSession, limit: int) -> bool:
        """Hold ``session`` unless its owner has ``limit`` sessions across all instances;
        ``True`` when held. While Redis is unreachable only this instance's are counted."""
        owner = session.owner
        # Counted here before the first await, so registrations on this instance cannot both
        # take the last place; the script does the same across instances. The session joins
        # self.sessions only once admitted: a heartbeat meanwhile must not write it to Redis.
        if len(self.sessions.of(owner)) + self._admitting[owner] >= limit:
            return False
        self._admitting[owner] += 1
        now = time.time()
        try:
            admitted = await self._admit(
                keys=[_owner_key(owner)],
                args=[now, limit, session.session_id, now + self.ttl_ms / 1000, self.ttl_ms],
            )
        except (RedisError, OSError) as exc:
            log.warning("xs_admit_local_only", error=repr(exc))
            admitted = 1
        finally:
            self._admitting[owner] -= 1
            if not self._admitting[owner]:
                del self._admitting[owner]
        if not admitted:
            return False
        self.sessions.add(session)
        await self.updated(session)
        return True

    async def updated(self, session: LiveSession) -> None:
        pipe = self._redis.pipeline(transaction=False)
        self._record(pipe, session, time.time())
        try:
            await pipe.execute()
        except (RedisError, OSError) as exc:
            # The session still works here; the next heartbeat writes it again.
            log.warning("xs_record_failed", session_id=session.session_id, error=repr(exc))

    async def removed(self, session: LiveSession) -> None:
        pipe = self._redis.pipeline(transaction=False)
        self._forget(pipe, session)
        try:
            await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning("xs_forget_failed", session_id=session.session_id, error=repr(exc))

    def _record(self, pipe, session: LiveSession, now: float) -> None:
        owner = session.owner
        record = {
            "team_id": owner.team_id,
            "slack_user_id": owner.slack_user_id,
            "instance": self.instance_id,
            "app": session.app,
            "title": session.title,
            "tools": list(session.tools.values()),
            "connected_at": session.connected_at,
        }
        pipe.set(f"{PREFIX}s:{session.session_id}", json.dumps(record), px=self.ttl_ms)
        self._touch_owner(pipe, session, now)

    def _touch_owner(self, pipe, session: LiveSession, now: float) -> None:
        key = _owner_key(session.owner)
        pipe.zadd(key, {session.session_id: now + self.ttl_ms / 1000})
        pipe.pexpire(key, self.ttl_ms)

    @staticmethod
    def _forget(pipe, session: LiveSession) -> None:
        pipe.delete(f"{PREFIX}s:{session.session_id}")
        pipe.zrem(_owner_key(session.owner), session.session_id)

    async def _beat(self) -> None:
        while True:
            try:
                await self.refresh()
                # A probe through our own reply channel: the subscriber treats silence as a
                # dead connection (a half-open TCP connection never errors by itself).
                await self._redis.publish(self._reply, PROBE)
            except (RedisError, OSError) as exc:
                log.warning("xs_heartbeat_failed", error=repr(exc))
            await asyncio.sleep(self.heartbeat)

    async def refresh(self) -> None:
        """One heartbeat: extend this instance's keys, rewriting records Redis lost."""
        now = time.time()
        await self._redis.set(f"{PREFIX}i:{self.instance_id}", "1", px=self.ttl_ms)
        sessions = list(self.sessions)
        for start in range(0, len(sessions), REFRESH_BATCH):
            batch = sessions[start : start + REFRESH_BATCH]
            pipe = self._redis.pipeline(transaction=False)
            for session in batch:
                pipe.pexpire(f"{PREFIX}s:{session.session_id}", self.ttl_ms)
                self._touch_owner(pipe, session, now)
            results = await pipe.execute()
            lost = [s for s, alive in zip(batch, results[::3], strict=True) if not alive]
            if lost:  # e.g. Redis restarted empty
                pipe = self._redis.pipeline(transaction=False)
                for session in lost:
                    self._record(pipe, session, now)
                await pipe.execute()

    async def list(self, owner: Owner) -> list[dict[str, Any]]:
        """The owner's live sessions on every instance; only the local ones while Redis is
        unreachable."""
        local = {s.session_id: s.info() for s in self.sessions.of(owner)}
        try:
            records = await self._records(owner)
        except (RedisError, OSError) as exc:
            log.warning("xs_list_local_only", error=repr(exc))
            return list(local.values())
        for session_id, record in records.items():
            local.setdefault(session_id, _info(session_id, record))
        return list(local.values())

    async def _records(self, owner: Owner) -> dict[str, dict[str, Any]]:
        key = _owner_key(owner)
        pipe = self._redis.pipeline(transaction=False)
        pipe.zremrangebyscore(key, "-inf", time.time())
        pipe.zrange(key, 0, -1)
        _, ids = await pipe.execute()
        if not ids:
            return {}
        raw = await self._redis.mget([f"{PREFIX}s:{i}" for i in ids])
        records = {
            i: record
            for i, text in zip(ids, raw, strict=True)
            if text and _owned(record := json.loads(text), owner)
        }
        instances = sorted({r["instance"] for r in records.values()})
        if not instances:
            return {}
        alive = await self._redis.mget([f"{PREFIX}i:{i}" for i in instances])
        live = {i for i, flag in zip(instances, alive, strict=True) if flag}
        return {i: r for i, r in records.items() if r["instance"] in live}

    async def _lookup(self, owner: Owner, session_id: str) -> dict[str, Any] | None:
        try:
            text = await self._redis.get(f"{PREFIX}s:{session_id}")
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from exc
        if not text:
            return None
        record = json.loads(text)
        return record if _owned(record, owner) else None

    async def describe(self, owner: Owner, session_id: str) -> dict[str, Any] | None:
        session = self.sessions.get(owner, session_id)
        if session is not None:
            return session.info()
        if self.sessions.holds(session_id):
            return None
        record = await self._lookup(owner, session_id)
        return _info(session_id, record) if record else None

    # Calls -----------------------------------------------------------------------------

    async def call(
        self,
        owner: Owner,
        session_id: str,
        tool: str,
        arguments: dict[str, Any],
        time_limit: float = DEFAULT_CALL_TIMEOUT,
    ) -> dict[str, Any]:
        """Run ``tool`` in the owner's session, here or on the instance holding it.

        Raises:
            CrossSessionError: as :meth:`LocalSessions.call`, plus ``session_gone`` (its
                instance does not answer) and ``routing_unavailable`` (Redis is down).
        """
        if self.sessions.holds(session_id):
            return await self.sessions.call(owner, session_id, tool, arguments, time_limit)
        instance = await self._route(owner, session_id)
        try:
            return await self._remote_call(
                instance, owner, session_id, tool, arguments, time_limit
            )
        except CrossSessionError as exc:
            if exc.reason in ("session_gone", "not_found"):
                self._routes.pop(session_id, None)
            raise

    async def _route(self, owner: Owner, session_id: str) -> str:
        """The instance holding ``owner``'s session. Raises CrossSessionError."""
        cached = self._routes.get(session_id)
        if cached and cached[0] == owner and time.monotonic() - cached[2] < self.heartbeat:
            return cached[1]
        record = await self._lookup(owner, session_id)
        if record is None:
            raise not_found(session_id)
        if record["instance"] == self.instance_id:
            # Our own record, yet we do not hold it: the socket closed a moment ago.
            raise _gone(session_id)
        if len(self._routes) >= ROUTE_CACHE_SIZE:
            self._routes.pop(next(iter(self._routes)))
        self._routes[session_id] = (owner, record["instance"], time.monotonic())
        return record["instance"]

    async def _remote_call(
        self,
        instance: str,
        owner: Owner,
        session_id: str,
        tool: str,
        arguments: dict[str, Any],
        time_limit: float,
    ) -> dict[str, Any]:
        if not self._subscribed.is_set():
            raise _unavailable(ConnectionError("not subscribed"))
        request_id = uuid.uuid4().hex
        future = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        message = {
            "request_id": request_id,
            "reply_to": self._reply,
            "deadline": time.time() + time_limit,
            "team_id": owner.team_id,
            "slack_user_id": owner.slack_user_id,
            "session_id": session_id,
            "tool": tool,
            "arguments": arguments,
        }
        try:
            try:
                receivers = await self._redis.publish(
                    f"{PREFIX}inbox:{instance}", json.dumps(message)
                )
            except (RedisError, OSError) as exc:
                raise _unavailable(exc) from exc
            if not receivers:
                raise _gone(session_id)
            try:
                answer = await asyncio.wait_for(future, time_limit)
            except TimeoutError:
                raise CrossSessionError(
                    "timeout", f"session {session_id} did not answer within {time_limit:g} s"
                ) from None
        finally:
            self._pending.pop(request_id, None)
        if "error" in answer:
            raise CrossSessionError(answer["error"]["reason"], answer["error"]["message"])
        return answer["result"]

    async def _listen(self) -> None:
        delay = 0.1
        while True:
            pubsub = self._sub_redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._inbox, self._reply)
                self._subscribed.set()
                self._last_heard = time.monotonic()
                log.info("xs_subscribed", instance_id=self.instance_id)
                delay = 0.1
                while True:
                    message = await pubsub.get_message(timeout=self.heartbeat)
                    if message is not None and message["type"] == "message":
                        self._last_heard = time.monotonic()
                        self._dispatch(message["channel"], message["data"])
                    elif time.monotonic() - self._last_heard > 3 * self.heartbeat:
                        raise ConnectionError("no message, not even our probe, for 3 heartbeats")
            except (RedisError, OSError) as exc:
                log.warning("xs_subscriber_lost", error=repr(exc))
            finally:
                self._subscribed.clear()
                with suppress(RedisError, OSError):
                    await pubsub.aclose()
            await asyncio.sleep(delay * (1 + random.random()))
            delay = min(delay * 2, RESUBSCRIBE_MAX_DELAY)

    def _dispatch(self, channel: str, data: str) -> None:
        if data == PROBE:
            return
        try:
            message = json.loads(data)
        except json.JSONDecodeError:
            log.warning("xs_bad_message", channel=channel)
            return
        if channel == self._reply:
            future = self._pending.get(message.get("request_id"))
            if future is None or future.done():
                log.info("xs_late_reply_dropped", request_id=message.get("request_id"))
                return
            future.set_result(message)
            return
        task = asyncio.create_task(self._serve(message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, message: dict[str, Any]) -> None:
        """Answer a call from another instance; the owner is checked again here."""
        try:
            request_id, reply_to = message["request_id"], message["reply_to"]
            remaining = float(message["deadline"]) - time.time()
            owner = Owner(message["team_id"], message["slack_user_id"])
            session_id, tool = message["session_id"], message["tool"]
            arguments = message["arguments"]
        except (KeyError, TypeError, ValueError):
            log.warning("xs_bad_call")
            return
        if remaining <= 0:
            log.info("xs_expired_call_dropped", request_id=request_id)
            return
        answer: dict[str, Any] = {"request_id": request_id}
        try:
            answer["result"] = await self.sessions.call(
                owner, session_id, tool, arguments, remaining
            )
        except CrossSessionError as exc:
            answer["error"] = {"reason": exc.reason, "message": str(exc)}
        try:
            await self._redis.publish(reply_to, json.dumps(answer))
        except (RedisError, OSError) as exc:
            log.warning("xs_reply_failed", request_id=request_id, error=repr(exc))


def _owner_key(owner: Owner) -> str:
    return f"{PREFIX}u:{owner.team_id}:{owner.slack_user_id}"


def _owned(record: dict[str, Any], owner: Owner) -> bool:
    return record.get("team_id") == owner.team_id and record.get(
        "slack_user_id"
    ) == owner.slack_user_id


def _info(session_id: str, record: dict[str, Any]) -> dict[str, Any]:
    return describe(
        session_id, record["app"], record["title"], record["tools"], record["connected_at"]
    )


def _gone(session_id: str) -> CrossSessionError:
    return CrossSessionError(
        "session_gone",
        f"session {session_id} is no longer connected; its application will reconnect "
        "shortly — list_sessions again",
    )
