"""Slash commands, one module per verb, shared by Slack and the console.

A command is ``/{persona prefix}-{verb}``: ``/nox-status``, ``/atlas-help`` … The router
resolves the persona with the workspace's overrides and hands the request to the verb.
"""

from __future__ import annotations

import re

from agents import personas
from agents.personas import Persona
from bot.commands import audit, brief, config, connect, help, incident, link, metrics, status
from bot.commands.base import CommandRequest, Invocation, VerbSpec, command_lines
from bot.render import Reply, section
from bot.services import Services

__all__ = ["CommandRequest", "CommandRouter"]

COMMAND = re.compile(r"^/(?P<prefix>[a-z]+)-(?P<verb>[a-z]+)$")


def _verbs() -> dict[str, VerbSpec]:
    return {
        "status": VerbSpec(
            status.run, "model, LLM reachability, integrations, uptime, version, last error"
        ),
        "help": VerbSpec(help.run, "commands and tools", works_when_disabled=True),
        "metrics": VerbSpec(metrics.run, "usage in this workspace: today and the last 7 days"),
        "link": VerbSpec(link.run, "a token (by DM) that connects your applications to personas"),
        "config": VerbSpec(
            config.run,
            "workspace admins: personas, models, channel bindings, timezone, action zones, "
            "approvals",
            config.USAGE,
            works_when_disabled=True,
        ),
        "connect": VerbSpec(
            connect.run,
            "workspace admins: connect Jira or the calendar (tested, stored encrypted)",
            connect.USAGE,
            works_when_disabled=True,
        ),
        "incident": VerbSpec(
            incident.run,
            "declare an incident: ticket, post-mortem and summary in a new thread",
            incident.USAGE,
        ),
        "brief": VerbSpec(brief.run, "scheduled channel briefings", brief.USAGE),
        "audit": VerbSpec(
            audit.run,
            "workspace admins: tool calls, approvals and configuration changes (old → new)",
            audit.USAGE,
            works_when_disabled=True,
        ),
    }


class CommandRouter:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.verbs = _verbs()

    @staticmethod
    def handles(command: str) -> bool:
        """Whether ``command`` names a built-in persona's slash command."""
        match = COMMAND.match(command)
        return bool(match and personas.by_prefix(match["prefix"]))

    async def handle(self, request: CommandRequest) -> Reply:
        match = COMMAND.match(request.command.strip().lower())
        persona = personas.by_prefix(match["prefix"]) if match else None
        if persona is None:
            return Reply(f"Unknown command {request.command}.")
        config = await self.services.repos.config.load(request.tenant)
        persona = personas.effective(persona.name, config)
        spec = self.verbs.get(match["verb"])
        if spec is None:
            return usage(persona, self.verbs, f"`{request.command}` is not a command I know.")
        if not persona.enabled and not spec.works_when_disabled:
            return not_enabled(persona)
        return await spec.handler(Invocation(request, persona, config, self.services, self.verbs))


def usage(persona: Persona, verbs: dict[str, VerbSpec], lead: str) -> Reply:
    text = "\n".join([lead, "", *command_lines(persona, verbs)])
    return Reply(text, [section(text)])


def not_enabled(persona: Persona) -> Reply:
    text = (
        f"{persona.display_name} is not enabled in this workspace. A workspace admin can turn "
        f"it on with `/{persona.command_prefix}-config enable` "
        f"(or `/nox-config {persona.name} enable`)."
    )
    return Reply(text, [section(text)])
