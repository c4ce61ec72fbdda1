"""The LLM client: Chat Completions with tools against any OpenAI-compatible endpoint."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import openai
from openai.types.chat import ChatCompletion

from storage.secrets import without_userinfo

NOT_CONFIGURED_HINT = (
    "No language model is configured, so I can only run slash commands. An operator can set "
    "`OPENAI_API_KEY` (OpenAI), or `OPENAI_BASE_URL` for a compatible server such as Ollama, "
    "vLLM, llama.cpp, LM Studio or LiteLLM, and restart Jamono."
)


class LLMError(Exception):
    """A failed LLM call, with a message fit to show a Slack user (no traceback, no secrets)."""


@dataclass(frozen=True, slots=True)
class ToolCallRequest:
    """One entry of ``message.tool_calls``; ``arguments`` is the raw JSON string from the model."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class Completion:
    content: str | None
    tool_calls: tuple[ToolCallRequest, ...]
    model: str
    prompt_tokens: int
    completion_tokens: int
    duration_ms: int

    def as_chat_message(self) -> dict[str, Any]:
        """The assistant message to append to the history (OpenAI Chat Completions shape)."""
        message: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.tool_calls:
            message["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                }
                for call in self.tool_calls
            ]
        return message


class LLMClient:
    """Thin wrapper over ``openai.AsyncOpenAI`` that turns failures into :class:`LLMError`.

    ``timeout`` is in seconds per HTTP attempt; the library retries connection errors, 408,
    409, 429 and 5xx ``max_retries`` times (contracts.md, "OpenAI-compatible LLMs").
    """

    def __init__(
        self, api_key: str | None, base_url: str | None, timeout: float, max_retries: int = 2
    ) -> None:
        # Local servers (Ollama, vLLM …) ignore the key, but the library insists on one.
        self._client = openai.AsyncOpenAI(
            api_key=api_key or "not-needed",
            base_url=base_url,
            timeout=timeout,
            max_retries=max_retries,
        )
        # Shown to users in error messages: without credentials in its userinfo or query.
        parts = urlsplit(without_userinfo(str(self._client.base_url)))
        self.endpoint = parts._replace(query="", fragment="").geturl().rstrip("/")
        self.timeout = timeout

    async def complete(
        self,
        *,
        model: str,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        temperature: float,
    ) -> Completion:
        """One Chat Completions call. Raises :class:`LLMError` with a readable reason."""
        started = time.perf_counter()
        kwargs: dict[str, Any] = {"model": model, "messages": messages, "temperature": temperature}
        if tools:
            kwargs["tools"] = tools
        try:
            # Our messages and tool specs are already wire-format JSON, so the request goes
            # through the library's generic ``post`` (retries, timeouts, errors included):
            # ``chat.completions.create`` would walk every message of the history again to
            # transform TypedDicts, a quarter of a turn's CPU time in bench/turn_overhead.py.
            response = await self._client.post(
                "/chat/completions", body=kwargs, cast_to=ChatCompletion
            )
        except openai.OpenAIError as exc:
            raise LLMError(self.describe(exc, model)) from exc
        if not response.choices:
            raise LLMError(f"the language model at {self.endpoint} returned no choices")
        message = response.choices[0].message
        usage = response.usage
        return Completion(
            content=message.content,
            tool_calls=tuple(
                ToolCallRequest(call.id, call.function.name, call.function.arguments or "{}")
                for call in message.tool_calls or ()
                if call.type == "function"
            ),
            model=response.model or model,
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            duration_ms=round((time.perf_counter() - started) * 1000),
        )

    async def check(self, within: float = 3.0) -> str | None:
        """``None`` when ``GET /models`` answers within ``within`` seconds, else the reason."""
        try:
            await self._client.with_options(timeout=within, max_retries=0).models.list()
        except openai.OpenAIError as exc:
            return self.describe(exc)
        return None

    def describe(self, exc: openai.OpenAIError, model: str | None = None) -> str:
        where = self.endpoint
        if isinstance(exc, openai.APITimeoutError):
            return f"the language model at {where} did not answer within {self.timeout:g} s"
        if isinstance(exc, openai.APIConnectionError):
            return f"could not connect to the language model at {where}"
        if isinstance(exc, openai.AuthenticationError):
            return f"the language model at {where} rejected the API key (HTTP 401)"
        if isinstance(exc, openai.RateLimitError):
            return f"the language model at {where} is rate limiting requests (HTTP 429)"
        if isinstance(exc, openai.NotFoundError) and model:
            return f"the model {model!r} was not found at {where} (HTTP 404)"
        if isinstance(exc, openai.APIStatusError):
            return f"the language model at {where} answered HTTP {exc.status_code}"
        return f"the language model call failed ({type(exc).__name__})"

    async def close(self) -> None:
        await self._client.close()
