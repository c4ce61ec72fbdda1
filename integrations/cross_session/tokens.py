"""Session tokens: JWTs (RFC 7519) checked and issued with PyJWT.

A token binds a WebSocket session to one Slack user: claims ``sub``, ``exp``, ``iat`` (Unix
seconds), ``aud`` = ``jamono-gateway``, ``iss`` when one is configured, ``team_id`` (the
tenant id: a workspace's team_id, or an org-wide install's enterprise_id) and
``slack_user_id``. The algorithm is pinned by configuration; a token naming another one
(``none`` included) is refused.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Literal

import jwt

from integrations.cross_session.protocol import Owner

AUDIENCE = "jamono-gateway"
Algorithm = Literal["HS256", "RS256", "ES256"]
LEEWAY = 5  # seconds of clock skew tolerated on exp/iat


class TokenError(Exception):
    """A token that is missing, malformed, expired or not ours; the message says which."""


@dataclass(frozen=True, slots=True)
class Identity:
    """What a verified token says: the owner and when the token expires (Unix seconds)."""

    owner: Owner
    subject: str
    expires_at: int


class TokenVerifier:
    """Checks tokens with one pinned algorithm and key.

    ``key`` is the shared secret for HS256, or a PEM public key for RS256/ES256.
    """

    def __init__(self, key: str, algorithm: Algorithm, issuer: str | None = None) -> None:
        if not key:
            raise ValueError("a token key is needed")
        self._key = key
        self._algorithm = algorithm
        self._issuer = issuer

    def verify(self, token: object) -> Identity:
        """Raises:
        TokenError: the token is absent, not a JWT, signed otherwise, expired, for another
            audience or issuer, or lacks a required claim.
        """
        if not isinstance(token, str) or not token:
            raise TokenError("a token is required")
        required = ["sub", "exp", "iat", "aud", "team_id", "slack_user_id"]
        if self._issuer:
            required.append("iss")
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=[self._algorithm],
                audience=AUDIENCE,
                issuer=self._issuer,
                leeway=LEEWAY,
                options={"require": required},
            )
        except jwt.ExpiredSignatureError:
            raise TokenError("the token has expired") from None
        except jwt.InvalidTokenError as exc:
            raise TokenError(f"invalid token: {exc}") from None
        team_id, user_id = claims["team_id"], claims["slack_user_id"]
        if not (isinstance(team_id, str) and team_id and isinstance(user_id, str) and user_id):
            raise TokenError("invalid token: team_id and slack_user_id must be non-empty strings")
        return Identity(Owner(team_id, user_id), str(claims["sub"]), int(claims["exp"]))


class TokenIssuer:
    """Signs tokens: HS256 with the shared secret, RS256/ES256 with a PEM private key."""

    def __init__(self, key: str, algorithm: Algorithm, issuer: str | None = None) -> None:
        if not key:
            raise ValueError("a signing key is needed")
        self._key = key
        self._algorithm = algorithm
        self._issuer = issuer

    def issue(self, owner: Owner, ttl: int) -> tuple[str, int]:
        """A token for ``owner`` valid ``ttl`` seconds; returns it and its ``exp``."""
        if ttl <= 0:
            raise ValueError("ttl must be a positive number of seconds")
        now = int(time.time())
        claims = {
            "sub": f"{owner.team_id}:{owner.slack_user_id}",
            "aud": AUDIENCE,
            "iat": now,
            "exp": now + ttl,
            "jti": uuid.uuid4().hex,
            "team_id": owner.team_id,
            "slack_user_id": owner.slack_user_id,
        }
        if self._issuer:
            claims["iss"] = self._issuer
        return jwt.encode(claims, self._key, algorithm=self._algorithm), now + ttl
