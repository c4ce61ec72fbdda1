"""Composing and posting briefings: exactly once per (subscription, fire time).

A run is claimed in the database before anything is posted (see
storage.repositories.briefings), so a run fired twice — by two replicas, or by a leader and
the one that took over from it — posts once. A process killed between the claim and the post
loses that run rather than risking a second post: chat.postMessage has no idempotency key.

Channel errors (``not_in_channel``, ``channel_not_found``, ``is_archived``,
``account_inactive``) pause the subscription; its creator gets one DM saying why and what to
do. Posts to one channel are spaced by :data:`CHANNEL_INTERVAL` (Slack allows about one message
per second per channel, contracts.md "Slack: limits"); a 429 that still happens is retried
after its ``Retry-After`` by the client's retry handler.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo

import structlog
from slack_sdk.errors import SlackApiError, SlackTokenRotationError
from slack_sdk.web.async_client import AsyncWebClient

from agents import personas
from agents.budgets import Budgets
from agents.llm import LLMClient, LLMError
from agents.personas import Persona
from bot.briefings.clients import NotInstalled, TeamClients
from bot.briefings.render import render_briefing
from bot.briefings.schedule import ScheduleError, check_frequency, is_repeat, parse_schedule
from bot.briefings.sections import (
    BriefingContext,
    SectionContent,
    Shared,
    Sources,
    parse_section,
)
from bot.render import Reply
from bot.slack_client import slack_error
from bot.work import InFlight
from storage.repositories import Repositories
from storage.repositories.briefings import Briefing, DeliveryState
from storage.tenancy import Tenant

log = structlog.get_logger(__name__)

CHANNEL_INTERVAL = 1.05  # seconds between two posts to one channel
OPENING_LIMIT = 500  # characters of the persona's opening
OPENING_DATA_LIMIT = 6000  # characters of gathered data shown to the model
TOO_FREQUENT = "too_frequent"  # paused_reason of a stored schedule under the minimum interval
UNINSTALLED = "cancelled: the app was uninstalled from the workspace"  # a delivery's detail
# A delivery still sending this long after its claim was left by a process that died: far
# beyond a run's longest (each section's integration deadline, the opening's LLM attempts).
STALE_DELIVERY = timedelta(hours=1)

# Slack error → what to tell the subscription's creator ({channel} and {id} are filled in).
CHANNEL_ERRORS: dict[str, str] = {
    "not_in_channel": (
        "I am not a member of {channel}. Invite me there (`/invite @NOX`), then turn the "
        "briefing back on with `/nox-brief resume {id}`."
    ),
    "channel_not_found": (
        "I cannot find {channel}: it was deleted, or it is private and I am not in it. Invite "
        "me and run `/nox-brief resume {id}`, or remove the briefing with `/nox-brief remove {id}`."
    ),
    "is_archived": (
        "{channel} is archived. Unarchive it and run `/nox-brief resume {id}`, or remove the "
        "briefing with `/nox-brief remove {id}`."
    ),
    "account_inactive": (
        "Slack says my account in this workspace is inactive (the app was removed or "
        "deactivated). Reinstall Jamono, then run `/nox-brief resume {id}`."
    ),
}


class Outcome(StrEnum):
    POSTED = "posted"
    DUPLICATE = "duplicate"  # another run (replica) claimed it first
    SKIPPED = "skipped"  # missed by more than the grace time, or a repeated wall-clock time
    PAUSED = "paused"  # a channel error, or a schedule under the minimum interval, paused it
    FAILED = "failed"
    NOT_FOUND = "not_found"
    DISABLED = "disabled"


@dataclass(frozen=True)
class RunResult:
    outcome: Outcome
    detail: str | None = None
    message_ts: str | None = None


class Briefings:
    """Composes and delivers briefings. One instance per process; safe for concurrent runs.

    ``grace`` is the misfire grace time (a run later than this is skipped and recorded);
    a scheduled run less than ``min_interval`` after the previous run is skipped and recorded
    too, and when its schedule itself is that frequent (stored before the limit) the briefing
    is paused and its creator told how to fix it, so it stops firing; a gap only shortened by
    a daylight-saving change is just skipped;
    ``max_preparing`` bounds how many runs claim and compose at once, so that when many fall
    due together the first ones reach Slack while the others are still being gathered.
    """

    def __init__(
        self,
        *,
        repos: Repositories,
        sources: Sources,
        clients: TeamClients,
        llm: LLMClient | None,
        default_model: str,
        grace: timedelta,
        min_interval: timedelta = timedelta(0),
        max_preparing: int = 50,
        budgets: Budgets | None = None,
    ) -> None:
        self.repos = repos
        self.sources = sources
        self.clients = clients
        self.llm = llm
        self.default_model = default_model
        self.grace = grace
        self.min_interval = min_interval
        self.budgets = budgets  # the workspace's daily LLM budgets bound the opening too
        self._preparing = asyncio.Semaphore(max_preparing)
        self._shared = Shared()
        self._channel_locks: defaultdict[tuple[str, str], asyncio.Lock] = defaultdict(asyncio.Lock)
        self._last_post: dict[tuple[str, str], float] = {}
        self._runs = InFlight()  # runs being composed, by tenant (see cancel_tenant)

    async def close_interrupted(self, now: datetime | None = None) -> int:
        """Record as failed the deliveries claimed more than :data:`STALE_DELIVERY` before
        ``now`` and still ``sending``: the process composing or posting them died. They are not
        run again, since the post may have reached Slack before the process died. Returns how
        many."""
        closed = await self.repos.briefings.fail_stale_deliveries(
            claimed_before=(now or datetime.now(UTC)) - STALE_DELIVERY,
            detail="interrupted: the process sending it stopped before recording the outcome",
        )
        if closed:
            log.warning("briefing_deliveries_interrupted", count=closed)
        return closed

    def cancel_tenant(self, tenant_id: str) -> int:
        """Cancel the runs of ``tenant_id`` being composed here (the app was uninstalled
        there): their prompt sections' turns and openings make no further language model
        call, and each delivery is recorded as failed. Returns how many were cancelled."""
        return self._runs.cancel_tenant(tenant_id)

    async def run_scheduled(
        self, subscription_id: int, scheduled_for: datetime, now: datetime | None = None
    ) -> RunResult:
        """Deliver the run of ``subscription_id`` scheduled at ``scheduled_for`` (aware).

        A run more than :attr:`grace` late at ``now`` is recorded as skipped instead.
        """
        now = now or datetime.now(UTC)
        async with self._preparing:
            briefing = await self.repos.briefings.find(subscription_id)
            if briefing is None:
                log.info("briefing_gone", subscription_id=subscription_id)
                return RunResult(Outcome.NOT_FOUND)
            if not briefing.enabled:
                return RunResult(Outcome.DISABLED)
            reason = self._skip_reason(briefing, scheduled_for, now) or await self._too_soon(
                briefing, scheduled_for
            )
            if reason:
                await self.repos.briefings.claim_delivery(
                    briefing.tenant,
                    briefing.id,
                    scheduled_for,
                    "schedule",
                    state=DeliveryState.SKIPPED,
                    detail=reason,
                )
                log.warning("briefing_skipped", subscription_id=briefing.id, reason=reason)
                if await self._too_frequent(briefing, scheduled_for):
                    return RunResult(Outcome.PAUSED, reason)
                return RunResult(Outcome.SKIPPED, reason)
            prepared = await self._claim_and_prepare(briefing, scheduled_for, "schedule")
        return await self._send_and_record(briefing, scheduled_for, prepared)

    async def run_now(self, tenant: Tenant, subscription_id: int) -> RunResult:
        """Post the briefing at once (``/nox-brief now``), recorded like a scheduled run."""
        moment = datetime.now(UTC).replace(microsecond=0)
        async with self._preparing:
            briefing = await self.repos.briefings.get(tenant, subscription_id)
            if briefing is None:
                return RunResult(Outcome.NOT_FOUND)
            prepared = await self._claim_and_prepare(briefing, moment, "now")
        return await self._send_and_record(briefing, moment, prepared)

    def _skip_reason(
        self, briefing: Briefing, scheduled_for: datetime, now: datetime
    ) -> str | None:
        if is_repeat(scheduled_for.astimezone(ZoneInfo(briefing.timezone))):
            return "the same wall-clock time came again as clocks went back"
        if now - scheduled_for > self.grace:
            return f"missed by {_duration(now - scheduled_for)} (grace {_duration(self.grace)})"
        return None

    async def _too_soon(self, briefing: Briefing, scheduled_for: datetime) -> str | None:
        if not self.min_interval:
            return None
        last = await self.repos.briefings.latest_run_before(
            briefing.tenant, briefing.id, scheduled_for
        )
        if last is None or scheduled_for - last >= self.min_interval:
            return None
        return (
            f"{_duration(scheduled_for - last)} after the previous run "
            f"(JAMONO_BRIEFING_MIN_INTERVAL {_duration(self.min_interval)})"
        )

    async def _too_frequent(self, briefing: Briefing, scheduled_for: datetime) -> bool:
        """Pause ``briefing`` when its schedule itself runs more often than the minimum
        interval (stored before that limit), so that it stops firing; ``True`` if paused.
        A run skipped only for a daylight-saving change or a late run is left alone."""
        if not self.min_interval:
            return False
        try:
            check_frequency(
                parse_schedule(briefing.schedule), briefing.timezone, self.min_interval,
                scheduled_for,
            )
        except ScheduleError as exc:
            await self._pause(
                briefing,
                TOO_FREQUENT,
                f"its schedule runs more often than this workspace allows ({exc}). Remove it "
                f"with `/nox-brief remove {briefing.id}` and add it again with a less "
                "frequent schedule (`/nox-brief add`).",
            )
            return True
        return False

    async def compose(
        self,
        briefing: Briefing,
        moment: datetime,
        footer: str | None = None,
        *,
        shows_channel: bool = True,
        with_opening: bool = True,
    ) -> Reply:
        """The briefing as it would be posted for a run at ``moment`` (nothing is recorded);
        ``footer`` replaces the line naming the briefing and how to pause it.

        ``shows_channel=False`` is for a reader who may not see the briefing's channel (a
        preview asked for elsewhere): its approvals and activity are left out and say where
        they can be seen. ``with_opening=False`` leaves out the persona's opening (and its
        language model call).
        """
        tenant = briefing.tenant
        config = await self._shared.get(
            (tenant.id, "config", moment), lambda: self.repos.config.load(tenant)
        )
        persona = personas.effective(briefing.persona, config)
        context = BriefingContext(
            briefing, persona, moment, briefing.channel_id if shows_channel else None
        )
        specs = [parse_section(item) for item in briefing.sections]
        sections = await self.sources.gather(context, specs)
        opening = await self._opening(tenant, persona, sections) if with_opening else None
        local = moment.astimezone(ZoneInfo(briefing.timezone))
        return render_briefing(
            f"{persona.display_name} briefing — {local:%A %-d %B}",
            opening,
            sections,
            footer
            or (
                f"Briefing {briefing.id} · {briefing.schedule} ({briefing.timezone}) · "
                f"`/nox-brief pause {briefing.id}` to pause it"
            ),
        )

    async def _claim_and_prepare(
        self, briefing: Briefing, scheduled_for: datetime, trigger: str
    ) -> Reply | RunResult | None:
        """Claim the run and compose it: ``None`` when another caller claimed it first, else
        the briefing to post or the failed result."""
        if not await self.repos.briefings.claim_delivery(
            briefing.tenant, briefing.id, scheduled_for, trigger
        ):
            log.info("briefing_already_claimed", subscription_id=briefing.id)
            return None
        # Shielded from here on: a claimed run is finished and recorded, never abandoned; an
        # uninstall cancels it through its tenant (cancel_tenant), and it is recorded failed.
        task = self._runs.spawn(
            self._prepare(briefing, scheduled_for),
            f"briefing:{briefing.id}",
            tenant=briefing.tenant.id,
        )
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.cancelled():
                raise  # the caller was cancelled, not the run
            log.warning("briefing_cancelled", subscription_id=briefing.id, reason=UNINSTALLED)
            return RunResult(Outcome.FAILED, UNINSTALLED)

    async def _send_and_record(
        self, briefing: Briefing, scheduled_for: datetime, prepared: Reply | RunResult | None
    ) -> RunResult:
        if prepared is None:
            return RunResult(Outcome.DUPLICATE)
        if isinstance(prepared, RunResult):
            result = prepared
        else:
            result = await asyncio.shield(self._send(briefing, prepared))
        await asyncio.shield(
            self.repos.briefings.finish_delivery(
                briefing.tenant,
                briefing.id,
                scheduled_for,
                DeliveryState.POSTED if result.outcome is Outcome.POSTED else DeliveryState.FAILED,
                message_ts=result.message_ts,
                detail=result.detail,
            )
        )
        log.info(
            "briefing_delivered",
            subscription_id=briefing.id,
            tenant=briefing.tenant.id,
            outcome=result.outcome.value,
            detail=result.detail,
        )
        return result

    async def _prepare(self, briefing: Briefing, scheduled_for: datetime) -> Reply | RunResult:
        """The briefing to post, or the failed result when it cannot be composed."""
        try:
            return await self.compose(briefing, scheduled_for)
        except Exception as exc:
            log.exception("briefing_failed", subscription_id=briefing.id)
            return RunResult(Outcome.FAILED, f"internal error ({type(exc).__name__})")

    async def _send(self, briefing: Briefing, reply: Reply) -> RunResult:
        client: AsyncWebClient | None = None
        try:
            client = await self.clients.for_tenant(briefing.tenant)
            response = await self._post(client, briefing.tenant, briefing.channel_id, reply)
        except SlackApiError as exc:
            error = slack_error(exc)
            if error in CHANNEL_ERRORS:
                why = CHANNEL_ERRORS[error].format(
                    channel=f"<#{briefing.channel_id}>", id=briefing.id
                )
                await self._pause(briefing, error, why, client)
                return RunResult(Outcome.PAUSED, error)
            return RunResult(Outcome.FAILED, error)
        except (NotInstalled, SlackTokenRotationError) as exc:
            return RunResult(Outcome.FAILED, str(exc))
        except Exception as exc:
            log.exception("briefing_failed", subscription_id=briefing.id)
            return RunResult(Outcome.FAILED, f"internal error ({type(exc).__name__})")
        return RunResult(Outcome.POSTED, message_ts=response.get("ts"))

    async def _post(self, client: AsyncWebClient, tenant: Tenant, channel_id: str, reply: Reply):
        key = (tenant.id, channel_id)
        loop = asyncio.get_running_loop()
        async with self._channel_locks[key]:
            wait = self._last_post.get(key, 0.0) + CHANNEL_INTERVAL - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                return await client.chat_postMessage(
                    channel=channel_id, unfurl_links=False, **reply.as_kwargs()
                )
            finally:
                self._last_post[key] = loop.time()

    async def _pause(
        self,
        briefing: Briefing,
        reason: str,
        why: str,
        client: AsyncWebClient | None = None,
    ) -> None:
        """Pause the subscription for ``reason`` (its ``paused_reason``); the caller that paused
        it tells the creator ``why`` and what to do, once (through ``client``, or the
        workspace's client when none is given)."""
        if not await self.repos.briefings.pause_for(briefing.tenant, briefing.id, reason):
            return
        log.warning(
            "briefing_paused", subscription_id=briefing.id, tenant=briefing.tenant.id,
            reason=reason,
        )
        text = f"I paused briefing {briefing.id} ({briefing.schedule}, {briefing.timezone}): {why}"
        try:
            client = client or await self.clients.for_tenant(briefing.tenant)
            await client.chat_postMessage(channel=briefing.created_by, text=text)
        except SlackApiError as exc:
            log.warning("pause_notice_failed", subscription_id=briefing.id, error=slack_error(exc))
        except (NotInstalled, SlackTokenRotationError) as exc:
            log.warning("pause_notice_failed", subscription_id=briefing.id, error=str(exc))

    async def _opening(
        self, tenant: Tenant, persona: Persona, sections: list[SectionContent]
    ) -> str | None:
        """A short opening written by the persona from the gathered data; ``None`` without an
        LLM or when the model fails (the briefing is complete without it). Its tokens count
        in the workspace's usage."""
        if self.llm is None:
            return None
        model = persona.model or self.default_model
        if self.budgets is not None:
            model = self.budgets.models.resolve(persona.model)
            refusal = await self.budgets.spend_refusal(tenant)
            if refusal is not None:
                log.info("briefing_opening_over_budget", limit=refusal.limit.value)
                return None
        data = "\n\n".join(_for_model(content) for content in sections)[:OPENING_DATA_LIMIT]
        try:
            completion = await self.llm.complete(
                model=model,
                messages=[
                    {"role": "system", "content": persona.instructions()},
                    {
                        "role": "user",
                        "content": (
                            "Write a short opening, at most two sentences, for today's channel "
                            "briefing. Use only the data below and do not repeat its lists.\n\n"
                            + data
                        ),
                    },
                ],
                tools=[],
                temperature=persona.temperature,
            )
        except LLMError as exc:
            log.warning("briefing_opening_failed", reason=str(exc))
            return None
        await self.repos.briefings.record_llm_usage(
            tenant,
            persona=persona.name,
            model=completion.model,
            prompt_tokens=completion.prompt_tokens,
            completion_tokens=completion.completion_tokens,
            duration_ms=completion.duration_ms,
        )
        if self.budgets is not None:
            self.budgets.stored(tenant, [completion])
        return (completion.content or "").strip()[:OPENING_LIMIT] or None


def _for_model(content: SectionContent) -> str:
    if content.unavailable:
        return f"{content.title}: unavailable ({content.unavailable})"
    if content.text:
        return f"{content.title}:\n{content.text}"
    return f"{content.title}:\n" + (
        "\n".join(f"- {line}" for line in content.lines) or content.empty
    )


def _duration(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds < 120:
        return f"{seconds} s"
    return f"{seconds // 60} min"
