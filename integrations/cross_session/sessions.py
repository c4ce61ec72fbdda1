"""Live sessions held by this instance, and routing when there is only one instance."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any, Protocol

from integrations.cross_session.protocol import CrossSessionError, Owner

DEFAULT_CALL_TIMEOUT = 30.0  # seconds


class Peer(Protocol):
    """The connection a session lives on (the gateway's WebSocket handler)."""

    async def call_tool(
        self, name: str, arguments: dict[str, Any], time_limit: float
    ) -> dict[str, Any]:
        """Send MCP ``tools/call`` and return its result. Raises CrossSessionError."""
        ...


class LiveSession:
    """One registered application connection.

    ``tools`` are validated MCP tool declarations; ``connected_at`` and ``expires_at`` are
    Unix seconds.
    """

    __slots__ = (
        "session_id",
        "owner",
        "app",
        "title",
        "tools",
        "connected_at",
        "expires_at",
        "peer",
    )

    def __init__(
        self,
        session_id: str,
        owner: Owner,
        app: str,
        title: str,
        tools: list[dict[str, Any]],
        expires_at: int,
        peer: Peer,
    ) -> None:
        self.session_id = session_id
        self.owner = owner
        self.app = app
        self.title = title
        self.tools = {tool["name"]: tool for tool in tools}
        self.connected_at = time.time()
        self.expires_at = expires_at
        self.peer = peer

    def info(self) -> dict[str, Any]:
        """``{session_id, app, title, tools:[{name, description, inputSchema, annotations?}],
        connected_since}`` (ISO 8601 UTC) — what ``list_sessions`` shows."""
        return describe(self.session_id, self.app, self.title, list(self.tools.values()),
                        self.connected_at)


def describe(
    session_id: str, app: str, title: str, tools: list[dict[str, Any]], connected_at: float
) -> dict[str, Any]:
    return {
        "session_id": session_id,
        "app": app,
        "title": title,
        "tools": tools,
        "connected_since": datetime.fromtimestamp(connected_at, UTC).isoformat(
            timespec="seconds"
        ),
    }


def not_found(session_id: str) -> CrossSessionError:
    # One message whether the id is unknown or another user's: existence must not leak.
    return CrossSessionError(
        "not_found", f"there is no live session {session_id!r} of yours; list_sessions shows them"
    )


class LocalSessions:
    """The sessions whose sockets this instance holds, indexed by id and by owner.

    Every lookup takes the owner and answers only for that owner's sessions: this is the
    isolation check on the instance that holds the socket.
    """

    def __init__(self) -> None:
        self._by_id: dict[str, LiveSession] = {}
        self._by_owner: dict[Owner, dict[str, LiveSession]] = {}

    def add(self, session: LiveSession) -> None:
        self._by_id[session.session_id] = session
        self._by_owner.setdefault(session.owner, {})[session.session_id] = session

    def remove(self, session: LiveSession) -> None:
        if self._by_id.pop(session.session_id, None) is None:
            return
        owned = self._by_owner.get(session.owner, {})
        owned.pop(session.session_id, None)
        if not owned:
            self._by_owner.pop(session.owner, None)

    def holds(self, session_id: str) -> bool:
        return session_id in self._by_id

    def get(self, owner: Owner, session_id: str) -> LiveSession | None:
        session = self._by_id.get(session_id)
        return session if session is not None and session.owner == owner else None

    def of(self, owner: Owner) -> list[LiveSession]:
        return list(self._by_owner.get(owner, {}).values())

    def __iter__(self):
        return iter(list(self._by_id.values()))

    def __len__(self) -> int:
        return len(self._by_id)

    async def call(
        self, owner: Owner, session_id: str, tool: str, arguments: dict[str, Any], time_limit: float
    ) -> dict[str, Any]:
        """Run ``tool`` in ``owner``'s session ``session_id`` held here.

        Raises:
            CrossSessionError: ``not_found`` (unknown id or another owner's), ``unknown_tool``,
                ``timeout``, ``session_gone``, ``tool_error``.
        """
        session = self.get(owner, session_id)
        if session is None:
            raise not_found(session_id)
        if tool not in session.tools:
            raise CrossSessionError(
                "unknown_tool",
                f"session {session_id} ({session.app}) has no tool {tool!r}; it offers: "
                + (", ".join(session.tools) or "none"),
            )
        return await session.peer.call_tool(tool, arguments, time_limit)


class LocalRouter:
    """Routing with one instance (no ``REDIS_URL``): every session is held here."""

    def __init__(self, sessions: LocalSessions | None = None) -> None:
        self.sessions = sessions or LocalSessions()

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def admit(self, session: LiveSession, limit: int) -> bool:
        """Hold ``session`` unless its owner already has ``limit`` sessions; ``True`` when held.

        Check and add run without an await between them, so concurrent registrations cannot
        both take the last place.
        """
        if len(self.sessions.of(session.owner)) >= limit:
            return False
        self.sessions.add(session)
        return True

    async def updated(self, session: LiveSession) -> None:
        return None

    async def removed(self, session: LiveSession) -> None:
        return None

    async def list(self, owner: Owner) -> list[dict[str, Any]]:
        return [session.info() for session in self.sessions.of(owner)]

    async def describe(self, owner: Owner, session_id: str) -> dict[str, Any] | None:
        session = self.sessions.get(owner, session_id)
        return session.info() if session else None

    async def call(
        self,
        owner: Owner,
        session_id: str,
        tool: str,
        arguments: dict[str, Any],
        time_limit: float = DEFAULT_CALL_TIMEOUT,
    ) -> dict[str, Any]:
        return await self.sessions.call(owner, session_id, tool, arguments, time_limit)


class Router(Protocol):
    """Finds and reaches an owner's sessions wherever they are held.

    Implemented by :class:`LocalRouter` (one instance) and
    :class:`~integrations.cross_session.redis_routing.RedisRouter` (many instances).
    """

    sessions: LocalSessions

    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def admit(self, session: LiveSession, limit: int) -> bool: ...
    async def updated(self, session: LiveSession) -> None: ...
    async def removed(self, session: LiveSession) -> None: ...
    async def list(self, owner: Owner) -> list[dict[str, Any]]: ...
    async def describe(self, owner: Owner, session_id: str) -> dict[str, Any] | None: ...
    async def call(
        self,
        owner: Owner,
        session_id: str,
        tool: str,
        arguments: dict[str, Any],
        time_limit: float = DEFAULT_CALL_TIMEOUT,
    ) -> dict[str, Any]: ...
