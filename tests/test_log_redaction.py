"""Log redaction, as the attack: someone who can read the logs (a log shipper, a support
engineer, a shared dashboard) of a process running at ``LOG_LEVEL=DEBUG`` must find no Slack
token, no JWT, no key and no client secret in them, whatever logged it."""

from __future__ import annotations

import io
import json
import logging
import re

import pytest
import structlog

from agents.llm import LLMClient
from bot.logs import REDACTED, RedactingFilter, Redactor, redacting_handler
from bot.settings import load_settings
from storage.secrets import generate_key
from tests.e2e import (
    ACME,
    ACME_TOKEN,
    ALICE,
    CLIENT_SECRET,
    GLOBEX,
    GLOBEX_TOKEN,
    SIGNING_SECRET,
    oauth_settings,
    started,
)
from tests.process import free_port
from tests.test_e2e_oauth import command, install, mention

JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJVMEFMSUNFIiwidGVhbSI6IlQwQUNNRSJ9."
    "c2lnbmF0dXJlLWJ5dGVzLWhlcmU"
)
# Fixed values, not generated ones: parametrized ids must be equal in every pytest-xdist worker.
FERNET_KEY = "amFtb25vLXJlZGFjdGlvbi10ZXN0LWtleS0zMmJ5dGU="
FERNET_TOKEN = (  # SecretBox([FERNET_KEY]).encrypt("jira-api-token")
    "gAAAAABrDMfhgqlRye4_7OM7Ny3kDPLiyeK5HneKSSuypGOoKswtHH44iPPH"
    "qt8j056dZ8Ta-XnToAXCQwACbBZClEfQX-XoLw=="
)
PEM = (
    "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n"
    "-----END PRIVATE KEY-----"
)


@pytest.mark.parametrize(
    "text, secret",
    [
        ("bot token xoxb-1111-2222-abcdEFGH", "xoxb-1111-2222-abcdEFGH"),
        ("user xoxp-1-2-3-abc done", "xoxp-1-2-3-abc"),
        ("refresh=xoxe-1-My0xLTIyMTk", "xoxe-1-My0xLTIyMTk"),
        ("rotated xoxe.xoxb-1-MS0yLTIy end", "xoxe.xoxb-1-MS0yLTIy"),
        ("legacy xoxa-2-abc and xoxr-abc-def", "xoxa-2-abc"),
        ("legacy xoxa-2-abc and xoxr-abc-def", "xoxr-abc-def"),
        ("app token xapp-1-A0123-456-abcdef", "xapp-1-A0123-456-abcdef"),
        ("{'url': 'https://hooks.slack.com/services/T0/B0/abcdEFGH'}", "abcdEFGH"),
        ("response_url https://hooks.slack.com/commands/T0/123/xyzSECRET", "xyzSECRET"),
        ("{'url': 'wss://wss-primary.slack.com/link/?ticket=9f8e7d6c&app_id=A0'}", "9f8e7d6c"),
        (f"```{JWT}```", JWT),
        (f"link token: {JWT}.", JWT),
        (f"stored {FERNET_TOKEN}", FERNET_TOKEN),
        (f"JAMONO_SECRET_KEY={FERNET_KEY}", FERNET_KEY),
        (f"key '{FERNET_KEY}' ", FERNET_KEY),
        (f"gateway key {PEM}", "MIGHAgEAMBMGByqGSM49"),
        ("headers: {'Authorization': 'Bearer abc.def-ghi_123'}", "abc.def-ghi_123"),
        ("Authorization: Basic MTExMS4yMjIyOm9hdXRoLWNsaWVudC1zZWNyZXQ=", "MTExMS4yMjIy"),
        ("POST /oauth?client_secret=s3cr3t-v4lue&code=4444.5555&x=1", "s3cr3t-v4lue"),
        ("POST /oauth?client_secret=s3cr3t-v4lue&code=4444.5555&x=1", "4444.5555"),
        ("grant_type=refresh_token&refresh_token=opaque-refresh-value", "opaque-refresh-value"),
        ("data: {'code': 'code-acme', 'redirect_uri': None}", "code-acme"),
        ("query: {'code': ['code-acme'], 'state': ['s']}", "code-acme"),
        ('body: {"ok": true, "access_token": "opaque-access-value"}', "opaque-access-value"),
        ("{'client_secret': 'hunter2hunter2'}", "hunter2hunter2"),
        ("openai key sk-proj-abcdefghijklmnop1234", "sk-proj-abcdefghijklmnop1234"),
        ("dsn postgresql://jamono:pa55word@db:5432/jamono", "pa55word"),
        ("caldav https://nox:calpass@cal.example.com/dav/", "calpass"),
    ],
)
def test_secrets_of_every_shape_are_redacted(text, secret):
    redacted = Redactor().redact(text)
    assert secret not in redacted
    assert REDACTED in redacted


@pytest.mark.parametrize(
    "text",
    [
        "turn_finished prompt_tokens=812 completion_tokens=54 max_tokens=1024",
        "GET http://127.0.0.1:8080/slack/events 200",
        "event_id=Ev0123ABC team_id=T0ACME channel_id=C0SHARED thread_ts=1700000100.000100",
        "{'token_type': 'bot', 'ok': True, 'code': 200}",
        "created PROJ-123 in project PROJ",
        "circuit jira for T0ACME is open",
    ],
)
def test_ordinary_text_is_left_alone(text):
    assert Redactor().redact(text) == text


def test_configured_secrets_without_a_shape_are_redacted():
    redactor = Redactor([SIGNING_SECRET, "short"])
    assert redactor.redact(f"secret {SIGNING_SECRET}!") == f"secret {REDACTED}!"
    assert redactor.redact("a short note") == "a short note"  # too short to look for


