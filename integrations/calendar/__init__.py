"""Calendar integration: iCalendar invitations (RFC 5545/5546) and a CalDAV client (RFC 4791)."""

from integrations.calendar.caldav_client import (
    CalDAVClient,
    CalDAVCredentials,
    CalendarEvent,
    StoredEvent,
)
from integrations.calendar.errors import (
    CalendarAuthError,
    CalendarError,
    CalendarNotFound,
    CalendarRejected,
    CalendarUnavailable,
    classify,
)
from integrations.calendar.ics import Invitation, Person, build_invitation

__all__ = [
    "CalDAVClient",
    "CalDAVCredentials",
    "CalendarAuthError",
    "CalendarError",
    "CalendarEvent",
    "CalendarNotFound",
    "CalendarRejected",
    "CalendarUnavailable",
    "Invitation",
    "Person",
    "StoredEvent",
    "build_invitation",
    "classify",
]
