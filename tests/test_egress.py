"""The outbound guard, as the attacks it stops: a workspace admin (any Slack workspace can
install Jamono) gives a Jira or CalDAV URL that leads to the server's own network — directly,
through DNS that changes after the URL was saved, through a redirect, or through a CalDAV
server handing back a principal URL — or puts a password in the URL.

The fake servers listen on loopback, which the policy refuses with OAuth install. The tests
open 127.0.0.1 with the operator's escape hatch (``JAMONO_EGRESS_ALLOW=127.0.0.1/32``) and put
the "internal" services the attacker aims at on 127.0.0.2, which stays refused.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import sqlite3
import ssl

import pytest
import pytest_asyncio
import sqlalchemy as sa
from aiohttp import web
from cryptography import x509
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agents.connections import ConnectionFailed, Connections, Defaults
from bot.services import Services
from bot.settings import SettingsError, load_settings
from integrations.calendar import CalDAVClient, CalDAVCredentials, CalendarRejected
from integrations.egress import EgressPolicy, EgressRefused, check_url, parse_networks
from integrations.errors import IntegrationError
from integrations.jira import CloudCredentials, JiraClient, JiraError, JiraRefused
from integrations.resilience import Resilience, RetryPolicy
from storage import migrate
from storage.db import create_engine, session_factory
from storage.models import AuditEvent, Credential
from storage.repositories import Repositories
from storage.secrets import SecretBox, generate_key
from storage.tenancy import Tenant
from tests.fakes.jira import FakeJira

TENANT = Tenant("T0ATTACKER")
SECRET = "TOP-SECRET internal admin page"
LOOPBACK_ALLOWED = parse_networks("127.0.0.1/32")
INTERNAL = "127.0.0.2"  # an internal service: loopback, not on the allow-list


# -- the policy's address rules (pure) --------------------------------------------------------

@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.0.0.2", "10.1.2.3", "172.16.0.1", "192.168.1.1", "100.64.0.1",
    "169.254.169.254", "169.254.170.2", "100.100.100.200", "0.0.0.0", "224.0.0.1",
    "255.255.255.255", "::1", "::", "fe80::1", "fd00:ec2::254", "fc00::1", "ff02::1",
    "::ffff:127.0.0.1", "::ffff:169.254.169.254", "2002:7f00:1::", "64:ff9b::a9fe:a9fe",
    "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo, client 127.0.0.1
    "168.63.129.16",  # Azure WireServer: public, but metadata
])
def test_with_many_workspaces_internal_and_metadata_addresses_are_refused(address):
    assert EgressPolicy().refusal(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"])
def test_public_addresses_are_allowed(address):
    assert EgressPolicy().refusal(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(("address", "allowed"), [
    ("127.0.0.1", True), ("10.1.2.3", True), ("::ffff:192.168.0.1", True),
    ("169.254.169.254", False), ("fd00:ec2::254", False), ("::ffff:169.254.169.254", False),
    ("0.0.0.0", False), ("224.0.0.1", False),
])
def test_one_workspace_reaches_private_servers_but_never_metadata(address, allowed):
    refusal = EgressPolicy(allow_private=True).refusal(ipaddress.ip_address(address))
    assert (refusal is None) is allowed


def test_the_operator_allow_list_opens_only_what_it_names():
    policy = EgressPolicy(allow=LOOPBACK_ALLOWED)
    assert policy.refusal(ipaddress.ip_address("127.0.0.1")) is None
    assert policy.refusal(ipaddress.ip_address("127.0.0.2")) == "internal"
    with pytest.raises(ValueError, match="'10.0.0.0/33' is not an IP network"):
        parse_networks("127.0.0.1/32, 10.0.0.0/33")


def test_a_name_with_one_internal_address_among_public_ones_is_refused():
    policy = EgressPolicy(resolver=lambda host, port: ["8.8.8.8", "10.0.0.5"])
    with pytest.raises(EgressRefused, match=r"`jira.example.com` is an internal address"):
        policy.resolve("jira.example.com", 443)


@pytest.mark.parametrize("url", [
    "https://bob:hunter2@jira.example.com", "https://bob@jira.example.com",
    "https://:hunter2@cal.example.com/dav/", "ftp://jira.example.com", "https:///nohost",
])
def test_urls_with_user_information_or_without_http_are_refused(url):
    with pytest.raises(EgressRefused):
        check_url(url)


# -- servers for the attacks ------------------------------------------------------------------

@pytest_asyncio.fixture
async def serve():
    """``await serve(handler, host)`` runs an aiohttp handler on ``host``; returns its URL."""
    runners = []

    async def start(handler, host: str = "127.0.0.1") -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, host, 0)
        await site.start()
        return f"http://{host}:{runner.addresses[0][1]}"

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest_asyncio.fixture
async def internal(serve):
    """An internal service the attacker aims at; ``hits`` records every request it gets."""
    hits: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(status=403, text=SECRET)

    url = await serve(handler, INTERNAL)
    return url, hits


@pytest_asyncio.fixture
async def services(sqlite_url):
    settings = load_settings(
        _env_file=None, DATABASE_URL=sqlite_url, JAMONO_SECRET_KEY=Fernet.generate_key().decode(),
        SLACK_CLIENT_ID="1.2", SLACK_CLIENT_SECRET="s", SLACK_SIGNING_SECRET="x",
        JAMONO_EGRESS_ALLOW="127.0.0.1/32")
    started = await Services.start(settings)
    yield started
    await started.close()


def with_policy(services: Services, policy: EgressPolicy) -> Connections:
    return Connections(services.repos.credentials, Resilience(RetryPolicy(attempts=1)),
                       defaults=Defaults(), timeout=2, can_store=True, egress=policy)


def rows(sqlite_url: str) -> list[tuple]:
    with sqlite3.connect(sqlite_url.split("///", 1)[1]) as db:
        return db.execute("SELECT * FROM credentials").fetchall()


def cloud(jira: FakeJira, url: str) -> dict[str, str]:
    return {"url": url, "email": jira.email, "api_token": jira.api_token}


# -- at save time -----------------------------------------------------------------------------

@pytest.mark.parametrize("host", ["[::1]", "[::ffff:127.0.0.2]", "0.0.0.0", "127.0.0.2"])
async def test_internal_urls_are_refused_at_save(services, sqlite_url, host):
    async with FakeJira("cloud") as jira:
        url = jira.url.replace("127.0.0.1", host)
        with pytest.raises(ConnectionFailed) as refused:
            await services.connections.connect(TENANT, "jira", cloud(jira, url), "U1")
    assert "was not contacted" in refused.value.errors["url"]
    assert jira.requests == []
    assert rows(sqlite_url) == []


# -- at use: stored credentials are re-checked on every request -------------------------------

async def test_stored_credentials_pointing_inside_are_refused_at_use(services, internal):
    url, hits = internal
    await services.repos.credentials.save(
        TENANT, "jira", {"url": url, "email": "a@b.c", "api_token": "t"}, None, url=url)
    client = await services.connections.jira(TENANT)
    with pytest.raises(JiraRefused, match="`127.0.0.2` is an internal address"):
        await client.search("project = OPS")
    assert hits == []


async def test_a_name_that_rebinds_to_an_internal_address_after_saving_is_refused(
        services, internal):
    """DNS rebinding: the name resolves to an allowed address while the URL is tested and
    saved, then to an internal one. Every connection resolves and checks again, and connects
    to the address it checked."""
    internal_url, hits = internal
    answers = {"jira.rebind.test": "127.0.0.1"}
    policy = EgressPolicy(allow=LOOPBACK_ALLOWED,
                          resolver=lambda host, port: [answers[host]])
    connections = with_policy(services, policy)
    try:
        async with FakeJira("cloud") as jira:
            port = jira.url.rsplit(":", 1)[1]
            url = f"http://jira.rebind.test:{port}"
            saved = await connections.connect(TENANT, "jira", cloud(jira, url), "U1")
            assert "signed in as" in saved
            client = await connections.jira(TENANT)
            assert (await client.search("project = PAY")).issues

            answers["jira.rebind.test"] = INTERNAL  # the attacker's DNS changes its answer
            seen = len(jira.requests)
            fresh = with_policy(services, policy)  # a new process: no kept-alive connection
            try:
                with pytest.raises(JiraRefused, match=r"`jira.rebind.test` is an internal "
                                                      r"address \(127.0.0.2\)"):
                    await (await fresh.jira(TENANT)).search("project = PAY")
            finally:
                fresh.close()
            assert len(jira.requests) == seen
    finally:
        connections.close()
    assert hits == []


# -- redirects --------------------------------------------------------------------------------

async def test_a_redirect_to_an_internal_port_is_refused_and_nothing_is_echoed(
        services, serve, internal, sqlite_url):
    internal_url, hits = internal

    async def public_looking(request: web.Request) -> web.Response:
        raise web.HTTPFound(f"{internal_url}{request.path_qs}")

    url = await serve(public_looking)
    with pytest.raises(ConnectionFailed) as refused:
        await services.connections.connect(
            TENANT, "jira", {"url": url, "email": "a@b.c", "api_token": "t"}, "U1")
    message = refused.value.errors["url"]
    assert "`127.0.0.2` is an internal address" in message
    assert SECRET not in message
    assert hits == []
    assert rows(sqlite_url) == []


@pytest.mark.parametrize("status", [200, 400, 403, 404, 500])
async def test_an_answer_that_is_not_jiras_is_never_echoed(serve, internal, status):
    """Where a redirect may be followed (one workspace reaching its own network), the page it
    leads to still never reaches the Slack user: the error names the kind of answer."""
    internal_url, hits = internal

    async def answer(request: web.Request) -> web.Response:
        return web.Response(status=status, text=SECRET)

    target = await serve(answer, INTERNAL)

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound(f"{target}{request.path_qs}")

    url = await serve(redirect)
    client = JiraClient(CloudCredentials(url, "a@b.c", "t"),
                        resilience=Resilience(RetryPolicy(attempts=1)))
    for call in (client.check(), client.search("project = OPS")):
        with pytest.raises(JiraError) as failed:
            await call
        assert SECRET not in str(failed.value)
        assert "TOP-SECRET" not in str(failed.value)


async def test_a_jira_answer_nested_beyond_the_decoder_is_a_readable_error(serve):
    """A hostile server's 2xx JSON nested a hundred thousand levels deep: RecursionError
    escaped the client's error contract (a traceback for tools, a whole briefing failed)."""

    async def deep(request: web.Request) -> web.Response:
        body = "[" * 100_000 + "]" * 100_000
        return web.Response(status=200, text=body, content_type="application/json")

    url = await serve(deep)
    client = JiraClient(CloudCredentials(url, "a@b.c", "t"),
                        resilience=Resilience(RetryPolicy(attempts=1)))
    with pytest.raises(JiraError, match="does not look like a Jira site"):
        await client.check()


