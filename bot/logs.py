"""Structured logging: one event per line, console or JSON, with tenant/request ids bound.

Library loggers (Bolt, slack_sdk, aiohttp, SQLAlchemy) go through the same formatter, so an
operator reads one stream. Bind per-request fields with ``structlog.contextvars``.

Every line is redacted whatever the level: at DEBUG slack_sdk logs each Web API request and
response in full (``oauth.v2.access`` answers with tokens, a ``/nox-link`` DM carries a JWT),
and an exception's text may quote a credential. :class:`Redactor` replaces secrets in the
message, in every event field and in the exception text with :data:`REDACTED`.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, Mapping
from typing import IO, Any

import structlog

REDACTED = "[redacted]"

# Names whose value is a secret, as a query/form field, a dict/JSON key or an event field:
# client_secret, refresh_token, bot_token, api_token, password, api_key … (not max_tokens).
_SECRET_NAME = (
    r"[A-Za-z_]*(?:secret|token|password|passwd|api_key|apikey|private_key|secret_key)"
    r"|code|ticket"  # OAuth codes; Socket Mode's wss://…?ticket=
)
_SECRET_FIELD = re.compile(rf"(?i)^(?:{_SECRET_NAME}|authorization|cookie|set-cookie)$")

# (pattern, replacement), applied in order.
_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    # PEM private keys (the gateway's RS256/ES256 key), whole block.
    (
        re.compile(
            r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|$)",
            re.S,
        ),
        REDACTED,
    ),
    # Slack tokens: xoxb/xoxp/xoxe/xoxa/xoxr/xoxs…, rotating "xoxe.xoxb-1-…", app-level
    # xapp- (https://api.slack.com/concepts/token-types).
    (re.compile(r"\bxox[a-z](?:\.xox[a-z])?-[A-Za-z0-9-]+"), REDACTED),
    (re.compile(r"\bxapp-[A-Za-z0-9-]+"), REDACTED),
    # Slack incoming webhooks, workflow triggers and response_urls: the path is the credential.
    (
        re.compile(
            r"(https://hooks\.slack\.com/)(?:services|workflows|triggers|commands|actions)/"
            r"[^\s'\"<>]+"
        ),
        rf"\1{REDACTED}",
    ),
    # JWS/JWE compact serialisation (RFC 7515 §7.1): base64url parts, the header a JSON
    # object ("{\"" encodes as "eyJ").
    (re.compile(r"\beyJ[A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]*){2,4}"), REDACTED),
    # Fernet tokens (version byte 0x80 encodes as "gAAAAA", https://github.com/fernet/spec)
    # and Fernet keys (32 bytes: 43 url-safe base64 characters and "=").
    (re.compile(r"\bgAAAAA[A-Za-z0-9_=-]{20,}"), REDACTED),
    (re.compile(r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{43}=(?![A-Za-z0-9_=-])"), REDACTED),
    # OpenAI-style API keys (sk-…, sk-proj-…).
    (re.compile(r"\bsk-[A-Za-z0-9_-]{16,}"), REDACTED),
    # HTTP credentials (RFC 9110 §11.6.2): keep the scheme, hide its value.
    (re.compile(r"(?i)\b(Bearer|Basic|Digest|Token)\s+[A-Za-z0-9._~+/=-]{6,}"), rf"\1 {REDACTED}"),
    # URL userinfo: https://user:password@host.
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^/\s:@]*:)[^/\s@]+@"), rf"\1{REDACTED}@"),
    # Query strings and form bodies: client_secret=…&code=…
    (re.compile(rf"(?i)\b({_SECRET_NAME})=[^&\s'\",;)}}\]]+"), rf"\1={REDACTED}"),
    # Dict reprs and JSON: 'refresh_token': '…', "client_secret": "…", parsed query
    # strings: 'code': ['…'].
    (
        re.compile(
            rf"""(?i)(['"])({_SECRET_NAME}|authorization)\1(\s*:\s*\[?\s*)(['"]).*?(?<!\\)\4"""
        ),
        rf"\1\2\1\3\4{REDACTED}\4",
    ),
)
_MIN_KNOWN_SECRET = 8  # shorter configured values ("s" in a test) would blank ordinary words


