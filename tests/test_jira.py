"""The Jira client against the fake Jira REST server over real HTTP, Cloud and Data Center,
through the real pycontribs ``jira`` library and the real resilience policy."""

from __future__ import annotations

import asyncio
import base64
import re

import aiohttp
import pytest
import pytest_asyncio

from integrations.jira import (
    CloudCredentials,
    DataCenterCredentials,
    JiraAuthError,
    JiraClient,
    JiraRequestError,
    JiraUnavailable,
    NotJiraError,
    TransitionNotFound,
)
from integrations.resilience import BreakerPolicy, CircuitOpenError, Resilience, RetryPolicy
from tests.fakes.jira import FakeJira

SEARCH = {"cloud": "/rest/api/2/search/jql", "datacenter": "/rest/api/2/search"}
ISSUE = "/rest/api/2/issue"


def credentials(fake: FakeJira, url: str | None = None, secret: str | None = None):
    if fake.flavour == "cloud":
        return CloudCredentials(url or fake.url, fake.email, secret or fake.api_token)
    return DataCenterCredentials(url or fake.url, secret or fake.pat)


class Waits(list):
    """A sleep for Resilience that records each wait the policy computed, then waits it."""

    async def __call__(self, seconds: float) -> None:
        self.append(seconds)
        await asyncio.sleep(seconds)


@pytest.fixture
def waits() -> Waits:
    return Waits()


@pytest.fixture
def resilience(waits) -> Resilience:
    return Resilience(
        RetryPolicy(attempts=3, backoff=0.01, max_backoff=0.05, jitter=0.01, max_retry_after=5),
        BreakerPolicy(failure_threshold=5, reset_timeout=0.5),
        sleep=waits,
    )


@pytest_asyncio.fixture(params=["cloud", "datacenter"])
async def fake(request):
    async with FakeJira(request.param) as jira:
        yield jira


@pytest.fixture
def client(fake, resilience) -> JiraClient:
    return JiraClient(credentials(fake), resilience=resilience, workspace="T1", timeout=2)


async def warm_up(client: JiraClient, fake: FakeJira) -> None:
    """One search, so serverInfo and the field list are read before faults are injected."""
    await client.search("project = OPS")
    fake.requests.clear()


# -- check ----------------------------------------------------------------------------------

async def test_check_reads_server_info_and_myself(fake, client):
    found = await client.check()
    assert found.deployment == ("Cloud" if fake.flavour == "cloud" else "Server")
    assert found.user == "Nox"
    assert found.user_email == "nox@example.com"
    assert [r.path for r in fake.requests] == ["/rest/api/2/serverInfo", "/rest/api/2/myself"]
    auth = fake.requests[1].headers["Authorization"]
    assert auth.startswith("Basic " if fake.flavour == "cloud" else "Bearer ")


async def test_check_with_bad_credentials_says_so_and_never_shows_the_token(fake, resilience):
    client = JiraClient(credentials(fake, secret="wrong-secret-789"), resilience=resilience)
    with pytest.raises(JiraAuthError) as raised:
        await client.check()
    message = str(raised.value)
    hint = "email and API token" if fake.flavour == "cloud" else "personal access token"
    assert message == f"Jira rejected the credentials (HTTP 401): check the {hint}."
    assert "wrong-secret-789" not in message
    assert raised.value.integration == "jira"
    assert len(fake.requests_to("GET", "/rest/api/2/myself")) == 1  # not retried


async def test_check_on_an_unreachable_url(resilience):
    async with FakeJira("cloud") as fake:
        url = fake.url
    client = JiraClient(CloudCredentials(url, "a@b.c", "t"), resilience=resilience)
    with pytest.raises(JiraUnavailable, match=re.escape(f"Cannot reach Jira at {url}: "
                                                        "connection refused.")):
        await client.check()


async def test_check_on_a_url_that_is_not_jira(fake, resilience):
    client = JiraClient(credentials(fake, url=fake.url + "/wiki"), resilience=resilience)
    with pytest.raises(NotJiraError, match="does not look like a Jira site"):
        await client.check()


