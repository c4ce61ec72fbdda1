"""Calendar tools: schedule a meeting (iCalendar invitation in the thread, CalDAV copy) and list
upcoming events.

``calendar_schedule_meeting`` builds an RFC 5545 VEVENT whose organizer is the requesting Slack
user and whose attendees are Slack users (emails from ``users.info``, scope
``users:read.email``) or email addresses. The ``METHOD:REQUEST`` copy (RFC 5546) is uploaded
into the thread with Slack's files upload v2 (``files.getUploadURLExternal``, upload,
``files.completeUploadExternal``); when the workspace has a CalDAV calendar, the copy without
METHOD is stored there too (RFC 4791 §4.1). Times shown are in the workspace's timezone.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import structlog
from slack_sdk.errors import SlackApiError, SlackRequestError
from slack_sdk.web.async_client import AsyncWebClient

from agents.connections import Connections, NotConnected, explain
from agents.tools.registry import Tool, ToolContext, ToolError
from integrations import timezones
from integrations.calendar import Person, build_invitation
from integrations.errors import IntegrationError

log = structlog.get_logger(__name__)

_SLACK_USER = re.compile(r"^(?:<@(?P<ref>[UW][A-Z0-9]+)(?:\|[^>]*)?>|(?P<id>[UW][A-Z0-9]{4,}))$")
_MAILTO = re.compile(r"^<mailto:(?P<email>[^|>]+)(?:\|[^>]*)?>$")
_SLACK_TS = re.compile(r"^\d+\.\d+$")


def _zone(name: str) -> ZoneInfo:
    try:
        return timezones.zone(name)
    except timezones.UnknownTimezone as exc:
        raise ToolError(str(exc)) from None


def when(start: datetime, end: datetime, zone: ZoneInfo) -> str:
    """``Tue 24 Nov 2026 10:00–11:00 (Europe/Paris)`` in ``zone``."""
    local_start, local_end = start.astimezone(zone), end.astimezone(zone)
    until = (f"{local_end:%H:%M}" if local_end.date() == local_start.date()
             else f"{local_end:%a %d %b %Y %H:%M}")
    return f"{local_start:%a %d %b %Y %H:%M}–{until} ({zone.key})"


async def _person(slack: AsyncWebClient, user_id: str, role: str) -> Person:
    """The Slack user's email and name (``users.info``); ToolError when Slack has no email."""
    try:
        user = (await slack.users_info(user=user_id))["user"]
    except SlackApiError as exc:
        error = exc.response.get("error", "unknown_error")
        raise ToolError(f"could not look up <@{user_id}> in Slack ({error})") from None
    profile = user.get("profile") or {}
    email = profile.get("email")
    if not email:
        raise ToolError(
            f"Slack shows no email address for the {role} <@{user_id}> (the app needs the "
            "users:read.email scope, and the person must have an email); give their email "
            "address instead"
        )
    return Person(email, profile.get("real_name") or user.get("real_name") or "")


async def _attendee(slack: AsyncWebClient, value: str) -> Person | str:
    value = value.strip()
    if match := _SLACK_USER.match(value):
        return await _person(slack, match["ref"] or match["id"], "attendee")
    if match := _MAILTO.match(value):
        return match["email"]
    return value.removeprefix("mailto:")


