"""``/nox-status``: persona, model, LLM reachability, integrations, uptime, version, last error.

For a workspace admin, an integration whose circuit is open gets a "Reset circuit" button
(handled in bot/listeners/actions.py).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from agents.budgets import SpendReport
from agents.connections import INTEGRATIONS, LABELS
from bot.commands.base import Invocation
from bot.render import Reply, context, header, section

CIRCUIT_RESET = "circuit_reset"  # action_id of the button; its value is the integration


async def run(invocation: Invocation) -> Reply:
    persona = invocation.persona
    status = await invocation.services.status.collect(
        invocation.request.tenant, persona, invocation.request.user_id
    )
    integrations = "\n".join(f"• {name}: {state}" for name, state in status.integrations.items())
    last_error = (
        f"{status.last_error.at:%Y-%m-%d %H:%M} UTC — {status.last_error.source}: "
        f"{status.last_error.message}"
        if status.last_error
        else "none"
    )
    llm_mark = "✅" if status.llm_ok else "⚠️"
    text = (
        f"*{persona.display_name}* — {persona.title}\n"
        f"*Model:* `{status.model}` (temperature {persona.temperature:g})\n"
        f"*LLM:* {llm_mark} {status.llm}\n"
        f"*Integrations:*\n{integrations or '• none configured'}\n"
        f"{_budget(status.budget)}\n"
        f"*Uptime:* {_duration(status.uptime_seconds)}   *Version:* {status.version}\n"
        f"*Last error:* {last_error}"
    )
    blocks = [header(f"{persona.display_name} status"), section(text)]
    if not persona.enabled:
        blocks.append(context(f"{persona.display_name} is disabled in this workspace."))
    blocks.extend(await _reset_buttons(invocation))
    return Reply(text=f"{persona.display_name} status\n{text}", blocks=blocks)


def _budget(report: SpendReport | str) -> str:
    """Today's LLM usage against the daily budgets, and the limits in force."""
    if not isinstance(report, SpendReport):
        return f"*LLM usage today:* unavailable ({report}); see the checks above"
    limits = report.limits
    tokens = f"{report.tokens_today:,} of " + (
        f"{limits.tokens_per_day:,} tokens" if limits.tokens_per_day else "unlimited tokens"
    )
    usd = f"${report.usd_today:,.2f} of " + (
        f"${limits.usd_per_day:,.2f}" if limits.usd_per_day else "an unlimited budget"
    )
    now = datetime.now(UTC)
    rates = [
        _rate(limits.turns_per_minute_user, "turns a minute per person", report.user_turns_left,
              "you have"),
        _rate(limits.turns_per_minute_workspace, "turns a minute in the workspace",
              report.workspace_turns_left, ""),
        (
            f"{limits.concurrent_turns} answers at once ({report.turns_running} running)"
            if limits.concurrent_turns
            else f"no limit on answers at once ({report.turns_running} running)"
        ),
        (
            f"{limits.tool_calls_per_reply} tool calls per model reply"
            if limits.tool_calls_per_reply
            else "no limit on tool calls per model reply"
        ),
    ]
    return (
        f"*LLM usage today:* {tokens}; {usd} — resets at 00:00 UTC "
        f"(in {_duration((report.resets_at - now).total_seconds())})\n"
        f"*Limits:* " + " · ".join(rates)
    )


def _rate(limit: int, what: str, left: int | None, who: str) -> str:
    if not limit:
        return f"no limit on {what}"
    if left is None:
        return f"{limit} {what}"
    return f"{limit} {what} ({who + ' ' if who else ''}{left} left now)"


async def _reset_buttons(invocation: Invocation) -> list[dict[str, Any]]:
    """One button per open circuit of this workspace, shown to admins only (the click is
    checked again: a button can be replayed by anyone who saw it)."""
    resilience = invocation.services.connections.resilience
    tenant = invocation.request.tenant
    opened = [
        integration
        for integration in INTEGRATIONS
        if resilience.health(tenant.id, integration).state == "circuit open"
    ]
    if not opened or not await invocation.request.is_admin():
        return []
    buttons = [
        {
            "type": "button",
            "action_id": CIRCUIT_RESET,
            "text": {"type": "plain_text", "text": f"Reset {LABELS[name]} circuit"},
            "value": name,
        }
        for name in opened
    ]
    note = context(
        "Calls to an integration with an open circuit fail at once. Reset it once the "
        "service is back, and the next call goes straight to it."
    )
    return [note, {"type": "actions", "block_id": "circuit_reset", "elements": buttons}]


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d {hours}h {minutes}m"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {secs}s"
