"""Attacks on approvals and the action policy, each stopped (issue 10, findings 4, 5, 13, 14).

Real SQLite and PostgreSQL, the fake Slack at the wire (conversations.list/info/members in
Slack's shapes), the fake LLM; time is an injected clock wherever expiry matters.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from slack_sdk.oauth.installation_store import Installation
from sqlalchemy import text

from agents import channels
from agents.personas import NOX
from agents.runtime import TurnOutcome, TurnRequest
from bot.approvals import ApprovalDesk, Click, outcome_text, request_blocks
from bot.commands import CommandRequest, CommandRouter
from bot.render import answer
from bot.server import Server
from bot.services import Services
from bot.settings import load_settings
from bot.slack_client import web_client
from storage import migrate
from storage.db import create_engine, session_factory
from storage.installations import EncryptedInstallationStore
from storage.repositories import Repositories
from storage.repositories.approvals import State
from storage.secrets import SecretBox, generate_key
from storage.tenancy import Tenant
from tests.e2e import ACME_TOKEN, ALICE, BOB, BOT, SIGNING_SECRET
from tests.fakes import ToolCall
from tests.test_approvals_units import approval
from tests.test_cli import jamono

ACME = Tenant("T0ACME")
PROD, OPS, SECRET = "C0PROD123", "C0OPS1234", "G0SECRET1"
CAROL = "U0CAROL"
T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
KEY = generate_key()  # JAMONO_SECRET_KEY: OAuth installs keep their tokens encrypted


@pytest.fixture
async def services(sqlite_url, llm, slack):
    services = await _start(sqlite_url, llm, slack)
    yield services
    await services.close()


@pytest.fixture
async def services_on_both(database_url, llm, slack):
    """Services on a SQLite file and on PostgreSQL."""
    services = await _start(database_url, llm, slack)
    yield services
    await services.close()


async def _start(database_url, llm, slack, **extra) -> Services:
    await migrate.upgrade_async(database_url)
    slack.add_user("T0ACME", CAROL, "carol", "carol@acme.test")
    slack.set_channel(PROD, name="prod")
    slack.set_channel(OPS, name="ops")
    slack.set_channel(SECRET, name="secret", is_private=True, members=[ALICE, BOT])
    slack.set_channel("D0CAROL1", user=CAROL)
    slack.set_channel("D0BOB123", user=BOB)
    settings = {
        "DATABASE_URL": database_url, "SLACK_API_URL": slack.api_url,
        "OPENAI_BASE_URL": llm.base_url, "OPENAI_API_KEY": "sk-test",
        "JAMONO_TOOL_TIMEOUT": 5, "JAMONO_APPROVAL_TTL": 1,
    }
    return await Services.start(load_settings(_env_file=None, **(settings | extra)))


@pytest.fixture
def client(slack):
    return web_client(slack.api_url, ACME_TOKEN)


def posting(channel: str, text: str = "deploy frozen"):
    """An LLM script: post ``text`` into ``channel`` once, then repeat what the tool said."""

    def script(request):
        last = request["messages"][-1]
        if last["role"] == "tool":
            return f"Tool said: {last['content']}"
        return [ToolCall("slack_post_message", {"channel": channel, "text": text})]

    return script


def ask(client, user=ALICE, channel=OPS, thread="100.1") -> TurnRequest:
    return TurnRequest(
        tenant=ACME, persona=NOX, channel_id=channel, thread_ts=thread, user_id=user,
        text="announce it", timezone="Europe/Paris", slack=client,
    )


async def configure(services, client, text: str) -> str:
    async def admin() -> bool:
        return True

    reply = await CommandRouter(services).handle(
        CommandRequest(ACME, "/nox-config", text, ALICE, OPS, admin, slack=client)
    )
    return reply.text


def delivered(slack, text: str = "deploy frozen") -> list[str]:
    """The channels the model's message reached (approval cards and notes are not it)."""
    return [c.params["channel"] for c in slack.calls_to("chat.postMessage")
            if c.params.get("text") == text and c.response and c.response.get("ok")]


