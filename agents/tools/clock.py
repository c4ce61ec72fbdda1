"""``get_time``: the current date and time where the workspace is."""

from __future__ import annotations

from datetime import UTC, datetime

from agents.tools.registry import Tool, ToolContext, ToolError
from integrations import timezones


async def get_time(context: ToolContext, timezone: str | None = None) -> dict[str, str]:
    """Current date and time in the workspace's timezone, or in an IANA timezone you name.

    Returns ``iso`` (ISO 8601 with offset), ``timezone``, ``weekday`` and ``utc`` (ISO 8601 UTC).
    """
    name = timezone or context.timezone
    try:
        zone = timezones.zone(name)
    except timezones.UnknownTimezone as exc:
        raise ToolError(str(exc)) from None
    now = datetime.now(UTC)
    local = now.astimezone(zone)
    return {
        "iso": local.isoformat(timespec="seconds"),
        "timezone": name,
        "weekday": local.strftime("%A"),
        "utc": now.isoformat(timespec="seconds"),
    }


TOOL = Tool.from_function(
    get_time,
    parameters={
        "type": "object",
        "properties": {
            "timezone": {
                "type": "string",
                "description": "IANA timezone, e.g. America/New_York. Default: the workspace's.",
            }
        },
        "additionalProperties": False,
    },
)
