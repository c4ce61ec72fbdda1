"""Requests signed the way Slack signs them (contracts.md, "Slack: HTTP")."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any
from urllib.parse import urlencode

import aiohttp


def sign(signing_secret: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """``X-Slack-Request-Timestamp`` and ``X-Slack-Signature`` for ``body``.

    ``v0=`` + hex HMAC-SHA256(secret, ``v0:{timestamp}:{body}``) over the raw bytes, so even
    a body that is not UTF-8 can be signed.
    """
    timestamp = int(time.time()) if timestamp is None else timestamp
    base = b"v0:" + str(timestamp).encode() + b":" + body
    signature = "v0=" + hmac.new(signing_secret.encode(), base, hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": str(timestamp), "X-Slack-Signature": signature}


async def post_signed(
    session: aiohttp.ClientSession, url: str, signing_secret: str, body: bytes,
    content_type: str, retry_num: int | None = None, retry_reason: str | None = None,
    timestamp: int | None = None,
) -> tuple[int, str]:
    headers = {"Content-Type": content_type, **sign(signing_secret, body, timestamp)}
    if retry_num is not None:
        headers["X-Slack-Retry-Num"] = str(retry_num)
        headers["X-Slack-Retry-Reason"] = retry_reason or "http_timeout"
    async with session.post(url, data=body, headers=headers) as response:
        return response.status, await response.text()


async def post_event(
    session: aiohttp.ClientSession, url: str, signing_secret: str, body: dict[str, Any], **kw: Any
) -> tuple[int, str]:
    """POST an Events API body as JSON; returns ``(status, text)``."""
    return await post_signed(session, url, signing_secret, json.dumps(body).encode(),
                             "application/json", **kw)


async def post_form(
    session: aiohttp.ClientSession, url: str, signing_secret: str, fields: dict[str, str], **kw: Any
) -> tuple[int, str]:
    """POST form fields (slash commands; ``payload=<json>`` for interactivity)."""
    return await post_signed(session, url, signing_secret, urlencode(fields).encode(),
                             "application/x-www-form-urlencoded", **kw)
