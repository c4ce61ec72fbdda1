"""``list_sessions`` and ``execute_on_session``: act in the speaking user's open applications.

The owner of the sessions is always the speaking Slack user in this tenant (from the
:class:`ToolContext`), never an argument: the model cannot reach anyone else's sessions.
"""

from __future__ import annotations

from typing import Any

from agents.tools.registry import Risk, Tool, ToolContext, ToolError
from integrations.cross_session import CrossSessionError, Owner, Router
from integrations.cross_session.protocol import is_read_only

RESULT_TEXT_LIMIT = 6_000  # characters of an application's text answer given to the model


def owner_of(context: ToolContext) -> Owner:
    """The session owner a tool call may reach: tenant id and speaking Slack user."""
    return Owner(context.tenant.id, context.user_id)


def build(router: Router, time_limit: float) -> list[Tool]:
    """The two tools over ``router``; ``time_limit`` (seconds) bounds one action."""

    async def list_sessions(context: ToolContext) -> dict[str, Any]:
        """The live sessions of the user you are talking with: their open applications (Excel, web apps, desktop tools) and the actions each offers.

        Returns ``sessions``: ``[{session_id, app, title, tools:[{name, description,
        inputSchema}], connected_since}]``.
        """  # noqa: E501
        sessions = await router.list(owner_of(context))
        return {"sessions": sessions, "count": len(sessions)}

    async def execute_on_session(
        context: ToolContext, session_id: str, tool: str, arguments: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Run one action (a tool listed by list_sessions) in one of the user's live sessions.

        Returns the application's answer: ``text`` and, when it sends one,
        ``structuredContent``. Raises ToolError with the reason when the session is not the
        user's or is gone, the action is unknown, times out or the application reports an error.
        """
        try:
            result = await router.call(
                owner_of(context), session_id, tool, arguments or {}, time_limit
            )
        except CrossSessionError as exc:
            raise ToolError(str(exc)) from None
        text = "\n".join(
            item.get("text", "")
            for item in result.get("content", [])
            if isinstance(item, dict) and item.get("type") == "text"
        )[:RESULT_TEXT_LIMIT]
        if result.get("isError"):
            raise ToolError(f"the application reported an error: {text or 'no details'}")
        answer: dict[str, Any] = {"text": text}
        if "structuredContent" in result:
            answer["structuredContent"] = result["structuredContent"]
        return answer

    async def assess(context: ToolContext, arguments: dict[str, Any]) -> Risk:
        """``read`` only when the target tool declares ``annotations.readOnlyHint: true``."""
        try:
            session = await router.describe(owner_of(context), str(arguments.get("session_id")))
        except CrossSessionError:
            return "write"
        if session is None:
            return "write"
        declared = next((t for t in session["tools"] if t["name"] == arguments.get("tool")), None)
        return "read" if declared is not None and is_read_only(declared) else "write"

    return [
        Tool.from_function(
            list_sessions,
            parameters={"type": "object", "properties": {}, "additionalProperties": False},
        ),
        Tool.from_function(
            execute_on_session,
            parameters={
                "type": "object",
                "properties": {
                    "session_id": {
                        "type": "string",
                        "description": "A session_id from list_sessions.",
                    },
                    "tool": {
                        "type": "string",
                        "description": "The name of one of that session's tools.",
                    },
                    "arguments": {
                        "type": "object",
                        "description": "Arguments matching the tool's inputSchema.",
                    },
                },
                "required": ["session_id", "tool"],
                "additionalProperties": False,
            },
            risk="write",
            assess=assess,
        ),
    ]
