"""``persona_status``: the same health report as ``/nox-status``, for the model to read."""

from __future__ import annotations

from typing import Any

from agents.status import StatusBoard
from agents.tools.registry import Tool, ToolContext


def build(board: StatusBoard) -> Tool:
    async def persona_status(context: ToolContext) -> dict[str, Any]:
        """Your own health: model, whether the LLM endpoint answers, integrations, uptime, version and the last error in this workspace."""  # noqa: E501
        status = await board.collect(context.tenant, context.persona)
        return status.as_dict()

    return Tool.from_function(
        persona_status,
        parameters={"type": "object", "properties": {}, "additionalProperties": False},
    )
