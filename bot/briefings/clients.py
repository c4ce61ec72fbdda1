"""A Web API client per workspace for work that no Slack request started (scheduled briefings).

Bolt refreshes rotated tokens only while it handles an incoming request (contracts.md, "Slack:
OAuth v2 and tokens"), so scheduled work refreshes them itself: with OAuth install the bot token
comes from the installation store (slack_sdk's, tokens encrypted: :mod:`storage.installations`)
and is rotated by slack_sdk's ``AsyncTokenRotator`` when it expires within
:data:`REFRESH_BEFORE_MINUTES`; the rotated installation is saved back, so Bolt and the other
replicas see the new token. In single-workspace mode the token is
``SLACK_BOT_TOKEN``.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict

from aiohttp import ClientSession
from slack_sdk.oauth.token_rotation.async_rotator import AsyncTokenRotator
from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.settings import Settings
from bot.slack_client import web_client
from storage.installations import EncryptedInstallationStore
from storage.tenancy import Tenant

REFRESH_BEFORE_MINUTES = 120  # Bolt's default for incoming requests


class NotInstalled(Exception):
    """No installation (or no bot token) for the workspace; the message says which."""


class TeamClients:
    """``await clients.for_tenant(tenant)`` → an ``AsyncWebClient`` with a valid bot token.

    Raises :class:`NotInstalled` when there is no token for the workspace, and slack_sdk's
    ``SlackApiError``/``SlackTokenRotationError`` when the refresh grant at ``oauth.v2.access``
    fails.
    """

    def __init__(self, settings: Settings, engine: AsyncEngine, session: ClientSession) -> None:
        self._settings = settings
        self._session = session
        self._store: EncryptedInstallationStore | None = None
        self._rotator: AsyncTokenRotator | None = None
        if settings.oauth_enabled:
            self._store = EncryptedInstallationStore(
                settings.slack_client_id, engine, settings.secret_box()
            )
            self._rotator = AsyncTokenRotator(
                client_id=settings.slack_client_id,
                client_secret=settings.slack_client_secret.get_secret_value(),
                client=web_client(settings.slack_api_url, session=session),
            )
        # One refresh per workspace at a time: concurrent briefings share the new token.
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    async def for_tenant(self, tenant: Tenant) -> AsyncWebClient:
        return web_client(self._settings.slack_api_url, await self.token(tenant), self._session)

    async def token(self, tenant: Tenant) -> str:
        if self._store is None or self._rotator is None:
            if self._settings.slack_bot_token is None:
                raise NotInstalled("SLACK_BOT_TOKEN is not set")
            return self._settings.slack_bot_token.get_secret_value()
        async with self._locks[tenant.id]:
            installation = await self._store.async_find_installation(
                enterprise_id=tenant.enterprise_id,
                team_id=None if tenant.is_enterprise_install else tenant.team_id,
                is_enterprise_install=tenant.is_enterprise_install,
            )
            if installation is None or not installation.bot_token:
                raise NotInstalled(f"Jamono is not installed in workspace {tenant.id}")
            rotated = await self._rotator.perform_token_rotation(
                installation=installation, minutes_before_expiration=REFRESH_BEFORE_MINUTES
            )
            if rotated is not None:
                await self._store.async_save(rotated)
                installation = rotated
            return installation.bot_token
