"""End-to-end helpers: the workspace the fake Slack knows, and starting ``jamono run``."""

from __future__ import annotations

from tests.fakes import FakeLLM, FakeSlack, post_form
from tests.process import JamonoProcess, free_port

SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
ACME, ACME_TOKEN = "T0ACME", "xoxb-acme-token"
GLOBEX, GLOBEX_TOKEN = "T0GLOBEX", "xoxb-globex-token"
BOT = "U0NOX"
ALICE, BOB = "U0ALICE", "U0BOB"


def base_settings(slack: FakeSlack, llm: FakeLLM, database_url: str) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "SLACK_API_URL": slack.api_url,
        "OPENAI_BASE_URL": llm.base_url,
        "OPENAI_API_KEY": "sk-test",
        "JAMONO_MODEL": "fake-model",
        "LOG_LEVEL": "INFO",
    }


async def started(settings: dict[str, str], workdir) -> JamonoProcess:
    process = JamonoProcess(settings, workdir, free_port())
    await process.start()
    return process


def has_buttons(params):
    """Whether a chat.postMessage carries an approval request's Approve/Reject buttons."""
    blocks = params.get("blocks")
    return bool(blocks) and "approval_approve" in str(blocks)


def approval_id(message) -> str:
    """The approval request id an approval message's buttons carry."""
    (actions,) = [b for b in message.blocks if b["type"] == "actions"]
    return actions["elements"][0]["value"]


async def click(http, jamono, slack, message, request_id, user=ALICE, approve=True, **kw):
    """Press Approve (or Reject) on an approval message, as ``user``, with a signed request."""
    fields = slack.block_actions_payload(
        ACME, user, message, "approval_approve" if approve else "approval_reject", request_id
    )
    status, _ = await post_form(http, jamono.url + "/slack/events", SIGNING_SECRET, fields, **kw)
    assert status == 200
    return fields
