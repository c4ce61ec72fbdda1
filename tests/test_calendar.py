"""Calendar integration: invitations (RFC 5545/5546) and CalDAV against a real Radicale."""

from __future__ import annotations

import asyncio
import base64
import urllib.request
import uuid
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import pytest_asyncio
from aiohttp import web
from icalendar import Calendar

from integrations.calendar import (
    CalDAVClient,
    CalDAVCredentials,
    CalendarAuthError,
    CalendarError,
    CalendarNotFound,
    CalendarRejected,
    CalendarUnavailable,
    Person,
    build_invitation,
)
from integrations.calendar.errors import CalendarBusy, classify
from tests.radicale import free_port, running_radicale

PARIS = "Europe/Paris"
NOX = ("nox@example.com", "NOX")
ALICE = ("alice@example.com", "Alice Martin")
BOB = ("bob@example.com", "Doe, Bob")


def invitation(**overrides):
    arguments = {
        "title": "Post-mortem: payments API down",
        "start": datetime(2027, 1, 15, 10, 0),
        "duration": 45,
        "timezone": PARIS,
        "organizer": NOX,
        "attendees": [ALICE, BOB],
        "description": "Incident INC-42\nhttps://jira.example.com/browse/INC-42",
    }
    arguments.update(overrides)
    return build_invitation(**arguments)


def only_event(ics: bytes):
    (event,) = Calendar.from_ical(ics).events
    return event


# Invitations


def test_request_ics_is_an_rfc5546_request_with_every_property():
    built = invitation()
    calendar = Calendar.from_ical(built.request_ics)

    assert calendar["METHOD"] == "REQUEST"
    assert calendar["VERSION"] == "2.0"
    assert calendar["PRODID"]
    assert [tz.tz_name for tz in calendar.timezones] == [PARIS]
    (event,) = calendar.events
    assert event["UID"] == built.uid
    assert isinstance(event["DTSTAMP"].dt, datetime)
    assert event["DTSTART"].params["TZID"] == PARIS
    assert event["DTEND"].params["TZID"] == PARIS
    assert b"DTSTART;TZID=Europe/Paris:20270115T100000" in built.request_ics
    assert b"DTEND;TZID=Europe/Paris:20270115T104500" in built.request_ics
    assert event["SUMMARY"] == "Post-mortem: payments API down"
    assert event["DESCRIPTION"] == "Incident INC-42\nhttps://jira.example.com/browse/INC-42"
    assert event["SEQUENCE"] == 0
    assert event["STATUS"] == "CONFIRMED"
    assert str(event["ORGANIZER"]) == "mailto:nox@example.com"
    assert event["ORGANIZER"].params["CN"] == "NOX"
    attendees = event["ATTENDEE"]
    assert [str(a) for a in attendees] == ["mailto:alice@example.com", "mailto:bob@example.com"]
    assert [a.params["CN"] for a in attendees] == ["Alice Martin", "Doe, Bob"]
    for attendee in attendees:
        assert attendee.params["ROLE"] == "REQ-PARTICIPANT"
        assert attendee.params["PARTSTAT"] == "NEEDS-ACTION"
        assert attendee.params["RSVP"] == "TRUE"
    assert built.start == datetime(2027, 1, 15, 10, 0, tzinfo=ZoneInfo(PARIS))
    assert built.end == datetime(2027, 1, 15, 10, 45, tzinfo=ZoneInfo(PARIS))
    assert built.attendees == (Person(*ALICE), Person(*BOB))


def test_store_ics_is_the_same_event_without_method():
    built = invitation()
    stored = Calendar.from_ical(built.store_ics)

    assert "METHOD" not in stored
    assert b"METHOD" not in built.store_ics
    assert [tz.tz_name for tz in stored.timezones] == [PARIS]
    assert only_event(built.store_ics).to_ical() == only_event(built.request_ics).to_ical()


