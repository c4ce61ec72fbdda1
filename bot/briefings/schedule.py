"""Briefing schedules: parsing, validation and fire times in an IANA timezone.

Accepted forms (``schedule`` as stored and as typed in ``/nox-brief`` and the CLI):

* ``daily HH:MM`` — every day;
* ``weekdays HH:MM`` — Monday to Friday;
* ``weekly DAY HH:MM`` — one day a week (``mon`` … ``sun``);
* ``cron M H DOM MON DOW`` — a standard five-field crontab line, where day-of-week 0 and 7
  are Sunday (crontab(5)). APScheduler 3 numbers weekdays from Monday, so numeric weekdays
  are translated to names before they reach it.

Times are wall-clock times in the subscription's timezone, so a 09:00 briefing stays at 09:00
across daylight-saving changes. On the day clocks jump forward, a time inside the gap (02:30 in
Europe/Paris on the last Sunday of March) does not exist: APScheduler fires at the same UTC
instant as the old offset gives (03:30 local). On the day clocks go back, a wall-clock time
that happens twice (01:30 in America/New_York on the first Sunday of November) fires once: the
second occurrence is a repeat (:func:`is_repeat`).

Every search for fire times is bounded by :data:`HORIZON` (APScheduler's ``end_date``): left
alone, APScheduler looks for the next fire time of a schedule that never fires (``cron 0 0 30 2
*``) up to the year 9999, a tenth of a second of CPU each time. A new schedule must fire within
the horizon and its runs must be at least a minimum interval apart (:func:`check_frequency`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from zoneinfo import ZoneInfo

from apscheduler.triggers.cron import CronTrigger

from integrations import timezones

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_CRON_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat", "sun")  # crontab: 0 and 7 = Sunday
_TIME = re.compile(r"^(?P<hour>[01]?\d|2[0-3]):(?P<minute>[0-5]\d)$")
_DOW_TERM = re.compile(r"^(?P<range>\*|\d+(?:-\d+)?)(?:/(?P<step>\d+))?$")
MAX_SCHEDULE = 100  # characters: the length of briefing_subscriptions.schedule
MAX_TIMEZONE = 64  # characters: the length of briefing_subscriptions.timezone
HORIZON = timedelta(days=366)  # how far ahead fire times are looked for
_DAY_MINUTES = 24 * 60
_REFERENCE_DAY = datetime(2001, 1, 1, tzinfo=UTC)  # any day: minute and hour fields ignore dates


class ScheduleError(ValueError):
    """A schedule or timezone that cannot be used; the message says how to write it."""


USAGE = (
    "Write the schedule as `daily 08:30`, `weekdays 08:30`, `weekly mon 08:30` or "
    "`cron 30 8 * * 1-5` (minute hour day-of-month month day-of-week)."
)


@dataclass(frozen=True)
class Schedule:
    """A parsed schedule; ``text`` is its canonical form, ``crontab`` what APScheduler runs."""

    text: str
    crontab: str

    def trigger(self, timezone: str, until: datetime | None = None) -> CronTrigger:
        """APScheduler's trigger for this schedule in ``timezone``; with ``until`` (aware) it
        fires no later than that, and its searches stop there.

        Raises:
            ScheduleError: unknown timezone.
        """
        zone = parse_timezone(timezone)
        minute, hour, day, month, day_of_week = self.crontab.split()
        return CronTrigger(
            minute=minute,
            hour=hour,
            day=day,
            month=month,
            day_of_week=_apscheduler_weekdays(day_of_week),
            timezone=zone,
            end_date=until,
        )

    def next_fire_times(
        self, timezone: str, after: datetime, count: int, horizon: timedelta = HORIZON
    ) -> list[datetime]:
        """At most ``count`` fire times strictly after ``after`` (aware) and within ``horizon``
        of it, in ``timezone``: fewer (or none) when the schedule does not fire that often."""
        trigger = self.trigger(timezone, until=after + horizon)
        times: list[datetime] = []
        previous = None
        moment = after
        while len(times) < count:
            fire = trigger.get_next_fire_time(previous, moment)
            if fire is None:
                break
            if fire > after and not is_repeat(fire):
                times.append(fire)
            previous, moment = fire, fire
        return times


def is_repeat(fire: datetime) -> bool:
    """Whether ``fire`` (aware, in its schedule's zone) is the second occurrence of a wall-clock
    time that happens twice when clocks go back (PEP 495 ``fold=1``)."""
    wall = fire.replace(tzinfo=None)
    first = wall.replace(tzinfo=fire.tzinfo, fold=0)
    return first.astimezone(UTC) != fire.astimezone(UTC)


def check_frequency(schedule: Schedule, timezone: str, minimum: timedelta, now: datetime) -> None:
    """Refuse a schedule that does not fire within :data:`HORIZON` of ``now`` (aware), or whose
    consecutive runs can be less than ``minimum`` apart.

    Gaps are measured in wall-clock time of ``timezone``: the hour and minute fields give the
    same times of day on every day the schedule fires, so the shortest gap is either between
    two times of one day or between the last time of a day and the first of the next day it
    fires (looked for within the horizon). A daylight-saving change can shorten one gap by the
    size of the shift. Work is bounded: at most one day of times plus one horizon of days.

    Raises:
        ScheduleError: saying which runs are too close, or that the schedule never fires.
    """
    if not schedule.next_fire_times(timezone, now, 1):
        raise ScheduleError(
            f"`{schedule.text}` would not run within a year (e.g. `cron 0 0 30 2 *`: there is no "
            "30 February). " + USAGE
        )
    minute, hour, day, month, day_of_week = schedule.crontab.split()
    times_of_day = CronTrigger(
        minute=minute,
        hour=hour,
        timezone=UTC,
        end_date=_REFERENCE_DAY + timedelta(days=1) - timedelta(seconds=1),
    )
    minutes: list[int] = []
    fire = times_of_day.get_next_fire_time(None, _REFERENCE_DAY)
    while fire is not None:
        minutes.append(fire.hour * 60 + fire.minute)
        if len(minutes) > 1 and timedelta(minutes=minutes[-1] - minutes[-2]) < minimum:
            raise ScheduleError(
                f"`{schedule.text}` runs at {_clock(minutes[-2])} and at {_clock(minutes[-1])}: "
                f"briefings run at most once every {duration_text(minimum)}."
            )
        fire = times_of_day.get_next_fire_time(fire, fire)
    first, last = minutes[0], minutes[-1]
    if timedelta(minutes=_DAY_MINUTES - last + first) >= minimum:
        return  # even on consecutive days the last run and the next day's first are far enough
    days = CronTrigger(
        minute=0,
        hour=0,
        day=day,
        month=month,
        day_of_week=_apscheduler_weekdays(day_of_week),
        timezone=parse_timezone(timezone),
        end_date=now + HORIZON,
    )
    previous = days.get_next_fire_time(None, now)
    while previous is not None:
        following = days.get_next_fire_time(previous, previous)
        if following is None:
            return
        apart = (following.date() - previous.date()).days * _DAY_MINUTES - last + first
        if timedelta(minutes=apart) < minimum:
            raise ScheduleError(
                f"`{schedule.text}` runs at {_clock(last)} on {previous:%a %d %b} and at "
                f"{_clock(first)} on {following:%a %d %b}: briefings run at most once every "
                f"{duration_text(minimum)}."
            )
        previous = following


def _clock(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def duration_text(delta: timedelta) -> str:
    """``2 h``, ``90 min`` or ``45 s``."""
    seconds = int(delta.total_seconds())
    if seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    if seconds % 60 == 0:
        return f"{seconds // 60} min"
    return f"{seconds} s"


@cache
def parse_timezone(name: str) -> ZoneInfo:
    """``ZoneInfo`` for an IANA name such as ``Europe/Paris`` (see :mod:`integrations.timezones`).

    Raises:
        ScheduleError: the name is not in the IANA database.
    """
    try:
        return timezones.zone(name)
    except timezones.UnknownTimezone as exc:
        raise ScheduleError(f"{exc}.") from None


def parse_schedule(text: str) -> Schedule:
    """Parse one of the forms in this module's docstring.

    Raises:
        ScheduleError: the text is none of them, or the cron line is invalid.
    """
    if len(text.strip()) > MAX_SCHEDULE:
        raise ScheduleError(f"The schedule is longer than {MAX_SCHEDULE} characters. " + USAGE)
    words = text.strip().lower().split()
    if not words:
        raise ScheduleError("The schedule is empty. " + USAGE)
    kind, rest = words[0], words[1:]
    if kind in ("daily", "weekdays") and len(rest) == 1:
        hour, minute = _time(rest[0])
        dow = "*" if kind == "daily" else "1-5"
        return Schedule(f"{kind} {hour:02d}:{minute:02d}", f"{minute} {hour} * * {dow}")
    if kind == "weekly" and len(rest) == 2:
        day = rest[0][:3]
        if day not in DAYS:
            raise ScheduleError(
                f"`{rest[0]}` is not a day; use mon, tue, wed, thu, fri, sat or sun."
            )
        hour, minute = _time(rest[1])
        return Schedule(f"weekly {day} {hour:02d}:{minute:02d}", f"{minute} {hour} * * {day}")
    if kind == "cron":
        if len(rest) != 5:
            raise ScheduleError(
                f"A cron schedule has five fields (minute hour day-of-month month day-of-week); "
                f"got {len(rest)}. " + USAGE
            )
        crontab = " ".join(rest)
        schedule = Schedule(f"cron {crontab}", crontab)
        try:
            schedule.trigger("UTC")
        except ValueError as exc:
            raise ScheduleError(f"`{crontab}` is not a valid cron line: {exc}. " + USAGE) from None
        return schedule
    raise ScheduleError(f"I cannot read the schedule `{text.strip()}`. " + USAGE)


def _time(value: str) -> tuple[int, int]:
    match = _TIME.match(value)
    if not match:
        raise ScheduleError(f"`{value}` is not a time; write it as HH:MM, e.g. 08:30.")
    return int(match["hour"]), int(match["minute"])


def _apscheduler_weekdays(field: str) -> str:
    """A crontab day-of-week field with numbers (0/7 = Sunday) rewritten as day names.

    Raises:
        ValueError: a number outside 0–7 or a term that is not ``*``, ``N``, ``N-M`` with an
            optional ``/step``, or a day name.
    """
    if field == "*":
        return field
    days: list[str] = []
    for term in field.split(","):
        if term[:3] in DAYS and "/" not in term:
            days.append(term)  # names (and name ranges) mean the same to APScheduler
            continue
        match = _DOW_TERM.match(term)
        if not match:
            raise ValueError(f"day-of-week term {term!r} is not understood")
        step = int(match["step"] or 1)
        if match["range"] == "*":
            first, last = 0, 6
        else:
            first_text, _, last_text = match["range"].partition("-")
            first, last = int(first_text), int(last_text or first_text)
        if not (0 <= first <= 7 and 0 <= last <= 7 and first <= last) or step < 1:
            raise ValueError(f"day-of-week term {term!r} is out of range 0-7")
        days.extend(_CRON_DAYS[number] for number in range(first, last + 1, step))
    return ",".join(dict.fromkeys(days))
