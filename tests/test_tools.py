"""Jira and calendar tools through the agent loop: the fake LLM scripts the tool calls, a fake
Jira (Cloud and Data Center) and a real Radicale answer them, the fake Slack receives the .ics."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import pytest_asyncio
from icalendar import Calendar

from agents.connections import Connections, Defaults
from agents.personas import NOX
from agents.runtime import AgentRuntime, TurnRequest
from agents.tools import build_registry
from bot.services import Services
from bot.settings import load_settings
from bot.slack_client import web_client
from integrations.calendar import CalDAVClient, CalDAVCredentials
from integrations.jira import CloudCredentials, DataCenterCredentials
from integrations.resilience import BreakerPolicy, Resilience, RetryPolicy
from storage.tenancy import Tenant
from tests.e2e import ACME, ACME_TOKEN, ALICE, BOB
from tests.fakes import ToolCall
from tests.fakes.jira import FakeJira
from tests.radicale import running_radicale

TENANT = Tenant(ACME)
THREADS = (f"{1_700_000_000 + n}.000100" for n in itertools.count(1))
RESET = 0.3  # seconds the test circuit stays open


def scripted(*calls: ToolCall):
    """The model asks for ``calls`` one per step, then answers with the last tool result."""
    def script(request):
        done = sum(1 for m in request["messages"] if m["role"] == "tool")
        if done < len(calls):
            return [calls[done]]
        return f"Tool result: {request['messages'][-1]['content']}"

    return script


@pytest_asyncio.fixture(params=["cloud", "datacenter"])
async def jira(request):
    async with FakeJira(request.param) as fake:
        yield fake


def jira_credentials(fake: FakeJira, secret: str | None = None):
    if fake.flavour == "cloud":
        return CloudCredentials(fake.url, fake.email, secret or fake.api_token)
    return DataCenterCredentials(fake.url, secret or fake.pat)


@pytest.fixture(scope="module")
def radicale(tmp_path_factory):
    with running_radicale(tmp_path_factory.mktemp("radicale"),
                          calendars=("Incidents", "Post-mortems")) as url:
        yield url


@pytest_asyncio.fixture
async def services(sqlite_url, llm):
    settings = load_settings(
        _env_file=None, DATABASE_URL=sqlite_url, OPENAI_BASE_URL=llm.base_url,
        OPENAI_API_KEY="sk-test", JAMONO_LLM_TIMEOUT=5,
    )
    services = await Services.start(settings)
    yield services
    await services.close()


@pytest_asyncio.fixture
async def slack_client(slack):
    client = web_client(slack.api_url, ACME_TOKEN)
    yield client
    if client.session is not None:
        await client.session.close()


class Stack:
    """A runtime whose tools use ``defaults`` and a quick test resilience policy."""

    def __init__(self, services: Services, defaults: Defaults) -> None:
        self.services = services
        self.resilience = Resilience(
            RetryPolicy(attempts=3, backoff=0.01, max_backoff=0.02, jitter=0.01),
            BreakerPolicy(failure_threshold=5, reset_timeout=RESET),
        )
        self.connections = Connections(services.repos.credentials, self.resilience,
                                       defaults=defaults, timeout=2, can_store=False)
        self.runtime = AgentRuntime(
            llm=services.llm,
            registry=build_registry(services.status, connections=self.connections),
            repos=services.repos, default_model="fake-model", tool_timeout=20,
            context_tokens=6000,
        )

    async def ask(self, text: str, slack=None, thread: str | None = None, tenant=TENANT):
        """One turn in a new thread (or in ``thread``).

        These tests are about the tools, so the workspace auto-approves its write tools;
        the approval flow in front of them is tested in tests/test_*approvals*.py.
        """
        for tool in self.runtime.registry:
            if tool.risk == "write":
                await self.services.repos.policy.set_auto_approve(tenant, tool.name, True, "test")
        self.thread = thread or next(THREADS)
        return await self.runtime.run(TurnRequest(
            tenant=tenant, persona=NOX, channel_id="C0OPS", thread_ts=self.thread,
            user_id=ALICE,
            text=text, timezone="Europe/Paris", slack=slack))


# -- Jira -----------------------------------------------------------------------------------

async def test_search_answers_with_linked_keys(services, llm, jira):
    stack = Stack(services, Defaults(jira=jira_credentials(jira)))
    llm.script = scripted(ToolCall("jira_search", {"jql": "project = OPS AND status != Done"}))

    outcome = await stack.ask("open OPS issues?")

    assert outcome.tool_runs[0].status == "ok"
    assert f"<{jira.url}/browse/OPS-2|OPS-2> Payments API latency above SLO — In Progress" \
        in outcome.text
    assert f"<{jira.url}/browse/OPS-3|OPS-3>" in outcome.text
    assert "OPS-1" not in outcome.text  # Done
    search = "/rest/api/2/search/jql" if jira.flavour == "cloud" else "/rest/api/2/search"
    assert jira.requests_to("GET", search)


async def test_create_issue_posts_once_and_links_the_key(services, llm, jira):
    stack = Stack(services, Defaults(jira=jira_credentials(jira)))
    llm.script = scripted(ToolCall("jira_create_issue", {
        "project": "OPS", "issue_type": "Incident", "summary": "Payments API down",
        "description": "Since 14:05", "priority": "Highest", "labels": ["incident"]}))

    outcome = await stack.ask("open an incident")

    (post,) = jira.requests_to("POST", "/rest/api/2/issue")
    assert post.json["fields"] == {
        "project": {"key": "OPS"}, "issuetype": {"name": "Incident"},
        "summary": "Payments API down", "description": "Since 14:05",
        "priority": {"name": "Highest"}, "labels": ["incident"]}
    assert f"Created <{jira.url}/browse/OPS-4|OPS-4>: Payments API down" in outcome.text
    assert jira.issue("OPS-4")["fields"]["priority"]["name"] == "Highest"


async def test_get_comment_and_transition(services, llm, jira):
    stack = Stack(services, Defaults(jira=jira_credentials(jira)))
    llm.script = scripted(
        ToolCall("jira_get_issue", {"key": "ops-2"}),
        ToolCall("jira_add_comment", {"key": "OPS-2", "body": "Rolled back"}),
        ToolCall("jira_transition_issue", {"key": "OPS-2", "transition": "done"}),
    )

    outcome = await stack.ask("close OPS-2")

    assert [r.status for r in outcome.tool_runs] == ["ok", "ok", "ok"]
    first = llm.requests[1]["messages"][-1]["content"]
    assert "Priority: High" in first and "p99 latency" in first and "Labels: incident" in first
    assert "status is now Done" in outcome.text
    issue = jira.issue("OPS-2")["fields"]
    assert issue["status"]["name"] == "Done"
    assert issue["comment"]["comments"][0]["body"] == "Rolled back"
    assert len(jira.requests_to("POST", "/rest/api/2/issue/OPS-2/comment")) == 1


async def test_a_wrong_transition_lists_the_valid_ones(services, llm, jira):
    stack = Stack(services, Defaults(jira=jira_credentials(jira)))
    llm.script = scripted(ToolCall("jira_transition_issue", {"key": "OPS-3",
                                                             "transition": "Closed"}))

    outcome = await stack.ask("close OPS-3")

    assert outcome.tool_runs[0].status == "error"
    assert "OPS-3 has no transition named 'Closed'. Valid transitions: 'In Progress', " \
           "'Done'." in outcome.text
    assert not jira.requests_to("POST", "/rest/api/2/issue/OPS-3/transitions")


async def test_jira_errors_reach_the_model_readably(services, llm, jira):
    stack = Stack(services, Defaults(jira=jira_credentials(jira)))
    llm.script = scripted(ToolCall("jira_create_issue", {"project": "NOPE", "summary": "x"}))

    outcome = await stack.ask("file it")

    assert "error: Jira could not create the issue in NOPE (HTTP 400): project: valid " \
           "project is required" in outcome.text
    assert "Traceback" not in outcome.text


async def test_an_unconnected_jira_says_how_to_connect(services, llm):
    stack = Stack(services, Defaults())
    llm.script = scripted(ToolCall("jira_search", {"jql": "project = OPS"}))

    outcome = await stack.ask("search")

    assert outcome.tool_runs[0].status == "error"
    assert "Jira is not connected in this workspace" in outcome.text
    assert "`/nox-connect jira`" in outcome.text


async def test_jira_down_retries_then_the_circuit_opens_then_recovers(services, llm, jira):
    stack = Stack(services, Defaults(jira=jira_credentials(jira)))
    search = ToolCall("jira_search", {"jql": "project = PAY"})
    llm.script = scripted(search)
    await stack.ask("warm up")  # the library has read serverInfo
    jira.requests.clear()
    jira.fail_next(500, times=5)

    first = await stack.ask("search")  # three attempts, all 500
    assert len(jira.requests) == 3
    assert "error: Jira is unavailable: Jira failed to run the JQL search (HTTP 500" \
        in first.text
    second = await stack.ask("search")  # two more failures open the circuit
    assert len(jira.requests) == 5
    assert "circuit open after 5 failures" in second.text
    assert (await stack.connections.health(TENANT, "jira")).state == "circuit open"

    third = await stack.ask("search")  # refused at once: Jira is not called
    assert len(jira.requests) == 5
    assert third.status == "ok" and third.tool_runs[0].status == "error"
    assert "Jira is unavailable (circuit open after 5 failures; retrying in 1 s)" in third.text

    await asyncio.sleep(RESET + 0.1)
    recovered = await stack.ask("search")
    assert recovered.tool_runs[0].status == "ok"
    assert "PAY-1" in recovered.text
    assert str(await stack.connections.health(TENANT, "jira")) == "ok"


async def test_one_client_per_workspace_until_the_credentials_change(services, jira):
    stack = Stack(services, Defaults(jira=jira_credentials(jira)))
    first = await stack.connections.jira(TENANT)
    assert await stack.connections.jira(TENANT) is first
    other = await stack.connections.jira(Tenant("T0GLOBEX"))
    assert other is not first and other.workspace == "T0GLOBEX"


# -- calendar -------------------------------------------------------------------------------

def caldav(radicale: str, calendar: str = "Post-mortems") -> CalDAVCredentials:
    return CalDAVCredentials(radicale, f"u{uuid.uuid4().hex[:10]}", "any", calendar)


def fetch(url: str, credentials: CalDAVCredentials) -> bytes:
    token = base64.b64encode(f"{credentials.username}:{credentials.password}".encode()).decode()
    request = urllib.request.Request(url, headers={"Authorization": f"Basic {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read()


async def test_schedule_meeting_posts_the_invitation_and_stores_the_event(
        services, llm, slack, slack_client, radicale):
    credentials = caldav(radicale)
    stack = Stack(services, Defaults(caldav=credentials))
    start = (datetime.now(UTC) + timedelta(days=2)).strftime("%Y-%m-%dT10:00")
    llm.script = scripted(ToolCall("calendar_schedule_meeting", {
        "title": "Post-mortem: payments outage", "start": start, "duration": 60,
        "attendees": [f"<@{BOB}|bob>", "carol@example.com", ALICE],
        "description": "Issue: https://jira.example/browse/OPS-4"}))

    outcome = await stack.ask("book the post-mortem", slack=slack_client)

    assert outcome.tool_runs[0].status == "ok", outcome.text
    (upload,) = slack.files.values()
    assert (upload.channel_id, upload.thread_ts) == ("C0OPS", stack.thread)
    assert upload.filename.endswith(".ics")
    invitation = Calendar.from_ical(upload.content)
    assert invitation["METHOD"] == "REQUEST"
    (event,) = invitation.events
    assert event["UID"]
    assert event["DTSTART"].params["TZID"] == "Europe/Paris"
    assert event.start.strftime("%Y-%m-%dT%H:%M") == start
    assert str(event["ORGANIZER"]) == "mailto:alice@acme.test"
    attendees = sorted(str(a) for a in event["ATTENDEE"])
    assert attendees == ["mailto:alice@acme.test", "mailto:bob@acme.test",
                         "mailto:carol@example.com"]
    assert "OPS-4" in str(event["DESCRIPTION"])
    assert "Added to the calendar 'Post-mortems'" in outcome.text
    assert "(Europe/Paris)" in outcome.text

    calendar_url = await CalDAVClient(credentials).check()
    on_server = fetch(f"{calendar_url}{event['UID']}.ics", credentials)
    assert b"METHOD" not in on_server
    (stored,) = Calendar.from_ical(on_server).events
    assert stored["UID"] == event["UID"]

    llm.script = scripted(ToolCall("calendar_upcoming", {"days": 7}))
    listed = await stack.ask("what's next?")
    assert "Post-mortem: payments outage" in listed.text
    assert f"{start[11:16]}–" in listed.text and "(Europe/Paris)" in listed.text


async def test_schedule_meeting_without_caldav_still_posts_the_invitation(
        services, llm, slack, slack_client):
    stack = Stack(services, Defaults())
    llm.script = scripted(ToolCall("calendar_schedule_meeting", {
        "title": "Sync", "start": "2030-01-07T09:30", "attendees": ["dave@example.com"],
        "timezone": "America/New_York"}))

    outcome = await stack.ask("book it", slack=slack_client)

    (upload,) = slack.files.values()
    (event,) = Calendar.from_ical(upload.content).events
    assert event["DTSTART"].params["TZID"] == "America/New_York"
    # Shown in the workspace's timezone first, then in the meeting's.
    assert "Mon 07 Jan 2030 15:30–16:00 (Europe/Paris)" in outcome.text
    assert "09:30–10:00 (America/New_York)" in outcome.text
    assert "No CalDAV calendar is connected" in outcome.text


async def test_an_attendee_without_an_email_is_a_clear_error(
        services, llm, slack, slack_client):
    slack.add_user(ACME, "U0NOMAIL", "ghost", None)
    stack = Stack(services, Defaults())
    llm.script = scripted(ToolCall("calendar_schedule_meeting", {
        "title": "Sync", "start": "2030-01-07T09:30", "attendees": ["<@U0NOMAIL>"]}))

    outcome = await stack.ask("book it", slack=slack_client)

    assert outcome.tool_runs[0].status == "error"
    assert "Slack shows no email address for the attendee <@U0NOMAIL>" in outcome.text
    assert not slack.files and not slack.calls_to("files.getUploadURLExternal")


async def test_upcoming_without_a_calendar_says_how_to_connect(services, llm):
    stack = Stack(services, Defaults())
    llm.script = scripted(ToolCall("calendar_upcoming", {}))

    outcome = await stack.ask("next meetings?")

    assert "`/nox-connect calendar`" in outcome.text


async def test_a_failing_calendar_after_the_upload_is_reported_not_retried(
        services, llm, slack, slack_client):
    # Nothing listens on this port: the CalDAV copy fails after the invitation went out.
    from tests.radicale import free_port
    credentials = CalDAVCredentials(f"http://127.0.0.1:{free_port()}/", "u", "p", "Incidents")
    stack = Stack(services, Defaults(caldav=credentials))
    llm.script = scripted(ToolCall("calendar_schedule_meeting", {
        "title": "Sync", "start": "2030-01-07T09:30", "attendees": ["dave@example.com"]}))

    outcome = await stack.ask("book it", slack=slack_client)

    assert outcome.tool_runs[0].status == "ok"
    assert len(slack.files) == 1
    assert "could not be added to the calendar 'Incidents': Calendar is unavailable" \
        in outcome.text
    assert json.dumps(outcome.text)  # readable text, no traceback
    assert "Traceback" not in outcome.text
