"""Conversations, turns and the messages the LLM saw, keyed (tenant, channel_id, thread_ts)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

from sqlalchemy import bindparam, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from storage.models import Conversation, LLMUsage, Message, ToolCall, Turn, utcnow
from storage.repositories._time import aware, to_utc
from storage.repositories._upsert import insert_for
from storage.tenancy import Tenant

NOTE = "note"  # the status of a turn that only carries a system note (see add_note)
RUNNING = "running"
INTERRUPTED = "interrupted"

# Every turn runs the statements below. They are built once with bound parameters:
# constructing a statement and computing its cache key each time cost about five times the
# CPU of executing the prebuilt one (about 200 µs against 40 µs for a small SELECT here).
# They are Core statements on the tables, run on an engine connection: through the ORM
# (mapped classes, Session.execute) each cost two to three times the CPU.
_CONVERSATIONS, _TURNS, _MESSAGES = Conversation.__table__, Turn.__table__, Message.__table__
_STORED_MESSAGE = (  # the fields of StoredMessage, in its order
    _MESSAGES.c.turn_id,
    _MESSAGES.c.role,
    _MESSAGES.c.content,
    _MESSAGES.c.tool_calls,
    _MESSAGES.c.tool_call_id,
    _MESSAGES.c.tokens,
)
_RECENT = (
    select(*_STORED_MESSAGE)
    .join(_CONVERSATIONS, _MESSAGES.c.conversation_id == _CONVERSATIONS.c.id)
    .where(
        _CONVERSATIONS.c.tenant_id == bindparam("tenant_id"),
        _CONVERSATIONS.c.channel_id == bindparam("channel_id"),
        _CONVERSATIONS.c.thread_ts == bindparam("thread_ts"),
    )
    .order_by(_MESSAGES.c.id.desc())
    .limit(bindparam("limit"))
)
# A turn's history, once its conversation's id is known.
_HISTORY = (
    select(*_STORED_MESSAGE)
    .where(_MESSAGES.c.conversation_id == bindparam("conversation_id"))
    .order_by(_MESSAGES.c.id.desc())
    .limit(bindparam("limit"))
)
_INSERT_TURN = insert(_TURNS).returning(_TURNS.c.id)
_FINISH_TURN = (
    update(_TURNS)
    .where(_TURNS.c.id == bindparam("turn"), _TURNS.c.tenant_id == bindparam("tenant"))
    .values(
        status=bindparam("new_status"),
        error=bindparam("new_error"),
        duration_ms=bindparam("new_duration_ms"),
    )
    .returning(_TURNS.c.conversation_id, _TURNS.c.persona)
)
# A step of a running turn: bump its heartbeat and find where its messages go.
_STEP_TURN = (
    update(_TURNS)
    .where(_TURNS.c.id == bindparam("turn"), _TURNS.c.tenant_id == bindparam("tenant"))
    .values(heartbeat_at=bindparam("now"))
    .returning(_TURNS.c.conversation_id, _TURNS.c.persona)
)
_INSERT_MESSAGES = insert(_MESSAGES)
_INSERT_USAGE = insert(LLMUsage.__table__)


@cache
def _upsert_conversation_statement(dialect: str):
    statement = insert_for(dialect, _CONVERSATIONS)
    # Inserted rather than touched when both stamps are still the one value given for them.
    created = (_CONVERSATIONS.c.created_at == _CONVERSATIONS.c.updated_at).label("created")
    return statement.on_conflict_do_update(
        index_elements=["tenant_id", "channel_id", "thread_ts"],
        set_={"updated_at": statement.excluded.updated_at},
    ).returning(_CONVERSATIONS.c.id, created)


@dataclass(frozen=True, slots=True)
class LLMCallUsage:
    """Token usage of one Chat Completions call as the endpoint reported it in ``usage``."""

    model: str
    prompt_tokens: int
    completion_tokens: int
    duration_ms: int


@dataclass(frozen=True, slots=True)
class ToolCallRecord:
    """One audited tool call of a turn: the tool, how it ended and the start of its result."""

    tool: str
    status: str
    result_summary: str


@dataclass(frozen=True, slots=True)
class OrphanedTurn:
    """A turn closed as ``interrupted`` because the process running it died.

    ``thread_ts`` is the conversation key (see bot/threads.py); ``tool_calls`` are the calls it
    made before dying, oldest first, as the audit trail recorded them.
    """

    tenant: Tenant
    turn_id: int
    channel_id: str
    thread_ts: str
    persona: str
    user_id: str
    owner: str | None
    tool_calls: list[ToolCallRecord]


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """One stored chat message in OpenAI Chat Completions form, with its turn and token estimate."""

    turn_id: int
    role: str
    content: str | None
    tool_calls: list[dict[str, Any]] | None
    tool_call_id: str | None
    tokens: int

    def as_chat_message(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            message["tool_calls"] = self.tool_calls
        if self.tool_call_id:
            message["tool_call_id"] = self.tool_call_id
        return message


class ConversationRepository:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions
        # A turn's statements run on a connection of their own (see _RECENT).
        self._engine: AsyncEngine = sessions.kw["bind"]

    async def recent_messages(
        self, tenant: Tenant, channel_id: str, thread_ts: str, limit: int = 400
    ) -> list[StoredMessage]:
        """The newest ``limit`` messages of a conversation, oldest first (empty when none)."""
        async with self._engine.connect() as connection:
            return await _recent(connection, tenant, channel_id, thread_ts, limit)

    async def latest_thread(
        self, tenant: Tenant, channel_id: str, prefix: str
    ) -> tuple[str, datetime] | None:
        """The most recently active conversation whose ``thread_ts`` starts with ``prefix``.

        Returns ``(thread_ts, updated_at)`` (aware UTC) or ``None``.
        """
        query = (
            select(Conversation.thread_ts, Conversation.updated_at)
            .where(
                Conversation.tenant_id == tenant.id,
                Conversation.channel_id == channel_id,
                Conversation.thread_ts.startswith(prefix, autoescape=True),
            )
            .order_by(Conversation.updated_at.desc())
            .limit(1)
        )
        async with self._sessions() as session:
            row = (await session.execute(query)).first()
        if row is None:
            return None
        return row[0], aware(row[1])

    async def begin_turn(
        self,
        tenant: Tenant,
        channel_id: str,
        thread_ts: str,
        persona: str,
        user_id: str,
        history_limit: int = 400,
        *,
        owner: str | None = None,
        messages: Sequence[dict[str, Any]] = (),
        tokens: Sequence[int] = (),
    ) -> tuple[int, list[StoredMessage]]:
        """Open a ``running`` turn (creating the conversation if new) in one transaction,
        owned by the instance ``owner`` with a fresh heartbeat, storing its first
        ``messages`` (chat-completion dicts, a token estimate each), e.g. the user's message.

        Returns the new turn's id and the conversation's newest ``history_limit`` messages
        from before it, oldest first.
        """
        async with self._engine.begin() as connection:
            conversation_id, created = await _upsert_conversation(
                connection, tenant, channel_id, thread_ts, persona
            )
            history = [] if created else await _history(connection, conversation_id, history_limit)
            turn_id = await _insert_turn(
                connection, tenant, conversation_id, persona, user_id, RUNNING, owner
            )
            await _insert_messages(connection, conversation_id, turn_id, messages, tokens)
            return turn_id, history

    async def record_step(
        self,
        tenant: Tenant,
        turn_id: int,
        messages: Sequence[dict[str, Any]],
        tokens: Sequence[int],
        usage: Sequence[LLMCallUsage] = (),
        now: datetime | None = None,
    ) -> None:
        """Store what a running turn just did (an LLM reply and its usage, a tool result) in
        one transaction, and bump the turn's heartbeat to ``now``.

        Called as each step happens, so a process killed mid-turn leaves in memory every
        tool call that really ran (and the tokens it spent).

        Raises:
            LookupError: the turn does not belong to ``tenant``.
        """
        async with self._engine.begin() as connection:
            await _update_turn_and_store(
                connection,
                tenant,
                turn_id,
                _STEP_TURN,
                {"now": utcnow() if now is None else to_utc(now)},
                messages,
                tokens,
                usage,
            )

    async def heartbeat(self, owner: str, now: datetime | None = None) -> int:
        """Bump the heartbeat of every ``running`` turn of the instance ``owner``; returns how
        many. Not tenant-scoped: it is the process saying it is alive, for all its turns.
        """
        async with self._sessions.begin() as session:
            result = await session.execute(
                update(Turn)
                .where(Turn.owner == owner, Turn.status == RUNNING)
                .values(heartbeat_at=utcnow() if now is None else to_utc(now))
                .execution_options(synchronize_session=False)
            )
            return result.rowcount

    async def close_orphans(
        self,
        *,
        stale_before: datetime,
        owner: str | None = None,
        error: str = "the process running it stopped before the answer",
    ) -> list[OrphanedTurn]:
        """Mark ``interrupted`` every ``running`` turn whose process died, in all workspaces;
        returns the turns this call closed (concurrent callers close each turn once).

        A turn is orphaned when its heartbeat is older than ``stale_before`` (a turn from
        before migration 0008 has none: its start counts), or when ``owner`` is given and the
        turn belongs to it: an instance starting up closes what its previous life left
        running. Not tenant-scoped: it sweeps them all.

        Raises:
            ValueError: ``stale_before`` is naive.
        """
        moment = to_utc(stale_before)
        orphaned = or_(
            Turn.heartbeat_at < moment,
            Turn.heartbeat_at.is_(None) & (Turn.started_at < moment),
        )
        if owner is not None:
            orphaned = or_(orphaned, Turn.owner == owner)
        closed: list[OrphanedTurn] = []
        async with self._sessions.begin() as session:
            rows = (
                await session.execute(
                    select(
                        Turn.id,
                        Turn.tenant_id,
                        Turn.enterprise_id,
                        Turn.is_enterprise_install,
                        Conversation.channel_id,
                        Conversation.thread_ts,
                        Turn.persona,
                        Turn.user_id,
                        Turn.owner,
                    )
                    .join(Conversation, Turn.conversation_id == Conversation.id)
                    .where(Turn.status == RUNNING, orphaned)
                    .order_by(Turn.id)
                )
            ).all()
            for (turn_id, tenant_id, enterprise_id, org_install, channel_id, thread_ts, persona,
                 user_id, turn_owner) in rows:
                result = await session.execute(
                    update(Turn)
                    .where(Turn.id == turn_id, Turn.status == RUNNING, orphaned)
                    .values(status=INTERRUPTED, error=error)
                    .execution_options(synchronize_session=False)
                )
                if result.rowcount != 1:
                    continue
                calls = (
                    await session.execute(
                        select(ToolCall.tool, ToolCall.status, ToolCall.result_summary)
                        .where(ToolCall.tenant_id == tenant_id, ToolCall.turn_id == turn_id)
                        .order_by(ToolCall.id)
                    )
                ).all()
                closed.append(
                    OrphanedTurn(
                        Tenant.stored(tenant_id, enterprise_id, bool(org_install)),
                        turn_id,
                        channel_id,
                        thread_ts,
                        persona,
                        user_id,
                        turn_owner,
                        [ToolCallRecord(*call) for call in calls],
                    )
                )
        return closed

    async def finish_turn(
        self,
        tenant: Tenant,
        turn_id: int,
        messages: list[dict[str, Any]],
        tokens: list[int],
        status: str,
        error: str | None,
        duration_ms: int,
        usage: Sequence[LLMCallUsage] = (),
    ) -> None:
        """Store the turn's outcome with its messages and LLM usage not yet stored by
        :meth:`record_step` (chat-completion dicts, a token estimate each), in one transaction.

        ``status`` is ``ok``, ``max_steps``, ``error`` or ``interrupted``.

        Raises:
            LookupError: the turn does not belong to ``tenant``.
        """
        async with self._engine.begin() as connection:
            await _update_turn_and_store(
                connection,
                tenant,
                turn_id,
                _FINISH_TURN,
                {"new_status": status, "new_error": error, "new_duration_ms": duration_ms},
                messages,
                tokens,
                usage,
            )

    async def record_refused_turn(
        self,
        tenant: Tenant,
        channel_id: str,
        thread_ts: str,
        persona: str,
        user_id: str,
        messages: Sequence[dict[str, Any]],
        tokens: Sequence[int],
        status: str,
        error: str,
    ) -> int:
        """Store a turn refused before it began (a limit) with its ``messages`` (the person's,
        so nothing is lost) in one transaction; returns the turn's id. No history is read and
        nothing runs: a flood of refused turns costs one write each."""
        async with self._engine.begin() as connection:
            conversation_id, turn_id = await _open_turn(
                connection, tenant, channel_id, thread_ts, persona, user_id, status, error=error
            )
            await _insert_messages(connection, conversation_id, turn_id, messages, tokens)
            return turn_id

    async def add_note(
        self,
        tenant: Tenant,
        channel_id: str,
        thread_ts: str,
        persona: str,
        user_id: str,
        content: str,
        tokens: int,
    ) -> None:
        """Append a ``system`` message to a conversation as its own turn (status ``note``).

        For what happened outside a turn that the model must know on the next one, e.g. an
        approval decided later in Slack. ``tokens`` is the message's estimate for the budget.
        """
        async with self._engine.begin() as connection:
            conversation_id, turn_id = await _open_turn(
                connection, tenant, channel_id, thread_ts, persona, user_id, NOTE
            )
            await connection.execute(
                insert(_MESSAGES).values(
                    conversation_id=conversation_id,
                    turn_id=turn_id,
                    role="system",
                    content=content,
                    tokens=tokens,
                )
            )


async def _recent(
    connection: AsyncConnection, tenant: Tenant, channel_id: str, thread_ts: str, limit: int
) -> list[StoredMessage]:
    parameters = {
        "tenant_id": tenant.id,
        "channel_id": channel_id,
        "thread_ts": thread_ts,
        "limit": limit,
    }
    rows = (await connection.execute(_RECENT, parameters)).all()
    return [StoredMessage(*row) for row in reversed(rows)]


async def _history(
    connection: AsyncConnection, conversation_id: int, limit: int
) -> list[StoredMessage]:
    parameters = {"conversation_id": conversation_id, "limit": limit}
    rows = (await connection.execute(_HISTORY, parameters)).all()
    return [StoredMessage(*row) for row in reversed(rows)]


async def _open_turn(
    connection: AsyncConnection,
    tenant: Tenant,
    channel_id: str,
    thread_ts: str,
    persona: str,
    user_id: str,
    status: str,
    owner: str | None = None,
    error: str | None = None,
) -> tuple[int, int]:
    """Create the conversation if new and a turn in it; returns (conversation id, turn id)."""
    conversation_id, _ = await _upsert_conversation(
        connection, tenant, channel_id, thread_ts, persona
    )
    turn_id = await _insert_turn(
        connection, tenant, conversation_id, persona, user_id, status, owner, error
    )
    return conversation_id, turn_id


async def _insert_turn(
    connection: AsyncConnection,
    tenant: Tenant,
    conversation_id: int,
    persona: str,
    user_id: str,
    status: str,
    owner: str | None = None,
    error: str | None = None,
) -> int:
    return await connection.scalar(
        _INSERT_TURN,
        {
            "tenant_id": tenant.id,
            "enterprise_id": tenant.enterprise_id,
            "is_enterprise_install": tenant.is_enterprise_install,
            "conversation_id": conversation_id,
            "persona": persona,
            "user_id": user_id,
            "status": status,
            "error": error,
            "owner": owner,
            "heartbeat_at": utcnow() if owner is not None else None,
        },
    )


async def _update_turn_and_store(
    connection: AsyncConnection,
    tenant: Tenant,
    turn_id: int,
    statement,
    values: dict[str, Any],
    messages: Sequence[dict[str, Any]],
    tokens: Sequence[int],
    usage: Sequence[LLMCallUsage],
) -> None:
    """Run ``statement`` (:data:`_STEP_TURN` or :data:`_FINISH_TURN`: an UPDATE of the turn
    returning its conversation and persona) with ``values``, then store the turn's
    ``messages`` and ``usage``.

    Raises:
        LookupError: the turn does not belong to ``tenant``.
    """
    turn = (
        await connection.execute(statement, {"turn": turn_id, "tenant": tenant.id, **values})
    ).first()
    if turn is None:
        raise LookupError(f"turn {turn_id} does not belong to tenant {tenant.id}")
    conversation_id, persona = turn
    await _insert_messages(connection, conversation_id, turn_id, messages, tokens)
    await _insert_usage(connection, tenant, turn_id, persona, usage)


async def _insert_messages(
    connection: AsyncConnection,
    conversation_id: int,
    turn_id: int,
    messages: Sequence[dict[str, Any]],
    tokens: Sequence[int],
) -> None:
    if not messages:
        return
    await connection.execute(
        _INSERT_MESSAGES,
        [
            {
                "conversation_id": conversation_id,
                "turn_id": turn_id,
                "role": message["role"],
                "content": message.get("content"),
                "tool_calls": message.get("tool_calls"),
                "tool_call_id": message.get("tool_call_id"),
                "tokens": count,
            }
            for message, count in zip(messages, tokens, strict=True)
        ],
    )


async def _insert_usage(
    connection: AsyncConnection,
    tenant: Tenant,
    turn_id: int,
    persona: str,
    usage: Sequence[LLMCallUsage],
) -> None:
    if not usage:
        return
    await connection.execute(
        _INSERT_USAGE,
        [
            {
                "tenant_id": tenant.id,
                "turn_id": turn_id,
                "persona": persona,
                "model": call.model,
                "prompt_tokens": call.prompt_tokens,
                "completion_tokens": call.completion_tokens,
                "duration_ms": call.duration_ms,
            }
            for call in usage
        ],
    )


async def _upsert_conversation(
    connection: AsyncConnection, tenant: Tenant, channel_id: str, thread_ts: str, persona: str
) -> tuple[int, bool]:
    """Insert-or-touch in one statement, so two replicas starting one thread cannot collide.

    Returns the conversation's id and whether this created it (a new conversation has no
    history to read); an existing conversation gets a fresh ``updated_at``.
    """
    now = utcnow()
    conversation_id, created = (await connection.execute(
        _upsert_conversation_statement(connection.dialect.name),
        {
            "tenant_id": tenant.id,
            "channel_id": channel_id,
            "thread_ts": thread_ts,
            "persona": persona,
            "created_at": now,
            "updated_at": now,
        },
    )).one()
    return conversation_id, bool(created)
