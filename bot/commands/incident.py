"""``/nox-incident <summary>``: declare an incident; the persona runs the procedure in a thread.

The command posts the summary as a new message in the channel and starts a persona turn in
its thread whose instructions ask for the incident ticket (``jira_create_issue``), the
post-mortem (``calendar_schedule_meeting``, the issue linked in its description) and a summary.
Writes wait for the approvals the tool policy asks for.
"""

from __future__ import annotations

import structlog
from slack_sdk.errors import SlackApiError

from agents.runtime import TurnRequest
from bot.commands.base import Invocation
from bot.render import Reply, no_broadcasts, section
from bot.slack_client import slack_error
from bot.work import ShuttingDown

log = structlog.get_logger(__name__)

USAGE = "<what is happening>"


def instructions(user_id: str, summary: str) -> str:
    """What the persona is asked to do for the incident ``summary`` reported by ``user_id``."""
    return (
        f"<@{user_id}> declared an incident with /nox-incident: {summary}\n\n"
        "Run the incident procedure, one step after the other:\n"
        "1. Open the incident ticket with jira_create_issue: issue type Incident, priority "
        "Highest, a one-line summary of the report, the report as the description, label "
        "`incident`. Use the Jira project the report names; if it names none, use the project "
        "of recent incidents (jira_search for `labels = incident`), or ask.\n"
        "2. Book the post-mortem with calendar_schedule_meeting: title 'Post-mortem: ' and the "
        "ticket's summary, the next working day at 10:00 in the workspace timezone, 60 "
        f"minutes, attendees <@{user_id}> and everyone the report mentions, and the ticket's "
        "link in the description.\n"
        "3. Post a short summary: the ticket (as a link), the post-mortem's time and who is "
        "invited, and what happens next.\n"
        "If a step fails or is rejected, say so plainly and carry on with the others."
    )


async def run(invocation: Invocation) -> Reply:
    request = invocation.request
    persona = invocation.persona
    summary = request.text.strip()
    if not summary:
        return _reply(
            f"Usage: `/{persona.command_prefix}-incident {USAGE}`, e.g. "
            f"`/{persona.command_prefix}-incident payments API answers 500 since 14:05`"
        )
    if request.slack is None or not request.channel_id:
        return _reply("Incidents are declared in a Slack channel: the procedure runs in a "
                      "thread there.")
    try:
        opening = await request.slack.chat_postMessage(
            channel=request.channel_id,
            # Posted as the bot: the summary's people stay mentioned, but it cannot
            # broadcast (<!channel>) past the workspace's own rules for who may.
            text=f":rotating_light: *Incident* declared by <@{request.user_id}>: "
            f"{no_broadcasts(summary)}",
        )
    except SlackApiError as exc:
        log.warning("incident_post_failed", error=slack_error(exc))
        return _reply(f"I could not post in this channel ({slack_error(exc)}); invite me with "
                      f"`/invite @{persona.display_name}` and try again.")
    # bot.turns imports bot.commands (for replies to disabled personas): import it here.
    from bot.turns import SlackTurns

    ts = opening["ts"]
    turn = TurnRequest(
        tenant=request.tenant,
        persona=persona,
        channel_id=request.channel_id,
        thread_ts=ts,
        user_id=request.user_id,
        text=instructions(request.user_id, summary),
        timezone=invocation.config.timezone,
        slack=request.slack,
    )
    try:
        SlackTurns(invocation.services).begin(turn, request.slack, ts, ts)
    except ShuttingDown:
        return _reply("I am restarting right now; please declare the incident again in a "
                      "minute.")
    return _reply("Incident declared: I am opening the ticket and booking the post-mortem in "
                  "the thread.")


def _reply(text: str) -> Reply:
    return Reply(text, [section(text)])
