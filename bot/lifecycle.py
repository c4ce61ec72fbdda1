"""A workspace leaves: ``app_uninstalled`` and ``tokens_revoked`` stop everything for it at once.

Slack sends ``app_uninstalled`` when the app is removed from a workspace (or an org) and
``tokens_revoked`` when tokens are revoked (https://api.slack.com/events/app_uninstalled,
https://api.slack.com/events/tokens_revoked). After either, the bot token no longer works; we
stop spending on the workspace's behalf and forget its tokens:

1. its turns in flight on this process are cancelled (no more LLM calls for them);
2. its tokens are deleted through slack_sdk's installation store API;
3. its briefings are paused (``paused_reason`` ``app_uninstalled``), so no run starts and no
   LLM call is made for them; the scheduler drops their jobs at once on this process, and a
   replica's leader at its next sync (a run it fires before that finds them paused);
4. its pending approval requests expire and its integration credentials are deleted;
5. its cross-session sessions on this process are closed.

Conversations, audit and other rows stay until an operator runs ``jamono tenant erase``.
"""

from __future__ import annotations

import structlog
from slack_sdk.oauth.installation_store.async_installation_store import AsyncInstallationStore

from bot.services import Services
from storage.db import session_factory
from storage.repositories.tenant_data import TenantDataRepository
from storage.tenancy import Tenant

log = structlog.get_logger(__name__)


class TenantLifecycle:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.data = TenantDataRepository(session_factory(services.engine))

    async def uninstalled(self, tenant: Tenant, store: AsyncInstallationStore | None) -> None:
        """Stop everything for ``tenant`` and delete all its installations and bot tokens.

        ``store`` is the Bolt app's installation store (``None`` with a single-workspace
        ``SLACK_BOT_TOKEN``, which the operator revokes).
        """
        cancelled = self.services.inflight.cancel_tenant(tenant.id)
        if store is not None:
            await store.async_delete_all(**_installation_key(tenant))
        suspended = await self.data.suspend(tenant)
        if self.services.scheduler is not None:
            self.services.scheduler.sync_soon()
        closed = 0
        if self.services.cross_session is not None:
            closed = await self.services.cross_session.gateway.close_tenant(tenant.id)
        log.warning(
            "tenant_uninstalled",
            tenant=tenant.id,
            turns_cancelled=cancelled,
            briefings_paused=suspended.briefings_paused,
            approvals_expired=suspended.approvals_expired,
            credentials_deleted=suspended.credentials_deleted,
            sessions_closed=closed,
        )

    async def tokens_revoked(
        self,
        tenant: Tenant,
        store: AsyncInstallationStore | None,
        *,
        user_ids: list[str],
        bot: bool,
    ) -> None:
        """``tokens_revoked``: with the bot token among them, as :meth:`uninstalled` (every
        installation row of the workspace carries the bot token too, so all are deleted);
        with user tokens only, delete those users' installations and nothing else."""
        if bot:
            await self.uninstalled(tenant, store)
            return
        if store is not None:
            for user_id in user_ids:
                await store.async_delete_installation(
                    **_installation_key(tenant), user_id=user_id
                )
        log.info("user_tokens_revoked", tenant=tenant.id, users=len(user_ids))


def _installation_key(tenant: Tenant) -> dict[str, str | None]:
    """How slack_sdk's store keys an installation: an org-wide install has no ``team_id``."""
    return {
        "enterprise_id": tenant.enterprise_id,
        "team_id": None if tenant.is_enterprise_install else tenant.team_id,
    }
