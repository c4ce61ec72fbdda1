"""``/nox-config``: workspace admins change personas, channel bindings and the timezone.

Grammar: ``[persona] verb [value]``; the persona defaults to the command's own.

=========================  =========================================================
``show``                   the workspace's configuration (anyone may look)
``enable`` / ``disable``   turn the persona on or off in this workspace
``model NAME|default``     the persona's model, one of JAMONO_ALLOWED_MODELS (default:
                           the deployment's JAMONO_MODEL)
``temperature T|default``  sampling temperature, 0 to 2
``instructions TEXT|clear`` extra instructions added to the persona's system prompt
``bind [#channel]``        the persona answers mentions in that channel (default: here)
``unbind [#channel]``      the channel goes back to the default persona (NOX)
``timezone ZONE``          the workspace's IANA timezone, e.g. ``Europe/Paris``
``zone #ch [TOOLS|all]``   the persona may act in that channel, with those tools
                           (comma-separated; default all); once a persona has a zone it
                           uses tools only in its zones
``unzone #ch``             remove that zone (no zone left: the persona acts anywhere)
``autoapprove TOOL [#ch]`` that write tool runs without approval (in that channel only)
``noautoapprove TOOL [#ch]`` that write tool needs approval (in that channel only)
``approvers requester|admins`` who may approve: the requester or an admin, or admins only
=========================  =========================================================

A channel (``#ch``) is a mention (Slack sends ``<#C0123|name>``: the command escapes), an id
in any case, or a name with or without ``#`` looked up in Slack; it is stored by its id, and
anything else (a person, an unknown name) is refused (:func:`agents.channels.resolve`).
"""

from __future__ import annotations

from agents import channels, personas
from agents.personas import Persona
from bot.commands.base import Invocation
from bot.render import Reply, escape, section
from integrations import timezones
from storage.repositories.policy import ANY_CHANNEL, ActionPolicy

USAGE = (
    "[persona] show|enable|disable|model|temperature|instructions|bind|unbind|timezone|"
    "zone|unzone|autoapprove|noautoapprove|approvers …"
)
APPROVERS = {"requester": "requester_or_admin", "admins": "admins_only"}


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
        return await show(invocation)
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
            choice = invocation.services.budgets.models
            model = None if value == "default" else value
            if model is not None and not choice.allows(model):
                # Calls are billed to the operator's key: only the models they allowed.
                raise ConfigError(
                    f"`{model}` is not one of the models this deployment allows: "
                    + ", ".join(f"`{m}`" for m in sorted(choice.allowed))
                    + ". The operator sets the list (JAMONO_ALLOWED_MODELS)."
                )
            await repo.update_persona(tenant, target.name, actor, model=model)
            return f"{name} now uses model `{choice.resolve(model)}`."
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
            channel = await _channel_here(invocation, value)
            persona = target.name if verb == "bind" else None
            await repo.bind_channel(tenant, channel, persona, actor)
            if persona:
                return f"{name} now answers mentions in <#{channel}>."
            return f"<#{channel}> is back to the default persona ({personas.NOX.display_name})."
        case "timezone":
            zone = _timezone(value)
            await repo.set_timezone(tenant, zone, actor)
            return f"The workspace timezone is now {zone}."
        case "zone" | "unzone" | "autoapprove" | "noautoapprove" | "approvers":
            return await _policy(invocation, target, verb, value)
    raise ConfigError(f"`{verb}` is not a configuration verb.")


async def _policy(invocation: Invocation, target: Persona, verb: str, value: str) -> str:
    """Action zones, auto-approval and approvers (see storage.repositories.policy)."""
    tenant, actor = invocation.request.tenant, invocation.request.user_id
    policy = invocation.services.repos.policy
    name = target.display_name
    first, _, rest = value.partition(" ")
    match verb:
        case "zone":
            channel = await _channel_here(invocation, first)
            tools = _tools(invocation, rest)
            await policy.set_zone(tenant, target.name, channel, tools, actor)
            allowed = "every tool" if tools is None else ", ".join(f"`{t}`" for t in tools)
            return (
                f"{name} may now act in <#{channel}> with {allowed}. It uses tools only in "
                "its zones."
            )
        case "unzone":
            channel = await _channel_here(invocation, first)
            if not await policy.remove_zone(tenant, target.name, channel, actor):
                raise ConfigError(f"<#{channel}> is not one of {name}'s action zones.")
            left = (await policy.load(tenant)).zones.get(target.name)
            return f"<#{channel}> is no longer an action zone of {name}." + (
                "" if left else f" {name} has no zone left, so it may act in any channel."
            )
        case "autoapprove" | "noautoapprove":
            tool = _write_tool(invocation, first)
            channel = await _channel(invocation, rest.strip())
            auto = verb == "autoapprove"
            await policy.set_auto_approve(tenant, tool, auto, actor, channel)
            where = f"in <#{channel}>" if channel else "everywhere in this workspace"
            return f"`{tool}` {'runs without approval' if auto else 'needs approval'} {where}."
        case _:
            rule = APPROVERS.get(value.lower())
            if rule is None:
                raise ConfigError("Say `approvers requester` or `approvers admins`.")
            await policy.set_approvers(tenant, rule, actor)
            who = "the requester or a workspace admin" if value.lower() == "requester" else (
                "workspace admins only"
            )
            return f"Approval requests can now be decided by {who}."


