"""``/nox-brief``: scheduled channel briefings.

=====================  ===============================================================
``add``                opens the form (a Slack modal; ``jamono brief add`` in a terminal)
``list``               the workspace's briefings with their next run
``remove ID``          delete a briefing
``pause ID``           stop it without deleting it
``resume ID``          start it again (also after Jamono paused it for a channel error)
``now ID``             post it at once
``preview [ID]``       show it only to you (without ID: this channel's, or a sample)
=====================  ===============================================================

Removing, pausing, resuming and posting at once are for the briefing's creator and the
workspace's admins.

Who sees what (README, "Briefings"): ``list`` shows the briefings of the channel it is typed
in and the requester's own (admins see all of them); a briefing's approvals and activity are
those of its channel, and a preview shows them only when typed in that channel, whose members
are the briefing's readers. The CLI and the console are the operator's and see everything.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from bot.briefings.delivery import Outcome
from bot.briefings.manage import BriefingLimits, describe
from bot.briefings.render import list_text
from bot.briefings.schedule import duration_text
from bot.commands.base import Invocation
from bot.render import Reply, section
from storage.repositories.briefings import Briefing

USAGE = "add|list|remove ID|pause ID|resume ID|now ID|preview [ID]"
BRIEFING_ID = re.compile(r"[0-9]{1,18}")  # ASCII digits within a BIGINT ("²".isdigit() is true)
SAMPLE_SECTIONS = [{"kind": "approvals"}, {"kind": "activity"}]


async def run(invocation: Invocation) -> Reply:
    words = invocation.request.text.strip().split()
    verb = words[0].lower() if words else "list"
    argument = words[1] if len(words) > 1 else ""
    if verb == "list":
        return await _list(invocation)
    if verb == "add":
        return _reply(
            "`/nox-brief add` opens a form in Slack. From a terminal, operators use "
            "`jamono brief --team T… add --channel C… --schedule 'weekdays 08:30' "
            "--timezone Europe/Paris --section approvals`."
        )
    if verb == "preview":
        return await _preview(invocation, argument)
    if verb not in ("remove", "pause", "resume", "now"):
        return _usage(invocation, f"`{verb}` is not something I can do with briefings.")
    briefing = await _briefing(invocation, argument)
    if isinstance(briefing, Reply):
        return briefing
    refused = await _refused(invocation, briefing, verb)
    if refused:
        return refused
    tenant, repo = invocation.request.tenant, invocation.services.repos.briefings
    if verb == "now":
        return await _now(invocation, briefing)
    if verb == "remove":
        await repo.delete(tenant, briefing.id, invocation.request.user_id)
        done = f"Briefing {briefing.id} is removed."
    else:
        await repo.set_enabled(
            tenant, briefing.id, verb == "resume", invocation.request.user_id
        )
        done = f"Briefing {briefing.id} is {'paused' if verb == 'pause' else 'running again'}."
    if invocation.services.scheduler is not None:
        invocation.services.scheduler.sync_soon()
    return _reply(f"✅ {done}")


async def _list(invocation: Invocation) -> Reply:
    request = invocation.request
    briefings = await invocation.services.repos.briefings.list(request.tenant)
    if not briefings:
        return _reply("No briefings in this workspace yet. `/nox-brief add` creates one.")
    shown = [
        b
        for b in briefings
        if b.channel_id == request.channel_id or b.created_by == request.user_id
    ]
    if len(shown) < len(briefings) and await request.is_admin():
        shown = briefings
    now = datetime.now(UTC)
    lines = [describe(b, now) for b in shown]
    if len(shown) < len(briefings):
        lines.append(
            f"{len(briefings) - len(shown)} more in other channels: `/nox-brief list` there "
            "shows them, and admins see all"
        )
    return _reply(list_text("Briefings", lines))


async def _now(invocation: Invocation, briefing: Briefing) -> Reply:
    services, tenant = invocation.services, invocation.request.tenant
    # Posting at once is a run too: it keeps the minimum interval, or a creator could post
    # (and ask the language model) as often as they type.
    interval = BriefingLimits.of(services.settings).min_interval
    now = datetime.now(UTC)
    last = await services.repos.briefings.latest_run_before(tenant, briefing.id, now)
    if last is not None and now - last < interval:
        return _reply(
            f"Briefing {briefing.id} ran at {last:%H:%M} UTC; runs are at least "
            f"{duration_text(interval)} apart (JAMONO_BRIEFING_MIN_INTERVAL). "
            f"Try again after {last + interval:%H:%M} UTC."
        )
    result = await services.briefings.run_now(tenant, briefing.id)
    match result.outcome:
        case Outcome.POSTED:
            return _reply(f"✅ Briefing {briefing.id} is posted in <#{briefing.channel_id}>.")
        case Outcome.DUPLICATE:
            return _reply(f"Briefing {briefing.id} was posted a moment ago already.")
        case Outcome.PAUSED:
            return _reply(
                f"I could not post in <#{briefing.channel_id}> (`{result.detail}`), so I paused "
                f"briefing {briefing.id}; <@{briefing.created_by}> got a message saying what to do."
            )
        case _:
            return _reply(f"Briefing {briefing.id} could not be posted: {result.detail}.")


async def _preview(invocation: Invocation, argument: str) -> Reply:
    request = invocation.request
    if argument:
        briefing = await _briefing(invocation, argument)
        if isinstance(briefing, Reply):
            return briefing
    else:
        here = [
            b
            for b in await invocation.services.repos.briefings.list(request.tenant)
            if b.channel_id == request.channel_id
        ]
        briefing = here[0] if here else _sample(invocation)
    # A preview runs the briefing's prompt as its creator and shows its channel's data.
    refused = briefing.id and await _refused(invocation, briefing, "preview")
    if refused:
        return refused
    saved = f"briefing {briefing.id}" if briefing.id else "a sample briefing, not saved"
    briefings = invocation.services.briefings
    opening = " · the persona writes its opening when it posts" if briefings.llm else ""
    return await briefings.compose(
        briefing,
        datetime.now(UTC),
        footer=f"Preview of {saved} · only you see this{opening}",
        # Any member may preview: no language model call of its own for the opening.
        with_opening=False,
        # Typed in the briefing's channel, the requester is one of its readers; the CLI and
        # the console (no Slack client) are the operator's.
        shows_channel=request.slack is None or request.channel_id == briefing.channel_id,
    )


async def _refused(invocation: Invocation, briefing: Briefing, verb: str) -> Reply | None:
    """The refusal when the requester is neither the briefing's creator nor an admin."""
    request = invocation.request
    if request.user_id == briefing.created_by or await request.is_admin():
        return None
    if request.channel_id != briefing.channel_id:  # its channel and creator are not for all
        return _reply(f"Only its creator and workspace admins can {verb} briefing {briefing.id}.")
    return _reply(
        f"Only <@{briefing.created_by}>, who created briefing {briefing.id}, and workspace "
        f"admins can {verb} it."
    )


