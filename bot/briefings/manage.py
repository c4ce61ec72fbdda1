"""Adding and describing briefings, shared by ``/nox-brief``, its modal and ``jamono brief``.

Everything is validated before anything is saved: schedule, timezone, sections, persona, the
ids (each within its column) and the channel (it must exist, not be archived, and have the bot
as a member — checked with ``conversations.info``). Limits (:class:`BriefingLimits`): at most
``per_workspace`` briefings in a workspace, runs at least ``min_interval`` apart and within a
year, and a free prompt section only from a workspace admin: it spends the operator's language
model on every run, as its creator, with the persona's tools.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from agents import personas
from bot.briefings.delivery import TOO_FREQUENT
from bot.briefings.schedule import (
    HORIZON,
    ScheduleError,
    check_frequency,
    parse_schedule,
    parse_timezone,
)
from bot.briefings.sections import SectionError, parse_sections
from bot.render import escape
from bot.settings import Settings
from bot.slack_client import slack_error
from storage.repositories import Repositories
from storage.repositories.briefings import Briefing, BriefingLimitReached
from storage.repositories.tenant_data import UNINSTALLED
from storage.tenancy import Tenant

# Slack ids (C…, G…, D…, U…, W…): upper-case letters and digits, within the 32-character
# columns of briefing_subscriptions.
SLACK_ID = re.compile(r"^[A-Z0-9]{2,32}$")


class BriefingInputError(ValueError):
    """Input that cannot make a briefing. ``field`` names the part at fault (``channel``,
    ``schedule``, ``timezone``, ``sections``, ``persona``, or ``created_by`` which only the
    CLI takes) so a modal can show it there; the workspace's briefing limit is shown on
    ``channel``."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class BriefingLimits:
    """``per_workspace`` briefings at most; runs at least ``min_interval`` apart."""

    per_workspace: int
    min_interval: timedelta

    @classmethod
    def of(cls, settings: Settings) -> BriefingLimits:
        return cls(
            settings.briefings_per_workspace, timedelta(seconds=settings.briefing_min_interval)
        )


@dataclass(frozen=True)
class NewBriefing:
    channel_id: str
    schedule: str
    timezone: str
    sections: list[dict[str, Any]] = field(default_factory=list)
    persona: str = personas.DEFAULT_PERSONA


async def add_briefing(
    repos: Repositories,
    client: AsyncWebClient,
    tenant: Tenant,
    created_by: str,
    new: NewBriefing,
    *,
    limits: BriefingLimits,
    is_admin: Callable[[], Awaitable[bool]],
    now: datetime | None = None,
) -> Briefing:
    """Validate ``new`` and store it; ``is_admin`` answers whether ``created_by`` is a
    workspace admin (asked only for a prompt section); ``now`` (aware) is the moment the
    schedule's first runs are counted from.

    Raises:
        BriefingInputError: with a message for the person who typed it; nothing is saved.
    """
    if not SLACK_ID.match(created_by):
        raise BriefingInputError("created_by", f"`{created_by[:40]}` is not a Slack user id.")
    if new.channel_id and not SLACK_ID.match(new.channel_id):
        raise BriefingInputError(
            "channel", f"`{new.channel_id[:40]}` is not a Slack channel id (e.g. C0123ABCD)."
        )
    try:
        schedule = parse_schedule(new.schedule)
    except ScheduleError as exc:
        raise BriefingInputError("schedule", str(exc)) from None
    try:
        zone = parse_timezone(new.timezone)
    except ScheduleError as exc:
        raise BriefingInputError("timezone", str(exc)) from None
    try:
        check_frequency(schedule, zone.key, limits.min_interval, now or datetime.now(UTC))
    except ScheduleError as exc:
        raise BriefingInputError(
            "schedule", f"{exc} (limit JAMONO_BRIEFING_MIN_INTERVAL)"
        ) from None
    try:
        specs = parse_sections(new.sections)
    except SectionError as exc:
        raise BriefingInputError("sections", str(exc)) from None
    if new.persona not in personas.BUILTIN:
        raise BriefingInputError(
            "persona", f"`{new.persona}` is not a persona; use {', '.join(personas.BUILTIN)}."
        )
    if any(spec.kind == "prompt" for spec in specs) and not await is_admin():
        raise BriefingInputError(
            "sections",
            "Only workspace admins can add a free prompt section: it asks the language model "
            "on every run. Ask an admin, or choose other sections.",
        )
    if await repos.briefings.count(tenant) >= limits.per_workspace:
        raise _full(limits.per_workspace)
    await check_channel(client, new.channel_id)
    try:
        return await repos.briefings.create(
            tenant,
            channel_id=new.channel_id,
            persona=new.persona,
            schedule=schedule.text,
            timezone=zone.key,
            sections=[spec.as_json() for spec in specs],
            created_by=created_by,
            limit=limits.per_workspace,
        )
    except BriefingLimitReached as exc:
        raise _full(exc.limit) from None