# Finding 4: "auto-approve except in #prod" bypassed by naming the channel -------------------


@pytest.mark.parametrize("written", ["#prod", "prod", "c0prod123", "<#C0PROD123|prod>", "#Prod"])
async def test_naming_prod_any_way_in_config_protects_prod(services, client, written):
    """The admin's "except in #prod" must land on #prod's id however they wrote it."""
    await configure(services, client, "autoapprove slack_post_message")
    done = await configure(services, client, f"noautoapprove slack_post_message {written}")
    assert f"needs approval in <#{PROD}>" in done
    policy = await services.repos.policy.load(ACME)
    assert policy.auto_approve == {
        ("slack_post_message", "*"): True, ("slack_post_message", PROD): False
    }


@pytest.mark.parametrize(
    "written, told",
    [
        (f"<@{BOB}>", "is a person, not a channel"),
        ("U0BOB1234", "is a person, not a channel"),
        ("#nowhere", "I found no channel named `#nowhere`"),
        ("C0NOTHERE", "I cannot see a channel `C0NOTHERE`"),
        ("<!channel>", "is not a channel"),
    ],
)
async def test_people_unknown_names_and_junk_are_refused_not_stored(
    services, client, slack, written, told
):
    slack.set_channel("C0NOTHERE", exists=False)
    reply = await configure(services, client, f"zone {written}")
    assert told in reply and "Usage: `/nox-config" in reply
    assert (await services.repos.policy.load(ACME)).zones == {}


async def test_bindings_and_zones_are_stored_by_id_whatever_the_spelling(services, client):
    await configure(services, client, "atlas bind #prod")
    await configure(services, client, "zone ops get_time")
    assert (await services.repos.config.load(ACME)).bindings == {PROD: "atlas"}
    assert (await services.repos.policy.load(ACME)).zones == {
        "nox": {OPS: frozenset({"get_time"})}
    }


async def test_the_storage_refuses_channel_spellings_that_would_never_match(services):
    policy = services.repos.policy
    for written in ("#prod", "prod", "c0prod123", "U0BOB1234"):
        with pytest.raises(ValueError, match="not a conversation id"):
            await policy.set_auto_approve(ACME, "slack_post_message", False, ALICE, written)
        with pytest.raises(ValueError, match="not a conversation id"):
            await policy.set_zone(ACME, "nox", written, None, ALICE)
    stored = await policy.load(ACME)
    assert (stored.zones, stored.auto_approve) == ({}, {})


@pytest.mark.parametrize("written", ["#prod", "prod", "c0prod123", "U0BOB1234", "@bob"])
async def test_the_model_cannot_sidestep_a_channel_rule_by_naming_the_channel(
    services, llm, slack, client, written
):
    """Auto-approve everywhere but #prod: a post into #prod written any other way than its id
    is not auto-approved, and nothing reaches Slack without a person's approval."""
    await services.repos.policy.set_auto_approve(ACME, "slack_post_message", True, ALICE)
    await services.repos.policy.set_auto_approve(ACME, "slack_post_message", False, ALICE, PROD)
    llm.script = posting(written)
    outcome = await services.runtime.run(ask(client))
    assert [r.status for r in outcome.tool_runs] in (["refused"], ["awaiting_approval"])
    assert delivered(slack) == []
    if written == "c0prod123":  # an id in lower case is #prod's id: #prod's rule applies
        (request,) = await services.repos.approvals.pending_for(ACME)
        assert request.target == f"Slack channel <#{PROD}>"
    if written == "#prod":  # the model is told to use the id, which meets the #prod rule
        assert "needs the target conversation by its id" in (
            llm.requests[-1]["messages"][-1]["content"]
        )


# Finding 5: approving one's own write to where one is not --------------------------------


