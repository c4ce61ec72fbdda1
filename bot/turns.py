"""From a Slack message to a posted answer: persona, progress indicator, turn, reply.

Conversation keys (``thread_ts`` in storage):

* a mention in a channel → the thread root (``thread_ts`` of the message, else its ``ts``);
  the answer goes into that thread, and later mentions there continue the conversation;
* a DM inside a thread → that thread, answered in the thread;
* a top-level DM → a rolling DM session, answered top-level. Messages belong to the same
  session while the previous one is less than :data:`DM_SESSION_IDLE` old; after a longer
  pause a new session (``dm:{ts}``) starts with a clean memory.

A turn whose process died (``kill -9``, a crash, a lost node) is closed by :class:`TurnWatch`:
at startup for the turns this instance left running, and on every replica for turns whose
owner stopped heartbeating. The person is told in the thread that the answer was interrupted,
which writes had already run, and to ask again.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import structlog
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from agents import personas
from agents.memory import estimate_tokens
from agents.personas import Persona
from agents.runtime import TurnRequest
from bot import render
from bot.approvals import ClientFor
from bot.commands import not_enabled
from bot.render import Reply
from bot.services import Services
from bot.slack_client import slack_error
from bot.threads import DM_PREFIX, slack_thread
from bot.work import UNINSTALLED, ShuttingDown
from storage.repositories.conversations import OrphanedTurn
from storage.tenancy import Tenant

log = structlog.get_logger(__name__)

DM_SESSION_IDLE = timedelta(hours=4)
WORKING_REACTION = "eyes"
MENTION = re.compile(r"<@[UW][A-Z0-9]+(?:\|[^>]*)?>")
ORPHAN_AFTER = 4  # heartbeats missed before a turn's owner counts as dead
SLACK_TS = re.compile(r"^\d+\.\d+$")


@dataclass(frozen=True)
class IncomingMessage:
    """A user's message as the listeners extract it from ``app_mention`` or ``message.im``."""

    tenant: Tenant
    channel_id: str
    user_id: str
    text: str
    ts: str
    thread_ts: str | None  # the thread root when the message is a reply in a thread
    is_dm: bool


