"""``app_uninstalled`` and ``tokens_revoked``: hand the workspace's departure to
:class:`bot.lifecycle.TenantLifecycle`.

Bolt delivers these two events without looking the installation up (its tokens may already be
gone) and acks them before the listener runs.
"""

from __future__ import annotations

from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_bolt.context.async_context import AsyncBoltContext

from bot.lifecycle import TenantLifecycle
from bot.listeners.context import tenant_of


def register(app: AsyncApp, lifecycle: TenantLifecycle) -> None:
    @app.event("app_uninstalled")
    async def on_app_uninstalled(context: AsyncBoltContext) -> None:
        await lifecycle.uninstalled(tenant_of(context), app.installation_store)

    @app.event("tokens_revoked")
    async def on_tokens_revoked(event: dict[str, Any], context: AsyncBoltContext) -> None:
        tokens = event.get("tokens") or {}
        await lifecycle.tokens_revoked(
            tenant_of(context),
            app.installation_store,
            user_ids=list(tokens.get("oauth") or []),
            bot=bool(tokens.get("bot")),
        )