async def _requested_by(services, llm, client, user, channel) -> str:
    llm.script = posting(channel)
    outcome = await services.runtime.run(ask(client, user=user))
    assert [r.status for r in outcome.tool_runs] == ["awaiting_approval"]
    (request,) = await services.repos.approvals.pending_for(ACME)
    return request.id


def clicked(request_id: str, user: str, approve: bool = True) -> Click:
    return Click(ACME, request_id, user, approve, OPS, None)


@pytest.mark.parametrize(
    "target", [f"<#{SECRET}|secret>", "D0CAROL1"], ids=["private-channel", "someone-elses-dm"]
)
async def test_a_member_cannot_approve_their_own_write_where_they_are_not(
    services, llm, slack, client, target
):
    """Bob (no admin) asks NOX to post into a private channel he is not in, or into Carol's
    DM with the bot: his own Approve is refused; an admin's goes through."""
    request_id = await _requested_by(services, llm, client, BOB, target)
    await services.approvals.click(clicked(request_id, BOB), client)
    (refusal,) = slack.calls_to("chat.postEphemeral")
    assert refusal.params["user"] == BOB and "only a workspace admin" in refusal.params["text"]
    assert (await services.repos.approvals.get(ACME, request_id)).state is State.PENDING
    assert delivered(slack) == []
    kinds = [e.kind for e in await services.repos.events.recent(ACME)]
    assert kinds[0] == "approval_denied"

    await services.approvals.click(clicked(request_id, ALICE), client)  # Alice is an admin
    assert (await services.repos.approvals.get(ACME, request_id)).state is State.EXECUTED
    assert delivered(slack) == [target.strip("<#>").split("|")[0]]


@pytest.mark.parametrize("target", [OPS, PROD, "D0BOB123"], ids=["here", "joined", "own-dm"])
async def test_the_requester_still_approves_writes_where_they_are(
    services, llm, slack, client, target
):
    request_id = await _requested_by(services, llm, client, BOB, target)
    await services.approvals.click(clicked(request_id, BOB), client)
    assert (await services.repos.approvals.get(ACME, request_id)).state is State.EXECUTED
    assert delivered(slack) == [target]


async def test_a_non_member_requester_is_refused_even_for_a_public_channel(
    services, llm, slack, client
):
    slack.set_channel(PROD, name="prod", members=[ALICE, BOT])
    request_id = await _requested_by(services, llm, client, BOB, PROD)
    await services.approvals.click(clicked(request_id, BOB), client)
    assert f"writes to <#{PROD}>" in slack.calls_to("chat.postEphemeral")[0].params["text"]
    assert delivered(slack) == []


async def test_the_approval_card_shows_model_text_literally(services, llm, slack, client):
    """A target made of the model's arguments cannot ping the channel from the card."""
    llm.script = lambda request: (
        f"Tool said: {request['messages'][-1]['content']}"
        if request["messages"][-1]["role"] == "tool"
        else [ToolCall("jira_create_issue", {"project": "<!channel> & <@U0BOB>",
                                             "summary": "<!here>"})]
    )
    await services.runtime.run(ask(client))
    (card,) = [c for c in slack.calls_to("chat.postMessage") if c.params.get("blocks")]
    shown = json.dumps(card.blocks) + card.params["text"]
    for raw in ("<!channel>", "<!here>", "<@U0BOB>"):
        assert raw not in shown
    assert "Jira project &lt;!channel&gt; &amp; &lt;@U0BOB&gt;" in shown


def test_results_on_the_card_keep_links_but_not_broadcasts():
    done = approval({"text": "hi"}, State.EXECUTED, BOB)
    text = outcome_text(done, "Created <https://j.test/browse/OPS-1|OPS-1>: <!channel> R&D")
    assert "<https://j.test/browse/OPS-1|OPS-1>" in text
    assert "<!channel>" not in text and "&lt;!channel&gt; R&amp;D" in text
    blocks = json.dumps(request_blocks(done, text))
    assert "<!channel>" not in blocks


