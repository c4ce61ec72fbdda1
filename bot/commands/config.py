"""``/nox-config``: workspace admins change personas, channel bindings and the timezone.

Grammar: ``[persona] verb [value]``; the persona defaults to the command's own.

=========================  =========================================================
``show``                   the workspace's configuration (anyone may look)
``enable`` / ``disable``   turn the persona on or off in this workspace
``model NAME|default``     the persona's model (default: the deployment's JAMONO_MODEL)
``temperature T|default``  sampling temperature, 0 to 2
``instructions TEXT|clear`` extra instructions added to the persona's system prompt
``bind [#channel]``        the persona answers mentions in that channel (default: here)
``unbind [#channel]``      the channel goes back to the default persona (NOX)
``timezone ZONE``          the workspace's IANA timezone, e.g. ``Europe/Paris``
=========================  =========================================================
"""

from __future__ import annotations

import re
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from agents import personas
from agents.personas import Persona
from bot.commands.base import Invocation
from bot.render import Reply, section

USAGE = "[persona] show|enable|disable|model|temperature|instructions|bind|unbind|timezone …"
CHANNEL = re.compile(r"^(?:<#(?P<ref>[CGD][A-Z0-9]+)(?:\|[^>]*)?>|(?P<id>[CGD][A-Z0-9]{6,}))$")


class ConfigError(ValueError):
    """The admin's input is wrong; the message says how to write it."""


async def run(invocation: Invocation) -> Reply:
    words = invocation.request.text.strip().split(maxsplit=1)
    target = invocation.persona
    if words and words[0].lower() in personas.BUILTIN:
        target = personas.effective(words[0].lower(), invocation.config)
        words = words[1].split(maxsplit=1) if len(words) > 1 else []
    verb = words[0].lower() if words else "show"
    value = words[1].strip() if len(words) > 1 else ""
    if verb == "show":
        return show(invocation)
    if not await invocation.request.is_admin():
        return _reply("Only workspace admins and owners can change the configuration.")
    try:
        done = await apply(invocation, target, verb, value)
    except ConfigError as exc:
        return _reply(f"{exc}\nUsage: `/{invocation.persona.command_prefix}-config {USAGE}`")
    return _reply(f"✅ {done}")


async def apply(invocation: Invocation, target: Persona, verb: str, value: str) -> str:
    """Make one change; returns what was done. Raises :class:`ConfigError` on bad input."""
    tenant, actor = invocation.request.tenant, invocation.request.user_id
    repo = invocation.services.repos.config
    name = target.display_name
    match verb:
        case "enable" | "disable":
            await repo.update_persona(tenant, target.name, actor, enabled=verb == "enable")
            return f"{name} is now {verb}d in this workspace."
        case "model":
            if not value:
                raise ConfigError("Name a model, or `default`.")
            model = None if value == "default" else value
            await repo.update_persona(tenant, target.name, actor, model=model)
            return f"{name} now uses model `{model or invocation.services.settings.model}`."
        case "temperature":
            temperature = None if value == "default" else _temperature(value)
            await repo.update_persona(tenant, target.name, actor, temperature=temperature)
            shown = (
                personas.BUILTIN[target.name].temperature if temperature is None else temperature
            )
            return f"{name}'s temperature is now {shown:g}."
        case "instructions":
            if not value:
                raise ConfigError("Write the instructions after the verb, or `clear`.")
            text = None if value == "clear" else value
            await repo.update_persona(tenant, target.name, actor, extra_instructions=text)
            return f"{name}'s extra instructions are {'cleared' if text is None else 'saved'}."
        case "bind" | "unbind":
            channel = _channel(value) or invocation.request.channel_id
            if not channel:
                raise ConfigError("Name the channel to bind, e.g. `bind C0123456789`.")
            persona = target.name if verb == "bind" else None
            await repo.bind_channel(tenant, channel, persona, actor)
            if persona:
                return f"{name} now answers mentions in <#{channel}>."
            return f"<#{channel}> is back to the default persona ({personas.NOX.display_name})."
        case "timezone":
            zone = _timezone(value)
            await repo.set_timezone(tenant, zone, actor)
            return f"The workspace timezone is now {zone}."
    raise ConfigError(f"`{verb}` is not a configuration verb.")


def show(invocation: Invocation) -> Reply:
    config = invocation.config
    lines = [f"*Workspace timezone:* {config.timezone}"]
    for name in personas.BUILTIN:
        persona = personas.effective(name, config)
        channels = [c for c, p in config.bindings.items() if p == name]
        lines.append(
            f"*{persona.display_name}* — {'enabled' if persona.enabled else 'disabled'}; "
            f"model `{persona.model or invocation.services.settings.model}`; "
            f"temperature {persona.temperature:g}"
            + (f"; channels {' '.join(f'<#{c}>' for c in channels)}" if channels else "")
            + (
                f"\n    extra instructions: _{persona.extra_instructions[:200]}_"
                if persona.extra_instructions
                else ""
            )
        )
    lines.append("Channels without a binding are answered by NOX.")
    return _reply("\n".join(lines))


def _reply(text: str) -> Reply:
    return Reply(text, [section(text)])


def _temperature(value: str) -> float:
    try:
        temperature = float(value)
    except ValueError:
        raise ConfigError(f"`{value}` is not a number; the temperature goes from 0 to 2.") from None
    if not 0 <= temperature <= 2:
        raise ConfigError("The temperature goes from 0 to 2.")
    return temperature


def _channel(value: str) -> str | None:
    if not value or value == "here":
        return None
    match = CHANNEL.match(value)
    if not match:
        raise ConfigError(
            f"`{value}` is not a channel; mention it like #ops so Slack sends its ID."
        )
    return match["ref"] or match["id"]


def _timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"`{value or '(nothing)'}` is not an IANA timezone; "
            "try Europe/Paris or America/New_York."
        ) from None
    return value