def _full(limit: int) -> BriefingInputError:
    return BriefingInputError(
        "channel",
        f"This workspace has {limit} briefings, the most it may have (limit "
        "JAMONO_BRIEFINGS_PER_WORKSPACE). Remove one with `/nox-brief remove ID` first.",
    )


async def check_channel(client: AsyncWebClient, channel_id: str) -> None:
    """Raises :class:`BriefingInputError` unless the bot can post in ``channel_id``."""
    if not channel_id:
        raise BriefingInputError("channel", "Choose the channel the briefing goes to.")
    try:
        channel = (await client.conversations_info(channel=channel_id))["channel"]
    except SlackApiError as exc:
        error = slack_error(exc)
        if error == "channel_not_found":
            raise BriefingInputError(
                "channel",
                f"I cannot see <#{channel_id}>. For a private channel, invite me first "
                "(`/invite @NOX`).",
            ) from None
        raise BriefingInputError(
            "channel", f"Slack would not tell me about <#{channel_id}> ({error})."
        ) from None
    if channel.get("is_archived"):
        raise BriefingInputError("channel", f"<#{channel_id}> is archived.")
    if not channel.get("is_member") and not channel.get("is_im"):
        raise BriefingInputError(
            "channel",
            f"I am not in <#{channel_id}>. Invite me there with `/invite @NOX`, then try again.",
        )


def next_run(briefing: Briefing, now: datetime | None = None) -> datetime | None:
    """When an enabled briefing runs next after ``now`` (aware), in its timezone; ``None``
    when it is paused, does not run within :data:`~bot.briefings.schedule.HORIZON` or its
    stored schedule is no longer valid. The search is bounded by that horizon."""
    if not briefing.enabled:
        return None
    try:
        fires = parse_schedule(briefing.schedule).next_fire_times(
            briefing.timezone, now or datetime.now(UTC), 1, HORIZON
        )
    except ScheduleError:
        return None
    return fires[0] if fires else None


# Pauses that are not a Slack error (those show Slack's error code).
_PAUSED = {
    TOO_FREQUENT: "paused: it runs more often than this workspace's minimum interval",
    UNINSTALLED: "paused: the app was uninstalled",
}


def describe(briefing: Briefing, now: datetime | None = None) -> str:
    """One mrkdwn line: id, channel, schedule, sections and the next run or why it is paused."""
    kinds = ", ".join(section.get("title") or section["kind"] for section in briefing.sections)
    if briefing.enabled:
        upcoming = next_run(briefing, now)
        state = f"next {upcoming:%a %d %b %H:%M %Z}" if upcoming else "no run within a year"
    elif briefing.paused_reason:
        state = _PAUSED.get(briefing.paused_reason) or (
            f"paused by Slack error `{escape(briefing.paused_reason)}`"
        )
    else:
        state = "paused"
    return (
        f"*{briefing.id}* · <#{briefing.channel_id}> · {briefing.persona} · "
        f"`{briefing.schedule}` {briefing.timezone} · {escape(kinds)} · _{state}_"
    )
