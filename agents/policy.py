"""The action policy inside the agent loop: action zones, approvals, approved executions.

Before a tool runs, :meth:`ActionGate.screen` applies the workspace's
:class:`~storage.repositories.policy.ActionPolicy` (the rule is documented there):

* outside the persona's action zones the model gets a polite refusal saying where it may act
  (audit status ``refused``);
* a write tool that needs approval becomes a stored approval request, shown to people by the
  :class:`ApprovalNotifier` the bot layer supplies; the model is told the action waits
  (audit status ``awaiting_approval``);
* read tools and auto-approved write tools run at once.

When someone approves, :meth:`ActionGate.execute` runs the stored call, at most once: only the
caller that wins the guarded ``approved → executing`` transition runs the handler, and only
before the request's expiry.

Where a call writes is a canonical conversation id (:mod:`agents.channels`): a tool naming its
target channel any other way (``#prod``, a person) is refused before the policy is applied, so a
rule for ``C0PROD`` cannot be sidestepped by writing the channel differently.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from agents import channels, personas
from agents.memory import estimate_tokens
from agents.tools.registry import Tool, ToolContext, ToolRegistry, invoke
from storage.repositories import Repositories
from storage.repositories.approvals import Approval
from storage.repositories.policy import ActionPolicy, Verdict
from storage.tenancy import Tenant

if TYPE_CHECKING:
    from slack_sdk.web.async_client import AsyncWebClient

log = structlog.get_logger(__name__)

REFUSED = "refused"
AWAITING_APPROVAL = "awaiting_approval"
SUMMARY_LIMIT = 500  # characters of an execution result kept with the request and the note


class ApprovalNotPosted(Exception):
    """The approval request could not be shown to anyone; the message says why."""


class ApprovalNotifier(Protocol):
    """Shows a new approval request to the people who may decide it (bot layer: Slack)."""

    async def request(self, approval: Approval, context: ToolContext) -> None:
        """Post the request where the conversation happens.

        Raises:
            ApprovalNotPosted: it could not be posted.
        """


def refusal_text(persona: personas.Persona, tool: str, channel_id: str, verdict: Verdict) -> str:
    """What the model is told when the policy forbids a tool here (it relays it politely)."""
    name = persona.display_name
    where = ", ".join(f"<#{c}>" for c in verdict.zone_channels)
    if verdict.refusal == "tool_not_in_zone":
        allowed = ", ".join(f"`{t}`" for t in verdict.zone_tools) or "none"
        return (
            f"not allowed: this workspace's admins let {name} use only {allowed} in "
            f"<#{channel_id}>, not `{tool}`. Nothing was done. Explain this politely to the "
            f"user; {name} may act in {where}, and an admin can change the action zones with "
            f"`/{persona.command_prefix}-config zone`."
        )
    return (
        f"not allowed: this workspace's admins let {name} act only in {where}, not in "
        f"<#{channel_id}>. Nothing was done. Explain this politely to the user and suggest "
        f"asking there; an admin can change the action zones with "
        f"`/{persona.command_prefix}-config zone`."
    )


def waiting_text(approval: Approval, ttl: timedelta) -> str:
    """What the model is told when a call became an approval request."""
    hours = ttl.total_seconds() / 3600
    return (
        f"awaiting approval: `{approval.tool}` has NOT run yet. An approval request "
        f"(id {approval.id}) with Approve and Reject buttons was posted in this conversation; "
        f"the requester or a workspace admin decides, within {hours:g} h. Tell the user it "
        "waits for their approval and do not call the tool again for the same action; you "
        "will be told the outcome."
    )


def outcome_note(approval: Approval, state: str, result: str | None = None) -> str:
    """The system note stored in the conversation once a request was decided or ran."""
    action = f"`{approval.tool}` on {approval.target} (approval request {approval.id})"
    decided = f"<@{approval.decided_by}>" if approval.decided_by else "nobody"
    match state:
        case "rejected":
            return f"Approval update: {decided} rejected {action}. It was not done."
        case "expired" if approval.decided_by:
            return (
                f"Approval update: {decided} approved {action}, but it expired before it "
                "started. It was not done."
            )
        case "expired":
            return f"Approval update: {action} expired without a decision. It was not done."
        case "executed":
            return f"Approval update: {decided} approved {action}; it ran. Result: {result}"
        case _:
            return f"Approval update: {decided} approved {action}, but it failed: {result}"


@dataclass(frozen=True)
class Execution:
    """An approved call that ran: the request as started, success, readable result."""

    approval: Approval
    ok: bool
    result: str


class ActionGate:
    """Applies the policy to the agent loop's tool calls and runs approved ones.

    ``ttl`` is how long a request waits for a decision; ``tool_timeout`` is in seconds.
    Without a ``notifier`` (no Slack) write tools that need approval are refused.
    """

    def __init__(
        self,
        *,
        repos: Repositories,
        registry: ToolRegistry,
        notifier: ApprovalNotifier | None,
        ttl: timedelta,
        tool_timeout: float,
    ) -> None:
        self.repos = repos
        self.registry = registry
        self.notifier = notifier
        self.ttl = ttl
        self.tool_timeout = tool_timeout

    async def policy(self, tenant: Tenant) -> ActionPolicy:
        """The workspace's policy; the loop loads it once per turn."""
        return await self.repos.policy.load(tenant)

    async def screen(
        self,
        policy: ActionPolicy,
        tool: Tool,
        context: ToolContext,
        arguments: dict[str, Any],
        tool_call_id: str | None,
    ) -> tuple[str, str] | None:
        """``None`` when the call may run now, else ``(audit status, tool result for the model)``.

        Creates and posts the approval request when one is needed.
        """
        risk = await tool.risk_of(context, arguments)
        persona = context.persona
        elsewhere = None
        if tool.acts_in is not None:
            written = tool.acts_in(arguments)
            elsewhere = channels.canonical_id(written)
            if elsewhere is None:
                return REFUSED, _not_an_id(tool.name)
        verdict = policy.check(persona.name, tool.name, risk, context.channel_id)
        if verdict.allowed and elsewhere and elsewhere != context.channel_id:
            # A rule of the conversation's channel must not let a call act in another one.
            there = policy.check(persona.name, tool.name, risk, elsewhere)
            verdict = there if not there.allowed else replace(
                verdict, needs_approval=verdict.needs_approval or there.needs_approval
            )
        if not verdict.allowed:
            return REFUSED, refusal_text(persona, tool.name, context.channel_id, verdict)
        if not verdict.needs_approval:
            return None
        if self.notifier is None or context.slack is None:
            return REFUSED, (
                f"not allowed here: `{tool.name}` needs a person's approval in Slack, and this "
                "conversation is not in Slack. Nothing was done; tell the user to ask in Slack."
            )
        approval = await self.repos.approvals.create(
            context.tenant,
            persona=persona.name,
            requested_by=context.user_id,
            channel_id=context.channel_id,
            thread_ts=context.thread_ts,
            tool=tool.name,
            arguments=arguments,
            risk=risk,
            target=tool.target_of(arguments),
            tool_call_id=tool_call_id,
            ttl=self.ttl,
        )
        try:
            await self.notifier.request(approval, context)
        except ApprovalNotPosted as exc:
            # The request stays pending without a message and simply expires.
            log.warning("approval_not_posted", request_id=approval.id, reason=str(exc))
            return "error", (
                f"error: `{tool.name}` needs approval, but the approval request could not be "
                f"posted ({exc}). Nothing was done."
            )
        log.info("approval_requested", tenant=context.tenant.id, request_id=approval.id)
        return AWAITING_APPROVAL, waiting_text(approval, self.ttl)

    async def execute(
        self,
        tenant: Tenant,
        request_id: str,
        slack: AsyncWebClient | None,
        now: datetime | None = None,
    ) -> Execution | None:
        """Run an approved request once: ``None`` unless this caller won ``approved →
        executing`` before the request's expiry at ``now`` (someone else runs it, it already
        ran, it is not approved, or it expired).

        The handler gets the stored arguments and a context rebuilt from the request (persona
        with the workspace's overrides, requester, channel, thread, timezone, ``slack``). The
        outcome is stored with the request, in the tool-call audit and as a note in the
        conversation. Never raises for a tool's failure.
        """
        approval = await self.repos.approvals.start_execution(tenant, request_id, now)
        if approval is None:
            return None
        started = time.perf_counter()
        try:
            status, content = await self._run(tenant, approval, slack)
        except asyncio.CancelledError:
            # Shutdown cut the action short: say so rather than leave it "executing" forever.
            interrupted = (
                "error: interrupted by a restart while running; it may or may not have taken "
                "effect, so check before asking again"
            )
            await asyncio.shield(self._record(tenant, approval, "error", interrupted, started))
            raise
        except Exception as exc:  # storage failed while preparing: record it, do not retry
            log.exception("approved_action_failed", request_id=request_id)
            status, content = "error", f"error: internal error ({type(exc).__name__})"
        return await self._record(tenant, approval, status, content, started)

    async def _record(
        self, tenant: Tenant, approval: Approval, status: str, content: str, started: float
    ) -> Execution:
        """Store an execution's outcome with the request, in the audit and in the thread."""
        ok = status == "ok"
        summary = content[:SUMMARY_LIMIT]
        if not await self.repos.approvals.finish_execution(tenant, approval.id, summary, ok):
            # The sweep closed it as stalled meanwhile; the audit and the thread get the truth.
            log.warning("approved_action_finished_late", request_id=approval.id, ok=ok)
        await self.repos.audit.record_tool_call(
            tenant,
            turn_id=None,
            persona=approval.persona,
            user_id=approval.requested_by,
            tool=approval.tool,
            arguments=approval.arguments,
            result_summary=summary,
            status=status,
            duration_ms=round((time.perf_counter() - started) * 1000),
        )
        await self.note(tenant, approval, "executed" if ok else "failed", summary)
        log.info("approved_action_ran", tenant=tenant.id, request_id=approval.id, ok=ok)
        return Execution(approval, ok, summary)

    async def outside_requester_reach(
        self, approval: Approval, slack: AsyncWebClient | None
    ) -> str | None:
        """The conversation ``approval`` writes to that its requester is not in, else ``None``.

        A write stays within the requester's reach when it acts in the conversation it was
        asked in, or in a conversation they are a member of (``conversations.members``): a
        private channel they are not in, someone else's direct message or any channel they
        have not joined is out of reach. Unknown tools, references that are not ids and
        conversations Slack cannot list are out of reach too (the stricter rule applies).
        """
        tool = self.registry.get(approval.tool)
        if tool is None:
            return approval.tool
        if tool.acts_in is None:
            return None
        written = tool.acts_in(approval.arguments)
        channel = channels.canonical_id(written)
        if channel is None:
            return written
        if channel == approval.channel_id:
            return None
        if slack is not None and await channels.is_member(slack, channel, approval.requested_by):
            return None
        return channel

    async def note(
        self, tenant: Tenant, approval: Approval, state: str, result: str | None = None
    ) -> None:
        """Tell the conversation's next turn what became of ``approval``."""
        content = outcome_note(approval, state, result)
        await self.repos.conversations.add_note(
            tenant,
            approval.channel_id,
            approval.thread_ts,
            approval.persona,
            approval.decided_by or approval.requested_by,
            content,
            estimate_tokens({"content": content}),
        )

    async def _run(
        self, tenant: Tenant, approval: Approval, slack: AsyncWebClient | None
    ) -> tuple[str, str]:
        tool = self.registry.get(approval.tool)
        if tool is None:
            return "error", f"error: the tool `{approval.tool}` no longer exists"
        config = await self.repos.config.load(tenant)
        context = ToolContext(
            tenant=tenant,
            persona=personas.effective(approval.persona, config),
            user_id=approval.requested_by,
            channel_id=approval.channel_id,
            thread_ts=approval.thread_ts,
            timezone=config.timezone,
            slack=slack,
        )
        return await invoke(tool, context, approval.arguments, self.tool_timeout)


def _not_an_id(tool: str) -> str:
    """What the model is told when a tool names its target conversation other than by id.

    The name is not looked up: finding it pages ``conversations.list``, and a model naming
    channels in a loop would spend the workspace's Slack rate limit. People's messages carry
    channels as ``<#C0123|name>``, which gives the model the id.
    """
    return (
        f"not allowed: `{tool}` needs the target conversation by its id (C0123…, as in a "
        "<#C0123|name> reference in the conversation); ask the person which channel if you do "
        "not have it. Nothing was done."
    )
