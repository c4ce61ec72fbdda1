"""Each workspace's Jira and calendar: its stored credentials first, else the environment's.

:class:`Connections` (one per process) resolves a workspace's credentials on every use, so a
change saved by ``/nox-connect`` takes effect at once: it keeps one client per workspace and
drops it when the credentials differ from the ones it was built with. Every call goes through
the process's :class:`~integrations.resilience.Resilience` (retries, one circuit per
(workspace, integration)), runs in the integration's bounded thread pool under the
workspace's share (:mod:`integrations.pools`), and connects only where the process's
:class:`~integrations.egress.EgressPolicy` allows — on every request, so stored credentials
are re-checked each time they are used, not only when they were saved. It also tests and
saves new credentials (``/nox-connect`` and ``jamono connect``) and reports each
integration's health for ``/nox-status``.

Stored settings (encrypted by the credentials repository), by integration:
``jira`` — ``{"url", "email", "api_token"}`` (Cloud) or ``{"url", "pat"}`` (Data Center);
``calendar`` (repository kind ``caldav``) — ``{"url", "username", "password", "calendar"}``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, TypeVar

import structlog
from redis.asyncio import Redis

from integrations import calendar as cal
from integrations.calendar import (
    CalDAVClient,
    CalDAVCredentials,
    CalendarAuthError,
    CalendarEvent,
    CalendarNotFound,
    CalendarUnavailable,
    StoredEvent,
)
from integrations.egress import EgressPolicy, EgressRefused, check_url
from integrations.errors import IntegrationError
from integrations.jira import (
    CloudCredentials,
    DataCenterCredentials,
    JiraAuthError,
    JiraClient,
    JiraCredentials,
    JiraUnavailable,
)
from integrations.pools import IntegrationPool, PoolLimits
from integrations.resilience import Health, Resilience
from storage import pubsub
from storage.repositories.credentials import CredentialRepository, MissingSecretKey
from storage.secrets import SecretsError, mask, without_userinfo
from storage.tenancy import Tenant

log = structlog.get_logger(__name__)

Integration = Literal["jira", "calendar"]
INTEGRATIONS: tuple[Integration, ...] = ("jira", "calendar")
LABELS = {"jira": "Jira", "calendar": "Calendar"}
_KIND = {"jira": "jira", "calendar": "caldav"}  # the credentials repository's kinds
T = TypeVar("T")

HEALTH_TTL = 30.0  # seconds a live health check is reused
CIRCUITS_CHANNEL = "jamono:circuits:dropped"  # Redis pub/sub: {"tenant": id, "integration": …}
TEST_TIMEOUT = 2.0  # seconds; a modal submission must be answered within Slack's 3 s

SECRET_KEY_HINT = (
    "JAMONO_SECRET_KEY is not set, so credentials cannot be stored (they are kept encrypted). "
    "Set it to a Fernet key — generate one with "
    "`python -c \"from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())\"`"
    " — restart Jamono, then connect again. Nothing was saved."
)


class NotConnected(IntegrationError):
    """The workspace has no credentials for the integration, stored or from the environment."""

    def __init__(self, integration: Integration) -> None:
        what = "Jira" if integration == "jira" else "No calendar (CalDAV)"
        verb = "is not" if integration == "jira" else "is"
        super().__init__(
            integration,
            f"{what} {verb} connected in this workspace. A workspace admin can connect it with "
            f"`/nox-connect {integration}` (or `jamono connect {integration}`).",
        )


class ConnectionFailed(Exception):
    """New credentials were refused; ``errors`` maps each field at fault (``url``, ``email``,
    ``api_token``, ``pat``, ``username``, ``password``, ``calendar``) to what is wrong."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{field}: {why}" for field, why in errors.items()))
        self.errors = errors


@dataclass(frozen=True)
class Defaults:
    """Credentials from the environment, used by workspaces that stored none."""

    jira: JiraCredentials | None = None
    caldav: CalDAVCredentials | None = None