# -- CalDAV: the URLs the server hands back ---------------------------------------------------

def dav_answer(path: str, home_url: str) -> str:
    """A PROPFIND answer naming the principal (on the same server) and its calendar home."""
    return (
        '<?xml version="1.0" encoding="utf-8"?>'
        '<d:multistatus xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:caldav">'
        f"<d:response><d:href>{path}</d:href><d:propstat><d:prop>"
        "<d:current-user-principal><d:href>/principals/a/</d:href></d:current-user-principal>"
        f"<c:calendar-home-set><d:href>{home_url}</d:href></c:calendar-home-set>"
        "</d:prop><d:status>HTTP/1.1 200 OK</d:status></d:propstat></d:response>"
        "</d:multistatus>"
    )


async def test_a_caldav_calendar_home_pointing_inside_is_refused(serve, internal):
    """caldav follows a calendar-home-set on another host (iCloud spreads principals over
    hosts): a hostile server names an internal one."""
    internal_url, hits = internal
    seen: list[str] = []

    async def dav(request: web.Request) -> web.Response:
        seen.append(request.path)
        if request.method == "OPTIONS":
            return web.Response(headers={"DAV": "1, 2, calendar-access"})
        return web.Response(status=207, text=dav_answer(request.path, f"{internal_url}/cal/a/"),
                            content_type="application/xml")

    url = await serve(dav)
    policy = EgressPolicy(allow=LOOPBACK_ALLOWED)
    client = CalDAVClient(CalDAVCredentials(f"{url}/dav/", "alice", "s3cret", "Incidents"),
                          timeout=5, egress=policy)
    with pytest.raises(CalendarRejected) as refused:
        await client.check()
    assert "`127.0.0.2` is an internal address" in str(refused.value)
    assert "/principals/a/" in seen  # the principal was read; its home was not
    assert hits == []