def build(connections: Connections) -> list[Tool]:
    """The calendar tools, resolving each workspace's CalDAV calendar through ``connections``."""

    async def calendar_schedule_meeting(
        context: ToolContext,
        title: str,
        start: str,
        attendees: list[str],
        duration: int = 30,
        timezone: str | None = None,
        description: str | None = None,
    ) -> str:
        """Schedule a meeting: post an invitation (.ics) into this thread for Slack users or
        emails, organised by the person asking, and add it to the workspace's calendar."""
        slack = context.slack
        if slack is None:
            raise ToolError("meetings can only be scheduled from Slack (the invitation is "
                            "posted into the thread)")
        zone_name = timezone or context.timezone
        _zone(zone_name)
        try:
            starts = datetime.fromisoformat(start)
        except ValueError:
            raise ToolError(f"{start!r} is not an ISO 8601 date and time such as "
                            "2026-11-24T10:00") from None
        organizer = await _person(slack, context.user_id, "organizer")
        invited = [await _attendee(slack, value) for value in attendees]
        try:
            invitation = build_invitation(
                title=title, start=starts, duration=duration, timezone=zone_name,
                organizer=organizer, attendees=invited, description=description,
            )
        except ValueError as exc:
            raise ToolError(str(exc)) from None
        try:
            calendar = await connections.calendar(context.tenant)
        except IntegrationError as exc:
            raise ToolError(explain(exc)) from None
        thread = context.thread_ts if _SLACK_TS.match(context.thread_ts) else None
        slug = re.sub(r"[^A-Za-z0-9]+", "-", title).strip("-").lower()[:40] or "meeting"
        try:
            uploaded = await slack.files_upload_v2(
                channel=context.channel_id, thread_ts=thread, content=invitation.request_ics,
                filename=f"{slug}.ics", title=f"Invitation: {title}",
            )
        except (SlackApiError, SlackRequestError) as exc:
            log.warning("invitation_upload_failed", tenant=context.tenant.id, error=str(exc))
            raise ToolError("could not post the invitation into the thread (Slack refused the "
                            "upload; the app needs the files:write scope); nothing was "
                            "scheduled") from None
        file_id = (uploaded.get("file") or {}).get("id", "")
        shown = when(invitation.start, invitation.end, _zone(context.timezone))
        lines = [
            f"Scheduled *{title.strip()}* for {shown}"
            + (f" — {when(invitation.start, invitation.end, _zone(zone_name))} for the "
               "invitation" if zone_name != context.timezone else ""),
            f"Organizer: {organizer.email}. Invited: "
            + ", ".join(person.email for person in invitation.attendees) + ".",
            f"Invitation (.ics, UID {invitation.uid}) posted in this thread"
            + (f" as file {file_id}." if file_id else "."),
        ]
        if calendar is None:
            lines.append("No CalDAV calendar is connected, so it was not added to one "
                         "(`/nox-connect calendar`).")
            return "\n".join(lines)
        try:
            await calendar.store_event(invitation.store_ics)
        except IntegrationError as exc:
            # The invitation already went out: say so rather than fail, or a retry would
            # post it twice.
            lines.append(f"It could not be added to the calendar '{calendar.name}': "
                         f"{explain(exc)}")
        else:
            lines.append(f"Added to the calendar '{calendar.name}'.")
        return "\n".join(lines)

    async def calendar_upcoming(context: ToolContext, days: int = 7, limit: int = 10) -> str:
        """List the next events in the workspace's calendar (times in the workspace timezone)."""
        try:
            calendar = await connections.calendar(context.tenant)
            if calendar is None:
                raise NotConnected("calendar")
            events = await calendar.upcoming(datetime.now(UTC), days, limit)
        except IntegrationError as exc:
            raise ToolError(explain(exc)) from None
        if not events:
            return f"No events in the calendar '{calendar.name}' in the next {days} day(s)."
        zone = _zone(context.timezone)
        lines = [f"Next events in the calendar '{calendar.name}':"]
        for event in events:
            people = ", ".join(p.name or p.email for p in event.attendees)
            lines.append(f"• {when(event.start, event.end, zone)} — {event.summary or '(untitled)'}"
                         + (f" — with {people}" if people else ""))
        return "\n".join(lines)

    def schema(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
        return {"type": "object", "properties": properties, "required": required,
                "additionalProperties": False}

    return [
        Tool.from_function(calendar_schedule_meeting, risk="write", target=_invitation,
                           parameters=schema({
            "title": {"type": "string", "minLength": 1},
            "start": {"type": "string", "minLength": 1,
                      "description": "Local start date and time, ISO 8601: 2026-11-24T10:00."},
            "duration": {"type": "integer", "minimum": 5, "maximum": 1440,
                         "description": "Minutes (default 30)."},
            "timezone": {"type": "string", "description": "IANA timezone of the start time "
                                                          "(default: the workspace's)."},
            "attendees": {"type": "array", "minItems": 1, "maxItems": 50,
                          "items": {"type": "string", "minLength": 1},
                          "description": "Slack users as <@U…> or user ids, or email addresses."},
            "description": {"type": "string", "description": "Agenda; links welcome."},
        }, ["title", "start", "attendees"])),
        Tool.from_function(calendar_upcoming, parameters=schema({
            "days": {"type": "integer", "minimum": 1, "maximum": 60,
                     "description": "How many days ahead (default 7)."},
            "limit": {"type": "integer", "minimum": 1, "maximum": 50,
                      "description": "Most events to list (default 10)."},
        }, [])),
    ]


def _invitation(arguments: dict[str, Any]) -> str:
    """What an approval message names as the target: who gets the invitation, and where."""
    people = ", ".join(map(str, arguments.get("attendees", []))) or "nobody yet"
    return (
        f"an invitation to {people}, posted in this thread and added to the workspace calendar "
        "when one is connected"
    )