async def show(invocation: Invocation) -> Reply:
    config = invocation.config
    policy = await invocation.services.repos.policy.load(invocation.request.tenant)
    lines = [f"*Workspace timezone:* {config.timezone}"]
    models = invocation.services.budgets.models
    for name in personas.BUILTIN:
        persona = personas.effective(name, config)
        channels = [c for c, p in config.bindings.items() if p == name]
        lines.append(
            f"*{persona.display_name}* — {'enabled' if persona.enabled else 'disabled'}; "
            f"model `{models.resolve(persona.model)}`"
            + (
                f" (`{persona.model}` is no longer allowed)"
                if persona.model and not models.allows(persona.model)
                else ""
            )
            + "; "
            f"temperature {persona.temperature:g}"
            + (f"; channels {' '.join(f'<#{c}>' for c in channels)}" if channels else "")
            + (
                f"\n    extra instructions: _{persona.extra_instructions[:200]}_"
                if persona.extra_instructions
                else ""
            )
        )
    lines.append("Channels without a binding are answered by NOX.")
    lines.extend(_policy_lines(policy))
    return _reply("\n".join(lines))


def _policy_lines(policy: ActionPolicy) -> list[str]:
    lines = ["*Action zones:*"]
    for persona, zones in sorted(policy.zones.items()):
        display = personas.BUILTIN[persona].display_name if persona in personas.BUILTIN else persona
        for channel, tools in sorted(zones.items()):
            allowed = "all tools" if tools is None else ", ".join(f"`{t}`" for t in sorted(tools))
            lines.append(f"    {display} in <#{channel}>: {allowed}")
    if len(lines) == 1:
        lines[0] += " none — personas may act in any channel"
    rules = [
        f"    `{tool}` {'auto-approved' if auto else 'needs approval'} "
        + ("everywhere" if channel == ANY_CHANNEL else f"in <#{channel}>")
        for (tool, channel), auto in sorted(policy.auto_approve.items())
    ]
    lines.append("*Write tools:* " + ("" if rules else "every write tool needs approval"))
    lines.extend(rules)
    who = (
        "the requester or a workspace admin"
        if policy.approvers == "requester_or_admin"
        else "workspace admins only"
    )
    lines.append(f"*Approvals decided by:* {who}")
    return lines


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


async def _channel(invocation: Invocation, value: str) -> str | None:
    """The canonical id of the channel ``value`` names; ``None`` for nothing or ``here``."""
    if not value or value == "here":
        return None
    try:
        return await channels.resolve(invocation.request.slack, value)
    except channels.ChannelError as exc:
        # The message quotes the admin's words: shown literally, never as a mention.
        told = escape(str(exc))
        raise ConfigError(f"{told} Name a channel as #channel, its name or its id.") from None


async def _channel_here(invocation: Invocation, value: str) -> str:
    channel = await _channel(invocation, value) or invocation.request.channel_id
    if not channel:
        raise ConfigError("Name the channel, e.g. `zone #ops` or `zone C0123456789`.")
    return channel


def _tools(invocation: Invocation, value: str) -> list[str] | None:
    """``all`` (or nothing) → ``None``; else the comma-separated names, each one known."""
    names = [name.strip() for name in value.split(",") if name.strip()]
    if not names or names == ["all"]:
        return None
    known = {tool.name for tool in invocation.services.runtime.registry}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ConfigError(
            f"Unknown tool {', '.join(f'`{n}`' for n in unknown)}; tools: "
            + ", ".join(f"`{n}`" for n in sorted(known))
        )
    return names


def _write_tool(invocation: Invocation, value: str) -> str:
    tool = invocation.services.runtime.registry.get(value)
    writes = sorted(t.name for t in invocation.services.runtime.registry if t.risk == "write")
    if tool is None or tool.risk != "write":
        lead = f"`{value}` is a read tool; it never needs approval." if tool else (
            f"Name a write tool{f', not `{value}`' if value else ''}."
        )
        raise ConfigError(f"{lead} Write tools: {', '.join(f'`{n}`' for n in writes)}")
    return tool.name


def _timezone(value: str) -> str:
    try:
        return timezones.zone(value).key
    except timezones.UnknownTimezone as exc:
        raise ConfigError(f"{exc}.") from None