# -- user information in URLs (finding 11) ----------------------------------------------------

async def test_a_caldav_url_with_a_password_is_refused_and_never_stored(services, sqlite_url):
    with pytest.raises(ConnectionFailed) as refused:
        await services.connections.connect(TENANT, "calendar", {
            "url": "https://bob:urlpass@cal.example.com/dav/", "username": "alice",
            "password": "s3cret", "calendar": "Incidents"}, "U1")
    assert "must not hold a user name or password" in refused.value.errors["url"]
    assert rows(sqlite_url) == []
    with pytest.raises(ConnectionFailed, match="must not hold a user name or password"):
        await services.connections.connect(TENANT, "jira", {
            "url": "https://bob:urlpass@acme.atlassian.net", "email": "a@b.c",
            "api_token": "t"}, "U1")
    assert rows(sqlite_url) == []


async def test_a_url_with_a_password_saved_before_the_fix_is_never_shown(services):
    url = "https://bob:urlpass@cal.example.com/dav/"
    await services.repos.credentials.save(
        TENANT, "caldav", {"url": url, "username": "alice", "password": "p",
                           "calendar": "Incidents"}, None, url=url, account="alice")
    shown = "\n".join(await services.connections.describe(TENANT))
    assert "cal.example.com/dav/" in shown
    assert "urlpass" not in shown and "bob" not in shown
    with pytest.raises(IntegrationError) as refused:
        await services.connections.calendar(TENANT)
    assert "must not hold a user name or password" in str(refused.value)
    assert "/nox-connect calendar" in str(refused.value)
    assert "urlpass" not in str(refused.value)


