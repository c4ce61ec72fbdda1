"""SQLAlchemy models of Jamono's own tables.

Every table that holds workspace data carries ``tenant_id`` (see :class:`storage.tenancy.Tenant`)
and is only read through the repositories in :mod:`storage.repositories`, which take the tenant
first. Slack's OAuth tables (``slack_installations``, ``slack_bots``, ``slack_oauth_states``)
belong to slack_sdk's stores; our migrations create them but no model maps them here.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    Unicode,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: DateTime(timezone=True), dict[str, Any]: JSON}


class Conversation(Base):
    """One thread (or one DM conversation) with a persona, keyed as Slack keys threads."""

    __tablename__ = "conversations"
    __table_args__ = (UniqueConstraint("tenant_id", "channel_id", "thread_ts"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(32))
    channel_id: Mapped[str] = mapped_column(String(32))
    thread_ts: Mapped[str] = mapped_column(String(32))
    persona: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Turn(Base):
    """One user message and everything the persona did to answer it."""

    __tablename__ = "turns"
    __table_args__ = (
        Index("ix_turns_tenant_started", "tenant_id", "started_at"),
        Index("ix_turns_status_heartbeat", "status", "heartbeat_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(32))
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    persona: Mapped[str] = mapped_column(String(32))
    user_id: Mapped[str] = mapped_column(String(32))
    # running | ok | max_steps | error | not_configured | interrupted | note
    status: Mapped[str] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    duration_ms: Mapped[int] = mapped_column(Integer, default=0)
    # Beside tenant_id, to find a Grid workspace's installation when telling its people.
    enterprise_id: Mapped[str | None] = mapped_column(String(32))
    is_enterprise_install: Mapped[bool] = mapped_column(Boolean, default=False)
    # The instance running the turn and its last sign of life, so a turn whose process died
    # is told from one still working (see ConversationRepository.close_orphans).
    owner: Mapped[str | None] = mapped_column(String(64))
    heartbeat_at: Mapped[datetime | None]


class Message(Base):
    """A chat message as the LLM saw it (OpenAI Chat Completions roles), grouped by turn."""

    __tablename__ = "messages"
    __table_args__ = (Index("ix_messages_conversation", "conversation_id", "id"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    turn_id: Mapped[int] = mapped_column(ForeignKey("turns.id", ondelete="CASCADE"))
    role: Mapped[str] = mapped_column(String(16))  # user | assistant | tool
    content: Mapped[str | None] = mapped_column(Text)
    tool_calls: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    tool_call_id: Mapped[str | None] = mapped_column(String(64))
    tokens: Mapped[int] = mapped_column(Integer, default=0)  # approximate, for the context budget


class ToolCall(Base):
    """Audit record of one tool call: who, what, with which arguments, and how it ended."""

    __tablename__ = "tool_calls"
    __table_args__ = (Index("ix_tool_calls_tenant_created", "tenant_id", "created_at"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(32))
    turn_id: Mapped[int | None] = mapped_column(ForeignKey("turns.id", ondelete="SET NULL"))
    persona: Mapped[str] = mapped_column(String(32))
    user_id: Mapped[str] = mapped_column(String(32))
    tool: Mapped[str] = mapped_column(String(64))
    arguments: Mapped[dict[str, Any]] = mapped_column(JSON)
    result_summary: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(24))  # ok | error | invalid_arguments | timeout
    duration_ms: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class LLMUsage(Base):
    """Token usage of one Chat Completions call (``usage.prompt_tokens``/``completion_tokens``)."""

    __tablename__ = "llm_usage"
    __table_args__ = (Index("ix_llm_usage_tenant_created", "tenant_id", "created_at"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(32))
    turn_id: Mapped[int | None] = mapped_column(ForeignKey("turns.id", ondelete="SET NULL"))
    persona: Mapped[str] = mapped_column(String(32))
    model: Mapped[str] = mapped_column(String(128))
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    duration_ms: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class PersonaOverride(Base):
    """A workspace's changes to a built-in persona; ``None`` means "use the built-in value"."""

    __tablename__ = "persona_overrides"

    tenant_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    persona: Mapped[str] = mapped_column(String(32), primary_key=True)
    enabled: Mapped[bool | None] = mapped_column(Boolean)
    model: Mapped[str | None] = mapped_column(String(128))
    temperature: Mapped[float | None] = mapped_column(Float)
    extra_instructions: Mapped[str | None] = mapped_column(Text)
    updated_by: Mapped[str | None] = mapped_column(String(32))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class ChannelBinding(Base):
    """Which persona answers mentions in a channel (the default is NOX)."""

    __tablename__ = "channel_bindings"

    tenant_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    channel_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    persona: Mapped[str] = mapped_column(String(32))
    updated_by: Mapped[str | None] = mapped_column(String(32))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class WorkspaceSettings(Base):
    """Settings that belong to a whole workspace."""

    __tablename__ = "workspace_settings"

    tenant_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")  # IANA name
    updated_by: Mapped[str | None] = mapped_column(String(32))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class WorkspaceLimit(Base):
    """An operator's override of one budget or limit for one workspace (see agents/budgets.py).

    Set only with ``jamono config --team T limit NAME VALUE``: a workspace's own admins are
    outside parties and must not raise their own budget.
    """

    __tablename__ = "workspace_limits"

    tenant_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[float] = mapped_column(Float)
    updated_by: Mapped[str | None] = mapped_column(String(32))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class EventClaim(Base):
    """A claimed Slack delivery (``event_id`` or message identity) when there is no Redis."""

    __tablename__ = "event_claims"

    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    claimed_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class Credential(Base):
    """A workspace's connection settings for one integration, encrypted (see storage.secrets).

    ``secret`` is a Fernet token of the settings as JSON; ``url`` and ``account`` (email or
    username) are kept in clear only for display in ``/nox-status`` and the settings modal.
    """

    __tablename__ = "credentials"

    tenant_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)  # jira | caldav
    secret: Mapped[str] = mapped_column(Text)
    url: Mapped[str] = mapped_column(String(500))
    account: Mapped[str | None] = mapped_column(String(200))
    updated_by: Mapped[str | None] = mapped_column(String(32))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class ApprovalRequest(Base):
    """A write action waiting for (or past) a human decision in Slack.

    ``state``: pending → approved → executing → executed | failed, pending → rejected,
    pending | approved → expired. Only guarded updates in storage.repositories.approvals
    change it. ``enterprise_id``/``is_enterprise_install`` are kept beside ``tenant_id`` because
    the expiry sweep has no incoming request to name the installation whose token updates the
    message (an Enterprise Grid workspace install is found by both ids).
    """

    __tablename__ = "approval_requests"
    __table_args__ = (
        Index("ix_approval_requests_tenant_state", "tenant_id", "state"),
        Index("ix_approval_requests_state_expires", "state", "expires_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # uuid4 hex
    tenant_id: Mapped[str] = mapped_column(String(32))
    enterprise_id: Mapped[str | None] = mapped_column(String(32))
    is_enterprise_install: Mapped[bool] = mapped_column(Boolean, default=False)
    persona: Mapped[str] = mapped_column(String(32))
    requested_by: Mapped[str] = mapped_column(String(32))
    channel_id: Mapped[str] = mapped_column(String(32))
    thread_ts: Mapped[str] = mapped_column(String(32))
    message_ts: Mapped[str | None] = mapped_column(String(32))
    tool_call_id: Mapped[str | None] = mapped_column(String(64))
    tool: Mapped[str] = mapped_column(String(64))
    arguments: Mapped[dict[str, Any]] = mapped_column(JSON)
    risk: Mapped[str] = mapped_column(String(16))
    target: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16))
    expires_at: Mapped[datetime]
    decided_by: Mapped[str | None] = mapped_column(String(32))
    decided_at: Mapped[datetime | None]
    execution_started_at: Mapped[datetime | None]
    result_summary: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ToolPolicy(Base):
    """Whether a write tool runs without approval, workspace-wide (``channel_id`` "*") or in one
    channel."""

    __tablename__ = "tool_policies"

    tenant_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tool: Mapped[str] = mapped_column(String(64), primary_key=True)
    channel_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    auto_approve: Mapped[bool] = mapped_column(Boolean)
    updated_by: Mapped[str | None] = mapped_column(String(32))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class ActionZone(Base):
    """A channel where a persona may use tools; ``tools`` lists which (``None``: all of them)."""

    __tablename__ = "action_zones"

    tenant_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    persona: Mapped[str] = mapped_column(String(32), primary_key=True)
    channel_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tools: Mapped[list[str] | None] = mapped_column(JSON)
    updated_by: Mapped[str | None] = mapped_column(String(32))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class ApprovalSettings(Base):
    """Who may approve a workspace's requests: ``requester_or_admin`` or ``admins_only``."""

    __tablename__ = "approval_settings"

    tenant_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    approvers: Mapped[str] = mapped_column(String(32), default="requester_or_admin")
    updated_by: Mapped[str | None] = mapped_column(String(32))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class AuditEvent(Base):
    """One entry of the append-only audit trail of approvals, actions and credential changes."""

    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_events_tenant_created", "tenant_id", "created_at"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(32))
    actor: Mapped[str | None] = mapped_column(String(32))  # Slack user id; None for the system
    subject: Mapped[str | None] = mapped_column(String(64))  # e.g. an approval request id
    details: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class BriefingSubscription(Base):
    """A scheduled briefing: which channel, which persona, when (``schedule`` in ``timezone``)
    and which ``sections`` (a list of ``{"kind": …, …}`` objects, see bot.briefings.sections).

    ``team_id``/``enterprise_id``/``is_enterprise_install`` are kept beside ``tenant_id`` because
    a scheduled run has no incoming request to name the installation whose token posts it.
    ``paused_reason`` says why a subscription stopped itself (a channel error), ``None`` when a
    person paused it or it runs.
    """

    __tablename__ = "briefing_subscriptions"
    __table_args__ = (Index("ix_briefing_subscriptions_tenant", "tenant_id"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(32))
    team_id: Mapped[str | None] = mapped_column(String(32))
    enterprise_id: Mapped[str | None] = mapped_column(String(32))
    is_enterprise_install: Mapped[bool] = mapped_column(Boolean, default=False)
    channel_id: Mapped[str] = mapped_column(String(32))
    persona: Mapped[str] = mapped_column(String(32))
    schedule: Mapped[str] = mapped_column(String(100))  # e.g. "weekdays 08:30", "cron 0 9 * * 1"
    timezone: Mapped[str] = mapped_column(String(64))  # IANA name
    sections: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    paused_reason: Mapped[str | None] = mapped_column(String(64))
    created_by: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class BriefingDelivery(Base):
    """One run of a subscription, unique per (subscription, scheduled fire time).

    The row is inserted before posting: whoever inserts it first posts, so a briefing is never
    posted twice, whatever replicas or restarts do. ``state``: sending → posted | failed;
    skipped for a run missed by more than the grace time.
    """

    __tablename__ = "briefing_deliveries"
    __table_args__ = (UniqueConstraint("subscription_id", "scheduled_for"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(32))
    subscription_id: Mapped[int] = mapped_column(
        ForeignKey("briefing_subscriptions.id", ondelete="CASCADE")
    )
    scheduled_for: Mapped[datetime]
    trigger: Mapped[str] = mapped_column(String(16))  # schedule | now
    state: Mapped[str] = mapped_column(String(16))
    message_ts: Mapped[str | None] = mapped_column(String(32))
    detail: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]


# APScheduler 3's SQLAlchemyJobStore table, declared as that store declares it so that the
# migration creating it and this metadata agree. Only APScheduler reads and writes it.
apscheduler_jobs = Table(
    "apscheduler_jobs",
    Base.metadata,
    Column("id", Unicode(191), primary_key=True),
    Column("next_run_time", Float(25), index=True),
    Column("job_state", LargeBinary, nullable=False),
)
