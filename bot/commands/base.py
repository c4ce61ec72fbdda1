"""The request every slash-command verb receives."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from slack_sdk.web.async_client import AsyncWebClient

from agents.personas import Persona
from bot.render import Reply
from bot.services import Services
from storage.repositories.config import WorkspaceConfig
from storage.tenancy import Tenant


@dataclass(frozen=True)
class CommandRequest:
    """A slash command as Slack sends it (``command``, ``text``, ``user_id``, ``channel_id``,
    ``trigger_id``).

    ``is_admin`` answers whether ``user_id`` is a workspace admin or owner; it is only awaited
    by verbs that change configuration. ``trigger_id`` (opens a modal, valid 3 s) and
    ``slack`` (the workspace's Web API client) are set for commands from Slack only, not for
    the console or the CLI.
    """

    tenant: Tenant
    command: str
    text: str
    user_id: str
    channel_id: str
    is_admin: Callable[[], Awaitable[bool]]
    trigger_id: str = ""
    slack: AsyncWebClient | None = None


@dataclass(frozen=True)
class Invocation:
    """A parsed request: the persona it addresses, with the workspace's overrides applied."""

    request: CommandRequest
    persona: Persona
    config: WorkspaceConfig
    services: Services
    verbs: Mapping[str, VerbSpec]


Verb = Callable[[Invocation], Awaitable[Reply]]


@dataclass(frozen=True)
class VerbSpec:
    """A verb's handler and its line in usage and help text."""

    handler: Verb
    summary: str
    usage: str = ""
    works_when_disabled: bool = False


def command_lines(persona: Persona, verbs: Mapping[str, VerbSpec]) -> list[str]:
    """One bullet per command of ``persona``: ``• `/nox-status` — summary``."""
    return [
        f"• `/{persona.command_prefix}-{name}{' ' + spec.usage if spec.usage else ''}` — "
        f"{spec.summary}"
        for name, spec in verbs.items()
    ]
