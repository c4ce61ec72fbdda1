"""Approval requests in Slack: the message with Approve/Reject buttons and what a click does.

The message (Block Kit, contracts.md "Slack: limits") shows the persona, the tool, its target
and every argument, with buttons whose ``value`` is the request id; user and model text on
it is escaped (only channel links, and the requester's mention, render). A click
(``block_actions``) is decided by :class:`ApprovalDesk`: a workspace admin, or the requester
when the write stays where they are (the workspace policy, see
storage.repositories.policy); the database's guarded transitions make exactly one click win
and exactly one caller run the action, before the request's expiry, whatever the number of
clicks, approvers, Slack retries, replicas or restarts.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import structlog
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from agents import personas
from agents.policy import ActionGate, ApprovalNotPosted
from agents.tools.registry import ToolContext
from bot.render import context, escape, header, safe_mrkdwn, section
from bot.slack_client import is_workspace_admin, slack_error
from bot.threads import slack_thread
from storage.models import utcnow
from storage.repositories import Repositories
from storage.repositories.approvals import Approval, State
from storage.repositories.policy import CONVERSATION_ID, ActionPolicy
from storage.tenancy import Tenant

log = structlog.get_logger(__name__)

APPROVE, REJECT = "approval_approve", "approval_reject"
APPROVAL_DENIED = "approval_denied"  # audit: a click by someone not allowed to decide
ACTIONS_BLOCK = "approval_actions"
ARGUMENT_LIMIT = 1500  # characters of one argument shown (a section holds 3,000)
MAX_ARGUMENTS = 40  # argument sections in one message (a message holds 50 blocks)
# An execution is bounded by the tool timeout; one still running this much longer belongs to a
# process that died mid-action. Generous, so a slow but live execution is never closed early.
STALLED_AFTER = timedelta(minutes=5)
STALLED_RESULT = (
    "error: the process running it stopped before it finished; it may or may not have taken "
    "effect, so check before asking again"
)


# Rendering ---------------------------------------------------------------------------------


RESULT_LIMIT = 2500  # characters of an action's result shown on its approval message


_CHANNEL_LINK = re.compile(r"&lt;#([CGD][A-Z0-9]+)&gt;")


def _shortened(text: str) -> str:
    return text if len(text) <= RESULT_LIMIT else text[: RESULT_LIMIT - 1] + "…"


def argument_text(value: Any) -> str:
    """An argument as the approver reads it: text verbatim, other JSON compact; long values cut."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    if len(text) > ARGUMENT_LIMIT:
        text = text[:ARGUMENT_LIMIT] + f"… ({len(text) - ARGUMENT_LIMIT:,} more characters)"
    return "```" + escape(text).replace("```", "`\u200b``") + "```"


def _display(approval: Approval) -> str:
    persona = personas.BUILTIN.get(approval.persona)
    return persona.display_name if persona else approval.persona


def target_text(approval: Approval) -> str:
    """The request's target in mrkdwn: shown literally (it is built from the model's
    arguments), except a bare channel reference ``<#C0123>``, which only links."""
    return _CHANNEL_LINK.sub(r"<#\1>", escape(approval.target))


def summary_line(approval: Approval) -> str:
    return (
        f"*{_display(approval)}* wants to run `{escape(approval.tool)}` on "
        f"*{target_text(approval)}* — asked by <@{approval.requested_by}>."
    )


def request_blocks(approval: Approval, outcome: str | None = None) -> list[dict[str, Any]]:
    """The approval message: what will happen, and buttons while ``outcome`` is ``None``."""
    blocks = [header("Approval needed" if outcome is None else "Approval request"),
              section(summary_line(approval))]
    items = list(approval.arguments.items())
    for key, value in items[:MAX_ARGUMENTS]:
        blocks.append(section(f"*{escape(key)}*\n{argument_text(value)}"))
    if len(items) > MAX_ARGUMENTS:
        blocks.append(context(f"…and {len(items) - MAX_ARGUMENTS} more arguments not shown."))
    if outcome is not None:
        blocks.append(section(outcome))
        return blocks
    expires = int(approval.expires_at.timestamp())
    blocks.append(
        context(
            f"Expires <!date^{expires}^{{date_short_pretty}} at {{time}}|"
            f"{approval.expires_at:%Y-%m-%d %H:%M} UTC>. Nothing happens until someone "
            f"allowed to approve clicks Approve. Request `{approval.id}`."
        )
    )
    blocks.append(
        {
            "type": "actions",
            "block_id": ACTIONS_BLOCK,
            "elements": [
                _button("Approve", APPROVE, approval.id, "primary"),
                _button("Reject", REJECT, approval.id, "danger"),
            ],
        }
    )
    return blocks


def _button(label: str, action_id: str, value: str, style: str) -> dict[str, Any]:
    return {
        "type": "button",
        "text": {"type": "plain_text", "text": label},
        "action_id": action_id,
        "value": value,
        "style": style,
    }


