"""A workspace's integration credentials (Jira, CalDAV), encrypted at rest.

The settings dict is stored as a Fernet token of its JSON (see :mod:`storage.secrets`); only the
URL and the account name stay readable, for display. Without a configured key the repository
still lists what is configured but refuses to save or load settings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, get_args

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from storage.models import Credential, utcnow
from storage.repositories import events
from storage.repositories._time import aware
from storage.repositories._upsert import insert_for
from storage.secrets import SecretBox, SecretsError, UndecryptableSecret, without_userinfo
from storage.tenancy import Tenant

Kind = Literal["jira", "caldav"]
KINDS: tuple[str, ...] = get_args(Kind)


class MissingSecretKey(SecretsError):
    """Credentials cannot be stored or read: ``JAMONO_SECRET_KEY`` is not set."""


@dataclass(frozen=True, slots=True)
class CredentialInfo:
    """What may be shown about stored credentials: never the secret settings themselves."""

    kind: str
    url: str
    account: str | None
    updated_by: str | None
    updated_at: datetime  # aware UTC


class CredentialRepository:
    """Args: ``secrets`` opens the stored settings; ``None`` when no key is configured."""

    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], secrets: SecretBox | None
    ) -> None:
        self._sessions = sessions
        self._secrets = secrets

    async def save(
        self,
        tenant: Tenant,
        kind: str,
        settings: dict[str, Any],
        actor: str | None,
        *,
        url: str,
        account: str | None = None,
    ) -> None:
        """Store (or replace) the ``kind`` settings, encrypted; records ``credentials_saved``.

        ``settings`` is any JSON object (the integration defines its keys); ``url`` and
        ``account`` (email or username) are the readable display fields; ``actor`` is the
        Slack user id, ``None`` for the CLI or environment.

        Raises:
            ValueError: unknown ``kind``.
            TypeError: ``settings`` is not JSON-serialisable.
            MissingSecretKey: no key is configured.
        """
        _check_kind(kind)
        token = self._box().encrypt(json.dumps(settings, sort_keys=True))
        values = {"secret": token, "url": url, "account": account, "updated_by": actor}
        async with self._sessions.begin() as session:
            old = (
                await session.execute(
                    select(Credential.url, Credential.account).where(
                        Credential.tenant_id == tenant.id, Credential.kind == kind
                    )
                )
            ).first()
            # One upsert statement: two admins saving at once cannot collide on the insert.
            await session.execute(
                insert_for(session.bind.dialect.name, Credential)
                .values(tenant_id=tenant.id, kind=kind, updated_at=utcnow(), **values)
                .on_conflict_do_update(
                    index_elements=["tenant_id", "kind"], set_=values | {"updated_at": utcnow()}
                )
            )
            events.append(
                session,
                tenant,
                events.CREDENTIALS_SAVED,
                actor=actor,
                subject=kind,
                # Where and as whom, old and new; never the secret.
                details={"old": _shown(*old) if old else None, "new": _shown(url, account)},
            )

    async def load(self, tenant: Tenant, kind: str) -> dict[str, Any] | None:
        """The decrypted settings of ``kind``, or ``None`` when the workspace has none.

        Raises:
            ValueError: unknown ``kind``.
            MissingSecretKey: no key is configured.
            UndecryptableSecret: no configured key opens the stored settings.
        """
        _check_kind(kind)
        box = self._box()
        async with self._sessions() as session:
            token = await session.scalar(
                select(Credential.secret).where(
                    Credential.tenant_id == tenant.id, Credential.kind == kind
                )
            )
        if token is None:
            return None
        try:
            return json.loads(box.decrypt(token))
        except UndecryptableSecret as exc:
            raise UndecryptableSecret(f"the {kind} credentials of {tenant.id}: {exc}") from None

    async def delete(self, tenant: Tenant, kind: str, actor: str | None) -> bool:
        """Remove the ``kind`` credentials; ``True`` when there were some (then records
        ``credentials_deleted``).

        Raises:
            ValueError: unknown ``kind``.
        """
        _check_kind(kind)
        async with self._sessions.begin() as session:
            removed = (
                await session.execute(
                    delete(Credential)
                    .where(Credential.tenant_id == tenant.id, Credential.kind == kind)
                    .returning(Credential.url, Credential.account)
                )
            ).first()
            if removed is None:
                return False
            events.append(
                session,
                tenant,
                events.CREDENTIALS_DELETED,
                actor=actor,
                subject=kind,
                details={"old": _shown(*removed), "new": None},
            )
            return True

    async def configured(self, tenant: Tenant) -> list[CredentialInfo]:
        """The display fields of every configured kind, sorted by kind (works without a key)."""
        async with self._sessions() as session:
            rows = (
                await session.scalars(
                    select(Credential)
                    .where(Credential.tenant_id == tenant.id)
                    .order_by(Credential.kind)
                )
            ).all()
        return [
            CredentialInfo(row.kind, row.url, row.account, row.updated_by, aware(row.updated_at))
            for row in rows
        ]

    async def rotate_all(self) -> int:
        """Re-encrypt every workspace's settings under the newest key; returns how many rows.

        The one method that is not tenant-scoped: it serves ``jamono secrets rotate``. Each row
        is replaced only if it still holds the token that was read, so settings saved
        meanwhile (already under the newest key) are left alone. All rows change in one
        transaction: if one cannot be decrypted nothing changes.

        Raises:
            MissingSecretKey: no key is configured.
            UndecryptableSecret: a row no configured key opens (the message names its tenant
                and kind).
        """
        box = self._box()
        rotated = 0
        async with self._sessions.begin() as session:
            rows = (
                await session.execute(
                    select(Credential.tenant_id, Credential.kind, Credential.secret)
                )
            ).all()
            for tenant_id, kind, token in rows:
                try:
                    fresh = box.rotate(token)
                except UndecryptableSecret as exc:
                    raise UndecryptableSecret(
                        f"the {kind} credentials of {tenant_id}: {exc}"
                    ) from None
                result = await session.execute(
                    update(Credential)
                    .where(
                        Credential.tenant_id == tenant_id,
                        Credential.kind == kind,
                        Credential.secret == token,
                    )
                    # Keep updated_at: the settings did not change, only their encryption.
                    .values(secret=fresh, updated_at=Credential.updated_at)
                    .execution_options(synchronize_session=False)
                )
                if result.rowcount:
                    rotated += 1
                    events.append(
                        session,
                        Tenant(team_id=tenant_id),
                        events.CREDENTIALS_ROTATED,
                        actor=None,
                        subject=kind,
                    )
        return rotated

    def _box(self) -> SecretBox:
        if self._secrets is None:
            raise MissingSecretKey(
                "JAMONO_SECRET_KEY is not set, so credentials cannot be stored or read; "
                "set it to a Fernet key"
            )
        return self._secrets


def _shown(url: str, account: str | None) -> dict[str, str | None]:
    """Connection settings as the audit trail keeps them: a URL without any ``user:password@``."""
    return {"url": without_userinfo(url), "account": account}


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown credentials kind {kind!r}; expected one of {', '.join(KINDS)}")
