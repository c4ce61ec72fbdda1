"""Tools the LLM may call: name, description, JSON-schema parameters, risk level, handler."""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import structlog
from jsonschema import Draft202012Validator
from slack_sdk.web.async_client import AsyncWebClient

from storage.tenancy import Tenant

if TYPE_CHECKING:
    from slack_sdk.web.async_client import AsyncWebClient

    from agents.personas import Persona

log = structlog.get_logger(__name__)

Risk = Literal["read", "write"]
Handler = Callable[..., Awaitable[Any]]
Target = Callable[[dict[str, Any]], str]
ActsIn = Callable[[dict[str, Any]], str | None]
Assess = Callable[["ToolContext", dict[str, Any]], Awaitable[Risk]]


class ToolError(Exception):
    """An expected tool failure; its message goes back to the model (and may reach the user)."""


@dataclass(frozen=True)
class ToolContext:
    """Who asks and where: the facts a tool handler may use besides its arguments.

    ``thread_ts`` is the conversation key (a Slack thread's ts, or ``dm:…``/``console:…``);
    ``slack`` is the workspace's Web API client when the turn came from Slack.
    """

    tenant: Tenant
    persona: Persona
    user_id: str
    channel_id: str
    thread_ts: str
    timezone: str  # the workspace's IANA timezone
    slack: AsyncWebClient | None = None  # the workspace's Web API client; None outside Slack


@dataclass(frozen=True)
class Tool:
    """A tool as the registry holds it.

    ``parameters`` is a JSON Schema (draft 2020-12) object schema; arguments are validated
    against it before ``handler(context, **arguments)`` runs. ``risk`` ``write`` marks tools
    that change something outside Jamono (approvals apply to those). ``target`` names what a
    call with given arguments changes, for the approval message (e.g. "Slack channel <#C1>").
    ``assess``, when set, decides the risk of one call from its arguments (see :meth:`risk_of`).
    ``acts_in`` names the Slack channel a call acts in when that is not the conversation's
    (e.g. where a message is posted): action zones and approvals apply there too.
    """

    name: str
    description: str
    parameters: dict[str, Any]
    handler: Handler
    risk: Risk = "read"
    target: Target | None = None
    assess: Assess | None = field(default=None, compare=False)
    acts_in: ActsIn | None = field(default=None, compare=False)
    validator: Draft202012Validator = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        Draft202012Validator.check_schema(self.parameters)
        object.__setattr__(self, "validator", Draft202012Validator(self.parameters))

    @classmethod
    def from_function(
        cls,
        handler: Handler,
        *,
        parameters: dict[str, Any],
        risk: Risk = "read",
        target: Target | None = None,
        assess: Assess | None = None,
        acts_in: ActsIn | None = None,
    ) -> Tool:
        """A tool named after ``handler``, described by the first paragraph of its docstring."""
        doc = inspect.getdoc(handler) or ""
        description = " ".join(doc.split("\n\n", 1)[0].split())
        if not description:
            raise ValueError(f"tool {handler.__name__} needs a docstring: it is the description")
        return cls(
            handler.__name__, description, parameters, handler, risk, target, assess, acts_in
        )

    def target_of(self, arguments: dict[str, Any]) -> str:
        """What a call with ``arguments`` acts on, readable; the tool's name when unknown."""
        return self.target(arguments) if self.target else self.name

    async def risk_of(self, context: ToolContext, arguments: dict[str, Any]) -> Risk:
        """The risk of calling this tool with ``arguments``: ``assess``'s answer when the tool
        has one, else the declared ``risk``. The approval gate asks this before a call."""
        if self.assess is not None:
            return await self.assess(context, arguments)
        return self.risk

    def argument_errors(self, arguments: Any) -> list[str]:
        """Readable schema violations (empty when ``arguments`` is valid)."""
        return [
            f"{'/'.join(map(str, error.path)) or 'arguments'}: {error.message}"
            for error in sorted(self.validator.iter_errors(arguments), key=lambda e: list(e.path))
        ]

    def openai_spec(self) -> dict[str, Any]:
        """The entry for Chat Completions' ``tools`` array."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }


class ToolRegistry:
    def __init__(self, tools: Iterable[Tool] = ()) -> None:
        self._tools: dict[str, Tool] = {}
        for tool in tools:
            self.register(tool)

    def register(self, tool: Tool) -> None:
        """Raises ValueError when a tool of that name is already registered."""
        if tool.name in self._tools:
            raise ValueError(f"tool {tool.name!r} is registered twice")
        self._tools[tool.name] = tool

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def for_persona(self, persona: Persona) -> list[Tool]:
        """The registered tools among the persona's enabled ones, in the persona's order."""
        return [self._tools[name] for name in persona.tools if name in self._tools]

    def __iter__(self):
        return iter(self._tools.values())


async def invoke(
    tool: Tool, context: ToolContext, arguments: dict[str, Any], time_limit: float
) -> tuple[str, str]:
    """Run ``tool``'s handler with validated ``arguments`` within ``time_limit`` seconds.

    Returns ``(status, content)``: status ``ok``, ``error`` or ``timeout``; content is the
    result as text (JSON for structured results) or a readable ``error: …`` line. Never raises
    for a tool's failure; cancellation propagates.
    """
    try:
        result = await asyncio.wait_for(tool.handler(context, **arguments), time_limit)
    except TimeoutError:
        return "timeout", f"error: the tool did not finish within {time_limit:g} s"
    except ToolError as exc:
        return "error", f"error: {exc}"
    except Exception as exc:  # a broken tool must not end the turn; the model is told
        log.exception("tool_crashed", tool=tool.name)
        return "error", f"error: the tool failed unexpectedly ({type(exc).__name__})"
    if isinstance(result, str):
        return "ok", result
    return "ok", json.dumps(result, ensure_ascii=False, default=str)