def outcome_text(approval: Approval, result: str | None = None) -> str:
    """The line replacing the buttons once the request is decided, ran or expired."""
    by = f"<@{approval.decided_by}>" if approval.decided_by else "someone"
    match approval.state:
        case State.EXECUTED:
            # Tools answer in mrkdwn (issue keys as links): shown as such, minus broadcasts.
            return f"✅ Approved by {by} — done.\n{safe_mrkdwn(_shortened(result or ''))}"
        case State.FAILED:
            return f"⚠️ Approved by {by}, but it failed.\n{argument_text(result or '')}"
        case State.REJECTED:
            return f"🚫 Rejected by {by}. Nothing was done."
        case State.EXPIRED if approval.decided_by:
            return (
                f"⌛ Approved by {by}, but it expired before it started. Nothing was done; ask "
                "again if still needed."
            )
        case State.EXPIRED:
            return "⌛ Expired without a decision. Nothing was done; ask again if still needed."
        case _:
            return f"⏳ Approved by {by} — running…"


# Posting -----------------------------------------------------------------------------------


class SlackApprovalNotifier:
    """:class:`agents.policy.ApprovalNotifier` for Slack: posts the request in the thread."""

    def __init__(self, repos: Repositories) -> None:
        self.repos = repos

    async def request(self, approval: Approval, context: ToolContext) -> None:
        if context.slack is None:
            raise ApprovalNotPosted("this conversation is not in Slack")
        try:
            response = await context.slack.chat_postMessage(
                channel=approval.channel_id,
                thread_ts=slack_thread(approval.thread_ts),
                text=f"Approval needed: {_plain(summary_line(approval))}",
                blocks=request_blocks(approval),
            )
        except SlackApiError as exc:
            raise ApprovalNotPosted(f"Slack answered {slack_error(exc)}") from None
        await self.repos.approvals.set_message_ts(context.tenant, approval.id, response["ts"])


def _plain(mrkdwn: str) -> str:
    return mrkdwn.replace("*", "")


# Clicks ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Click:
    """One Approve or Reject click from a ``block_actions`` payload."""

    tenant: Tenant
    request_id: str
    user_id: str
    approve: bool
    channel_id: str
    message_ts: str | None


ClientFor = Callable[[Tenant], Awaitable[AsyncWebClient | None]]
Clock = Callable[[], datetime]


