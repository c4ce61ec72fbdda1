"""Slack Web API clients pointed at ``SLACK_API_URL`` with slack_sdk's async retry handlers."""

from __future__ import annotations

from aiohttp import ClientSession
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
)
from slack_sdk.web.async_client import AsyncWebClient

WEB_API_TIMEOUT = 10  # seconds per HTTP attempt


def web_client(
    api_url: str, token: str | None = None, session: ClientSession | None = None
) -> AsyncWebClient:
    """An ``AsyncWebClient`` on ``api_url`` that retries connection errors and HTTP 429.

    429 retries wait for the ``Retry-After`` seconds Slack sends (contracts.md, "Slack:
    limits"); 5xx are not retried because ``chat.postMessage`` is not idempotent. Pass the
    process's ``session``: without one, slack_sdk opens a new session and TCP connection for
    every call (Bolt hands the session on to the per-request clients it builds).
    """
    return AsyncWebClient(
        token=token,
        base_url=api_url,
        session=session,
        timeout=WEB_API_TIMEOUT,
        retry_handlers=[
            AsyncConnectionErrorRetryHandler(max_retry_count=2),
            AsyncRateLimitErrorRetryHandler(max_retry_count=3),
        ],
    )


def oauth_authorize_url(api_url: str) -> str:
    """``https://slack.com/api/`` → ``https://slack.com/oauth/v2/authorize`` (GovSlack alike)."""
    return api_url.rstrip("/").removesuffix("/api") + "/oauth/v2/authorize"


def slack_error(exc: SlackApiError) -> str:
    """Slack's ``error`` code from a failed call, or the HTTP status when the body was not JSON."""
    data = exc.response.data
    if isinstance(data, dict):
        return str(data.get("error", "unknown_error"))
    return f"http_{exc.response.status_code}"
