"""``/nox-status``: persona, model, LLM reachability, integrations, uptime, version, last error.

For a workspace admin, an integration whose circuit is open gets a "Reset circuit" button
(handled in bot/listeners/actions.py).
"""

from __future__ import annotations

from typing import Any

from agents.connections import INTEGRATIONS, LABELS
from bot.commands.base import Invocation
from bot.render import Reply, context, header, section

CIRCUIT_RESET = "circuit_reset"  # action_id of the button; its value is the integration


async def run(invocation: Invocation) -> Reply:
    persona = invocation.persona
    status = await invocation.services.status.collect(invocation.request.tenant, persona)
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
        f"*Uptime:* {_duration(status.uptime_seconds)}   *Version:* {status.version}\n"
        f"*Last error:* {last_error}"
    )
    blocks = [header(f"{persona.display_name} status"), section(text)]
    if not persona.enabled:
        blocks.append(context(f"{persona.display_name} is disabled in this workspace."))
    blocks.extend(await _reset_buttons(invocation))
    return Reply(text=f"{persona.display_name} status\n{text}", blocks=blocks)


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
