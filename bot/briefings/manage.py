"""Adding and describing briefings, shared by ``/nox-brief``, its modal and ``jamono brief``.

Everything is validated before anything is saved: schedule, timezone, sections, persona and
the channel (it must exist, not be archived, and have the bot as a member — checked with
``conversations.info``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from agents import personas
from bot.briefings.schedule import ScheduleError, parse_schedule, parse_timezone
from bot.briefings.sections import SectionError, parse_sections
from bot.slack_client import slack_error
from storage.repositories import Repositories
from storage.repositories.briefings import Briefing
from storage.tenancy import Tenant


class BriefingInputError(ValueError):
    """Input that cannot make a briefing. ``field`` names the part at fault (``channel``,
    ``schedule``, ``timezone``, ``sections``, ``persona``) so a modal can show it there."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


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
) -> Briefing:
    """Validate ``new`` and store it.

    Raises:
        BriefingInputError: with a message for the person who typed it; nothing is saved.
    """
    try:
        schedule = parse_schedule(new.schedule)
    except ScheduleError as exc:
        raise BriefingInputError("schedule", str(exc)) from None
    try:
        zone = parse_timezone(new.timezone)
    except ScheduleError as exc:
        raise BriefingInputError("timezone", str(exc)) from None
    try:
        specs = parse_sections(new.sections)
    except SectionError as exc:
        raise BriefingInputError("sections", str(exc)) from None
    if new.persona not in personas.BUILTIN:
        raise BriefingInputError(
            "persona", f"`{new.persona}` is not a persona; use {', '.join(personas.BUILTIN)}."
        )
    await check_channel(client, new.channel_id)
    return await repos.briefings.create(
        tenant,
        channel_id=new.channel_id,
        persona=new.persona,
        schedule=schedule.text,
        timezone=zone.key,
        sections=[spec.as_json() for spec in specs],
        created_by=created_by,
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
    """When an enabled briefing runs next after ``now`` (aware), in its timezone."""
    if not briefing.enabled:
        return None
    fires = parse_schedule(briefing.schedule).next_fire_times(
        briefing.timezone, now or datetime.now(UTC), 1
    )
    return fires[0] if fires else None


def describe(briefing: Briefing, now: datetime | None = None) -> str:
    """One mrkdwn line: id, channel, schedule, sections and the next run or why it is paused."""
    kinds = ", ".join(section.get("title") or section["kind"] for section in briefing.sections)
    if briefing.enabled:
        upcoming = next_run(briefing, now)
        state = f"next {upcoming:%a %d %b %H:%M %Z}" if upcoming else "no upcoming run"
    elif briefing.paused_reason:
        state = f"paused by Slack error `{briefing.paused_reason}`"
    else:
        state = "paused"
    return (
        f"*{briefing.id}* · <#{briefing.channel_id}> · {briefing.persona} · "
        f"`{briefing.schedule}` {briefing.timezone} · {kinds} · _{state}_"
    )