class ApprovalDesk:
    """Decides clicks, runs approved actions (through the gate) and keeps messages current.

    ``clock`` gives the current aware UTC time (expiries are judged by it; tests inject one).
    """

    def __init__(self, repos: Repositories, gate: ActionGate, clock: Clock = utcnow) -> None:
        self.repos = repos
        self.gate = gate
        self.clock = clock

    async def click(self, click: Click, client: AsyncWebClient) -> None:
        """Handle one click; never raises for Slack failures (they are logged)."""
        approval = await self.repos.approvals.get(click.tenant, click.request_id)
        if approval is None:
            await self._ephemeral(client, click, None, "I do not know this approval request.")
            return
        policy = await self.repos.policy.load(click.tenant)
        refusal = await self._refusal(click, approval, policy, client)
        if refusal is not None:
            await self.repos.events.record(
                click.tenant,
                APPROVAL_DENIED,
                actor=click.user_id,
                subject=approval.id,
                details={"approve": click.approve},
            )
            await self._ephemeral(client, click, approval, refusal)
            return
        decision = await self.repos.approvals.decide(
            click.tenant, click.request_id, click.user_id, click.approve, self.clock()
        )
        if decision.request is None:
            return
        current = _located(decision.request, click)
        log.info(
            "approval_click",
            request_id=current.id,
            user_id=click.user_id,
            won=decision.won,
            state=current.state.value,
        )
        if current.state == State.APPROVED and click.approve:
            # The winner, or a later Approve finding it approved but not started (a restart
            # between the decision and the execution): start_execution lets one of them run it.
            await self._execute(click, current, client)
        elif decision.won:  # rejected
            await self._update(client, current)
            await self.gate.note(click.tenant, current, "rejected")
        elif current.state == State.EXPIRED:
            await self._update(client, current)
            before = " before it started" if current.decided_by else ""
            await self._ephemeral(
                client,
                click,
                current,
                f"This request expired at {current.expires_at:%Y-%m-%d %H:%M} UTC{before}; "
                "nothing was done. Ask again if it is still needed.",
            )
        else:
            await self._ephemeral(client, click, current, _already(current))

    async def _execute(self, click: Click, approval: Approval, client: AsyncWebClient) -> None:
        execution = await self.gate.execute(click.tenant, approval.id, client, self.clock())
        if execution is None:
            return  # another click runs it and reports
        done = await self.repos.approvals.get(click.tenant, approval.id)
        if done is None:
            return
        done = _located(done, click)
        await self._update(client, done, execution.result)
        mark = "✅" if execution.ok else "⚠️"
        verb = "ran" if execution.ok else "failed"
        await self._post(
            client,
            done,
            f"{mark} `{escape(done.tool)}` on {target_text(done)} {verb} "
            f"(approved by <@{done.decided_by}>).",
        )

    async def _refusal(
        self, click: Click, approval: Approval, policy: ActionPolicy, client: AsyncWebClient
    ) -> str | None:
        """``None`` when ``click.user_id`` may decide ``approval``, else what to tell them.

        Asks Slack only what the answer needs: whether the request stays within its
        requester's reach (only when the requester clicks), then whether the clicker is an
        admin.
        """
        beyond = None
        if click.user_id == approval.requested_by and policy.approvers == "requester_or_admin":
            beyond = await self.gate.outside_requester_reach(approval, client)
            if policy.may_approve(
                click.user_id, approval.requested_by, is_admin=False, within_reach=beyond is None
            ):
                return None
        is_admin = await is_workspace_admin(client, click.user_id)
        if policy.may_approve(
            click.user_id, approval.requested_by, is_admin=is_admin, within_reach=beyond is None
        ):
            return None
        return _not_allowed(approval, policy, beyond)

    async def sweep(self, client_for: ClientFor) -> None:
        """Close what nobody will close otherwise, update its message and note it in the
        conversation: requests past their expiry, and executions orphaned by a process that
        died mid-action (still ``executing`` :data:`STALLED_AFTER` past the tool timeout).

        ``client_for(tenant)`` gives the workspace's Web API client (``None``: not installed);
        the tenant carries the request's enterprise id, which finds an Enterprise Grid
        workspace's installation.
        """
        now = self.clock()
        expired = await self.repos.approvals.expire_due(now)
        started_before = now - timedelta(seconds=self.gate.tool_timeout) - STALLED_AFTER
        stalled = await self.repos.approvals.fail_stalled(started_before, STALLED_RESULT)
        for approval in expired + stalled:
            tenant = approval.tenant
            await self.gate.note(tenant, approval, approval.state, approval.result_summary)
            client = await client_for(tenant)
            if client is not None:
                await self._update(client, approval, approval.result_summary)
        if expired:
            log.info("approvals_expired", count=len(expired))
        if stalled:
            log.warning("stalled_executions_failed", request_ids=[a.id for a in stalled])

    async def _update(
        self, client: AsyncWebClient, approval: Approval, result: str | None = None
    ) -> None:
        """Replace the buttons of the approval message with the outcome."""
        if approval.message_ts is None:
            return
        outcome = outcome_text(approval, result)
        try:
            await client.chat_update(
                channel=approval.channel_id,
                ts=approval.message_ts,
                text=f"{_plain(summary_line(approval))} {outcome}",
                blocks=request_blocks(approval, outcome),
            )
        except SlackApiError as exc:
            log.warning("approval_update_failed", request_id=approval.id, error=slack_error(exc))

    async def _post(self, client: AsyncWebClient, approval: Approval, text: str) -> None:
        try:
            await client.chat_postMessage(
                channel=approval.channel_id, thread_ts=slack_thread(approval.thread_ts), text=text
            )
        except SlackApiError as exc:
            log.warning("approval_post_failed", request_id=approval.id, error=slack_error(exc))

    async def _ephemeral(
        self, client: AsyncWebClient, click: Click, approval: Approval | None, text: str
    ) -> None:
        thread = slack_thread(approval.thread_ts) if approval else None
        try:
            await client.chat_postEphemeral(
                channel=click.channel_id, user=click.user_id, text=text, thread_ts=thread
            )
        except SlackApiError as exc:
            log.warning("approval_ephemeral_failed", error=slack_error(exc))


def _located(approval: Approval, click: Click) -> Approval:
    """The request with its message's ``ts``: stored, else the clicked message's (a process
    that died right after posting never stored it)."""
    if approval.message_ts or not click.message_ts:
        return approval
    return replace(approval, message_ts=click.message_ts)


def _not_allowed(approval: Approval, policy: ActionPolicy, beyond: str | None) -> str:
    if policy.approvers == "admins_only":
        return "Only workspace admins can decide this request; nothing changed."
    if beyond is not None:
        where = f"<#{beyond}>" if CONVERSATION_ID.match(beyond) else f"`{escape(beyond)}`"
        return (
            f"This request writes to {where}, outside this conversation and where you are not "
            "a member (or someone else's direct message), so only a workspace admin can decide "
            "it; nothing changed."
        )
    return (
        f"Only <@{approval.requested_by}> or a workspace admin can decide this request; "
        "nothing changed."
    )


def _already(approval: Approval) -> str:
    by = f"<@{approval.decided_by}>" if approval.decided_by else "someone"
    match approval.state:
        case State.REJECTED:
            return f"Already rejected by {by}; nothing was done."
        case State.APPROVED:
            return f"Already approved by {by}; it is about to run."
        case State.EXECUTING:
            return f"Already approved by {by}; it is running now."
        case State.EXECUTED:
            return f"Already approved by {by} and done."
        case State.FAILED:
            return f"Already approved by {by}; it ran and failed."
        case _:
            return f"This request is {approval.state.value}."
