"""``/nox-help``: the persona's commands and tools, generated from the registries."""

from __future__ import annotations

from bot.commands.base import Invocation, command_lines
from bot.render import Reply, header, section


async def run(invocation: Invocation) -> Reply:
    persona = invocation.persona
    tools = invocation.services.runtime.registry.for_persona(persona)
    commands = "\n".join(command_lines(persona, invocation.verbs))
    tool_lines = "\n".join(
        f"• `{tool.name}`{' (asks for approval)' if tool.risk == 'write' else ''} — "
        f"{tool.description}"
        for tool in tools
    )
    talk = (
        f"Mention me (`@{persona.display_name}`) in a channel and I answer in the thread; "
        "mention me again in that thread to continue. Or write to me in a direct message."
    )
    text = (
        f"*{persona.display_name}* — {persona.title}\n{talk}\n\n*Commands*\n{commands}\n\n"
        f"*Tools I can use*\n{tool_lines or '• none'}"
    )
    return Reply(text=text, blocks=[header(f"{persona.display_name} help"), section(text)])
