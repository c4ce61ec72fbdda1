"""Fair shares, as the attack: workspace B points its Jira at a server that trickles a byte a
second and fires many calls; workspace A's Jira calls must still complete, B's calls must end
at the overall deadline with a readable error, and B's threads must be free afterwards.

Before issue 10 the calls ran in the event loop's default executor with only a per-read
timeout: B's calls never ended, kept their threads, and starved everything else that uses that
executor (DNS for Slack, the LLM, database connections).
"""

from __future__ import annotations

import asyncio
import threading

import pytest
import pytest_asyncio
from aiohttp import web
from cryptography.fernet import Fernet

from agents.connections import Connections, Defaults
from bot.services import Services
from bot.settings import load_settings
from integrations.jira import DataCenterCredentials, JiraClient, JiraUnavailable
from integrations.pools import IntegrationPool, PoolBusy, PoolLimits
from integrations.resilience import Resilience, RetryPolicy
from storage.tenancy import Tenant
from tests.fakes.jira import FakeJira
from tests.fakes.trickle import TrickleServer

A, B = Tenant("T0AAAAAAA"), Tenant("T0BBBBBBB")
SHARE = 2  # threads one workspace may hold
DEADLINE = 4.0  # seconds; above the per-read timeout, which the trickle never trips
READ_TIMEOUT = 2.0
SHARE_DEFAULT = 4  # JAMONO_INTEGRATION_WORKSPACE_THREADS's default


@pytest_asyncio.fixture
async def services(sqlite_url):
    # OAuth install (many workspaces) with the operator's escape hatch for the local fakes.
    settings = load_settings(
        _env_file=None, DATABASE_URL=sqlite_url, JAMONO_SECRET_KEY=Fernet.generate_key().decode(),
        SLACK_CLIENT_ID="1.2", SLACK_CLIENT_SECRET="s", SLACK_SIGNING_SECRET="x",
        JAMONO_EGRESS_ALLOW="127.0.0.1/32", JAMONO_INTEGRATION_THREADS="4",
        JAMONO_INTEGRATION_WORKSPACE_THREADS=str(SHARE),
        JAMONO_INTEGRATION_DEADLINE=str(DEADLINE))
    started = await Services.start(settings)
    yield started
    await started.close()


async def save_jira(services: Services, tenant: Tenant, url: str, fake: FakeJira) -> None:
    """Stored credentials, as /nox-connect leaves them (B's trickle would fail its live test)."""
    await services.repos.credentials.save(
        tenant, "jira", {"url": url, "email": fake.email, "api_token": fake.api_token}, None,
        url=url, account=fake.email)


def test_the_process_builds_its_pools_from_the_settings(services):
    pool = services.connections.pools["jira"]
    assert (pool.per_workspace, pool.deadline) == (SHARE, DEADLINE)
    assert services.connections.pools["calendar"].per_workspace == SHARE
    assert not services.connections.egress.allow_private  # OAuth install


async def test_a_trickling_jira_slows_only_its_own_workspace(services):
    # One attempt per call, so each B call meets the deadline exactly once.
    connections = Connections(
        services.repos.credentials, Resilience(RetryPolicy(attempts=1)), defaults=Defaults(),
        timeout=READ_TIMEOUT, can_store=True, egress=services.connections.egress,
        limits=PoolLimits(threads=4, per_workspace=SHARE, deadline=DEADLINE))
    try:
        async with FakeJira("cloud") as jira, TrickleServer(interval=1.0) as trickle:
            await save_jira(services, A, jira.url, jira)
            await save_jira(services, B, trickle.url, jira)
            jira_a, jira_b = await connections.jira(A), await connections.jira(B)
            pool = connections.pools["jira"]

            flood = [asyncio.create_task(jira_b.search("project = OPS")) for _ in range(6)]
            await trickle.wait_open(1)  # B is stuck on the trickle
            assert pool.in_use(B.id) == SHARE  # and holds its whole share, no more

            # A's calls complete while B's are stuck.
            for _ in range(3):
                found = await jira_a.search("project = PAY")
                assert [issue.key for issue in found.issues] == ["PAY-1"]
            assert pool.in_use(B.id) == SHARE
            assert not any(task.done() for task in flood)

            outcomes = await asyncio.gather(*flood, return_exceptions=True)
            for outcome in outcomes:
                assert isinstance(outcome, JiraUnavailable), outcome
                message = str(outcome)
                assert (f"did not finish within {DEADLINE:g} s, so the call was stopped"
                        in message or "Jira is busy for this workspace" in message), message
            assert any("did not finish" in str(outcome) for outcome in outcomes)

            # B's threads are free: its share is empty and the trickle saw every socket close.
            assert pool.in_use(B.id) == 0
            await asyncio.wait_for(trickle.wait_all_closed(), DEADLINE)
            found = await jira_a.search("project = PAY")
            assert found.issues
    finally:
        connections.close()


async def test_a_cancelled_call_frees_its_thread(services):
    """A tool timeout cancels the call: its socket is shut at once, not left to trickle."""
    connections = Connections(
        services.repos.credentials, Resilience(RetryPolicy(attempts=1)), defaults=Defaults(),
        timeout=READ_TIMEOUT, can_store=True, egress=services.connections.egress,
        limits=PoolLimits(threads=2, per_workspace=1, deadline=60.0))
    try:
        async with FakeJira("cloud") as jira, TrickleServer(interval=1.0) as trickle:
            await save_jira(services, B, trickle.url, jira)
            call = asyncio.create_task((await connections.jira(B)).search("project = OPS"))
            await trickle.wait_open(1)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            await asyncio.wait_for(trickle.wait_all_closed(), 10)
    finally:
        connections.close()


