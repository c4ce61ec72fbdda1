"""End-to-end helpers: the workspace the fake Slack knows, and starting ``jamono run``."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator

from storage.secrets import generate_key
from tests.cross_session_support import SECRET
from tests.fakes import FakeLLM, FakeSlack, post_event, post_form
from tests.process import JamonoProcess, free_port

SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
ACME, ACME_TOKEN = "T0ACME", "xoxb-acme-token"
GLOBEX, GLOBEX_TOKEN = "T0GLOBEX", "xoxb-globex-token"
BOT = "U0NOX"
ALICE, BOB = "U0ALICE", "U0BOB"
CLIENT_ID, CLIENT_SECRET = "1111.2222", "oauth-client-secret"


def base_settings(slack: FakeSlack, llm: FakeLLM, database_url: str) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "SLACK_API_URL": slack.api_url,
        "OPENAI_BASE_URL": llm.base_url,
        "OPENAI_API_KEY": "sk-test",
        "JAMONO_MODEL": "fake-model",
        "LOG_LEVEL": "INFO",
    }


def bot_token_settings(slack: FakeSlack, llm: FakeLLM, database_url: str) -> dict[str, str]:
    """Settings of a process serving ACME alone with its bot token, events over signed HTTP."""
    return base_settings(slack, llm, database_url) | {
        "SLACK_BOT_TOKEN": ACME_TOKEN, "SLACK_SIGNING_SECRET": SIGNING_SECRET,
    }


def oauth_settings(slack: FakeSlack, llm: FakeLLM, database_url: str) -> dict[str, str]:
    """Settings of a process serving OAuth installs from ``slack`` (the fake knows the app),
    with the cross-session gateway on and a new secret key."""
    slack.set_oauth_app(CLIENT_ID, CLIENT_SECRET)
    return base_settings(slack, llm, database_url) | {
        "SLACK_CLIENT_ID": CLIENT_ID, "SLACK_CLIENT_SECRET": CLIENT_SECRET,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET, "JAMONO_GATEWAY_SECRET": SECRET,
        "JAMONO_SECRET_KEY": generate_key(),
    }


async def started(settings: dict[str, str], workdir) -> JamonoProcess:
    process = JamonoProcess(settings, workdir, free_port())
    await process.start()
    return process


@contextlib.asynccontextmanager
async def replicas(
    settings: dict[str, str], workdir, count: int = 2
) -> AsyncIterator[list[JamonoProcess]]:
    """``count`` ``jamono run`` processes with the same settings (one database, one Redis),
    each of which must exit 0 at the end."""
    processes: list[JamonoProcess] = []
    try:
        for _ in range(count):
            processes.append(await started(settings, workdir))
        yield processes
    finally:
        for process in processes:
            assert await process.stop() == 0, process.output


async def slash_command(http, jamono, slack, name, text="", user=ALICE, team=ACME,
                        channel="C0OPS") -> dict:
    """Run a signed slash command; returns what the process posted to its ``response_url``."""
    fields = slack.slash_command_payload(team, user, channel, name, text)
    status, _ = await post_form(http, jamono.url + "/slack/events", SIGNING_SECRET, fields)
    assert status == 200
    url_id = fields["response_url"].rsplit("/", 1)[1]
    await slack.wait_for_response(lambda body: any(i == url_id for i, _ in slack.responses))
    return next(body for i, body in slack.responses if i == url_id)


async def home_tab(http, jamono, slack, user) -> str:
    """Open ``user``'s Home tab (``app_home_opened``); returns the published view as JSON."""
    event = {"type": "app_home_opened", "user": user, "channel": "D" + user[1:], "tab": "home",
             "event_ts": slack.new_ts()}
    status, _ = await post_event(http, jamono.url + "/slack/events", SIGNING_SECRET,
                                 slack.event_callback(ACME, event))
    assert status == 200
    [home] = await slack.wait_for("views.publish")
    view = home.params["view"]
    return json.dumps(json.loads(view) if isinstance(view, str) else view)


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
