"""``/nox-status``: persona, model, LLM reachability, integrations, uptime, version, last error."""

from __future__ import annotations

from bot.commands.base import Invocation
from bot.render import Reply, context, header, section


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
    return Reply(text=f"{persona.display_name} status\n{text}", blocks=blocks)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d {hours}h {minutes}m"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {secs}s"
