"""IANA timezone names from people, models and remote servers, looked up safely.

``ZoneInfo(name)`` reads any file under its search path: ``Europe`` raises
``IsADirectoryError``, a very long name ``OSError``, ``../x`` or a NUL byte ``ValueError``, and
a name that is a file but not a zone a parse error. Only names of the IANA database
(``zoneinfo.available_timezones()``, https://www.iana.org/time-zones) reach ``ZoneInfo`` here.
"""

from __future__ import annotations

from functools import cache
from zoneinfo import ZoneInfo, available_timezones

MAX_NAME = 64  # characters; the longest IANA name has 32


class UnknownTimezone(ValueError):
    """The name is not an IANA timezone; the message shows it escaped, for a person."""

    def __init__(self, name: str) -> None:
        shown = name[:MAX_NAME].encode("unicode_escape").decode("ascii").replace("`", "'")
        super().__init__(
            f"`{shown}` is not an IANA timezone; use a name such as `Europe/Paris`, "
            "`America/New_York` or `UTC`"
        )
        self.name = name


@cache
def _known() -> frozenset[str]:
    return frozenset(available_timezones())


def zone(name: str) -> ZoneInfo:
    """The timezone named ``name`` (surrounding blanks ignored).

    Raises:
        UnknownTimezone: ``name`` is not in the IANA database.
    """
    key = name.strip()
    if len(key) > MAX_NAME or key not in _known():
        raise UnknownTimezone(name)
    return ZoneInfo(key)
