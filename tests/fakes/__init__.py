"""Wire-level fakes of remote SaaS: Slack (Web API, Socket Mode, response_url) and an
OpenAI-compatible LLM. They are real HTTP/WebSocket servers on 127.0.0.1."""

from tests.fakes.llm import FakeLLM, ToolCall
from tests.fakes.signing import post_event, post_form, sign
from tests.fakes.slack import FakeSlack

__all__ = ["FakeLLM", "FakeSlack", "ToolCall", "post_event", "post_form", "sign"]