@pytest.mark.parametrize(
    ("zone", "wall", "offset"),
    [
        (PARIS, datetime(2027, 1, 15, 10, 0), timedelta(hours=1)),
        (PARIS, datetime(2027, 7, 15, 10, 0), timedelta(hours=2)),
        ("America/New_York", datetime(2027, 1, 15, 10, 0), timedelta(hours=-5)),
        ("America/New_York", datetime(2027, 7, 15, 10, 0), timedelta(hours=-4)),
        ("Australia/Sydney", datetime(2027, 1, 15, 10, 0), timedelta(hours=11)),
        ("Asia/Kolkata", datetime(2027, 7, 15, 10, 0), timedelta(hours=5, minutes=30)),
    ],
)
def test_offsets_follow_daylight_saving_time(zone, wall, offset):
    built = invitation(start=wall, timezone=zone)
    calendar = Calendar.from_ical(built.request_ics)
    (event,) = calendar.events

    assert built.start.utcoffset() == offset
    assert event["DTSTART"].dt.utcoffset() == offset
    # The VTIMEZONE written into the file must give the same offset as the tz database.
    (vtimezone,) = calendar.timezones
    assert wall.replace(tzinfo=vtimezone.to_tz()).utcoffset() == offset


def test_duration_is_elapsed_time_across_a_daylight_saving_change():
    built = invitation(start=datetime(2027, 3, 28, 1, 30), duration=60)

    # Aware datetimes sharing a tzinfo subtract as wall-clock times: compare in UTC.
    assert built.end.astimezone(UTC) - built.start.astimezone(UTC) == timedelta(hours=1)
    assert (built.start.hour, built.end.hour) == (1, 3)
    assert only_event(built.request_ics)["DTEND"].dt.utcoffset() == timedelta(hours=2)


def test_an_aware_start_is_written_in_the_meeting_timezone():
    built = invitation(start=datetime(2027, 1, 15, 9, 0, tzinfo=UTC), duration=timedelta(hours=1))

    assert built.start == datetime(2027, 1, 15, 10, 0, tzinfo=ZoneInfo(PARIS))
    assert b"DTSTART;TZID=Europe/Paris:20270115T100000" in built.request_ics
    assert b"DTEND;TZID=Europe/Paris:20270115T110000" in built.request_ics


def test_a_utc_meeting_is_written_in_utc_form_and_a_missing_description_is_left_out():
    built = invitation(timezone="UTC", description=None)
    calendar = Calendar.from_ical(built.request_ics)

    assert b"DTSTART:20270115T100000Z" in built.request_ics
    assert calendar.timezones == []
    assert "DESCRIPTION" not in calendar.events[0]


def test_attendees_are_deduplicated_case_insensitively():
    built = invitation(
        attendees=[ALICE, ("ALICE@Example.com", "Alice again"), "mailto:bob@example.com", BOB]
    )

    attendees = only_event(built.request_ics)["ATTENDEE"]
    assert [str(a) for a in attendees] == ["mailto:alice@example.com", "mailto:bob@example.com"]
    assert [a.params["CN"] for a in attendees] == ["Alice Martin", "bob@example.com"]
    assert built.attendees == (Person(*ALICE), Person("bob@example.com", ""))


def test_a_given_uid_is_kept_and_each_build_gets_its_own_otherwise():
    assert invitation(uid="pm-INC-42@example.com").uid == "pm-INC-42@example.com"
    assert only_event(invitation(uid="pm-INC-42").store_ics)["UID"] == "pm-INC-42"
    assert invitation().uid != invitation().uid


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"title": "   "}, "title"),
        ({"timezone": "Mars/Olympus_Mons"}, "`Mars/Olympus_Mons` is not an IANA timezone"),
        ({"timezone": ""}, "is not an IANA timezone"),
        ({"timezone": "Europe"}, "`Europe` is not an IANA timezone"),
        ({"duration": 0}, "duration must be positive"),
        ({"duration": -30}, "duration must be positive"),
        ({"duration": timedelta(0)}, "duration must be positive"),
        ({"duration": 1.5}, "number of minutes"),
        ({"organizer": ("nox", "NOX")}, "'nox' is not a valid email address for the organizer"),
        ({"attendees": [("alice@", "Alice")]}, "'alice@' is not a valid email address"),
        ({"attendees": ["al ice@example.com"]}, "not a valid email address for the attendee"),
        ({"attendees": ["<alice@example.com>"]}, "not a valid email address"),
        ({"attendees": ["alice@localhost"]}, "not a valid email address"),
        ({"attendees": []}, "at least one attendee"),
        ({"start": datetime(2027, 3, 28, 2, 30)}, "does not exist in Europe/Paris"),
        ({"start": date(2027, 1, 15)}, "date and time"),
        ({"uid": "  "}, "UID must not be blank"),
    ],
)
def test_bad_input_gets_a_clear_error(overrides, message):
    with pytest.raises(ValueError, match=message):
        invitation(**overrides)