def jira_credentials(fields: Mapping[str, str | None]) -> JiraCredentials:
    """Credentials from ``url`` with ``email`` + ``api_token`` (Cloud) or ``pat`` (Data
    Center). Raises :class:`ConnectionFailed` naming the missing or conflicting fields."""
    url, email = _text(fields, "url"), _text(fields, "email")
    token, pat = _text(fields, "api_token"), _text(fields, "pat")
    errors = {}
    if not url.startswith(("http://", "https://")):
        errors["url"] = "Give the Jira site's address, such as https://acme.atlassian.net"
    elif (refused := _url_refusal(url)) is not None:
        errors["url"] = refused
    if pat and (email or token):
        errors["pat"] = ("Give either an email and API token (Jira Cloud) or a personal access "
                         "token (Data Center), not both.")
    elif not pat and not (email and token):
        field = "api_token" if email else "email"
        errors[field] = ("Jira Cloud needs the account's email and an API token; Data Center a "
                         "personal access token.")
    if errors:
        raise ConnectionFailed(errors)
    if pat:
        return DataCenterCredentials(url, pat)
    return CloudCredentials(url, email, token)


def caldav_credentials(fields: Mapping[str, str | None]) -> CalDAVCredentials:
    """Credentials from ``url``, ``username``, ``password`` and ``calendar``.

    Raises :class:`ConnectionFailed` on a non-http(s) URL, a URL holding a user name or
    password, or an empty calendar name."""
    calendar, url = _text(fields, "calendar"), _text(fields, "url")
    try:
        credentials = CalDAVCredentials(url, _text(fields, "username"),
                                        _text(fields, "password"), calendar)
    except ValueError as exc:
        raise ConnectionFailed({"calendar" if not calendar else "url": str(exc)}) from None
    if (refused := _url_refusal(url)) is not None:
        raise ConnectionFailed({"url": refused})
    return credentials


def _url_refusal(url: str) -> str | None:
    """Why ``url`` cannot be used (e.g. it holds ``user:password@``, which would be stored
    and shown in clear), or ``None``."""
    try:
        check_url(url)
    except EgressRefused as exc:
        return f"{str(exc)[0].upper()}{str(exc)[1:]}."
    return None


def _jira_settings(credentials: JiraCredentials) -> dict[str, str]:
    if isinstance(credentials, CloudCredentials):
        return {"url": credentials.url, "email": credentials.email,
                "api_token": credentials.api_token}
    return {"url": credentials.url, "pat": credentials.personal_access_token}


def _caldav_settings(credentials: CalDAVCredentials) -> dict[str, str]:
    return {"url": credentials.url, "username": credentials.username,
            "password": credentials.password, "calendar": credentials.calendar}


def _text(fields: Mapping[str, str | None], name: str) -> str:
    return (fields.get(name) or "").strip()


def explain(exc: IntegrationError) -> str:
    """What to tell a person about a failed integration call (never a traceback)."""
    if isinstance(exc, JiraUnavailable | CalendarUnavailable):
        return f"{LABELS.get(exc.integration, exc.integration)} is unavailable: {exc}"
    return str(exc)


class WorkspaceCalendar:
    """One workspace's CalDAV calendar behind the process's retry and circuit policy."""

    def __init__(self, credentials: CalDAVCredentials, client: CalDAVClient,
                 resilience: Resilience, workspace: str) -> None:
        self.credentials = credentials
        self.name = credentials.calendar
        self._client = client
        self._resilience = resilience
        self._workspace = workspace

    async def store_event(self, store_ics: bytes) -> StoredEvent:
        """See :meth:`CalDAVClient.store_event`; retried, since a PUT by UID is idempotent."""
        return await self._resilience.call(
            self._workspace, "calendar", lambda: self._client.store_event(store_ics),
            classify=cal.classify,
        )

    async def upcoming(self, now: datetime, days: int, limit: int) -> list[CalendarEvent]:
        """See :meth:`CalDAVClient.upcoming`."""
        return await self._resilience.call(
            self._workspace, "calendar", lambda: self._client.upcoming(now, days, limit),
            classify=cal.classify,
        )