async def test_a_slow_jira_times_out(fake, resilience, waits):
    client = JiraClient(credentials(fake), resilience=resilience, timeout=0.2)
    fake.delay(1.0)
    with pytest.raises(JiraUnavailable, match=re.escape("did not answer within 0.2 s")):
        await client.get_issue("OPS-1")
    assert len(fake.requests) == 3  # serverInfo timed out on each of the 3 attempts
    assert len(waits) == 2


# -- operations -----------------------------------------------------------------------------

async def test_search_uses_the_flavours_endpoint(fake, client):
    found = await client.search('project = OPS AND status != Done ORDER BY created DESC')
    assert [(i.key, i.status, i.assignee) for i in found.issues] == [
        ("OPS-3", "To Do", None), ("OPS-2", "In Progress", "Bob")]
    assert found.issues[1].summary == "Payments API latency above SLO"
    assert found.issues[1].url == f"{fake.url}/browse/OPS-2"
    assert found.more is False
    assert found.total == (None if fake.flavour == "cloud" else 2)
    assert len(fake.requests_to("GET", SEARCH[fake.flavour])) == 1
    if fake.flavour == "cloud":
        assert fake.requests_to("GET", "/rest/api/2/search") == []


async def test_search_limit_and_more(fake, client):
    found = await client.search("project = OPS", limit=1)
    assert [i.key for i in found.issues] == ["OPS-3"]
    assert found.more is True
    found = await client.search('text ~ "payments latency"')
    assert [i.key for i in found.issues] == ["OPS-2"]
    assert found.more is False


def auth_header(fake: FakeJira) -> dict[str, str]:
    if fake.flavour == "datacenter":
        return {"Authorization": f"Bearer {fake.pat}"}
    basic = base64.b64encode(f"{fake.email}:{fake.api_token}".encode()).decode()
    return {"Authorization": f"Basic {basic}"}


async def test_the_fake_pages_like_cloud():
    async with FakeJira("cloud") as fake, aiohttp.ClientSession(
            headers=auth_header(fake)) as http:
        async with http.get(fake.url + "/rest/api/2/search",
                            params={"jql": "project = OPS"}) as response:
            assert response.status == 410  # Cloud removed the old search
            assert (await response.json())["errorMessages"]
        body = {"jql": "project = OPS", "maxResults": 2, "fields": ["summary"]}
        async with http.post(fake.url + "/rest/api/2/search/jql", json=body) as response:
            first = await response.json()
        assert [i["key"] for i in first["issues"]] == ["OPS-3", "OPS-2"]
        assert list(first["issues"][0]["fields"]) == ["summary"]
        assert first["isLast"] is False and "total" not in first
        body["nextPageToken"] = first["nextPageToken"]
        async with http.post(fake.url + "/rest/api/2/search/jql", json=body) as response:
            second = await response.json()
        assert [i["key"] for i in second["issues"]] == ["OPS-1"]
        assert second["isLast"] is True and "nextPageToken" not in second


async def test_the_fake_pages_like_data_center():
    async with FakeJira("datacenter") as fake, aiohttp.ClientSession(
            headers=auth_header(fake)) as http:
        async with http.get(fake.url + "/rest/api/2/search", params={
                "jql": "project = OPS", "startAt": "2", "maxResults": "2"}) as response:
            page = await response.json()
        assert (page["startAt"], page["total"]) == (2, 3)
        assert [i["key"] for i in page["issues"]] == ["OPS-1"]