class Redactor:
    """Replaces secrets in log text with :data:`REDACTED`.

    Args:
        known: configured secret values (signing secret, client secret, passwords…) that
            have no recognisable shape; each of at least 8 characters is replaced wherever it
            appears.

    As a structlog processor (``redactor(logger, method, event_dict)``) it redacts every
    string in the event, nested dicts and lists included; values of fields named like a
    secret (``token``, ``client_secret``, ``password``, ``authorization``…) are replaced
    whole. Place it after ``format_exc_info`` so the exception text is covered.
    """

    def __init__(self, known: Iterable[str] = ()) -> None:
        values = sorted({v for v in known if v and len(v) >= _MIN_KNOWN_SECRET}, key=len)
        self._known = (
            re.compile("|".join(re.escape(v) for v in reversed(values))) if values else None
        )

    def redact(self, text: str) -> str:
        """``text`` with every secret replaced by :data:`REDACTED`."""
        if self._known is not None:
            text = self._known.sub(REDACTED, text)
        for pattern, replacement in _RULES:
            text = pattern.sub(replacement, text)
        return text

    def __call__(self, _logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
        return {key: self._value(key, value) for key, value in event_dict.items()}

    def _value(self, key: Any, value: Any) -> Any:
        if isinstance(key, str) and _SECRET_FIELD.match(key) and isinstance(value, str | bytes):
            return REDACTED
        if value is None or isinstance(value, bool | int | float):
            return value
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, Mapping):
            return {k: self._value(k, v) for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [self._value(None, v) for v in value]
        # Anything else is rendered through str()/repr() later: redact that text now.
        return self.redact(repr(value) if isinstance(value, bytes) else str(value))


class RedactingFilter(logging.Filter):
    """A stdlib filter redacting a record's message with its ``%`` args merged (an arg's repr
    may hold a token), whatever formatter renders the record afterwards.

    :func:`configure` puts it on its handler; add it to any other handler (a file or syslog
    handler) with ``handler.addFilter``. Exceptions are redacted by the formatter's
    :class:`Redactor` once formatted."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self._redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, dict):  # a structlog event: the Redactor processor sees it
            return True
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # bad %-args: logging reports those itself
            return True
        record.msg, record.args = self._redactor.redact(message), None
        if record.exc_text:
            record.exc_text = self._redactor.redact(record.exc_text)
        return True


def redacting_handler(
    stream: IO[str], renderer: Any, pre_chain: list[Any], redactor: Redactor
) -> logging.Handler:
    """A handler writing to ``stream`` through structlog's formatter: stdlib records get the
    ``pre_chain`` processors, then every event is redacted after its exception is formatted,
    then rendered."""
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter(redactor))
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=pre_chain,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                redactor,  # last before rendering: messages, fields and exception text
                renderer,
            ],
        )
    )
    return handler


def configure(level: str = "INFO", fmt: str = "console", secrets: Iterable[str] = ()) -> None:
    """Send every log record, structlog's and the stdlib's, to stderr, redacted.

    ``secrets`` are configured secret values to hide wherever they appear (see
    :class:`Redactor`); token-shaped secrets are hidden without being listed.
    """
    redactor = Redactor(secrets)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    root = logging.getLogger()
    root.handlers[:] = [redacting_handler(sys.stderr, renderer, shared, redactor)]
    root.setLevel(level)
    # Per-request access lines and SQL echo drown the events that matter.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("sqlalchemy.engine").setLevel(logging.WARNING)
    # aiosqlite's DEBUG lines echo every statement with its parameters: every stored message.
    logging.getLogger("aiosqlite").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(max(logging.getLevelName(level), logging.WARNING))
    logging.getLogger("httpx").setLevel(logging.WARNING)
