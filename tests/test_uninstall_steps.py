"""An uninstall stops what the workspace was spending even while something is underway.

The attacks this stops: a workspace uninstalls while one of its briefings is being composed,
and that run goes on calling the language model for its prompt sections and opening; and an
uninstall whose first step fails (the installation store is away) leaves the workspace's
briefings running and its credentials kept, as Slack does not resend an acknowledged event.
In process, on SQLite and PostgreSQL, with the fake Slack and the fake LLM.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from slack_sdk.oauth.installation_store.async_installation_store import AsyncInstallationStore
from structlog.testing import capture_logs

from bot.briefings.delivery import UNINSTALLED, Outcome
from bot.lifecycle import TenantLifecycle
from storage.repositories.briefings import DeliveryState
from tests.test_briefings_delivery import OPS, TENANT, posts, start_services, subscribe


@pytest.fixture
async def services(database_url, slack, llm):
    services = await start_services(database_url, slack, llm)
    yield services
    await services.close()


class BrokenStore(AsyncInstallationStore):
    """An installation store whose database is away."""

    async def async_delete_all(self, **_: object) -> None:
        raise ConnectionError("installation store unavailable")


async def test_an_uninstall_cancels_a_briefing_being_composed(services, slack, llm):
    briefing = await subscribe(
        services, sections=[{"kind": "prompt", "title": "Watch", "prompt": "What to watch?"}]
    )
    llm.delay(5)  # the prompt section's turn waits on the model (the opening would too)
    fire = datetime.now(UTC).replace(microsecond=0)
    run = asyncio.create_task(services.briefings.run_scheduled(briefing.id, fire, now=fire))
    await llm.wait_for_requests(1)

    await TenantLifecycle(services).uninstalled(TENANT, None)

    result = await asyncio.wait_for(run, 30)
    assert result.outcome is Outcome.FAILED
    assert result.detail == UNINSTALLED
    [delivery] = await services.repos.briefings.deliveries(TENANT, briefing.id)
    assert delivery.state is DeliveryState.FAILED
    assert delivery.detail == UNINSTALLED
    assert len(llm.requests) == 1  # no opening asked for after the cancel
    assert posts(slack, OPS) == []


async def test_a_failing_step_does_not_stop_the_others(services):
    briefing = await subscribe(services)
    with capture_logs() as logs:
        await TenantLifecycle(services).uninstalled(TENANT, BrokenStore())

    stored = await services.repos.briefings.get(TENANT, briefing.id)
    assert not stored.enabled
    assert stored.paused_reason == "app_uninstalled"
    [failure] = [e for e in logs if e["event"] == "tenant_uninstall_step_failed"]
    assert failure["tenant"] == TENANT.id
    assert failure["step"] == "delete_installations"
    assert any(e["event"] == "tenant_uninstalled" for e in logs)
