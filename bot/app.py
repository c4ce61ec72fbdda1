"""The Bolt app: one workspace by bot token, or many by OAuth install."""

from __future__ import annotations

import logging
from typing import Any

import structlog
from aiohttp import ClientSession
from slack_bolt.async_app import AsyncApp
from slack_bolt.authorization.async_authorize import AsyncInstallationStoreAuthorize
from slack_bolt.oauth.async_oauth_flow import AsyncOAuthFlow
from slack_bolt.oauth.async_oauth_settings import AsyncOAuthSettings
from slack_sdk.oauth.state_store.sqlalchemy import AsyncSQLAlchemyOAuthStateStore

from bot.listeners import register_all
from bot.services import Services
from bot.slack_client import oauth_authorize_url, web_client
from storage.installations import EncryptedInstallationStore

log = structlog.get_logger(__name__)

# Kept equal to manifest.yml's oauth_config.scopes.bot (a test checks it).
BOT_SCOPES = (
    "app_mentions:read",
    "channels:read",  # conversations.info: is the bot in a briefing's channel?
    "chat:write",
    "commands",
    "files:write",
    "groups:read",  # the same for private channels
    "im:history",
    "im:read",
    "im:write",
    "reactions:write",
    "users:read",
    "users:read.email",
)
INSTALL_PATH = "/slack/install"
REDIRECT_PATH = "/slack/oauth_redirect"
OAUTH_STATE_TTL = 600  # seconds an install link stays valid


def build_app(services: Services, session: ClientSession) -> AsyncApp:
    """Bolt ``AsyncApp`` with our listeners, event claims and error logging.

    With ``SLACK_CLIENT_ID``/``SLACK_CLIENT_SECRET`` tokens come from slack_sdk's SQLAlchemy
    installation store, encrypted (filled by ``/slack/install``); otherwise from
    ``SLACK_BOT_TOKEN``.
    Every Web API call goes through ``session`` (kept-alive connections to Slack).
    """
    settings = services.settings
    common: dict[str, Any] = {
        "signing_secret": (
            settings.slack_signing_secret.get_secret_value()
            if settings.slack_signing_secret
            else None
        ),
        "request_verification_enabled": settings.http_events,
        "process_before_response": False,
    }
    if settings.oauth_enabled:
        # Settings require JAMONO_SECRET_KEY with OAuth install: tokens are stored encrypted.
        installation_store = EncryptedInstallationStore(
            settings.slack_client_id, services.engine, settings.secret_box()
        )
        oauth_flow = AsyncOAuthFlow(
            client=web_client(settings.slack_api_url, session=session),
            settings=AsyncOAuthSettings(
                client_id=settings.slack_client_id,
                client_secret=settings.slack_client_secret.get_secret_value(),
                scopes=list(BOT_SCOPES),
                authorization_url=oauth_authorize_url(settings.slack_api_url),
                install_path=INSTALL_PATH,
                redirect_uri_path=REDIRECT_PATH,
                installation_store=installation_store,
                state_store=AsyncSQLAlchemyOAuthStateStore(
                    expiration_seconds=OAUTH_STATE_TTL, engine=services.engine
                ),
            ),
        )
        client = web_client(settings.slack_api_url, session=session)
        app = AsyncApp(
            client=client,
            oauth_flow=oauth_flow,
            installation_store=installation_store,
            # Bolt's default asks Slack's auth.test on every event. The cache is keyed by
            # the token, looked up after the installation: an uninstalled workspace (its
            # installation deleted) or a new token never reaches a stale entry.
            authorize=AsyncInstallationStoreAuthorize(
                logger=logging.getLogger("slack_bolt.AsyncApp"),
                installation_store=installation_store,
                client_id=settings.slack_client_id,
                client_secret=settings.slack_client_secret.get_secret_value(),
                cache_enabled=True,
                client=client,
            ),
            **common,
        )
    else:
        app = AsyncApp(
            client=web_client(
                settings.slack_api_url, settings.slack_bot_token.get_secret_value(), session
            ),
            **common,
        )
    app.use(_bind_log_context)
    app.error(_log_error)
    register_all(app, services)
    return app


async def _bind_log_context(body: dict[str, Any], next) -> None:
    """Every log line of an event carries its ``event_id`` and ``team_id``.

    Claims are taken by the listeners, after the ack: a database claim on the ack path would
    queue behind the turns in flight, and Slack counts slow acks as failed deliveries.
    """
    if body.get("type") == "event_callback":
        structlog.contextvars.bind_contextvars(
            event_id=body.get("event_id"), team_id=body.get("team_id")
        )
    await next()


async def _log_error(error: Exception, body: dict[str, Any]) -> None:
    log.error("listener_failed", error=repr(error), body_type=body.get("type"), exc_info=error)
