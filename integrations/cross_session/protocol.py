"""Cross-session protocol v1: JSON-RPC 2.0 messages over WebSocket, MCP tool shapes.

Wire rules: JSON-RPC 2.0 (https://www.jsonrpc.org/specification) for envelopes and error
codes; MCP's ``tools/call`` params ``{name, arguments}`` and result
``{content:[{type:"text",text}], structuredContent?, isError}`` for actions. The full
protocol is written down in docs/cross-session-protocol.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from integrations import json_limits
from integrations.errors import IntegrationError

JSONRPC = "2.0"

# JSON-RPC 2.0 error codes (§5.1) and ours.
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
SERVER_ERROR = -32000  # implementation-defined server error: limits (data.reason says which)
AUTH_ERROR = -32001  # no or bad token; the socket is then closed with CLOSE_AUTH

# WebSocket close codes (RFC 6455 §7.4.1; 4000–4999 are for applications).
CLOSE_AUTH = 4401
CLOSE_POLICY = 1008  # rate limit or session limit exceeded
CLOSE_TOO_BIG = 1009
CLOSE_UNSUPPORTED = 1003  # binary frames
CLOSE_GOING_AWAY = 1001

# Methods.
REGISTER = "session.register"
UPDATE = "session.update"
REFRESH = "session.refresh"
PING = "ping"
TOOLS_CALL = "tools/call"

MAX_TOOLS = 100
MAX_TITLE = 200
MAX_APP = 64


class ProtocolError(Exception):
    """A message that breaks the protocol; ``code`` is its JSON-RPC error code."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data


class CrossSessionError(IntegrationError):
    """A session could not be listed or reached.

    ``reason`` is one of ``not_found`` (no such live session for this user),
    ``session_gone`` (its instance no longer answers), ``unknown_tool``, ``timeout``,
    ``tool_error`` (the application answered with a JSON-RPC error) and
    ``routing_unavailable`` (Redis is unreachable, so other instances cannot be reached).
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__("cross_session", message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Owner:
    """Who a session belongs to: the tenant id (``team_id``, or ``enterprise_id`` for an
    org-wide install) and the Slack user id, both taken from a verified token."""

    team_id: str
    slack_user_id: str


def request(id_: int | str, method: str, params: dict[str, Any]) -> str:
    return json.dumps({"jsonrpc": JSONRPC, "id": id_, "method": method, "params": params})


def result(id_: int | str | None, value: Any) -> str:
    return json.dumps({"jsonrpc": JSONRPC, "id": id_, "result": value})


def error(id_: int | str | None, code: int, message: str, data: Any = None) -> str:
    body: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        body["data"] = data
    return json.dumps({"jsonrpc": JSONRPC, "id": id_, "error": body})


def parse(text: str, max_depth: int = json_limits.DEFAULT_MAX_DEPTH) -> dict[str, Any]:
    """One JSON-RPC 2.0 request, notification or response object.

    Raises:
        ProtocolError: -32700 when ``text`` is not JSON or nests deeper than ``max_depth``
            levels, -32600 when it is not a JSON-RPC 2.0 object (batches are not part of
            protocol v1).
    """
    try:
        message = json_limits.loads(text, max_depth)
    except json_limits.JSONLimitError as exc:
        raise ProtocolError(PARSE_ERROR, f"parse error: {exc}") from None
    if not isinstance(message, dict) or message.get("jsonrpc") != JSONRPC:
        raise ProtocolError(INVALID_REQUEST, 'expected a JSON-RPC 2.0 object ("jsonrpc":"2.0")')
    id_ = message.get("id")
    if id_ is not None and (isinstance(id_, bool) or not isinstance(id_, int | str)):
        raise ProtocolError(INVALID_REQUEST, "id must be a string or an integer")
    if "method" in message:
        if not isinstance(message["method"], str):
            raise ProtocolError(INVALID_REQUEST, "method must be a string")
        if not isinstance(message.get("params", {}), dict):
            raise ProtocolError(INVALID_REQUEST, "params must be an object")
    elif id_ is None or ("result" in message) == ("error" in message):
        raise ProtocolError(INVALID_REQUEST, "a response needs an id and one of result or error")
    return message


def tool_specs(value: Any) -> list[dict[str, Any]]:
    """Validated MCP tool declarations: ``[{name, description, inputSchema, annotations?}]``.

    Raises:
        ProtocolError: -32602 naming the first bad entry.
    """
    if not isinstance(value, list) or len(value) > MAX_TOOLS:
        raise ProtocolError(INVALID_PARAMS, f"tools must be a list of at most {MAX_TOOLS}")
    tools: list[dict[str, Any]] = []
    names: set[str] = set()
    for index, entry in enumerate(value):
        where = f"tools[{index}]"
        if not isinstance(entry, dict):
            raise ProtocolError(INVALID_PARAMS, f"{where} must be an object")
        name, description = entry.get("name"), entry.get("description", "")
        schema = entry.get("inputSchema", {"type": "object"})
        annotations = entry.get("annotations")
        if not isinstance(name, str) or not name or len(name) > 128 or name in names:
            raise ProtocolError(INVALID_PARAMS, f"{where}.name must be a unique non-empty string")
        if not isinstance(description, str):
            raise ProtocolError(INVALID_PARAMS, f"{where}.description must be a string")
        if not isinstance(schema, dict) or schema.get("type") != "object":
            raise ProtocolError(INVALID_PARAMS, f"{where}.inputSchema must be an object schema")
        try:
            Draft202012Validator.check_schema(schema)
        except SchemaError as exc:
            raise ProtocolError(
                INVALID_PARAMS, f"{where}.inputSchema is invalid: {exc.message}"
            ) from None
        if annotations is not None and not isinstance(annotations, dict):
            raise ProtocolError(INVALID_PARAMS, f"{where}.annotations must be an object")
        names.add(name)
        spec = {"name": name, "description": description, "inputSchema": schema}
        if annotations:
            spec["annotations"] = annotations
        tools.append(spec)
    return tools


def text_param(params: dict[str, Any], key: str, limit: int, default: str = "") -> str:
    """A short string parameter. Raises ProtocolError -32602 when it is not one."""
    value = params.get(key, default)
    if not isinstance(value, str) or len(value) > limit:
        raise ProtocolError(INVALID_PARAMS, f"{key} must be a string of at most {limit} chars")
    return value


def is_read_only(tool: dict[str, Any]) -> bool:
    """Whether a declared tool says it changes nothing (MCP ``annotations.readOnlyHint``)."""
    annotations = tool.get("annotations") or {}
    return annotations.get("readOnlyHint") is True


def call_result(value: Any) -> dict[str, Any]:
    """An application's ``tools/call`` result checked against MCP's shape.

    Raises:
        CrossSessionError: ``tool_error`` when the shape is wrong.
    """
    if (
        not isinstance(value, dict)
        or not isinstance(value.get("content", []), list)
        or not isinstance(value.get("isError", False), bool)
    ):
        raise CrossSessionError(
            "tool_error", "the application answered tools/call with a malformed result"
        )
    return value
