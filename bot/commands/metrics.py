"""``/nox-metrics``: this workspace's figures from the audit trail, today and the last 7 days."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from bot.commands.base import Invocation
from bot.render import Reply, context, header, section
from storage.repositories.metrics import UsageFigures


async def run(invocation: Invocation) -> Reply:
    tenant = invocation.request.tenant
    zone = ZoneInfo(invocation.config.timezone)
    now = datetime.now(zone)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    metrics = invocation.services.repos.metrics
    today, week = await asyncio.gather(
        metrics.usage_since(tenant, midnight.astimezone(UTC)),
        metrics.usage_since(tenant, (now - timedelta(days=7)).astimezone(UTC)),
    )
    blocks = [
        header("Usage in this workspace"),
        {
            "type": "section",
            "fields": [
                {"type": "mrkdwn", "text": _figures("Today", today)},
                {"type": "mrkdwn", "text": _figures("Last 7 days", week)},
            ],
        },
        section("*Tool calls (7 days)*\n" + _tools(week)),
        context(f"Today starts at midnight {invocation.config.timezone}. All personas."),
    ]
    text = f"{_figures('Today', today)}\n\n{_figures('Last 7 days', week)}"
    return Reply(text=text, blocks=blocks)


def _figures(title: str, f: UsageFigures) -> str:
    return (
        f"*{title}*\n"
        f"Conversations: {f.conversations}\n"
        f"Turns: {f.turns}\n"
        f"Tool calls: {sum(f.tool_calls.values())}\n"
        f"Tokens in / out: {f.prompt_tokens:,} / {f.completion_tokens:,}\n"
        f"Errors: {f.errors}"
    )


def _tools(f: UsageFigures) -> str:
    if not f.tool_calls:
        return "none"
    return "\n".join(f"• `{name}`: {count}" for name, count in f.tool_calls.items())