def test_answers_and_tool_lines_cannot_broadcast():
    outcome = TurnOutcome(
        "<!here> see <https://x.test|the runbook> in <#C0OPS1234> with <@U0ALICE> <!subteam^S1>",
        "ok",
    )
    reply = answer(outcome)
    shown = json.dumps(reply.blocks) + reply.text
    assert "<!here>" not in shown and "<!subteam^S1>" not in shown
    for kept in ("<https://x.test|the runbook>", "<#C0OPS1234>", "<@U0ALICE>"):
        assert kept in reply.text


# Finding 13: the sweep must find an Enterprise Grid workspace's installation --------------


async def test_expiry_updates_the_card_of_an_enterprise_grid_workspace(sqlite_url, llm, slack):
    """An OAuth install of workspace T0ACME inside org E0GRID: the sweep's message update uses
    that installation's token (found by team and enterprise id together)."""
    slack.set_oauth_app("111.222", "client-secret")
    services = await _start(
        sqlite_url, llm, slack, SLACK_CLIENT_ID="111.222", SLACK_CLIENT_SECRET="client-secret",
        SLACK_SIGNING_SECRET=SIGNING_SECRET, JAMONO_SECRET_KEY=KEY,
    )
    try:
        store = EncryptedInstallationStore(
            client_id="111.222", engine=services.engine, box=SecretBox([KEY])
        )
        await store.async_save(Installation(
            app_id="A0JAMONO", enterprise_id="E0GRID", team_id="T0ACME", user_id=ALICE,
            bot_token=ACME_TOKEN, bot_id="B0NOX", bot_user_id=BOT, bot_scopes="chat:write",
        ))
        grid = Tenant("T0ACME", enterprise_id="E0GRID")
        request = await services.repos.approvals.create(
            grid, persona="nox", requested_by=ALICE, channel_id=OPS, thread_ts="100.1",
            tool="slack_post_message", arguments={"channel": PROD, "text": "hi"}, risk="write",
            target=f"Slack channel <#{PROD}>", ttl=timedelta(hours=1), now=T0,
        )
        await services.repos.approvals.set_message_ts(grid, request.id, "100.2")
        desk = ApprovalDesk(services.repos, services.runtime.gate, clock=lambda: T0 + timedelta(2))
        await desk.sweep(Server(services)._client_for)
    finally:
        await services.close()
    (update,) = slack.calls_to("chat.update")
    assert update.token == ACME_TOKEN and update.params["ts"] == "100.2"
    assert "⌛ Expired" in update.params["text"]


# Finding 14: approved, never started, then clicked days later -----------------------------


async def _approved_then_died(services, client) -> str:
    """A request approved at T0 + 1 min whose process died before starting it."""
    request = await services.repos.approvals.create(
        ACME, persona="nox", requested_by=ALICE, channel_id=OPS, thread_ts="100.1",
        tool="slack_post_message", arguments={"channel": PROD, "text": "deploy now"},
        risk="write", target=f"Slack channel <#{PROD}>", ttl=timedelta(hours=1), now=T0,
    )
    await services.repos.approvals.set_message_ts(ACME, request.id, "100.2")
    decision = await services.repos.approvals.decide(
        ACME, request.id, ALICE, approve=True, now=T0 + timedelta(minutes=1)
    )
    assert decision.won
    return request.id


async def test_an_approved_request_never_started_does_not_run_days_later(
    services_on_both, slack, client
):
    services = services_on_both
    request_id = await _approved_then_died(services, client)
    late = T0 + timedelta(days=3)
    desk = ApprovalDesk(services.repos, services.runtime.gate, clock=lambda: late)
    await desk.click(Click(ACME, request_id, ALICE, True, OPS, "100.2"), client)
    assert delivered(slack, "deploy now") == []
    closed = await services.repos.approvals.get(ACME, request_id)
    assert closed.state is State.EXPIRED and closed.decided_by == ALICE
    (told,) = slack.calls_to("chat.postEphemeral")
    assert "expired" in told.params["text"] and "before it started" in told.params["text"]
    (update,) = slack.calls_to("chat.update")
    assert "expired before it started" in update.params["text"]
    assert "actions" not in [b["type"] for b in update.blocks]
    assert await services.runtime.gate.execute(ACME, request_id, client, late) is None