class SlackTurns:
    def __init__(self, services: Services) -> None:
        self.services = services

    async def accept(self, message: IncomingMessage, client: AsyncWebClient) -> None:
        """Claim the message, pick the persona and start the answer in the background.

        Returns quickly: the LLM work runs after Slack's ack, tracked for graceful shutdown.
        """
        # Retries, and app_mention + message for one mention (contracts.md): act once.
        key = f"msg:{message.tenant.id}:{message.channel_id}:{message.ts}"
        if not await self.services.claims.first_delivery(key):
            return
        config = await self.services.repos.config.load(message.tenant)
        persona = personas.for_channel(config, message.channel_id)
        reply_thread = (
            None if message.is_dm and not message.thread_ts else (message.thread_ts or message.ts)
        )
        if not persona.enabled:
            await self._post(client, message.channel_id, reply_thread, not_enabled(persona))
            return
        conversation = await self._conversation_key(message)
        request = TurnRequest(
            tenant=message.tenant,
            persona=persona,
            channel_id=message.channel_id,
            thread_ts=conversation,
            user_id=message.user_id,
            text=MENTION.sub("", message.text).strip() or "(empty message)",
            timezone=config.timezone,
            slack=client,
        )
        try:
            self.begin(request, client, message.ts, reply_thread)
        except ShuttingDown:
            await self._post(
                client,
                message.channel_id,
                reply_thread,
                Reply("I am restarting right now; please ask again in a minute."),
            )

    def begin(
        self,
        request: TurnRequest,
        client: AsyncWebClient,
        message_ts: str,
        reply_thread: str | None,
    ) -> None:
        """Answer ``request`` in the background, reacting on ``message_ts`` while working and
        replying in ``reply_thread`` (top level when ``None``).

        Raises:
            ShuttingDown: the process is stopping and takes no new work.
        """
        self.services.inflight.spawn(
            self._answer(request, client, message_ts, reply_thread),
            name=f"turn:{request.tenant.id}:{request.channel_id}:{message_ts}",
            tenant=request.tenant.id,
        )

    async def _conversation_key(self, message: IncomingMessage) -> str:
        if not message.is_dm or message.thread_ts:
            return message.thread_ts or message.ts
        latest = await self.services.repos.conversations.latest_thread(
            message.tenant, message.channel_id, DM_PREFIX
        )
        if latest and datetime.now(UTC) - latest[1] < DM_SESSION_IDLE:
            return latest[0]
        return f"{DM_PREFIX}{message.ts}"

    async def _answer(
        self,
        request: TurnRequest,
        client: AsyncWebClient,
        message_ts: str,
        reply_thread: str | None,
    ) -> None:
        channel = request.channel_id
        indicator: WorkingIndicator | None = None

        def working() -> None:
            # Not for a turn the limits refuse: a flood of those would triple its Slack calls.
            nonlocal indicator
            indicator = WorkingIndicator(
                self, client, channel, message_ts, self.services.settings.working_indicator_delay
            )

        try:
            outcome = await self.services.runtime.run(request, on_admitted=working)
            if outcome.quiet:
                return
            reply = _signed(request.persona, render.answer(outcome))
        except asyncio.CancelledError as cancelled:
            if cancelled.args == (UNINSTALLED,):
                raise  # the workspace removed the app: nothing more is said there
            interrupted = Reply(
                "I was interrupted by a restart before I could answer; please ask again."
            )
            await asyncio.shield(
                self._finish(client, reply_thread, interrupted, indicator, channel, message_ts)
            )
            raise
        except Exception:
            log.exception("turn_failed", tenant=request.tenant.id, channel_id=channel)
            reply = Reply(
                "Sorry, something went wrong on my side and I could not answer. "
                f"Please try again; `/{request.persona.command_prefix}-status` shows my health."
            )
        await self._finish(client, reply_thread, reply, indicator, channel, message_ts)

    async def _finish(
        self,
        client: AsyncWebClient,
        reply_thread: str | None,
        reply: Reply,
        indicator: WorkingIndicator | None,
        channel: str,
        message_ts: str,
    ) -> None:
        """Post the reply, then take the indicator (if up) down: the person waits for the
        answer."""
        await self._post(client, channel, reply_thread, reply)
        if indicator is not None:
            await indicator.take_down()

    async def _post(
        self, client: AsyncWebClient, channel: str, thread_ts: str | None, reply: Reply
    ) -> None:
        try:
            await client.chat_postMessage(channel=channel, thread_ts=thread_ts, **reply.as_kwargs())
        except SlackApiError as exc:
            log.error("post_failed", channel_id=channel, error=slack_error(exc))

    async def react(self, client: AsyncWebClient, action: str, channel: str, ts: str) -> bool:
        """Add or remove the working reaction; ``False`` when Slack refused (never raises)."""
        method = client.reactions_add if action == "add" else client.reactions_remove
        try:
            await method(channel=channel, timestamp=ts, name=WORKING_REACTION)
        except SlackApiError as exc:
            log.debug("reaction_failed", action=action, error=slack_error(exc))
            return False
        except Exception as exc:  # the indicator is cosmetic; its failure must not end a turn
            log.debug("reaction_failed", action=action, error=repr(exc))
            return False
        return True


class WorkingIndicator:
    """The :data:`WORKING_REACTION` on a person's message while the answer takes longer than
    ``delay`` seconds. A quick answer shows none: the reaction would only flicker, and each
    turn would spend two of the workspace's ``reactions.*`` calls on it (Tier 3, 50+ a minute:
    https://api.slack.com/methods/reactions.add, contracts.md "Slack: limits")."""

    def __init__(
        self, turns: SlackTurns, client: AsyncWebClient, channel: str, ts: str, delay: float
    ) -> None:
        self._react = lambda action: turns.react(client, action, channel, ts)
        self._adding = False
        self._shown = asyncio.create_task(self._show(delay))

    async def _show(self, delay: float) -> bool:
        await asyncio.sleep(delay)
        self._adding = True
        return await self._react("add")

    async def take_down(self) -> None:
        """The answer is posted: no reaction if none was added yet, else remove it."""
        if not self._adding:
            self._shown.cancel()
        elif await self._shown:
            await self._react("remove")


def _signed(persona: Persona, reply: Reply) -> Reply:
    """The app's bot user is NOX; answers of other personas say who is speaking."""
    if persona.name == personas.DEFAULT_PERSONA:
        return reply
    byline = render.context(f"*{persona.display_name}* · {persona.title}")
    return Reply(
        f"{persona.display_name}: {reply.text}", [byline, *reply.blocks][: render.MAX_BLOCKS]
    )


