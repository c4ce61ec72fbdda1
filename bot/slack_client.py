"""Slack Web API clients pointed at ``SLACK_API_URL`` with slack_sdk's async retry handlers."""

from __future__ import annotations

import structlog
from aiohttp import ClientSession
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
)
from slack_sdk.web.async_client import AsyncWebClient

log = structlog.get_logger(__name__)

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


async def is_workspace_admin(client: AsyncWebClient, user_id: str) -> bool:
    """Whether ``users.info`` says the user is an admin or owner of the workspace."""
    try:
        user = (await client.users_info(user=user_id))["user"]
    except SlackApiError as exc:
        log.warning("users_info_failed", user_id=user_id, error=slack_error(exc))
        return False
    return bool(user.get("is_admin") or user.get("is_owner") or user.get("is_primary_owner"))