async def test_a_server_that_answers_then_trickles_on_a_kept_alive_connection_is_stopped():
    """The first call is answered at once (over keep-alive); the next one trickles. Its socket
    must belong to its own deadline, or the thread reads on long after the call gave up."""
    streams: list[web.StreamResponse] = []
    ended = asyncio.Event()

    async def jira(request: web.Request) -> web.StreamResponse:
        if request.path.endswith("/serverInfo"):
            return web.json_response({"versionNumbers": [9, 12, 0], "version": "9.12.0",
                                      "deploymentType": "Server", "serverTitle": "Jira"})
        if request.path.endswith("/issue/OPS-1"):
            return web.json_response({"key": "OPS-1", "fields": {"summary": "fast"}})
        response = web.StreamResponse(headers={"Content-Type": "application/json",
                                               "Content-Length": "100000"})
        await response.prepare(request)
        streams.append(response)
        try:
            while True:  # the hostile server's own pace: a byte a second
                await response.write(b" ")
                await asyncio.sleep(1.0)
        except (ConnectionError, asyncio.CancelledError):
            ended.set()
            raise

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", jira)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    pool = IntegrationPool("jira", threads=2, per_workspace=1, deadline=DEADLINE)
    client = JiraClient(DataCenterCredentials(url, "pat"), workspace=B.id, pool=pool,
                        timeout=READ_TIMEOUT, resilience=Resilience(RetryPolicy(attempts=1)))
    try:
        assert (await client.get_issue("OPS-1")).summary == "fast"
        with pytest.raises(JiraUnavailable, match="did not finish within"):
            await client.search("project = OPS")
        assert streams
        assert pool.in_use(B.id) == 0
        await asyncio.wait_for(ended.wait(), DEADLINE)  # the server saw the socket go
    finally:
        pool.close()
        await runner.cleanup()


async def test_a_calls_retries_share_its_deadline():
    """A server that keeps each attempt until its deadline held the workspace's share for
    three deadlines in a row (one per retry); the retries now fit in the call's one."""
    async with TrickleServer(interval=1.0) as trickle:
        pool = IntegrationPool("jira", threads=2, per_workspace=1, deadline=DEADLINE)
        client = JiraClient(DataCenterCredentials(trickle.url, "pat"), workspace=B.id, pool=pool,
                            timeout=READ_TIMEOUT,
                            resilience=Resilience(RetryPolicy(attempts=3, backoff=0.01, jitter=0)))
        try:
            with pytest.raises(JiraUnavailable, match=f"did not finish within {DEADLINE:g} s"):
                await client.search("project = OPS")
        finally:
            pool.close()
        assert trickle.accepted == 1  # one attempt used the whole deadline: none was left


async def test_connect_attempts_to_a_trickling_server_leave_the_default_executor_free(
        sqlite_url):
    """Finding 3: six /nox-connect submissions pointing at a trickling server used to take
    every thread of the loop's default executor, which also resolves names for Slack, the LLM
    and the database. Now they wait in Jira's pool, inside the workspace's share."""
    services = await Services.start(load_settings(
        _env_file=None, DATABASE_URL=sqlite_url,
        JAMONO_SECRET_KEY=Fernet.generate_key().decode()))
    try:
        async with TrickleServer(interval=1.0) as trickle:
            attempts = [
                asyncio.create_task(services.connections.connect(
                    B, "jira", {"url": trickle.url, "pat": "p"}, "U1", test_timeout=60))
                for _ in range(8)]
            await trickle.wait_open(1)
            loop = asyncio.get_running_loop()
            # The default executor answers while every attempt is still stuck.
            assert await asyncio.wait_for(loop.getaddrinfo("localhost", 80), 10)
            assert await asyncio.wait_for(loop.run_in_executor(None, sum, [1, 2]), 10) == 3
            assert not any(attempt.done() for attempt in attempts)
            assert services.connections.pools["jira"].in_use(B.id) <= SHARE_DEFAULT
            for attempt in attempts:
                attempt.cancel()
            await asyncio.gather(*attempts, return_exceptions=True)
            await asyncio.wait_for(trickle.wait_all_closed(), 10)
            assert services.connections.pools["jira"].in_use(B.id) == 0
    finally:
        await services.close()


async def test_a_workspace_waits_for_its_own_share_while_others_run():
    pool = IntegrationPool("jira", threads=2, per_workspace=1, deadline=30)
    release = threading.Event()
    try:
        # Tasks start in order: the first takes B's only thread, the second waits for it.
        first = asyncio.create_task(pool.run(B.id, release.wait))
        second = asyncio.create_task(pool.run(B.id, lambda: "second", deadline=0.2))
        assert await pool.run(A.id, lambda: "a") == "a"  # A is not behind B
        with pytest.raises(PoolBusy, match="1 calls of this workspace were already running"):
            await second
        release.set()
        assert await first is True
        assert pool.in_use(B.id) == 0
    finally:
        release.set()
        pool.close()


async def test_status_checks_cannot_keep_a_workspaces_share_busy(services):
    """/nox-status is open to every member and its check calls Jira live: repeated within
    HEALTH_TTL, it reuses the last answer, so spamming it takes no more pool threads."""
    async with FakeJira("cloud") as fake:
        await save_jira(services, A, fake.url, fake)
        first = [await services.connections.health(A, "jira") for _ in range(5)]
        checks = len(fake.requests_to("GET", "/rest/api/2/serverInfo"))
        await save_jira(services, A, fake.url + "/", fake)  # new credentials: checked at once
        await services.connections.health(A, "jira")
        assert len(fake.requests_to("GET", "/rest/api/2/serverInfo")) > checks
    assert [str(h) for h in first] == ["ok"] * 5 and checks == 1