@pytest.mark.parametrize(
    ("jql", "keys"),
    [
        ("project = PAY", ["PAY-1"]),
        ('status in ("To Do", "In Progress")', ["PAY-1", "OPS-3", "OPS-2"]),
        ("labels = payments AND priority = High", ["PAY-1", "OPS-2"]),
        ("assignee is EMPTY", ["PAY-1", "OPS-3"]),
        ("assignee is not EMPTY AND key != OPS-1", ["OPS-2"]),
        ("type = Bug", ["PAY-1"]),
        ("summary ~ 'TLS'", ["OPS-3"]),
        ("project not in (PAY) ORDER BY key ASC", ["OPS-3", "OPS-2", "OPS-1"]),
    ],
)
async def test_the_fakes_jql_subset(jql, keys, resilience):
    async with FakeJira("cloud") as fake:
        client = JiraClient(credentials(fake), resilience=resilience)
        assert [i.key for i in (await client.search(jql)).issues] == keys


async def test_bad_jql_is_a_readable_error_and_not_retried(fake, client, waits):
    await warm_up(client, fake)
    with pytest.raises(JiraRequestError) as raised:
        await client.search("project = OPS OR status = Done")
    assert raised.value.status == 400
    assert str(raised.value).startswith("Jira could not run the JQL search (HTTP 400): Error "
                                        "in the JQL Query")
    assert len(fake.requests_to("GET", SEARCH[fake.flavour])) == 1
    assert waits == []


async def test_create_get_comment_transition(fake, client):
    created = await client.create_issue("ops", "Incident", "Payments API down",
                                        description="Since 14:05", priority="Highest",
                                        labels=["incident", "payments"])
    assert created.key == "OPS-4"
    assert created.url == f"{fake.url}/browse/OPS-4"
    [post] = fake.requests_to("POST", ISSUE)
    assert post.json["fields"] == {
        "project": {"key": "OPS"}, "issuetype": {"name": "Incident"},
        "summary": "Payments API down", "description": "Since 14:05",
        "priority": {"name": "Highest"}, "labels": ["incident", "payments"]}

    issue = await client.get_issue("ops-4")
    assert (issue.key, issue.summary, issue.status, issue.issue_type, issue.priority) == (
        "OPS-4", "Payments API down", "To Do", "Incident", "Highest")
    assert issue.labels == ["incident", "payments"]
    assert issue.description == "Since 14:05"
    assert issue.reporter == "Nox"

    comment = await client.add_comment("OPS-4", "Rolled back to v41")
    assert comment.url == f"{fake.url}/browse/OPS-4?focusedCommentId={comment.comment_id}"
    assert fake.issue("OPS-4")["fields"]["comment"]["comments"][0]["body"] == \
        "Rolled back to v41"

    moved = await client.transition_issue("OPS-4", "in progress")
    assert (moved.transition, moved.status) == ("In Progress", "In Progress")
    assert fake.issue("OPS-4")["fields"]["status"]["name"] == "In Progress"
    [transition] = fake.requests_to("POST", f"{ISSUE}/OPS-4/transitions")
    assert transition.json["transition"] == {"id": 21}


async def test_transition_by_a_wrong_name_lists_the_valid_ones(fake, client):
    with pytest.raises(TransitionNotFound) as raised:
        await client.transition_issue("OPS-2", "Finish")
    assert str(raised.value) == ("OPS-2 has no transition named 'Finish'. "
                                 "Valid transitions: 'To Do', 'Done'.")
    assert raised.value.valid == ["To Do", "Done"]
    assert fake.requests_to("POST", f"{ISSUE}/OPS-2/transitions") == []


async def test_missing_issue(fake, client):
    with pytest.raises(JiraRequestError, match=re.escape(
            "Jira could not get OPS-99 (HTTP 404): Issue does not exist")):
        await client.get_issue("OPS-99")
    assert len(fake.requests_to("GET", f"{ISSUE}/OPS-99")) == 1


async def test_create_with_a_bad_field_gives_jiras_reason_and_is_sent_once(fake, client):
    with pytest.raises(JiraRequestError) as raised:
        await client.create_issue("OPS", "Task", "Rotate keys", priority="Urgent")
    assert "priority: Specify a valid priority" in str(raised.value)
    assert len(fake.requests_to("POST", ISSUE)) == 1


# -- resilience against the fake ------------------------------------------------------------