class Connections:
    """Per-workspace integration clients, their health, and connecting new credentials.

    ``timeout`` (seconds) bounds each socket operation of a Jira or CalDAV request;
    ``can_store`` says whether a secret key is configured (credentials can be saved).
    ``egress`` decides which addresses may be reached: with many workspaces their admins are
    outside parties, so the process passes a policy refusing private addresses (the default
    here trusts the URLs, as for the operator's own single workspace). ``limits`` sizes the
    Jira and calendar thread pools; :meth:`close` stops them. A live health check is reused
    for :data:`HEALTH_TTL` seconds of ``clock``.

    Circuits are kept per process. With ``redis``, a circuit reset (or dropped for new
    credentials) here is announced on :data:`CIRCUITS_CHANNEL` and dropped by every replica
    that runs :meth:`listen`.
    """

    def __init__(self, credentials: CredentialRepository, resilience: Resilience, *,
                 defaults: Defaults, timeout: float, can_store: bool,
                 egress: EgressPolicy | None = None,
                 limits: PoolLimits | None = None,
                 redis: Redis | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._credentials = credentials
        self._redis = redis
        self.resilience = resilience
        self.defaults = defaults
        self.timeout = timeout
        self.can_store = can_store
        self.egress = egress or EgressPolicy(allow_private=True)
        limits = limits or PoolLimits()
        self.pools: dict[Integration, IntegrationPool] = {
            integration: limits.pool(integration) for integration in INTEGRATIONS}
        self._jira: dict[str, JiraClient] = {}
        self._calendars: dict[str, WorkspaceCalendar] = {}
        # Live health checks, reused for HEALTH_TTL seconds: keyed by the credentials too, so
        # new ones are checked at once. /nox-status is open to every member, and each check
        # takes a pool thread of the workspace's share.
        self._checked: dict[tuple[str, Integration], tuple[float, object, Health]] = {}
        self.clock = clock  # seconds, monotonic: the age of a health check

    def close(self) -> None:
        """Stop the thread pools (running calls end at their deadlines)."""
        for pool in self.pools.values():
            pool.close()

    # -- resolving ----------------------------------------------------------------------------

    async def _stored(self, tenant: Tenant, integration: Integration) -> dict | None:
        kind = _KIND[integration]
        try:
            return await self._credentials.load(tenant, kind)
        except MissingSecretKey:
            stored = {info.kind for info in await self._credentials.configured(tenant)}
            if kind in stored:
                raise IntegrationError(
                    integration,
                    f"{LABELS[integration]} credentials are stored for this workspace but "
                    "JAMONO_SECRET_KEY is not set, so they cannot be read. Ask the operator "
                    "to set the key they were saved with.",
                ) from None
            return None
        except SecretsError as exc:
            raise IntegrationError(integration, f"{LABELS[integration]} credentials: {exc}") \
                from None

    async def jira_credentials(self, tenant: Tenant) -> JiraCredentials | None:
        """The workspace's Jira credentials (stored, else the environment's), or ``None``.

        Raises IntegrationError when stored credentials cannot be decrypted."""
        stored = await self._stored(tenant, "jira")
        return _usable("jira", jira_credentials, stored) if stored else self.defaults.jira

    async def caldav_credentials(self, tenant: Tenant) -> CalDAVCredentials | None:
        """The workspace's CalDAV credentials (stored, else the environment's), or ``None``."""
        stored = await self._stored(tenant, "calendar")
        return (_usable("calendar", caldav_credentials, stored) if stored
                else self.defaults.caldav)

    async def jira(self, tenant: Tenant) -> JiraClient:
        """The workspace's Jira client. Raises :class:`NotConnected` without credentials."""
        credentials = await self.jira_credentials(tenant)
        if credentials is None:
            raise NotConnected("jira")
        client = self._jira.get(tenant.id)
        if client is None or client.credentials != credentials:
            client = JiraClient(credentials, resilience=self.resilience, workspace=tenant.id,
                                timeout=self.timeout, pool=self.pools["jira"],
                                egress=self.egress)
            self._jira[tenant.id] = client
        return client

    async def calendar(self, tenant: Tenant) -> WorkspaceCalendar | None:
        """The workspace's CalDAV calendar, or ``None`` when it has none."""
        credentials = await self.caldav_credentials(tenant)
        if credentials is None:
            return None
        calendar = self._calendars.get(tenant.id)
        if calendar is None or calendar.credentials != credentials:
            client = CalDAVClient(credentials, timeout=self.timeout,
                                  pool=self.pools["calendar"], egress=self.egress,
                                  workspace=tenant.id)
            calendar = WorkspaceCalendar(credentials, client, self.resilience, tenant.id)
            self._calendars[tenant.id] = calendar
        return calendar

    # -- health -------------------------------------------------------------------------------

    async def health(self, tenant: Tenant, integration: Integration) -> Health:
        """``not configured``; ``circuit open`` while calls are refused; else a live check
        (Jira ``serverInfo`` + ``myself``, CalDAV principal + calendar): ``ok`` or
        ``failing`` with the reason."""
        try:
            if integration == "jira":
                credentials = await self.jira_credentials(tenant)
            else:
                credentials = await self.caldav_credentials(tenant)
        except IntegrationError as exc:
            return Health("failing", str(exc))
        if credentials is None:
            return Health("not configured")
        known = self.resilience.health(tenant.id, integration)
        if known.state == "circuit open":
            return known
        key, now = (tenant.id, integration), self.clock()
        checked_at, checked_with, health = self._checked.get(key, (0.0, None, None))
        if health is not None and checked_with == credentials and now - checked_at < HEALTH_TTL:
            return health
        try:
            await self._test(tenant, integration, credentials, self.timeout)
        except IntegrationError as exc:
            health = Health("failing", str(exc))
        else:
            health = Health("ok")
        self._checked[key] = (now, credentials, health)
        return health

    # -- connecting ---------------------------------------------------------------------------

    async def connect(self, tenant: Tenant, integration: Integration,
                      fields: Mapping[str, str | None], actor: str | None, *,
                      test_timeout: float = TEST_TIMEOUT) -> str:
        """Test ``fields`` (see :func:`jira_credentials`, :func:`caldav_credentials`) and, when
        they work, save them encrypted and reset the workspace's circuit.

        Returns a confirmation with the secrets masked. Raises :class:`ConnectionFailed` (the
        fields at fault and why; nothing saved) — also when no secret key is configured.
        """
        if not self.can_store:
            raise ConnectionFailed({"url": SECRET_KEY_HINT})
        credentials = (jira_credentials(fields) if integration == "jira"
                       else caldav_credentials(fields))
        try:
            found = await self._test(tenant, integration, credentials, test_timeout)
        except IntegrationError as exc:
            raise ConnectionFailed(_field_errors(credentials, exc)) from None
        if integration == "jira":
            settings = _jira_settings(credentials)
            account = getattr(credentials, "email", None)
        else:
            settings = _caldav_settings(credentials)
            account = credentials.username or None
        try:
            await self._credentials.save(tenant, _KIND[integration], settings, actor,
                                         url=credentials.url, account=account)
        except MissingSecretKey:
            raise ConnectionFailed({"url": SECRET_KEY_HINT}) from None
        await self._drop_circuit(tenant.id, integration)
        self._checked.pop((tenant.id, integration), None)  # just tested: check afresh
        log.info("integration_connected", tenant=tenant.id, integration=integration,
                 url=credentials.url if integration == "jira" else credentials.server)
        return f"{describe_credentials(credentials)} — tested: {found}."

    async def disconnect(self, tenant: Tenant, integration: Integration,
                         actor: str | None) -> bool:
        """Delete the workspace's stored credentials; ``True`` when there were some."""
        removed = await self._credentials.delete(tenant, _KIND[integration], actor)
        await self._drop_circuit(tenant.id, integration)
        self._checked.pop((tenant.id, integration), None)  # just tested: check afresh
        return removed

    async def reset_circuit(self, tenant: Tenant, integration: Integration) -> bool:
        """Close the workspace's circuit of ``integration`` here and on every replica (a
        workspace admin asked from ``/nox-status``); returns whether it was open here."""
        was_open = self.resilience.reset(tenant.id, integration)
        await self._announce(tenant.id, integration)
        return was_open

    async def listen(self) -> None:
        """Drop the circuits other replicas announce, for the life of the process (needs
        ``redis``). One missed while Redis was away closes by itself after its pause."""
        await pubsub.listen(self._redis, CIRCUITS_CHANNEL, self._heard)

    async def _heard(self, announcement: pubsub.Message) -> None:
        workspace, integration = announcement.get("tenant"), announcement.get("integration")
        if not isinstance(workspace, str) or integration not in INTEGRATIONS:
            log.warning("circuit_announcement_malformed")
            return
        self.resilience.reset(workspace, integration)

    async def _drop_circuit(self, workspace: str, integration: Integration) -> None:
        self.resilience.forget(workspace, integration)
        await self._announce(workspace, integration)

    async def _announce(self, workspace: str, integration: Integration) -> None:
        if self._redis is not None:  # a failure is logged: the others close after the pause
            await pubsub.publish(self._redis, CIRCUITS_CHANNEL,
                                 {"tenant": workspace, "integration": integration})

    async def describe(self, tenant: Tenant) -> list[str]:
        """One line per integration: what is connected (secrets masked) and from where."""
        stored = {info.kind: info for info in await self._credentials.configured(tenant)}
        lines = []
        for integration in INTEGRATIONS:
            info = stored.get(_KIND[integration])
            default = self.defaults.jira if integration == "jira" else self.defaults.caldav
            if info is not None:
                who = f" by <@{info.updated_by}>" if info.updated_by else ""
                account = f" as {info.account}" if info.account else ""
                # without_userinfo: rows saved before user information in URLs was refused.
                lines.append(f"{LABELS[integration]}: {without_userinfo(info.url)}{account} "
                             "(secret ••••; saved "
                             f"{info.updated_at:%Y-%m-%d %H:%M} UTC{who})")
            elif default is not None:
                lines.append(f"{LABELS[integration]}: {describe_credentials(default)} "
                             "(from the environment)")
            else:
                lines.append(f"{LABELS[integration]}: not connected — "
                             f"`/nox-connect {integration}`")
        return lines

    async def _test(self, tenant: Tenant, integration: Integration,
                    credentials: JiraCredentials | CalDAVCredentials, within: float) -> str:
        """One attempt, outside the circuit, in the workspace's share of the pool and under
        the egress policy, stopped after ``within`` seconds; returns what was found. Raises
        IntegrationError."""
        if integration == "jira":
            check = await JiraClient(credentials, resilience=self.resilience, timeout=within,
                                     workspace=tenant.id, pool=self.pools["jira"],
                                     egress=self.egress).check(deadline=within)
            return f"{check.server_title} {check.version} ({check.deployment}), " \
                   f"signed in as {check.user}"
        await CalDAVClient(credentials, timeout=within, pool=self.pools["calendar"],
                           egress=self.egress, workspace=tenant.id).check(deadline=within)
        return f"calendar '{credentials.calendar}' found"


def _usable(integration: Integration, parse: Callable[[Mapping[str, str | None]], T],
            stored: Mapping[str, str | None]) -> T:
    """Stored settings as credentials; an IntegrationError when they no longer pass the rules
    (e.g. a URL with a password, saved before such URLs were refused)."""
    try:
        return parse(stored)
    except ConnectionFailed as exc:
        reasons = " ".join(exc.errors.values())
        raise IntegrationError(integration, (
            f"The stored {LABELS[integration]} settings cannot be used: {reasons} A workspace "
            f"admin can connect again with `/nox-connect {integration}`.")) from None


def describe_credentials(credentials: JiraCredentials | CalDAVCredentials) -> str:
    """``Jira Cloud at URL as EMAIL, API token ••••1234`` — secrets masked."""
    if isinstance(credentials, CloudCredentials):
        return (f"Jira Cloud at {credentials.url} as {credentials.email}, API token "
                f"{mask(credentials.api_token)}")
    if isinstance(credentials, DataCenterCredentials):
        return (f"Jira Data Center at {credentials.url}, personal access token "
                f"{mask(credentials.personal_access_token)}")
    return (f"calendar '{credentials.calendar}' at {credentials.server} as "
            f"{credentials.username or '(anonymous)'}, password {mask(credentials.password)}")


def _field_errors(credentials: JiraCredentials | CalDAVCredentials,
                  exc: IntegrationError) -> dict[str, str]:
    """Which form field a failed connection test points at."""
    message = str(exc)
    if isinstance(exc, JiraAuthError):
        return {"api_token" if isinstance(credentials, CloudCredentials) else "pat": message}
    if isinstance(exc, CalendarAuthError):
        return {"password": message}
    if isinstance(exc, CalendarNotFound) and exc.available:
        return {"calendar": message}
    return {"url": message}
