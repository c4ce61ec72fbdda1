"""Calendar failures, one class per kind so a retry policy can tell them apart.

Only :class:`CalendarUnavailable` is worth retrying; the others need a person to fix
credentials, the calendar name or the data. Messages never hold a password.
"""

from __future__ import annotations

from integrations.errors import IntegrationError
from integrations.resilience import Failure


class CalendarError(IntegrationError):
    """A failed calendar call; ``integration`` is ``"calendar"``."""

    def __init__(self, message: str) -> None:
        super().__init__("calendar", message)


class CalendarUnavailable(CalendarError):
    """The CalDAV server could not be reached, timed out, answered 5xx or 429 (transient).

    ``retry_after`` is the server's Retry-After in seconds when it sent one, else None.
    """

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class CalendarBusy(CalendarUnavailable):
    """This workspace already runs its share of calendar calls (our own limit, not the
    server's health): neither retried nor counted against the server's circuit."""


class CalendarAuthError(CalendarError):
    """The server refused the username and password (HTTP 401) or the access (403)."""


class CalendarNotFound(CalendarError):
    """The configured calendar does not exist; ``available`` lists the names that do."""

    def __init__(self, message: str, available: list[str]) -> None:
        super().__init__(message)
        self.available = available


class CalendarRejected(CalendarError):
    """The server refused the request itself (another 4xx, or an unusable answer)."""


def classify(exc: BaseException) -> Failure:
    """The :data:`~integrations.resilience.Classifier` for calendar calls.

    :class:`CalendarUnavailable` is transient (with the server's Retry-After); a refused
    request or an unusable event (``ValueError``) is the caller's fault, so the server counts
    as healthy; bad credentials and a missing calendar are failures a person must fix.
    """
    if isinstance(exc, CalendarBusy):
        return Failure(caller_fault=True)
    if isinstance(exc, CalendarUnavailable):
        return Failure(transient=True, retry_after=exc.retry_after)
    if isinstance(exc, CalendarRejected | ValueError):
        return Failure(caller_fault=True)
    return Failure()
