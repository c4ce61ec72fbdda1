"""Cross-session: users' applications connect over WebSocket and offer actions as tools.

:class:`CrossSession` bundles what a process needs: the token verifier (and issuer, when a
signing key is configured), the router (in-process, or Redis across instances) and the
gateway handler for ``GET /ws``. Protocol v1 is described in docs/cross-session-protocol.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from integrations.cross_session.gateway import Gateway, GatewayLimits
from integrations.cross_session.protocol import CrossSessionError, Owner
from integrations.cross_session.redis_routing import RedisRouter
from integrations.cross_session.sessions import LocalRouter, Router
from integrations.cross_session.tokens import TokenIssuer, TokenVerifier

__all__ = [
    "CrossSession",
    "CrossSessionError",
    "Gateway",
    "GatewayLimits",
    "LocalRouter",
    "Owner",
    "RedisRouter",
    "Router",
    "TokenIssuer",
    "TokenVerifier",
]


@dataclass
class CrossSession:
    """The gateway, its router and tokens. ``issuer`` is ``None`` when this process cannot
    sign tokens (asymmetric algorithm without a private key)."""

    router: Router
    gateway: Gateway
    verifier: TokenVerifier
    issuer: TokenIssuer | None

    @classmethod
    def build(
        cls,
        verifier: TokenVerifier,
        issuer: TokenIssuer | None,
        limits: GatewayLimits,
        *,
        redis_url: str | None = None,
        instance_id: str,
    ) -> CrossSession:
        """In-process routing without ``redis_url``; Redis routing across instances with it."""
        router: Router = (
            RedisRouter(redis_url, instance_id, limits.heartbeat) if redis_url else LocalRouter()
        )
        return cls(router, Gateway(verifier, router, limits), verifier, issuer)

    async def start(self) -> None:
        await self.router.start()

    async def close(self) -> None:
        await self.gateway.shutdown()
        await self.router.close()
