"""The tool registry and one module per tool family.

:func:`build_registry` assembles the built-in tools with the services they need.
"""

from __future__ import annotations

from agents.connections import Connections
from agents.status import StatusBoard
from agents.tools import calendar, clock, jira, persona_status, sessions, slack_post
from agents.tools.registry import Tool, ToolContext, ToolError, ToolRegistry
from integrations.cross_session import Router

__all__ = ["Tool", "ToolContext", "ToolError", "ToolRegistry", "build_registry"]


def build_registry(
    status: StatusBoard,
    *,
    connections: Connections | None = None,
    session_router: Router | None = None,
    action_time_limit: float = 30.0,
) -> ToolRegistry:
    """The built-in tools, plus those whose services run: Jira and calendar tools with the
    workspace ``connections``, cross-session tools with the gateway's ``session_router`` (each
    action bounded by ``action_time_limit`` seconds)."""
    registry = ToolRegistry()
    registry.register(clock.TOOL)
    registry.register(persona_status.build(status))
    registry.register(slack_post.TOOL)
    if connections is not None:
        for tool in [*jira.build(connections), *calendar.build(connections)]:
            registry.register(tool)
    if session_router is not None:
        for tool in sessions.build(session_router, action_time_limit):
            registry.register(tool)
    return registry
