"""Facts Bolt puts in the request context, in our terms."""

from __future__ import annotations

from slack_bolt.context.async_context import AsyncBoltContext

from storage.tenancy import Tenant


def tenant_of(context: AsyncBoltContext) -> Tenant:
    """The tenant of a request: its ``team_id``, or its ``enterprise_id`` for an org install."""
    return Tenant(
        team_id=context.team_id,
        enterprise_id=context.enterprise_id,
        is_enterprise_install=bool(context.is_enterprise_install),
    )