# CalDAV: credentials and input checks (no server needed)


@pytest.mark.parametrize(
    ("url", "calendar", "message"),
    [
        ("ftp://cal.example.com/", "Incidents", "http:// or https://"),
        ("cal.example.com", "Incidents", "http:// or https://"),
        ("https://cal.example.com/dav/", " ", "name the calendar"),
    ],
)
def test_credentials_are_checked(url, calendar, message):
    with pytest.raises(ValueError, match=message):
        CalDAVCredentials(url, "alice", "s3cret", calendar)


def test_credentials_never_show_the_password():
    credentials = CalDAVCredentials(
        "https://bob:urlpass@cal.example.com/dav/", "alice", "s3cret", "X"
    )

    assert "s3cret" not in repr(credentials)
    assert credentials.server == "https://cal.example.com/dav/"


@pytest.mark.parametrize(
    ("ics", "message"),
    [
        (invitation().request_ics, "must not carry METHOD"),
        (b"not a calendar", "not an iCalendar object"),
        (invitation().store_ics.replace(b"Post-mortem", b"Post-mort\xe9m"), "not an iCalendar"),
        (
            b"BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:x\r\nEND:VCALENDAR\r\n",
            "VEVENTs with one and the same UID",
        ),
    ],
)
async def test_store_event_refuses_what_must_not_be_stored(ics, message):
    client = CalDAVClient(CalDAVCredentials(f"http://127.0.0.1:{free_port()}/", "a", "b", "c"))

    with pytest.raises(ValueError, match=message):
        await client.store_event(ics)


# CalDAV against a real Radicale


@pytest.fixture(scope="module")
def radicale_url(tmp_path_factory):
    """One server with ``auth type = none``: every test logs in as its own user."""
    with running_radicale(
        tmp_path_factory.mktemp("radicale"), calendars=("Incidents", "Post-mortems")
    ) as url:
        yield url


@pytest.fixture
def credentials(radicale_url):
    return CalDAVCredentials(radicale_url, f"u{uuid.uuid4().hex[:10]}", "any", "Post-mortems")