async def test_passwords_in_urls_saved_before_the_fix_are_scrubbed_by_the_upgrade(database_url):
    """Migration 0009: the clear ``credentials.url`` and the audit trail (shown by /nox-audit,
    exported by jamono audit export) lose the ``user:password@`` of rows saved before."""
    await migrate.upgrade_async(database_url, "0008")
    engine = create_engine(database_url)
    url = "https://bob:urlpass@cal.example.com/dav/"
    try:
        repos = Repositories.over(session_factory(engine), SecretBox([generate_key()]))
        await repos.credentials.save(
            TENANT, "caldav", {"url": url, "username": "alice", "password": "p",
                               "calendar": "Incidents"}, "U1", url=url, account="alice")
        async with engine.begin() as connection:  # as the audit trail kept it before 0009
            await connection.execute(
                sa.insert(AuditEvent).values(tenant_id=TENANT.id, kind="credentials_saved",
                                             actor="U1", subject="caldav",
                                             details={"url": url, "account": "alice"})
            )
        await migrate.upgrade_async(database_url)
        async with engine.connect() as connection:
            stored = (await connection.execute(sa.select(Credential.url))).scalars().all()
            trail = (await connection.execute(sa.select(AuditEvent.details))).scalars().all()
    finally:
        await engine.dispose()
    assert stored == ["https://cal.example.com/dav/"]
    assert "urlpass" not in json.dumps(trail) and "cal.example.com/dav/" in json.dumps(trail)


@pytest.mark.parametrize("variable", ["JIRA_URL", "CALDAV_URL"])
def test_the_operators_urls_with_a_password_are_refused_at_start(variable):
    env = {variable: "https://bob:urlpass@internal.example.com/", "JIRA_PAT": "p",
           "CALDAV_CALENDAR": "Incidents"}
    if variable == "CALDAV_URL":
        env.pop("JIRA_PAT")
    with pytest.raises(SettingsError) as refused:
        load_settings(_env_file=None, **env)
    assert f"{variable} must not hold a user name or password" in str(refused.value)
    assert "urlpass" not in str(refused.value)


# -- the sessions any future user-supplied URL (pages, webhooks) gets -------------------------

SESSIONS = ["requests_session", "niquests_session"]


@pytest.mark.parametrize("factory", SESSIONS)
async def test_each_session_refuses_a_redirect_inside(serve, internal, factory):
    internal_url, hits = internal

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound(f"{internal_url}/admin")

    url = await serve(redirect)
    session = getattr(EgressPolicy(allow=LOOPBACK_ALLOWED), factory)()
    with pytest.raises(EgressRefused, match="`127.0.0.2` is an internal address"):
        await asyncio.to_thread(session.get, url, timeout=5)
    session.close()
    assert hits == []


def certificate(tmp_path, name: str) -> tuple[str, str]:
    """A self-signed certificate for ``name``: (certificate file, key file)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_file), str(key_file)


@pytest.mark.parametrize("factory", SESSIONS)
async def test_a_pinned_connection_still_verifies_tls_on_the_host_name(tmp_path, factory):
    """The TCP connection goes to the checked address; the certificate is still checked
    against the name in the URL (and the name is sent as SNI)."""
    served, key = certificate(tmp_path, "jira.pinned.test")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(served, key)

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello")

    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context).start()
    port = runner.addresses[0][1]
    # Both names lead to the server; its certificate names only the first (no IP address).
    policy = EgressPolicy(allow=LOOPBACK_ALLOWED, resolver=lambda host, port: ["127.0.0.1"])
    try:
        session = getattr(policy, factory)()
        answer = await asyncio.to_thread(session.get, f"https://jira.pinned.test:{port}/",
                                         verify=served, timeout=5)
        assert answer.text == "hello"
        session.close()
        session = getattr(policy, factory)()
        with pytest.raises(Exception) as failed:  # requests' and niquests' SSLError
            await asyncio.to_thread(session.get, f"https://another-name.test:{port}/",
                                    verify=served, timeout=5)
        assert "another-name.test" in str(failed.value), repr(failed.value)
        session.close()
    finally:
        await runner.cleanup()
