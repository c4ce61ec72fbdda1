"""A workspace's action policy: auto-approved tools, action zones, who may approve.

The rule, exactly (:meth:`ActionPolicy.check`):

1. Action zones are per persona. A persona with no zone in the workspace may use its tools in
   any channel. A persona with at least one zone may use tools only in its zone channels, and
   there only the zone's tools (a zone without a tool list allows every tool). Zones govern
   every tool, read or write. A direct message is a channel too (``D…`` id): a zoned persona
   uses no tools in DMs unless a DM channel is one of its zones.
2. Read tools never need approval. A write tool needs approval unless a tool policy
   auto-approves it: the policy for that tool in that channel wins over the tool's
   workspace-wide policy (so "auto-approve everywhere but #prod" is two rows); no policy means
   approval is needed.
3. Approvers (:meth:`ActionPolicy.may_approve`): ``requester_or_admin`` (the default) lets a
   workspace admin decide, and the requesting user when the write stays within their reach:
   in the conversation it was asked in, or in one they are a member of (never a private
   channel they are not in, nor someone else's DM); ``admins_only`` lets only admins decide.
4. Channels are compared by their canonical id only (``C…``/``G…``/``D…``, upper case, see
   agents.channels); storing anything else is refused.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from storage.models import ActionZone, ApprovalSettings, ToolPolicy
from storage.repositories import events
from storage.tenancy import Tenant

Approvers = Literal["requester_or_admin", "admins_only"]
APPROVERS: tuple[str, ...] = get_args(Approvers)
ANY_CHANNEL = "*"  # the channel_id of a workspace-wide tool policy
# A conversation id as Slack writes it: C… channels, G… private channels, D… direct messages.
CONVERSATION_ID = re.compile(r"^[CGD][A-Z0-9]{3,}$")
Refusal = Literal["outside_zones", "tool_not_in_zone"]


@dataclass(frozen=True, slots=True)
class Verdict:
    """May the persona use the tool here, and does it need approval?

    When refused, ``refusal`` says why and ``zone_channels`` lists the channels where the
    persona may act (for the polite answer); for ``tool_not_in_zone``, ``zone_tools`` lists the
    tools allowed in this channel.
    """

    allowed: bool
    needs_approval: bool
    refusal: Refusal | None = None
    zone_channels: tuple[str, ...] = ()
    zone_tools: tuple[str, ...] = ()


@dataclass(frozen=True)
class ActionPolicy:
    """Everything one workspace configured; see the module docstring for the rule.

    ``auto_approve``: (tool, channel_id or :data:`ANY_CHANNEL`) → auto-approve.
    ``zones``: persona → {channel_id → allowed tools, ``None`` for all}.
    """

    auto_approve: dict[tuple[str, str], bool] = field(default_factory=dict)
    zones: dict[str, dict[str, frozenset[str] | None]] = field(default_factory=dict)
    approvers: Approvers = "requester_or_admin"

    def check(self, persona: str, tool: str, risk: str, channel_id: str) -> Verdict:
        """The verdict for ``persona`` calling ``tool`` (risk ``read``|``write``) in a channel."""
        zones = self.zones.get(persona)
        if zones:
            channels = tuple(sorted(zones))
            if channel_id not in zones:
                return Verdict(False, False, "outside_zones", channels)
            tools = zones[channel_id]
            if tools is not None and tool not in tools:
                return Verdict(False, False, "tool_not_in_zone", channels, tuple(sorted(tools)))
        return Verdict(True, risk == "write" and not self._auto_approved(tool, channel_id))

    def may_approve(
        self, user_id: str, requested_by: str, *, is_admin: bool, within_reach: bool
    ) -> bool:
        """Whether ``user_id`` may approve or reject a request made by ``requested_by``;
        ``within_reach``: the request writes only where its requester is (see rule 3)."""
        if is_admin:
            return True
        return (
            self.approvers == "requester_or_admin" and user_id == requested_by and within_reach
        )

    def _auto_approved(self, tool: str, channel_id: str) -> bool:
        here = self.auto_approve.get((tool, channel_id))
        if here is not None:
            return here
        return self.auto_approve.get((tool, ANY_CHANNEL), False)


class PolicyRepository:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def load(self, tenant: Tenant) -> ActionPolicy:
        """The workspace's policy (defaults when nothing is configured)."""
        async with self._sessions() as session:
            rules = (
                await session.execute(
                    select(ToolPolicy.tool, ToolPolicy.channel_id, ToolPolicy.auto_approve).where(
                        ToolPolicy.tenant_id == tenant.id
                    )
                )
            ).all()
            zones = (
                await session.execute(
                    select(ActionZone.persona, ActionZone.channel_id, ActionZone.tools).where(
                        ActionZone.tenant_id == tenant.id
                    )
                )
            ).all()
            approvers = await session.scalar(
                select(ApprovalSettings.approvers).where(ApprovalSettings.tenant_id == tenant.id)
            )
        by_persona: dict[str, dict[str, frozenset[str] | None]] = {}
        for persona, channel_id, tools in zones:
            by_persona.setdefault(persona, {})[channel_id] = (
                None if tools is None else frozenset(tools)
            )
        return ActionPolicy(
            auto_approve={(tool, channel): auto for tool, channel, auto in rules},
            zones=by_persona,
            approvers=approvers or "requester_or_admin",
        )

    async def set_auto_approve(
        self,
        tenant: Tenant,
        tool: str,
        auto_approve: bool | None,
        actor: str | None,
        channel_id: str | None = None,
    ) -> None:
        """Auto-approve ``tool`` (or require approval: ``False``) in one channel, or workspace-wide
        when ``channel_id`` is ``None``. ``auto_approve=None`` removes that policy.

        Raises:
            ValueError: ``channel_id`` is not a canonical conversation id.
        """
        channel = ANY_CHANNEL if channel_id is None else _canonical(channel_id)
        async with self._sessions.begin() as session:
            row = await session.get(ToolPolicy, (tenant.id, tool, channel))
            events.append_change(
                session,
                tenant,
                events.AUTO_APPROVE_CHANGED,
                row.auto_approve if row else None,
                auto_approve,
                actor=actor,
                subject=tool,
                details={"channel_id": channel},
            )
            if auto_approve is None:
                await session.execute(
                    delete(ToolPolicy).where(
                        ToolPolicy.tenant_id == tenant.id,
                        ToolPolicy.tool == tool,
                        ToolPolicy.channel_id == channel,
                    )
                )
                return
            if row is None:
                row = ToolPolicy(tenant_id=tenant.id, tool=tool, channel_id=channel)
                session.add(row)
            row.auto_approve, row.updated_by = auto_approve, actor

    async def set_zone(
        self,
        tenant: Tenant,
        persona: str,
        channel_id: str,
        tools: Iterable[str] | None,
        actor: str | None,
    ) -> None:
        """Let ``persona`` act in ``channel_id`` with ``tools`` (``None``: every tool).

        Raises:
            ValueError: ``tools`` is an empty list (remove the zone instead), or ``channel_id``
                is not a canonical conversation id.
        """
        _canonical(channel_id)
        listed = None if tools is None else sorted(set(tools))
        if listed == []:
            raise ValueError("a zone needs at least one tool; use remove_zone to close a channel")
        async with self._sessions.begin() as session:
            row = await session.get(ActionZone, (tenant.id, persona, channel_id))
            events.append_change(
                session,
                tenant,
                events.ZONE_CHANGED,
                _zone(row),
                _zone_tools(listed),
                actor=actor,
                subject=persona,
                details={"channel_id": channel_id},
            )
            if row is None:
                row = ActionZone(tenant_id=tenant.id, persona=persona, channel_id=channel_id)
                session.add(row)
            row.tools, row.updated_by = listed, actor

    async def remove_zone(
        self, tenant: Tenant, persona: str, channel_id: str, actor: str | None = None
    ) -> bool:
        """Remove one zone; ``True`` when it existed. Removing a persona's last zone lets it act
        anywhere again."""
        async with self._sessions.begin() as session:
            row = await session.get(ActionZone, (tenant.id, persona, channel_id))
            result = await session.execute(
                delete(ActionZone).where(
                    ActionZone.tenant_id == tenant.id,
                    ActionZone.persona == persona,
                    ActionZone.channel_id == channel_id,
                )
            )
            if not result.rowcount:  # none, or a concurrent remove won (and records it)
                return False
            events.append(
                session,
                tenant,
                events.ZONE_CHANGED,
                actor=actor,
                subject=persona,
                details={"channel_id": channel_id, "old": _zone(row), "new": None},
            )
            return True

    async def set_approvers(self, tenant: Tenant, approvers: str, actor: str | None) -> None:
        """Who may approve: ``requester_or_admin`` or ``admins_only``.

        Raises:
            ValueError: another value.
        """
        if approvers not in APPROVERS:
            raise ValueError(
                f"unknown approvers rule {approvers!r}; expected one of {', '.join(APPROVERS)}"
            )
        async with self._sessions.begin() as session:
            row = await session.get(ApprovalSettings, tenant.id)
            events.append_change(
                session,
                tenant,
                events.APPROVERS_CHANGED,
                row.approvers if row else "requester_or_admin",
                approvers,
                actor=actor,
            )
            if row is None:
                row = ApprovalSettings(tenant_id=tenant.id)
                session.add(row)
            row.approvers, row.updated_by = approvers, actor


def _zone(row: ActionZone | None) -> dict[str, Any] | None:
    """A zone as audited: ``None`` when there is none."""
    return None if row is None else _zone_tools(row.tools)


def _zone_tools(tools: list[str] | None) -> dict[str, Any]:
    return {"tools": "all" if tools is None else sorted(tools)}
def _canonical(channel_id: str) -> str:
    """``channel_id`` when it is a conversation id as Slack writes it.

    Raises:
        ValueError: anything else (a name, a person, lower case): it would never match.
    """
    if not CONVERSATION_ID.match(channel_id):
        raise ValueError(f"{channel_id!r} is not a conversation id (C…, G… or D…, upper case)")
    return channel_id
