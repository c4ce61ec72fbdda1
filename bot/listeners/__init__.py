"""Bolt listeners, one module per Slack surface; each exposes ``register(app, ...)``."""

from __future__ import annotations

import re

from slack_bolt.async_app import AsyncApp

from bot.commands import CommandRouter
from bot.lifecycle import TenantLifecycle
from bot.listeners import (
    actions,
    briefings,
    commands,
    direct_messages,
    home,
    lifecycle,
    mentions,
    views,
)
from bot.services import Services
from bot.turns import SlackTurns


def register_all(app: AsyncApp, services: Services) -> None:
    turns = SlackTurns(services)
    mentions.register(app, turns)
    direct_messages.register(app, turns)
    briefings.register(app, services)  # before commands: it takes `/nox-brief add`
    commands.register(app, CommandRouter(services), services)
    home.register(app, services)
    actions.register(app, services.approvals, services.inflight)
    actions.register_circuit_reset(app, services.connections, services.repos.events)
    views.register(app, services)
    lifecycle.register(app, TenantLifecycle(services))

    # Slack counts a non-2xx answer as a failed delivery and retries it; Bolt answers 404 when
    # no listener matches. Events we subscribe to but do not act on are acked here instead.
    @app.event(re.compile(r".+"))
    async def ignore_other_events() -> None:
        return None
