"""A workspace leaves: ``app_uninstalled`` and ``tokens_revoked`` stop everything for it at once.

Slack sends ``app_uninstalled`` when the app is removed from a workspace (or an org) and
``tokens_revoked`` when tokens are revoked (https://api.slack.com/events/app_uninstalled,
https://api.slack.com/events/tokens_revoked). After either, the bot token no longer works; we
stop spending on the workspace's behalf and forget its tokens:

1. its turns in flight and the briefing runs it is composing are cancelled (no more LLM calls
   for them; such a run's delivery is recorded as failed): on this process at once, on the
   other replicas when they hear of it on Redis (:meth:`TenantLifecycle.listen`);
2. its tokens are deleted through slack_sdk's installation store API;
3. its briefings are paused (``paused_reason`` ``app_uninstalled``), so no run starts and no
   LLM call is made for them; the scheduler drops their jobs at once on this process, and a
   replica's leader at its next sync (a run it fires before that finds them paused);
4. its pending approval requests expire and its integration credentials are deleted;
5. its cross-session sessions are closed (on every replica, as in 1).

Each step runs even when an earlier one failed (Slack does not resend an acknowledged event):
a failure is logged (``tenant_uninstall_step_failed``, with the tenant and the step).
Conversations, audit and other rows stay until an operator runs ``jamono tenant erase``.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable
from typing import TypeVar

import structlog
from slack_sdk.oauth.installation_store.async_installation_store import AsyncInstallationStore

from bot.services import Services
from storage import pubsub
from storage.db import session_factory
from storage.installations import EncryptedInstallationStore
from storage.repositories.tenant_data import TenantDataRepository
from storage.tenancy import Tenant

log = structlog.get_logger(__name__)

CHANNEL = "jamono:tenants:uninstalled"  # Redis pub/sub: {"tenant": id, "from": PROCESS}
PROCESS = secrets.token_hex(8)  # tells this process's own announcements apart

T = TypeVar("T")


class TenantLifecycle:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.data = TenantDataRepository(session_factory(services.engine))

    async def uninstalled(self, tenant: Tenant, store: AsyncInstallationStore | None) -> None:
        """Stop everything for ``tenant`` and delete all its installations and bot tokens.

        ``store`` is the Bolt app's installation store (``None`` with a single-workspace
        ``SLACK_BOT_TOKEN``, which the operator revokes).
        """
        cancelled = self._cancel_here(tenant.id)
        await self._announce(tenant.id)
        if store is not None:
            await _step(
                tenant.id, "delete_installations",
                store.async_delete_all(**_installation_key(tenant)), None,
            )
        suspended = await _step(tenant.id, "suspend", self.data.suspend(tenant), None)
        # Again now that its briefings are paused: a run that read its briefing before the
        # pause may have started composing since the first cancel.
        cancelled += self._cancel_here(tenant.id)
        closed = await self._stop_here(tenant.id)
        log.warning(
            "tenant_uninstalled",
            tenant=tenant.id,
            turns_cancelled=cancelled,
            briefings_paused=suspended.briefings_paused if suspended else None,
            approvals_expired=suspended.approvals_expired if suspended else None,
            credentials_deleted=suspended.credentials_deleted if suspended else None,
            sessions_closed=closed,
        )

    async def listen(self, store: AsyncInstallationStore | None = None) -> None:
        """Run for the life of the process when Redis is configured: stop here the turns and
        sessions of a tenant uninstalled through another replica, and forget what ``store``
        (the Bolt app's) found for it. Reconnects after Redis failures; a tenant announced
        while this process was not listening still has no token, credentials or running
        briefings (and its installation leaves the store's cache within a minute)."""
        await pubsub.listen(
            self.services.redis, CHANNEL, lambda announcement: self._heard(announcement, store)
        )

    async def _heard(self, announcement: pubsub.Message,
                     store: AsyncInstallationStore | None) -> None:
        tenant_id = announcement.get("tenant")
        if not isinstance(tenant_id, str):
            log.warning("tenant_announcement_malformed")
            return
        if announcement.get("from") == PROCESS:
            return
        if isinstance(store, EncryptedInstallationStore):
            store.forget(tenant_id)
        cancelled = self._cancel_here(tenant_id)
        closed = await self._stop_here(tenant_id)
        log.warning(
            "tenant_stopped_here", tenant=tenant_id, turns_cancelled=cancelled,
            sessions_closed=closed,
        )

    async def _announce(self, tenant_id: str) -> None:
        if self.services.redis is not None:  # a failure is logged: the uninstall goes on
            await pubsub.publish(self.services.redis, CHANNEL,
                                 {"tenant": tenant_id, "from": PROCESS})

    def _cancel_here(self, tenant_id: str) -> int:
        """Cancel the tenant's turns and briefing runs on this process; returns how many."""
        return self.services.inflight.cancel_tenant(
            tenant_id
        ) + self.services.briefings.cancel_tenant(tenant_id)

    async def _stop_here(self, tenant_id: str) -> int:
        """Drop the tenant's briefing jobs (if this process schedules) and close its
        cross-session sessions here; returns how many sessions were closed."""
        if self.services.scheduler is not None:
            self.services.scheduler.sync_soon()
        if self.services.cross_session is None:
            return 0
        return await _step(
            tenant_id, "close_sessions",
            self.services.cross_session.gateway.close_tenant(tenant_id), 0,
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
                await _step(
                    tenant.id, "delete_user_installation",
                    store.async_delete_installation(**_installation_key(tenant), user_id=user_id),
                    None,
                )
        log.info("user_tokens_revoked", tenant=tenant.id, users=len(user_ids))


async def _step(tenant_id: str, name: str, work: Awaitable[T], failed: T) -> T:
    """Await one step of stopping a tenant; on failure log it and return ``failed``, so that
    the other steps still run."""
    try:
        return await work
    except Exception:
        log.exception("tenant_uninstall_step_failed", tenant=tenant_id, step=name)
        return failed


def _installation_key(tenant: Tenant) -> dict[str, str | None]:
    """How slack_sdk's store keys an installation: an org-wide install has no ``team_id``."""
    return {
        "enterprise_id": tenant.enterprise_id,
        "team_id": None if tenant.is_enterprise_install else tenant.team_id,
    }
