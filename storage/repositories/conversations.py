"""Conversations, turns and the messages the LLM saw, keyed (tenant, channel_id, thread_ts)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from storage.models import Conversation, Message, Turn, utcnow
from storage.tenancy import Tenant


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

    async def recent_messages(
        self, tenant: Tenant, channel_id: str, thread_ts: str, limit: int = 400
    ) -> list[StoredMessage]:
        """The newest ``limit`` messages of a conversation, oldest first (empty when none)."""
        query = (
            select(Message)
            .join(Conversation, Message.conversation_id == Conversation.id)
            .where(
                Conversation.tenant_id == tenant.id,
                Conversation.channel_id == channel_id,
                Conversation.thread_ts == thread_ts,
            )
            .order_by(Message.id.desc())
            .limit(limit)
        )
        async with self._sessions() as session:
            rows = (await session.scalars(query)).all()
        return [
            StoredMessage(m.turn_id, m.role, m.content, m.tool_calls, m.tool_call_id, m.tokens)
            for m in reversed(rows)
        ]

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
        updated = row[1] if row[1].tzinfo else row[1].replace(tzinfo=UTC)
        return row[0], updated

    async def start_turn(
        self, tenant: Tenant, channel_id: str, thread_ts: str, persona: str, user_id: str
    ) -> int:
        """Create the conversation if new, open a turn in it and return the turn id."""
        async with self._sessions.begin() as session:
            conversation_id = await _upsert_conversation(
                session, tenant, channel_id, thread_ts, persona
            )
            turn = Turn(
                tenant_id=tenant.id,
                conversation_id=conversation_id,
                persona=persona,
                user_id=user_id,
                status="running",
            )
            session.add(turn)
            await session.flush()
            return turn.id

    async def finish_turn(
        self,
        tenant: Tenant,
        turn_id: int,
        messages: list[dict[str, Any]],
        tokens: list[int],
        status: str,
        error: str | None,
        duration_ms: int,
    ) -> None:
        """Store the turn's messages (chat-completion dicts, a token estimate each) and outcome.

        ``status`` is ``ok``, ``max_steps``, ``error`` or ``interrupted``.
        """
        async with self._sessions.begin() as session:
            turn = await session.scalar(
                select(Turn).where(Turn.id == turn_id, Turn.tenant_id == tenant.id)
            )
            if turn is None:
                raise LookupError(f"turn {turn_id} does not belong to tenant {tenant.id}")
            turn.status, turn.error, turn.duration_ms = status, error, duration_ms
            session.add_all(
                Message(
                    conversation_id=turn.conversation_id,
                    turn_id=turn_id,
                    role=message["role"],
                    content=message.get("content"),
                    tool_calls=message.get("tool_calls"),
                    tool_call_id=message.get("tool_call_id"),
                    tokens=count,
                )
                for message, count in zip(messages, tokens, strict=True)
            )
            await session.execute(
                update(Conversation)
                .where(Conversation.id == turn.conversation_id)
                .values(updated_at=utcnow())
            )


async def _upsert_conversation(
    session: AsyncSession, tenant: Tenant, channel_id: str, thread_ts: str, persona: str
) -> int:
    """Insert-or-get in one statement, so two replicas starting the same thread cannot collide."""
    dialect = session.bind.dialect.name
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    statement = (
        insert(Conversation)
        .values(
            tenant_id=tenant.id,
            channel_id=channel_id,
            thread_ts=thread_ts,
            persona=persona,
            created_at=utcnow(),
            updated_at=utcnow(),
        )
        .on_conflict_do_nothing(index_elements=["tenant_id", "channel_id", "thread_ts"])
    )
    await session.execute(statement)
    return await session.scalar(
        select(Conversation.id).where(
            Conversation.tenant_id == tenant.id,
            Conversation.channel_id == channel_id,
            Conversation.thread_ts == thread_ts,
        )
    )
