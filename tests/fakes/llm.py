"""A fake OpenAI-compatible server: ``POST /v1/chat/completions`` and ``GET /v1/models``.

Replies come from :attr:`FakeLLM.script`, a function of the request body. The default script:

* the last message is a tool result → ``"Tool result: <content>"``;
* the last user message mentions "time" and ``get_time`` is offered → a ``get_time`` call;
* otherwise → ``"<echo> <last user message> (user messages seen: N)"``, N counting the user
  messages in the request, so tests can see what the memory carried.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict[str, Any] | str  # a string is sent verbatim (a model's malformed JSON)


Reply = str | list[ToolCall]


def default_script(request: dict[str, Any]) -> Reply:
    messages = request["messages"]
    last = messages[-1]
    if last["role"] == "tool":
        return f"Tool result: {last['content']}"
    users = [m for m in messages if m["role"] == "user"]
    text = users[-1]["content"] if users else ""
    offered = {t["function"]["name"] for t in request.get("tools", [])}
    if "time" in text.lower() and "get_time" in offered:
        return [ToolCall("get_time", {})]
    return f"<echo> {text} (user messages seen: {len(users)})"


class FakeLLM:
    def __init__(self, api_key: str | None = None) -> None:
        self.api_key = api_key
        self.script: Callable[[dict[str, Any]], Reply] = default_script
        self.requests: list[dict[str, Any]] = []
        self.url = ""
        self._faults: list[int] = []
        self._delay = 0.0
        self._ids = itertools.count(1)
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> FakeLLM:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._completions)
        app.router.add_get("/v1/models", self._models)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()

    @property
    def base_url(self) -> str:
        """What ``OPENAI_BASE_URL`` is set to."""
        return self.url + "/v1"

    def fail_next(self, status: int = 500, times: int = 1) -> None:
        self._faults.extend([status] * times)

    def delay(self, seconds: float) -> None:
        self._delay = seconds

    async def wait_for_requests(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        try:
            async with self._changed:
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: len(self.requests) >= count), timeout
                )
        except TimeoutError:
            seen = len(self.requests)
            raise AssertionError(f"expected {count} LLM requests, got {seen}") from None
        return self.requests[:count]

    def _unauthorized(self, request: web.Request) -> web.Response | None:
        if self.api_key and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return _error(401, "Incorrect API key provided.", "invalid_api_key")
        return None

    async def _models(self, request: web.Request) -> web.Response:
        return self._unauthorized(request) or web.json_response(
            {"object": "list", "data": [{"id": "fake-model", "object": "model", "created": 0,
                                         "owned_by": "tests"}]}
        )

    async def _completions(self, request: web.Request) -> web.Response:
        if denied := self._unauthorized(request):
            return denied
        body = await request.json()
        self.requests.append(body)
        async with self._changed:
            self._changed.notify_all()
        if self._delay:
            await asyncio.sleep(self._delay)
        if self._faults:
            status = self._faults.pop(0)
            return _error(status, f"injected HTTP {status}", "server_error")
        if body.get("stream"):
            return _error(400, "streaming is not supported by this fake", "invalid_request_error")
        reply = self.script(body)
        prompt_tokens = len(json.dumps(body["messages"])) // 4
        if isinstance(reply, str):
            message = {"role": "assistant", "content": reply}
            finish, completion_tokens = "stop", max(1, len(reply) // 4)
        else:
            message = {"role": "assistant", "content": None, "tool_calls": [
                {"id": f"call_{next(self._ids)}", "type": "function",
                 "function": {"name": c.name, "arguments": _arguments(c)}}
                for c in reply
            ]}
            finish, completion_tokens = "tool_calls", 10 * len(reply)
        return web.json_response({
            "id": f"chatcmpl-{next(self._ids)}", "object": "chat.completion",
            "created": int(time.time()), "model": body.get("model", "fake-model"),
            "choices": [{"index": 0, "message": message, "finish_reason": finish,
                         "logprobs": None}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        })


def _error(status: int, message: str, code: str) -> web.Response:
    return web.json_response(
        {"error": {"message": message, "type": code, "param": None, "code": code}}, status=status
    )


def _arguments(call: ToolCall) -> str:
    return call.arguments if isinstance(call.arguments, str) else json.dumps(call.arguments)