async def test_the_sweep_expires_an_approved_request_never_started(
    services_on_both, slack, client
):
    services = services_on_both
    request_id = await _approved_then_died(services, client)
    clock = {"now": T0 + timedelta(minutes=30)}  # approved, within its hour: left alone
    desk = ApprovalDesk(services.repos, services.runtime.gate, clock=lambda: clock["now"])

    async def client_for(tenant):
        return client if tenant == ACME else None

    await desk.sweep(client_for)
    assert (await services.repos.approvals.get(ACME, request_id)).state is State.APPROVED
    clock["now"] = T0 + timedelta(hours=1)
    await desk.sweep(client_for)
    assert (await services.repos.approvals.get(ACME, request_id)).state is State.EXPIRED
    (update,) = slack.calls_to("chat.update")
    assert "expired before it started" in update.params["text"]
    history = await services.repos.conversations.recent_messages(ACME, OPS, "100.1")
    assert "expired before it started" in history[-1].content
    await desk.click(Click(ACME, request_id, ALICE, True, OPS, "100.2"), client)
    assert delivered(slack, "deploy now") == []
    assert [e.kind for e in await services.repos.events.recent(ACME, subject=request_id)][0] == (
        "approval_expired"
    )


async def test_requests_open_before_the_upgrade_learn_their_enterprise_id(database_url):
    """Migration 0006 takes the enterprise id of requests already stored from the installation
    store, so their cards expire too (a Grid workspace, an org-wide install, a plain one)."""
    await migrate.upgrade_async(database_url, "0004")
    engine = create_engine(database_url)
    try:
        async with engine.begin() as connection:
            for team, enterprise, org in (
                ("T0GRID", "E0GRID", False), (None, "E0ORG", True), ("T0PLAIN", None, False)
            ):
                await connection.execute(
                    text(
                        "INSERT INTO slack_bots (client_id, app_id, enterprise_id, team_id, "
                        "bot_token, bot_id, bot_user_id, is_enterprise_install, installed_at) "
                        "VALUES ('111.222', 'A0JAMONO', :enterprise, :team, 'xoxb-1', 'B0NOX', "
                        ":bot, :org, :at)"
                    ),
                    {"enterprise": enterprise, "team": team, "bot": BOT, "org": org,
                     "at": T0.replace(tzinfo=None)},  # slack_sdk stores naive UTC
                )
            for number, tenant_id in enumerate(("T0GRID", "E0ORG", "T0PLAIN")):
                await connection.execute(
                    text(
                        "INSERT INTO approval_requests (id, tenant_id, persona, requested_by, "
                        "channel_id, thread_ts, tool, arguments, risk, target, state, "
                        "expires_at, created_at) VALUES (:id, :tenant, 'nox', :user, :channel, "
                        "'100.1', 'slack_post_message', '{}', 'write', 'x', 'pending', :at, :at)"
                    ),
                    {"id": f"r{number}", "tenant": tenant_id, "user": ALICE, "channel": OPS,
                     "at": T0},
                )
        await migrate.upgrade_async(database_url, secrets=SecretBox([KEY]))  # 0005 encrypts
        repos = Repositories.over(session_factory(engine))
        swept = {a.id: a.tenant for a in await repos.approvals.expire_due(T0 + timedelta(1))}
    finally:
        await engine.dispose()
    assert swept == {
        "r0": Tenant("T0GRID", enterprise_id="E0GRID"),
        "r1": Tenant(None, enterprise_id="E0ORG", is_enterprise_install=True),
        "r2": Tenant("T0PLAIN"),
    }