def fetch(url: str, credentials: CalDAVCredentials) -> bytes:
    token = base64.b64encode(f"{credentials.username}:{credentials.password}".encode()).decode()
    request = urllib.request.Request(url, headers={"Authorization": f"Basic {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read()


def meeting(start: datetime, title: str, minutes: int = 30):
    return build_invitation(
        title=title,
        start=start,
        duration=minutes,
        timezone=PARIS,
        organizer=NOX,
        attendees=[ALICE, BOB],
    )


async def test_check_finds_the_named_calendar(credentials):
    url = await CalDAVClient(credentials).check()

    assert url.startswith(f"{credentials.url}{credentials.username}/")
    assert url.endswith("/calendar-1/")


async def test_an_unknown_calendar_lists_the_existing_ones(radicale_url, credentials):
    wrong = CalDAVCredentials(radicale_url, credentials.username, "any", "Standups")

    with pytest.raises(CalendarNotFound) as caught:
        await CalDAVClient(wrong).check()

    assert caught.value.available == ["Incidents", "Post-mortems"]
    assert "no calendar named 'Standups'" in str(caught.value)
    assert "Incidents, Post-mortems" in str(caught.value)
    assert caught.value.integration == "calendar"


async def test_a_stored_event_is_on_the_server_without_method(credentials):
    built = meeting(datetime.now(UTC) + timedelta(days=1), "Post-mortem INC-42")

    stored = await CalDAVClient(credentials).store_event(built.store_ics)

    assert stored.uid == built.uid
    assert "/calendar-1/" in stored.href
    on_server = fetch(stored.href, credentials)
    assert b"METHOD" not in on_server
    (event,) = Calendar.from_ical(on_server).events
    assert event["UID"] == built.uid
    assert event["SEQUENCE"] == 0
    assert event["DTSTART"].params["TZID"] == PARIS
    assert len(event["ATTENDEE"]) == 2


async def test_upcoming_lists_future_events_sorted_and_leaves_out_the_past(credentials):
    client = CalDAVClient(credentials)
    now = datetime.now(UTC).replace(microsecond=0)
    later = meeting(now + timedelta(days=3), "Later")
    sooner = meeting(now + timedelta(days=1), "Sooner")
    ongoing = meeting(now - timedelta(minutes=10), "Ongoing")
    past = meeting(now - timedelta(days=1), "Past")
    beyond = meeting(now + timedelta(days=10), "Beyond the window")
    for built in (later, sooner, ongoing, past, beyond, sooner):
        await client.store_event(built.store_ics)

    events = await client.upcoming(now, days=7, limit=10)

    assert [e.summary for e in events] == ["Ongoing", "Sooner", "Later"]
    first = events[1]
    assert first.uid == sooner.uid
    assert first.start == sooner.start
    assert first.end == sooner.end
    assert first.start.tzinfo is not None
    assert first.organizer == Person(*NOX)
    assert first.attendees == (Person(*ALICE), Person(*BOB))
    assert [e.summary for e in await client.upcoming(now, days=7, limit=2)] == [
        "Ongoing",
        "Sooner",
    ]


def vcalendar(*lines: str) -> bytes:
    body = ["BEGIN:VCALENDAR", "VERSION:2.0", "PRODID:-//test//EN", "BEGIN:VEVENT"]
    body += ["DTSTAMP:20260101T000000Z", *lines, "END:VEVENT", "END:VCALENDAR", ""]
    return "\r\n".join(body).encode()


async def test_upcoming_reads_recurring_and_all_day_events(credentials):
    client = CalDAVClient(credentials)
    now = datetime.now(UTC).replace(microsecond=0)
    paris = ZoneInfo(PARIS)
    # Daily at an hour before now, from two days ago, 5 times: 2 instances are still ahead.
    first = (now - timedelta(days=2, hours=1)).astimezone(paris).replace(tzinfo=None)
    tomorrow = (now + timedelta(days=1)).astimezone(paris).date()
    await client.store_event(
        vcalendar(
            "UID:standup",
            "SUMMARY:Standup",
            f"DTSTART;TZID=Europe/Paris:{first:%Y%m%dT%H%M%S}",
            f"DTEND;TZID=Europe/Paris:{first + timedelta(minutes=15):%Y%m%dT%H%M%S}",
            "RRULE:FREQ=DAILY;COUNT=5",
        )
    )
    await client.store_event(
        vcalendar("UID:offsite", "SUMMARY:Offsite", f"DTSTART;VALUE=DATE:{tomorrow:%Y%m%d}")
    )

    events = await client.upcoming(now.astimezone(paris), days=7)

    standups = [e for e in events if e.summary == "Standup"]
    assert [e.uid for e in standups] == ["standup", "standup"]
    assert [e.start - now for e in standups] == [timedelta(hours=23), timedelta(hours=47)]
    assert all(e.end - e.start == timedelta(minutes=15) for e in standups)
    (all_day,) = [e for e in events if e.summary == "Offsite"]
    assert all_day.start == datetime(tomorrow.year, tomorrow.month, tomorrow.day, tzinfo=paris)
    assert all_day.end - all_day.start == timedelta(days=1)
    assert [e.start for e in events] == sorted(e.start for e in events)


@pytest.mark.parametrize(("days", "limit"), [(0, 10), (7, 0), (-1, 5)])
async def test_upcoming_refuses_an_empty_window(credentials, days, limit):
    with pytest.raises(ValueError, match="positive"):
        await CalDAVClient(credentials).upcoming(datetime.now(UTC), days=days, limit=limit)


async def test_upcoming_needs_an_aware_now(credentials):
    with pytest.raises(ValueError, match="aware"):
        await CalDAVClient(credentials).upcoming(datetime.now())


async def test_a_wrong_password_is_a_clear_auth_error(tmp_path):
    with running_radicale(tmp_path, users={"alice": "right-pass"}) as url:
        good = CalDAVCredentials(url, "alice", "right-pass", "Incidents")
        bad = CalDAVCredentials(url, "alice", "wrong-pass", "Incidents")

        assert (await CalDAVClient(good).check()).endswith("/alice/calendar-0/")
        with pytest.raises(CalendarAuthError) as caught:
            await CalDAVClient(bad).check()

    message = str(caught.value)
    assert "rejected the username or password (HTTP 401)" in message
    assert "wrong-pass" not in message
    assert "right-pass" not in message


async def test_a_server_that_is_down_is_unavailable():
    url = f"http://127.0.0.1:{free_port()}/"

    with pytest.raises(CalendarUnavailable) as caught:
        await CalDAVClient(CalDAVCredentials(url, "alice", "s3cret", "Incidents")).check()

    assert str(caught.value) == f"cannot reach the CalDAV server at {url}"


async def test_a_server_that_never_answers_times_out():
    connections = []

    async def silent(reader, writer):
        connections.append(writer)
        await reader.read()  # hold the connection open until the client gives up

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        client = CalDAVClient(
            CalDAVCredentials(f"http://127.0.0.1:{port}/", "alice", "s3cret", "Incidents"),
            timeout=0.5,
        )
        with pytest.raises(CalendarUnavailable, match="did not answer"):
            await client.check()
        assert connections, "the client never connected"
    finally:
        for writer in connections:
            writer.close()
        server.close()
        await server.wait_closed()


@pytest_asyncio.fixture
async def answering():
    """An endpoint that answers every request with one canned HTTP status and body."""
    runners = []

    async def start(status: int, headers: dict[str, str] | None, body: str) -> str:
        content_type = "text/html" if body.startswith("<") else "text/plain"

        async def handler(request: web.Request) -> web.Response:
            return web.Response(
                status=status, headers=headers, text=body, content_type=content_type
            )

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        runners.append(runner)
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        return f"http://127.0.0.1:{runner.addresses[0][1]}/dav/"

    yield start
    for runner in runners:
        await runner.cleanup()


WELCOME_PAGE = "<html><body>Welcome</body></html>"


@pytest.mark.parametrize(
    ("status", "headers", "body", "kind", "message"),
    [
        (500, None, "", CalendarUnavailable, "failed (HTTP 500); try again later"),
        (503, None, "", CalendarUnavailable, "failed (HTTP 503)"),
        (429, {"Retry-After": "7"}, "", CalendarUnavailable, "asks to slow down (HTTP 429)"),
        (503, {"Retry-After": "7"}, "", CalendarUnavailable, "asks to slow down (HTTP 503)"),
        (401, {"WWW-Authenticate": 'Basic realm="dav"'}, "", CalendarAuthError, "HTTP 401"),
        (403, None, "", CalendarAuthError, "refused access to this account (HTTP 403)"),
        (404, None, "", CalendarNotFound, "check the CalDAV URL"),
        (400, None, "", CalendarRejected, "refused the request (HTTP 400)"),
        (200, None, WELCOME_PAGE, CalendarNotFound, "is not a CalDAV server: check the URL"),
        (200, None, "hello", CalendarRejected, "unexpected answer from http://127.0.0.1:"),
    ],
)
async def test_http_failures_are_classified(answering, status, headers, body, kind, message):
    url = await answering(status, headers, body)

    with pytest.raises(CalendarError) as caught:
        await CalDAVClient(CalDAVCredentials(url, "alice", "s3cret", "Incidents")).check()

    assert type(caught.value) is kind
    assert message in str(caught.value)
    assert "s3cret" not in str(caught.value)
    if headers and "Retry-After" in headers:
        assert caught.value.retry_after == 7


def test_a_workspace_over_its_calendar_share_is_not_retried_nor_held_against_the_server():
    """Like Jira's: 'busy' is Jamono's own per-workspace limit, not the CalDAV server failing,
    so it must neither be retried nor open the server's circuit."""
    busy = classify(CalendarBusy("the calendar is busy for this workspace"))
    assert (busy.transient, busy.caller_fault) == (False, True)
    assert classify(CalendarUnavailable("down")).transient
