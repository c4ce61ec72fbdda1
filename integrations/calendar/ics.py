"""Meeting invitations as iCalendar objects (RFC 5545), sent as iTIP requests (RFC 5546).

One event yields two serialisations: ``request_ics`` carries ``METHOD:REQUEST`` and is what
people receive (an .ics attachment their mail or calendar client turns into an invitation);
``store_ics`` is the same VCALENDAR without METHOD, because a calendar object stored on a
CalDAV server must not carry one (RFC 4791 §4.1).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import NamedTuple
from zoneinfo import ZoneInfo

from icalendar import Calendar, Event, vCalAddress

from integrations import timezones

PRODID = "-//Jamono//Jamono//EN"

# A shape check, not deliverability: one @, no spaces or address-list punctuation, and a
# dotted domain. Invitations go to addresses Slack or a person typed, so typos are the risk.
_EMAIL = re.compile(
    r"^[^@\s<>()\[\],;:\"]+@"
    r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+$"
)


class Person(NamedTuple):
    """A calendar user: email address (without ``mailto:``) and display name (may be empty)."""

    email: str
    name: str = ""


@dataclass(frozen=True)
class Invitation:
    """A built invitation.

    ``start`` and ``end`` are aware datetimes in the meeting's timezone; ``attendees`` is the
    deduplicated list actually invited; ``request_ics`` is the ``METHOD:REQUEST`` VCALENDAR
    (RFC 5546) to send; ``store_ics`` is the same event without METHOD, to store over CalDAV
    (RFC 4791 §4.1). Both are UTF-8 bytes with CRLF line endings.
    """

    uid: str
    start: datetime
    end: datetime
    attendees: tuple[Person, ...]
    request_ics: bytes
    store_ics: bytes


def build_invitation(
    *,
    title: str,
    start: datetime,
    duration: int | timedelta,
    timezone: str,
    organizer: Person | tuple[str, str] | str,
    attendees: Iterable[Person | tuple[str, str] | str],
    description: str | None = None,
    uid: str | None = None,
) -> Invitation:
    """Build a single-instance meeting invitation (one VEVENT, SEQUENCE 0, STATUS CONFIRMED).

    ``start`` is a naive wall-clock time in ``timezone`` (an IANA name such as
    ``Europe/Paris``) or an aware datetime, which is converted to ``timezone``. ``duration`` is
    in minutes (int) or a timedelta, measured in elapsed time, so a meeting across a daylight
    saving change still lasts that long. ``organizer`` and each attendee are
    ``(email, display name)`` or a bare email; attendees are deduplicated by email,
    case-insensitively, keeping the first. ``uid`` defaults to a new UUID (RFC 7986 §5.3).

    DTSTART and DTEND carry the TZID of ``timezone`` with its VTIMEZONE (a UTC meeting is
    written in UTC form instead, which needs no VTIMEZONE). Each attendee is
    ``ROLE=REQ-PARTICIPANT;PARTSTAT=NEEDS-ACTION;RSVP=TRUE`` with CN.

    Raises ValueError, with a message fit for the person who asked, on an empty title, an
    unknown timezone, a local time that does not exist there (daylight saving gap), a
    non-positive duration, a malformed email address, no attendees (RFC 5546 §3.2.2 requires
    at least one on a REQUEST) or a blank ``uid``.
    """
    summary = title.strip()
    if not summary:
        raise ValueError("the meeting needs a title")
    zone = _zone(timezone)
    local_start = _localize(start, zone, timezone)
    length = _duration(duration)
    # Elapsed-time arithmetic: aware datetimes sharing a tzinfo add wall-clock time.
    local_end = (local_start.astimezone(UTC) + length).astimezone(zone)
    chair = _person(organizer, "organizer")
    invited = _dedupe(_person(attendee, "attendee") for attendee in attendees)
    if not invited:
        raise ValueError("an invitation needs at least one attendee")
    if uid is not None and not uid.strip():
        raise ValueError("the UID must not be blank")

    event = Event.new(
        uid=uid.strip() if uid is not None else None,
        summary=summary,
        description=(description or "").strip() or None,
        start=local_start,
        end=local_end,
        organizer=vCalAddress.new(chair.email, cn=chair.name or chair.email),
        attendees=[
            vCalAddress.new(
                person.email,
                cn=person.name or person.email,
                role="REQ-PARTICIPANT",
                partstat="NEEDS-ACTION",
                rsvp=True,
            )
            for person in invited
        ],
        sequence=0,
        status="CONFIRMED",
    )
    return Invitation(
        uid=str(event.uid),
        start=local_start,
        end=local_end,
        attendees=tuple(invited),
        request_ics=_calendar(event, method="REQUEST").to_ical(),
        store_ics=_calendar(event, method=None).to_ical(),
    )


def _calendar(event: Event, method: str | None) -> Calendar:
    calendar = Calendar.new(prodid=PRODID, method=method, subcomponents=[event])
    # Calendar.new mints an RFC 7986 calendar UID, which names a calendar feed; an iTIP
    # message or a single CalDAV resource is not one, and the event has its own UID.
    calendar.uid = None
    # A VTIMEZONE covering the year around this one event is all it needs, and keeps the
    # attachment small (the library default spans 1970-2038).
    calendar.add_missing_timezones(
        first_date=event.start.date() - timedelta(days=366),
        last_date=event.end.date() + timedelta(days=366),
    )
    return calendar


def _zone(name: str) -> ZoneInfo:
    return timezones.zone(name)  # UnknownTimezone is a ValueError, as callers expect


def _localize(start: datetime, zone: ZoneInfo, name: str) -> datetime:
    if not isinstance(start, datetime):
        raise ValueError("the start must be a date and time")
    if start.tzinfo is not None and start.utcoffset() is not None:
        return start.astimezone(zone)
    local = start.replace(tzinfo=zone)
    # zoneinfo accepts wall times skipped by a daylight saving change; a round trip
    # through UTC moves them, which is how a skipped time shows itself.
    if local.astimezone(UTC).astimezone(zone).replace(tzinfo=None) != start:
        raise ValueError(
            f"{start:%Y-%m-%d %H:%M} does not exist in {name} "
            "(clocks go forward then); pick another time"
        )
    return local


def _duration(duration: int | timedelta) -> timedelta:
    if isinstance(duration, timedelta):
        length = duration
    elif isinstance(duration, int) and not isinstance(duration, bool):
        length = timedelta(minutes=duration)
    else:
        raise ValueError("the duration must be a number of minutes")
    if length <= timedelta(0):
        raise ValueError("the duration must be positive")
    return length


def _person(value: Person | tuple[str, str] | str, role: str) -> Person:
    email, name = (value, "") if isinstance(value, str) else value
    address = email.strip()
    if address.lower().startswith("mailto:"):
        address = address[len("mailto:") :]
    if not _EMAIL.match(address):
        raise ValueError(f"{email!r} is not a valid email address for the {role}")
    return Person(address, (name or "").strip())


def _dedupe(people: Iterable[Person]) -> list[Person]:
    seen: set[str] = set()
    unique = []
    for person in people:
        key = person.email.casefold()
        if key not in seen:
            seen.add(key)
            unique.append(person)
    return unique
