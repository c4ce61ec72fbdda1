"""``/nox-brief``, its modal, the Home tab and ``jamono brief``, through the real process."""

from __future__ import annotations

import json

import pytest

from tests.e2e import ACME, ALICE, BOB, SIGNING_SECRET, bot_token_settings, home_tab, started
from tests.fakes import post_form
from tests.test_cli import jamono as run_cli
from tests.test_e2e_http import command


@pytest.fixture
def settings(slack, llm, sqlite_url):
    return bot_token_settings(slack, llm, sqlite_url)


@pytest.fixture
async def jamono(settings, tmp_path):
    process = await started(settings, tmp_path)
    yield process
    assert await process.stop() == 0, process.output


def values(channel="C0OPS", schedule="weekdays 08:30", timezone="Europe/Paris", sections=None,
           jql=None, prompt=None):
    chosen = sections or ["approvals", "activity"]
    return {
        "channel": {"selected_conversation": channel},
        "persona": {"selected_option": {"value": "nox"}},
        "schedule": schedule,
        "timezone": timezone,
        "sections": {"selected_options": [{"value": kind} for kind in chosen]},
        "jql": jql,
        "prompt": prompt,
    }


async def submit(http, jamono, slack, view, form_values, user=ALICE):
    payload = slack.view_submission_payload(ACME, user, view, form_values)
    status, text = await post_form(http, jamono.url + "/slack/events", SIGNING_SECRET,
                                   {"payload": json.dumps(payload)})
    assert status == 200
    return json.loads(text) if text else {}


async def open_form(http, jamono, slack):
    fields = slack.slash_command_payload(ACME, ALICE, "C0OPS", "/nox-brief", "add")
    status, _ = await post_form(http, jamono.url + "/slack/events", SIGNING_SECRET, fields)
    assert status == 200
    [call] = await slack.wait_for("views.open", answered=True)
    assert call.params["trigger_id"] == fields["trigger_id"]
    return call.response["view"]


async def test_the_form_refuses_bad_input_and_saves_nothing(http, jamono, slack):
    view = await open_form(http, jamono, slack)
    assert view["callback_id"] == "brief_add"
    blocks = {block["block_id"]: block for block in view["blocks"]}
    assert blocks["channel"]["element"]["initial_conversation"] == "C0OPS"
    assert blocks["timezone"]["element"]["initial_value"] == "UTC"  # the workspace's default

    slack.set_channel("C0NOTIN", is_member=False)
    slack.set_channel("C0GONE", exists=False)
    cases = [
        (values(timezone="Europe/Atlantis"), "timezone", "is not an IANA timezone"),
        (values(schedule="cron 0 25 * * *"), "schedule", "not a valid cron line"),
        (values(schedule="sometimes"), "schedule", "cannot read the schedule"),
        (values(channel="C0NOTIN"), "channel", "I am not in <#C0NOTIN>"),
        (values(channel="C0GONE"), "channel", "I cannot see <#C0GONE>"),
        (values(sections=["jira"]), "sections", "needs a JQL query"),
    ]
    for form_values, field, message in cases:
        answer = await submit(http, jamono, slack, view, form_values)
        assert answer["response_action"] == "errors"
        assert list(answer["errors"]) == [field]
        assert message in answer["errors"][field]
    listed = await command(http, jamono, slack, "/nox-brief", "list")
    assert "No briefings in this workspace yet" in listed["text"]


async def test_a_briefing_from_the_form_is_listed_posted_paused_and_removed(
    http, jamono, slack
):
    view = await open_form(http, jamono, slack)
    answer = await submit(
        http, jamono, slack, view,
        values(sections=["approvals", "jira"], jql="project = OPS AND status != Done"),
    )
    assert answer == {}
    [confirmation] = await slack.wait_for("chat.postMessage", lambda p: p["channel"] == ALICE)
    assert "Briefing added: *1* · <#C0OPS>" in confirmation.params["text"]

    listed = await command(http, jamono, slack, "/nox-brief", "list")
    assert "`weekdays 08:30` Europe/Paris · Pending approvals, Jira issues (JQL)" in listed["text"]
    assert "_next " in listed["text"]

    preview = await command(http, jamono, slack, "/nox-brief", "preview 1")
    assert preview["response_type"] == "ephemeral"
    texts = [b["text"]["text"] for b in preview["blocks"] if b["type"] == "section"]
    assert "*Jira issues (JQL)*\n_unavailable: Jira is not connected in this workspace_" in texts
    assert slack.calls_to("chat.postMessage")[-1].params["channel"] == ALICE  # nothing posted

    posted = await command(http, jamono, slack, "/nox-brief", "now 1")
    assert "is posted in <#C0OPS>" in posted["text"]
    [briefing] = await slack.wait_for("chat.postMessage", lambda p: p["channel"] == "C0OPS")
    assert "NOX briefing" in briefing.params["text"]

    for verb in ("pause 1", "preview 1", "preview"):  # plain preview: this channel's briefing
        refused = await command(http, jamono, slack, "/nox-brief", verb, user=BOB)
        assert "Only <@U0ALICE>, who created briefing 1" in refused["text"]
    paused = await command(http, jamono, slack, "/nox-brief", "pause 1")
    assert "Briefing 1 is paused" in paused["text"]
    assert "_paused_" in (await command(http, jamono, slack, "/nox-brief", "list"))["text"]
    resumed = await command(http, jamono, slack, "/nox-brief", "resume 1")
    assert "running again" in resumed["text"]

    home_text = await home_tab(http, jamono, slack, ALICE)
    assert "*Briefings*" in home_text and "<#C0OPS>" in home_text and "_next " in home_text

    removed = await command(http, jamono, slack, "/nox-brief", "remove 1")
    assert "Briefing 1 is removed" in removed["text"]
    missing = await command(http, jamono, slack, "/nox-brief", "now 1")
    assert "There is no briefing 1" in missing["text"]


async def test_the_cli_adds_lists_and_refuses_like_slack(settings, slack, tmp_path):
    slack.set_channel("C0NOTIN", is_member=False)
    add = ("brief", "--team", ACME, "add", "--created-by", ALICE, "--section", "approvals")
    code, _, err = await run_cli(
        *add, "--channel", "C0OPS", "--schedule", "daily 07:00", "--timezone", "Mars/Base",
        env=settings, cwd=tmp_path,
    )
    assert code == 2 and "Not saved: `Mars/Base` is not an IANA timezone" in err
    code, _, err = await run_cli(
        *add, "--channel", "C0NOTIN", "--schedule", "daily 07:00", "--timezone", "UTC",
        env=settings, cwd=tmp_path,
    )
    assert code == 2 and "I am not in <#C0NOTIN>" in err
    code, out, err = await run_cli(
        *add, "--channel", "C0OPS", "--schedule", "cron 0 7 * * 1-5", "--timezone",
        "America/New_York", env=settings, cwd=tmp_path,
    )
    assert code == 0, err
    assert out.startswith("Added: *1* · <#C0OPS>")
    code, out, _ = await run_cli("brief", "--team", ACME, "list", env=settings, cwd=tmp_path)
    assert code == 0 and "`cron 0 7 * * 1-5` America/New_York" in out
    code, out, _ = await run_cli("brief", "--team", ACME, "preview", "1", env=settings,
                                 cwd=tmp_path)
    assert code == 0 and "Pending approvals: no approvals waiting" in out