class TurnWatch:
    """Keeps this instance's running turns alive in storage and closes dead ones.

    Every ``heartbeat`` seconds it bumps the heartbeat of the turns this process runs and
    closes, in every workspace, turns whose heartbeat is :data:`ORPHAN_AFTER` heartbeats old:
    their owner died. Several replicas may sweep at once; each turn is closed (and its
    person told) by one of them. ``client_for(tenant)`` gives a workspace's Web API client
    (``None``: not installed).
    """

    def __init__(self, services: Services, client_for: ClientFor, heartbeat: float) -> None:
        self.services = services
        self.client_for = client_for
        self.heartbeat = heartbeat

    async def recover(self, *, startup: bool = False) -> list[OrphanedTurn]:
        """Close orphaned turns and tell their people; returns the turns closed.

        With ``startup``, the turns this instance id left running count as orphaned whatever
        their heartbeat (a stable ``JAMONO_INSTANCE_ID`` makes that immediate after a crash).
        """
        runtime = self.services.runtime
        stale_before = datetime.now(UTC) - timedelta(seconds=self.heartbeat * ORPHAN_AFTER)
        closed = await self.services.repos.conversations.close_orphans(
            stale_before=stale_before, owner=runtime.owner if startup else None
        )
        for turn in closed:
            log.warning(
                "turn_interrupted",
                tenant=turn.tenant.id,
                turn_id=turn.turn_id,
                owner=turn.owner,
                tools=[call.tool for call in turn.tool_calls],
            )
            try:
                await self._tell(turn)
            except Exception as exc:  # the turn is closed; one failed notice must not stop others
                log.error("interruption_notice_failed", turn_id=turn.turn_id, error=repr(exc))
        return closed

    async def run(self) -> None:
        """Heartbeat and sweep until cancelled; a failed round is logged and retried."""
        while True:
            await asyncio.sleep(self.heartbeat)
            try:
                await self.services.repos.conversations.heartbeat(self.services.runtime.owner)
                await self.recover()
            except Exception as exc:  # housekeeping; the next round retries
                log.warning("turn_watch_failed", error=repr(exc))

    async def _tell(self, turn: OrphanedTurn) -> None:
        """Post the notice in the turn's thread, then leave in the conversation's memory what
        the person was told (or that the answer was interrupted, when nobody could be told)."""
        text = interruption_notice(turn, self._writes(turn))
        told = await self._post(turn, text)
        await self.services.repos.conversations.add_note(
            turn.tenant,
            turn.channel_id,
            turn.thread_ts,
            turn.persona,
            turn.user_id,
            f"Jamono told the user: {text}" if told else f"Not answered: {text}",
            estimate_tokens({"content": text}),
        )

    async def _post(self, turn: OrphanedTurn, text: str) -> bool:
        """Whether the notice reached the turn's Slack thread."""
        thread = slack_thread(turn.thread_ts)
        if thread is not None and not SLACK_TS.match(thread):
            return False  # not a Slack thread (a briefing's prompt): nobody waits there
        client = await self.client_for(turn.tenant)
        if client is None:
            return False
        persona = personas.BUILTIN.get(turn.persona)
        reply = Reply(text, [render.section(text)])
        if persona is not None:
            reply = _signed(persona, reply)
        try:
            await client.chat_postMessage(
                channel=turn.channel_id, thread_ts=thread, **reply.as_kwargs()
            )
        except SlackApiError as exc:
            log.error("interruption_notice_failed", turn_id=turn.turn_id, error=slack_error(exc))
            return False
        return True

    def _writes(self, turn: OrphanedTurn) -> list[str]:
        """The write tools that completed in the turn, as ``tool: result`` lines."""
        registry = self.services.runtime.registry
        lines = []
        for call in turn.tool_calls:
            tool = registry.get(call.tool)
            if call.status == "ok" and tool is not None and tool.risk == "write":
                lines.append(f"`{call.tool}`: {render.escape(call.result_summary[:200])}")
        return lines


async def keep_alive(services: Services, heartbeat: float) -> None:
    """Heartbeat this process's running turns every ``heartbeat`` seconds until cancelled.

    For a process that serves no Slack (``jamono console``): it closes nobody's turns, but the
    sweeps of servers sharing its database must not take its long turns for dead ones.
    """
    while True:
        await asyncio.sleep(heartbeat)
        try:
            await services.repos.conversations.heartbeat(services.runtime.owner)
        except Exception as exc:  # the next round retries
            log.warning("turn_heartbeat_failed", error=repr(exc))


def interruption_notice(turn: OrphanedTurn, writes: list[str]) -> str:
    """What the person reads when their turn died mid-way (``writes``: what already ran)."""
    done = (
        "Before that I had already done this:\n" + "\n".join(f"• {line}" for line in writes)
        if writes
        else "No write action had been recorded as done."
    )
    return (
        f"⚠️ <@{turn.user_id}>, my answer was interrupted: the process working on it stopped "
        f"before I finished. {done}\nPlease ask again."
    )
