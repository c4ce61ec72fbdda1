"""The tool registry and one module per tool family.

:func:`build_registry` assembles the built-in tools with the services they need.
"""

from __future__ import annotations

from agents.status import StatusBoard
from agents.tools import clock, persona_status, slack_post
from agents.tools.registry import Tool, ToolContext, ToolError, ToolRegistry

__all__ = ["Tool", "ToolContext", "ToolError", "ToolRegistry", "build_registry"]


def build_registry(status: StatusBoard) -> ToolRegistry:
    registry = ToolRegistry()
    registry.register(clock.TOOL)
    registry.register(persona_status.build(status))
    registry.register(slack_post.TOOL)
    return registry
