"""The tool registry and one module per tool family.

:func:`build_registry` assembles the built-in tools with the services they need.
"""

from __future__ import annotations

from agents.connections import Connections
from agents.status import StatusBoard
from agents.tools import calendar, clock, jira, persona_status, slack_post
from agents.tools.registry import Tool, ToolContext, ToolError, ToolRegistry

__all__ = ["Tool", "ToolContext", "ToolError", "ToolRegistry", "build_registry"]


def build_registry(status: StatusBoard, connections: Connections) -> ToolRegistry:
    registry = ToolRegistry()
    registry.register(clock.TOOL)
    registry.register(persona_status.build(status))
    registry.register(slack_post.TOOL)
    for tool in [*jira.build(connections), *calendar.build(connections)]:
        registry.register(tool)
    return registry