async def test_a_briefing_cannot_ping_its_channel_through_a_pending_request_or_a_prompt(
    sqlite_url, llm, slack
):
    """A request's target and the persona's prompt answer come from the model: the daily
    briefing shows them without <!channel> reaching the channel."""
    services = await _start(
        sqlite_url, llm, slack, SLACK_BOT_TOKEN=ACME_TOKEN, SLACK_SIGNING_SECRET=SIGNING_SECRET
    )
    try:
        fire = T0
        await services.repos.approvals.create(
            ACME, persona="nox", requested_by=ALICE, channel_id=OPS, thread_ts="100.1",
            tool="jira_create_issue", arguments={"project": "<!channel>"}, risk="write",
            target="Jira project <!channel>", ttl=timedelta(hours=1), now=fire,
        )
        llm.script = lambda request: "<!here> all quiet, see <https://status.test|status>"
        briefing = await services.repos.briefings.create(
            ACME, channel_id=OPS, persona="nox", schedule="weekdays 09:00",
            timezone="Europe/Paris", sections=[{"kind": "approvals"},
                                               {"kind": "prompt", "prompt": "Anything new?"}],
            created_by=ALICE,
        )
        await services.briefings.run_scheduled(briefing.id, fire, now=fire)
    finally:
        await services.close()
    (posted,) = [c for c in slack.calls_to("chat.postMessage") if c.params.get("blocks")]
    shown = json.dumps(posted.blocks) + posted.params["text"]
    assert "<!channel>" not in shown and "<!here>" not in shown
    assert "Jira project &lt;!channel&gt;" in shown and "<https://status.test|status>" in shown


async def test_jamono_config_resolves_names_with_the_workspace_token(slack, tmp_path):
    """The operator's CLI stores #prod by its id too, looked up with the installation."""
    slack.set_channel(PROD, name="prod")
    env = {"SLACK_BOT_TOKEN": ACME_TOKEN, "SLACK_SIGNING_SECRET": SIGNING_SECRET,
           "SLACK_API_URL": slack.api_url}
    code, _, _ = await jamono("db", "upgrade", env=env, cwd=tmp_path)
    assert code == 0
    code, out, _ = await jamono(
        "config", "--team", "T0ACME", "noautoapprove", "slack_post_message", "#prod",
        env=env, cwd=tmp_path,
    )
    assert code == 0 and f"needs approval in <#{PROD}>" in out, out
    code, out, _ = await jamono(
        "config", "--team", "T0ACME", "zone", "U0BOB1234", env=env, cwd=tmp_path
    )
    assert "is a person, not a channel" in out


async def test_an_incident_summary_cannot_broadcast_as_the_bot(services, slack, client):
    """/nox-incident posts the summary as the bot: @channel typed there (sent escaped as
    <!channel>) must not let any member notify the whole channel through NOX."""

    async def member() -> bool:
        return False

    await CommandRouter(services).handle(CommandRequest(
        ACME, "/nox-incident", f"<!channel> payments down, <@{BOB}> on it", ALICE, OPS,
        member, slack=client,
    ))
    (opening, *_) = slack.calls_to("chat.postMessage")
    assert "<!channel>" not in opening.params["text"]
    assert "&lt;!channel&gt; payments down" in opening.params["text"]
    assert f"<@{BOB}> on it" in opening.params["text"]  # people stay mentioned
    await services.inflight.drain(10)


async def test_names_and_members_are_found_past_the_first_page(slack, client):
    """A big workspace: #prod is on conversations.list's second page and Bob is the 300th
    member of a channel; both are found through Slack's cursors, not missed."""
    for number in range(250):
        slack.set_channel(f"C0A{number:05d}", name=f"team-{number:03d}")
    slack.set_channel("C0Z000001", name="prod")
    crowd = [f"U0M{number:05d}" for number in range(299)] + [BOB]
    slack.set_channel("C0Z000002", name="crowd", members=crowd)
    assert await channels.resolve(client, "#prod") == "C0Z000001"
    assert await channels.is_member(client, "C0Z000002", BOB)
    assert not await channels.is_member(client, "C0Z000002", CAROL)
    assert len(slack.calls_to("conversations.list")) == 2
