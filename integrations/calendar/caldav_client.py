"""A CalDAV client (RFC 4791) for one named calendar, over the ``caldav`` library.

``caldav`` blocks, so every call runs in the calendar
:class:`~integrations.pools.IntegrationPool` (the workspace's share of it, under an overall
deadline). Each call opens its own connection: calls are rare (a person approves each write)
and nothing is shared between threads. ``caldav`` speaks HTTP through niquests here; its
session is replaced by one from the :class:`~integrations.egress.EgressPolicy`, so every
connection — the configured URL and every principal, calendar-home and calendar URL the server
hands back, redirects included — is checked and pinned. Failures come out as the classes in
:mod:`integrations.calendar.errors`; this client never retries — a retry policy wraps it and
retries :class:`CalendarUnavailable` only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import TypeVar
from urllib.parse import urlsplit

import structlog
from caldav import DAVClient
from caldav.lib import error as dav_error
from caldav.lib.http_sync import requests as http
from icalendar import Calendar, Event

from integrations.calendar.errors import (
    CalendarAuthError,
    CalendarBusy,
    CalendarError,
    CalendarNotFound,
    CalendarRejected,
    CalendarUnavailable,
)
from integrations.calendar.ics import Person
from integrations.egress import EgressPolicy, EgressRefused
from integrations.pools import DeadlineExceeded, IntegrationPool, PoolBusy

log = structlog.get_logger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class CalDAVCredentials:
    """Where and as whom to reach one calendar.

    ``url`` is the CalDAV server (or principal) URL, http or https; ``calendar`` is the
    calendar's display name (its last URL segment also matches). The password never appears
    in ``repr``.

    Raises ValueError when the URL is not an http(s) URL or the calendar name is empty. A
    URL holding ``user:password@`` is refused where credentials enter (see
    :func:`integrations.egress.check_url`); :attr:`server` never shows one.
    """

    url: str
    username: str
    password: str = field(repr=False)
    calendar: str

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                "the CalDAV URL must be an http:// or https:// address, "
                "such as https://cal.example.com/dav/"
            )
        if not self.calendar.strip():
            raise ValueError("name the calendar to use")

    @property
    def server(self) -> str:
        """The URL without any user or password in it, fit for messages and logs."""
        parts = urlsplit(self.url)
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{parts.hostname}{port}{parts.path}"


@dataclass(frozen=True)
class StoredEvent:
    """An event stored on the server: its UID and the URL of its calendar object resource."""

    uid: str
    href: str


@dataclass(frozen=True)
class CalendarEvent:
    """One VEVENT instance as read from the calendar.

    ``start`` and ``end`` are aware datetimes (all-day and floating times are read in the
    timezone of the ``now`` given to :meth:`CalDAVClient.upcoming`); ``organizer`` is None
    when the event has none.
    """

    uid: str
    summary: str
    start: datetime
    end: datetime
    organizer: Person | None
    attendees: tuple[Person, ...]


class CalDAVClient:
    """One calendar on one CalDAV server.

    ``timeout`` (seconds) bounds each socket operation of each HTTP request. ``pool`` (shared
    per process) runs the calls under ``workspace``'s share and each call's overall deadline;
    ``egress`` checks and pins every connection. Built alone, a client trusts its caller's URL
    (private addresses allowed) and has a small pool of its own whose deadline is ``timeout``.
    """

    def __init__(self, credentials: CalDAVCredentials, *, timeout: float = 20.0,
                 pool: IntegrationPool | None = None, egress: EgressPolicy | None = None,
                 workspace: str = "default") -> None:
        if timeout <= 0:
            raise ValueError("the timeout must be positive")
        self._credentials = credentials
        self._timeout = timeout
        self._pool = pool or IntegrationPool("calendar", threads=4, per_workspace=4,
                                             deadline=timeout)
        self._egress = egress or EgressPolicy(allow_private=True)
        self._workspace = workspace

    async def check(self, deadline: float | None = None) -> str:
        """Log in, find the principal, then the calendar; return the calendar's URL.

        ``deadline`` (seconds) overrides the pool's. Raises CalendarUnavailable (unreachable,
        timeout, deadline, busy, 5xx), CalendarRejected (the egress policy refused an address),
        CalendarAuthError (401/403),
        CalendarNotFound (no such calendar, ``available`` listing the existing ones; or the URL
        is not a CalDAV server: its OPTIONS answer lacks ``calendar-access`` in the DAV header,
        RFC 4791 §5.1).
        """

        def check(client: DAVClient) -> str:
            client.principal()
            if not client.supports_caldav():
                raise CalendarNotFound(
                    f"{self._credentials.server} is not a CalDAV server: check the URL",
                    available=[],
                )
            return str(self._calendar(client).url)

        return await self._call("check", check, deadline)

    async def store_event(self, store_ics: bytes) -> StoredEvent:
        """Store one event (a VCALENDAR without METHOD, RFC 4791 §4.1) in the calendar.

        The object is PUT at a URL made from its UID, so storing the same event again
        replaces it rather than duplicating it. SEQUENCE is stored as given.

        Raises ValueError when ``store_ics`` is not one iCalendar object holding VEVENTs of a
        single UID, or carries METHOD; CalendarError subclasses as :meth:`check` does, and
        CalendarRejected when the server refuses the object.
        """
        uid = _storable_uid(store_ics)

        def store(client: DAVClient) -> StoredEvent:
            stored = self._calendar(client).add_event(
                store_ics.decode("utf-8"), increase_seqno=False
            )
            return StoredEvent(uid=uid, href=str(stored.url))

        return await self._call("store_event", store)

    async def upcoming(self, now: datetime, days: int = 7, limit: int = 10) -> list[CalendarEvent]:
        """The events that have not ended by ``now`` and start within ``days`` days of it.

        ``now`` must be aware. Recurring events are expanded into their instances in that
        window. At most ``limit`` events, sorted by start.

        Raises ValueError on a naive ``now`` or a non-positive ``days``/``limit``;
        CalendarError subclasses as :meth:`check` does.
        """
        if now.tzinfo is None or now.utcoffset() is None:
            raise ValueError("now must be an aware datetime")
        if days <= 0 or limit <= 0:
            raise ValueError("days and limit must be positive")
        horizon = now + timedelta(days=days)

        def search(client: DAVClient) -> list[CalendarEvent]:
            found = self._calendar(client).search(event=True, start=now, end=horizon, expand=True)
            return [_event(obj.icalendar_component, now) for obj in found]

        events = await self._call("upcoming", search)
        # Servers differ on time-range edge cases (RFC 4791 §9.9); hold to our own promise.
        events = [event for event in events if event.end > now and event.start < horizon]
        events.sort(key=lambda event: event.start)
        return events[:limit]

    async def _call(self, action: str, operation: Callable[[DAVClient], T],
                    deadline: float | None = None) -> T:
        def run() -> T:
            with self._connect() as client:
                return operation(client)

        server = self._credentials.server
        try:
            return await self._pool.run(self._workspace, run, deadline=deadline)
        except Exception as exc:
            failure = _translate(exc, server, self._timeout)
            log.warning(
                "calendar.call_failed",
                action=action,
                server=server,
                kind=type(failure).__name__,
                reason=str(failure),
            )
            raise failure from exc

    def _connect(self) -> DAVClient:
        credentials = self._credentials
        client = DAVClient(
            url=credentials.url,
            username=credentials.username or None,
            password=credentials.password or None,
            timeout=self._timeout,
            enable_rfc6764=False,
            rate_limit_handle=False,
        )
        # DAVClient builds its own session (no connection yet) and takes none of ours.
        client.session.close()
        client.session = self._egress.niquests_session()
        return client

    def _calendar(self, client: DAVClient):
        wanted = self._credentials.calendar.strip()
        # The display names come with the calendar listing (cached), not one request each.
        calendars = [
            (calendar, calendar.get_display_name() or calendar.id)
            for calendar in client.principal().get_calendars()
        ]
        for calendar, name in calendars:
            if wanted in (name, calendar.id):
                return calendar
        names = sorted(str(name) for _, name in calendars)
        account = f"{self._credentials.username!r} at {self._credentials.server}"
        if names:
            message = (
                f"no calendar named {wanted!r} for {account}; "
                f"the calendars there are: {', '.join(names)}"
            )
        else:
            message = f"no calendar named {wanted!r} for {account}: the account has none"
        raise CalendarNotFound(message, available=names)


def _storable_uid(store_ics: bytes) -> str:
    try:
        # Strict UTF-8 (RFC 5545 §3.1.4): the library would quietly replace bad bytes.
        calendar = Calendar.from_ical(store_ics.decode("utf-8"))
    except ValueError as exc:  # UnicodeDecodeError included
        raise ValueError(f"not an iCalendar object: {exc}") from None
    if "METHOD" in calendar:
        raise ValueError(
            "a stored calendar object must not carry METHOD (RFC 4791 §4.1); "
            "store the copy without it"
        )
    uids = {str(event.get("UID", "")) for event in calendar.events}
    if not calendar.events or "" in uids or len(uids) != 1:
        raise ValueError("the calendar object must hold VEVENTs with one and the same UID")
    return uids.pop()


def _event(component: Event, now: datetime) -> CalendarEvent:
    organizer = component.organizer
    return CalendarEvent(
        uid=str(component.get("UID", "")),
        summary=str(component.get("SUMMARY", "")),
        start=_aware(component.start, now),
        end=_aware(component.end, now),
        organizer=Person(organizer.email, organizer.name or "") if organizer else None,
        attendees=tuple(
            Person(attendee.email, attendee.name or "") for attendee in component.attendees
        ),
    )


def _aware(value: date | datetime, now: datetime) -> datetime:
    if not isinstance(value, datetime):
        return datetime.combine(value, time(), tzinfo=now.tzinfo)
    if value.tzinfo is None:
        return value.replace(tzinfo=now.tzinfo)
    return value


def _translate(exc: Exception, server: str, timeout: float) -> CalendarError:
    """Map a ``caldav`` or HTTP library failure to a readable, classifiable CalendarError."""
    if isinstance(exc, CalendarError):
        return exc
    if isinstance(exc, EgressRefused):
        return CalendarRejected(f"the CalDAV server at {server} was not contacted: {exc}")
    if isinstance(exc, DeadlineExceeded):
        return CalendarUnavailable(
            f"the CalDAV server at {server} did not answer within {exc.seconds:g} s, so the "
            "call was stopped"
        )
    if isinstance(exc, PoolBusy):
        return CalendarBusy(
            f"the calendar is busy for this workspace: {exc.share} calls to {server} are "
            "already running; try again in a minute"
        )
    if isinstance(exc, TimeoutError):
        return CalendarUnavailable(
            f"the CalDAV server at {server} did not answer within {timeout:g} s"
        )
    if isinstance(exc, dav_error.RateLimitError):
        return CalendarUnavailable(
            f"the CalDAV server at {server} asks to slow down (HTTP {exc.status or 429})",
            retry_after=exc.retry_after_seconds,
        )
    if isinstance(exc, dav_error.AuthorizationError):
        if exc.status == 403:
            return CalendarAuthError(
                f"the CalDAV server at {server} refused access to this account (HTTP 403)"
            )
        return CalendarAuthError(
            f"the CalDAV server at {server} rejected the username or password (HTTP 401)"
        )
    if isinstance(exc, dav_error.DAVError):
        if exc.status is not None and exc.status >= 500:
            return CalendarUnavailable(
                f"the CalDAV server at {server} failed (HTTP {exc.status}); try again later"
            )
        if exc.status == 404 or isinstance(exc, dav_error.NotFoundError):
            return CalendarNotFound(
                f"nothing found at {server}: check the CalDAV URL", available=[]
            )
        status = f"HTTP {exc.status}" if exc.status is not None else type(exc).__name__
        return CalendarRejected(f"the CalDAV server at {server} refused the request ({status})")
    if isinstance(exc, http.exceptions.Timeout):
        return CalendarUnavailable(f"the CalDAV server at {server} did not answer in time")
    if isinstance(exc, http.exceptions.RequestException):
        return CalendarUnavailable(f"cannot reach the CalDAV server at {server}")
    log.exception("calendar.unexpected_error", server=server)
    return CalendarRejected(
        f"unexpected answer from {server}: check that this is the CalDAV server's URL"
    )