def test_the_settings_hand_every_secret_value_to_the_redactor():
    old, new = generate_key(), generate_key()
    settings = load_settings(
        _env_file=None, SLACK_SIGNING_SECRET=SIGNING_SECRET, SLACK_BOT_TOKEN=ACME_TOKEN,
        JAMONO_SECRET_KEY=f"{new}, {old}", CALDAV_URL="https://cal.example.com/",
        CALDAV_CALENDAR="Ops", CALDAV_PASSWORD="calendar-password",
    )
    assert set(settings.secret_values()) == {
        SIGNING_SECRET, ACME_TOKEN, new, old, "calendar-password"
    }


def test_a_plain_stdlib_handler_with_the_filter_writes_no_secret():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler.addFilter(RedactingFilter(Redactor(["calendar-password"])))
    logger = logging.getLogger("tests.redaction.plain")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.debug("login %s with %r", "nox", {"password": "calendar-password", "t": ACME_TOKEN})
    out = stream.getvalue()
    assert out.startswith("DEBUG login nox with {'password': '[redacted]'")
    assert "calendar-password" not in out and ACME_TOKEN not in out


def capture(name: str, redactor: Redactor) -> tuple[logging.Logger, io.StringIO]:
    """A stdlib logger whose records go through the production handler into a buffer."""
    stream = io.StringIO()
    logger = logging.getLogger(f"tests.redaction.{name}")
    logger.handlers[:] = [
        redacting_handler(
            stream, structlog.processors.JSONRenderer(), [structlog.stdlib.add_log_level],
            redactor,
        )
    ]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, stream


def test_library_records_are_redacted_in_message_args_and_exception():
    logger, stream = capture("stdlib", Redactor())
    logger.debug("Received the following response - body: %s", {"access_token": ACME_TOKEN})
    try:
        raise RuntimeError(f"token {GLOBEX_TOKEN} was revoked")
    except RuntimeError:
        logger.exception("call failed with Authorization: Bearer %s", ACME_TOKEN)
    out = stream.getvalue()
    assert ACME_TOKEN not in out and GLOBEX_TOKEN not in out
    assert out.count(REDACTED) >= 3
    assert "RuntimeError" in out  # the traceback is kept, only the secret is gone


def test_structlog_events_are_redacted_in_every_field():
    std, stream = capture("structlog", Redactor())
    log = structlog.wrap_logger(
        std,
        processors=[structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.stdlib.BoundLogger,
    )
    try:
        raise ValueError(f"bad JWT {JWT}")
    except ValueError as exc:
        log.error(
            "listener_failed", error=repr(exc), exc_info=exc,
            body={"token": "verification-token-value", "nested": [f"link {JWT}"]},
            client_secret=CLIENT_SECRET, turns=3,
        )
    (line,) = stream.getvalue().splitlines()
    event = json.loads(line)
    assert JWT not in line and "verification-token-value" not in line
    assert CLIENT_SECRET not in line
    assert event["client_secret"] == REDACTED and event["turns"] == 3
    assert event["body"]["token"] == REDACTED
    assert "ValueError: bad JWT [redacted]" in event["exception"]


async def test_a_debug_log_of_install_and_link_holds_no_secret(http, slack, llm, sqlite_url,
                                                               tmp_path):
    settings = oauth_settings(slack, llm, sqlite_url) | {"LOG_LEVEL": "DEBUG"}
    process = await started(settings, tmp_path)
    try:
        await install(http, process, slack, ACME, ACME_TOKEN, "code-acme")
        await install(http, process, slack, GLOBEX, GLOBEX_TOKEN, "code-globex")
        await mention(http, process, slack, ACME, "hello", "1700000100.000100")
        await slack.wait_for("chat.postMessage",
                             lambda p: p.get("thread_ts") == "1700000100.000100")
        assert "I sent you a direct message" in await command(
            http, process, slack, GLOBEX, "/nox-link"
        )
        (dm,) = await slack.wait_for("chat.postMessage", lambda p: p.get("channel") == ALICE)
        link_token = re.search(r"```(.+?)```", dm.params["text"]).group(1)
    finally:
        assert await process.stop() == 0, process.output
    log = process.output
    # The attack worked before redaction: slack_sdk logged these exchanges at DEBUG.
    assert "oauth.v2.access" in log and "chat.postMessage" in log
    for secret in (
        ACME_TOKEN, GLOBEX_TOKEN, link_token, CLIENT_SECRET, SIGNING_SECRET,
        settings["JAMONO_SECRET_KEY"], settings["JAMONO_GATEWAY_SECRET"], "code-acme",
    ):
        assert secret not in log, secret
    assert "xoxb-" not in log and "eyJ" not in log
    assert "INSERT INTO" not in log  # no SQL echo: its parameters are every stored message
    assert REDACTED in log


async def test_an_llm_endpoint_with_credentials_is_shown_without_them():
    """Its failures are told to every workspace's users: the operator's proxy password must
    not travel with them."""
    client = LLMClient(
        "sk-test", f"http://proxyuser:proxy-pa55@127.0.0.1:{free_port()}/v1?api-key=k3y-value",
        timeout=2, max_retries=0,
    )
    try:
        reason = await client.check(within=2)
    finally:
        await client.close()
    assert reason == f"could not connect to the language model at {client.endpoint}"
    assert client.endpoint.startswith("http://127.0.0.1:") and client.endpoint.endswith("/v1")
    assert "proxy-pa55" not in reason and "k3y-value" not in reason