async def test_a_500_then_success_is_retried(fake, client, waits):
    await warm_up(client, fake)
    fake.fail_next(500)
    found = await client.search("project = PAY")
    assert [i.key for i in found.issues] == ["PAY-1"]
    assert len(fake.requests_to("GET", SEARCH[fake.flavour])) == 2
    assert len(waits) == 1 and 0.01 <= waits[0] <= 0.02


async def test_a_429_waits_as_long_as_retry_after_says(fake, client, waits):
    await warm_up(client, fake)
    fake.fail_next(429, retry_after=1)
    assert (await client.get_issue("OPS-2")).status == "In Progress"
    assert [(r.method, r.path) for r in fake.requests] == [("GET", f"{ISSUE}/OPS-2")] * 2
    assert waits == [1.0]


async def test_a_retry_after_beyond_the_cap_fails_at_once(fake, client, waits):
    await warm_up(client, fake)
    fake.fail_next(429, retry_after=120)
    with pytest.raises(JiraUnavailable, match=re.escape(
            "Jira is rate limiting requests (HTTP 429; retry after 120 s).")):
        await client.get_issue("OPS-2")
    assert len(fake.requests) == 1
    assert waits == []


async def test_a_400_is_not_retried(fake, client, waits):
    await warm_up(client, fake)
    with pytest.raises(JiraRequestError):
        await client.create_issue("OPS", "Task", "")
    assert len(fake.requests_to("POST", ISSUE)) == 1
    assert waits == []


async def test_a_create_answered_500_is_not_sent_again(fake, client, waits):
    await warm_up(client, fake)
    fake.fail_next(500)
    with pytest.raises(JiraUnavailable, match=re.escape(
            "Jira failed to create the issue in OPS (HTTP 500: server error).")):
        await client.create_issue("OPS", "Task", "Rotate keys")
    assert len(fake.requests_to("POST", ISSUE)) == 1


async def test_a_create_answered_503_is_sent_again(fake, client, waits):
    await warm_up(client, fake)
    fake.fail_next(503)
    created = await client.create_issue("OPS", "Task", "Rotate keys")
    assert len(fake.requests_to("POST", ISSUE)) == 2
    assert fake.issue(created.key)["fields"]["summary"] == "Rotate keys"
    assert len(waits) == 1


async def test_jira_down_opens_the_circuit_then_recovers(fake, client, resilience, waits):
    await warm_up(client, fake)
    await fake.down()
    with pytest.raises(JiraUnavailable, match="connection refused"):
        await client.search("project = OPS")
    assert len(waits) == 2  # three attempts
    assert str(resilience.health("T1", "jira")).startswith("failing: Cannot reach Jira")

    with pytest.raises(CircuitOpenError) as raised:  # the 5th failure opens the circuit
        await client.search("project = OPS")
    assert len(waits) == 4
    assert re.fullmatch(r"Jira is unavailable \(circuit open after 5 failures; "
                        r"retrying in 1 s\)", str(raised.value))
    assert resilience.health("T1", "jira").state == "circuit open"

    await fake.up()
    with pytest.raises(CircuitOpenError):  # answered at once, Jira untouched
        await client.get_issue("OPS-1")
    assert fake.requests == []
    assert len(waits) == 4

    await asyncio.sleep(0.5)
    assert (await client.get_issue("OPS-1")).status == "Done"
    assert [r.path for r in fake.requests] == [f"{ISSUE}/OPS-1"]
    assert str(resilience.health("T1", "jira")) == "ok"


async def test_circuits_are_per_workspace(fake, resilience):
    broken = JiraClient(credentials(fake, url="http://127.0.0.1:9"), resilience=resilience,
                        workspace="T-broken")
    healthy = JiraClient(credentials(fake), resilience=resilience, workspace="T-healthy")
    for _ in range(2):
        with pytest.raises((JiraUnavailable, CircuitOpenError)):
            await broken.get_issue("OPS-1")
    assert resilience.health("T-broken", "jira").state == "circuit open"
    assert (await healthy.get_issue("OPS-1")).key == "OPS-1"