def _sample(invocation: Invocation) -> Briefing:
    """An unsaved briefing for this channel with the sections every workspace has."""
    now = datetime.now(UTC)
    return Briefing(
        id=0,
        tenant=invocation.request.tenant,
        channel_id=invocation.request.channel_id,
        persona=invocation.persona.name,
        schedule="weekdays 08:30",
        timezone=invocation.config.timezone,
        sections=SAMPLE_SECTIONS,
        enabled=False,
        paused_reason=None,
        created_by=invocation.request.user_id,
        created_at=now,
        updated_at=now,
    )


async def _briefing(invocation: Invocation, argument: str) -> Briefing | Reply:
    if not BRIEFING_ID.fullmatch(argument):
        return _usage(invocation, "Give the briefing's number, as `/nox-brief list` shows it.")
    briefing = await invocation.services.repos.briefings.get(
        invocation.request.tenant, int(argument)
    )
    if briefing is None:
        return _reply(f"There is no briefing {argument} in this workspace (`/nox-brief list`).")
    return briefing


def _usage(invocation: Invocation, lead: str) -> Reply:
    return _reply(f"{lead}\nUsage: `/{invocation.persona.command_prefix}-brief {USAGE}`")


def _reply(text: str) -> Reply:
    return Reply(text, [section(text)])
