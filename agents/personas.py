"""Personas are data: who answers, with which prompt, model and tools.

NOX, ATLAS and CIRRUS are built in; a workspace changes them through overrides stored by
:class:`storage.repositories.config.ConfigRepository` (``/nox-config`` or ``jamono config``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from storage.repositories.config import Override, WorkspaceConfig

# list_sessions/execute_on_session are registered only when the cross-session gateway runs.
BASE_TOOLS = ("get_time", "persona_status", "list_sessions", "execute_on_session")
JIRA_TOOLS = (
    "jira_search",
    "jira_get_issue",
    "jira_create_issue",
    "jira_add_comment",
    "jira_transition_issue",
)
CALENDAR_TOOLS = ("calendar_schedule_meeting", "calendar_upcoming")


@dataclass(frozen=True)
class Persona:
    """A persona as the agent loop runs it.

    ``model`` of ``None`` means the deployment default (``JAMONO_MODEL``). ``temperature`` is
    Chat Completions' sampling temperature (0–2). ``max_tool_steps`` bounds LLM round trips
    that ask for tools in one turn. ``tools`` names entries of the tool registry.
    """

    name: str
    display_name: str
    title: str
    command_prefix: str
    system_prompt: str
    tools: tuple[str, ...]
    model: str | None = None
    temperature: float = 0.3
    max_tool_steps: int = 6
    enabled: bool = False
    extra_instructions: str | None = None

    def with_override(self, override: Override | None) -> Persona:
        if override is None:
            return self
        return replace(
            self,
            enabled=self.enabled if override.enabled is None else override.enabled,
            model=override.model or self.model,
            temperature=(
                self.temperature if override.temperature is None else override.temperature
            ),
            extra_instructions=override.extra_instructions,
        )

    def instructions(self) -> str:
        """The system prompt plus the workspace's extra instructions, if any."""
        if not self.extra_instructions:
            return self.system_prompt
        return f"{self.system_prompt}\n\nInstructions from this workspace's admins:\n" + (
            self.extra_instructions
        )


_STYLE = (
    "You work inside Slack. Answer in Slack mrkdwn (*bold*, _italic_, `code`, bullet lists), "
    "briefly and concretely. Use tools when they give a better answer than guessing, and say "
    "plainly when you do not know or a tool failed. Never invent tool results."
)

NOX = Persona(
    name="nox",
    display_name="NOX",
    title="DevOps engineer",
    command_prefix="nox",
    system_prompt=(
        "You are NOX, a senior DevOps engineer and a colleague of the people in this Slack "
        "workspace. You know CI/CD, incident response, observability, Kubernetes, "
        "infrastructure as code and on-call practice. You work in the team's Jira (issue keys "
        "as links) and book meetings with calendar invitations; tools that change something "
        "may wait for a person's approval. " + _STYLE
    ),
    tools=(*BASE_TOOLS, *JIRA_TOOLS, *CALENDAR_TOOLS, "slack_post_message"),
    enabled=True,
)

ATLAS = Persona(
    name="atlas",
    display_name="ATLAS",
    title="Cloud architect",
    command_prefix="atlas",
    system_prompt=(
        "You are ATLAS, a cloud architect and a colleague of the people in this Slack "
        "workspace. You know AWS, GCP and Azure services, networking, cost, security and "
        "reliability trade-offs. " + _STYLE
    ),
    tools=BASE_TOOLS,
)

CIRRUS = Persona(
    name="cirrus",
    display_name="CIRRUS",
    title="Systems administrator",
    command_prefix="cirrus",
    system_prompt=(
        "You are CIRRUS, a systems administrator and a colleague of the people in this Slack "
        "workspace. You know Linux, Windows Server, identity, patching, backups and the "
        "day-to-day of keeping machines healthy. " + _STYLE
    ),
    tools=BASE_TOOLS,
)

BUILTIN: dict[str, Persona] = {p.name: p for p in (NOX, ATLAS, CIRRUS)}
DEFAULT_PERSONA = NOX.name


def by_prefix(prefix: str) -> Persona | None:
    """The built-in persona whose slash commands start with ``/{prefix}-``."""
    return next((p for p in BUILTIN.values() if p.command_prefix == prefix), None)


def effective(name: str, config: WorkspaceConfig) -> Persona:
    """The built-in persona ``name`` with the workspace's overrides applied.

    Raises:
        KeyError: no built-in persona has that name.
    """
    return BUILTIN[name].with_override(config.overrides.get(name))


def for_channel(config: WorkspaceConfig, channel_id: str) -> Persona:
    """The persona that answers in ``channel_id``: its binding, else NOX."""
    return effective(config.bindings.get(channel_id, DEFAULT_PERSONA), config)
