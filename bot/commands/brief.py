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
"""

from __future__ import annotations

from datetime import UTC, datetime

from bot.briefings.delivery import Outcome
from bot.briefings.manage import describe
from bot.briefings.render import list_text
from bot.commands.base import Invocation
from bot.render import Reply, section
from storage.repositories.briefings import Briefing

USAGE = "add|list|remove ID|pause ID|resume ID|now ID|preview [ID]"
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
    briefings = await invocation.services.repos.briefings.list(invocation.request.tenant)
    if not briefings:
        return _reply("No briefings in this workspace yet. `/nox-brief add` creates one.")
    now = datetime.now(UTC)
    return _reply(list_text("Briefings", [describe(b, now) for b in briefings]))


async def _now(invocation: Invocation, briefing: Briefing) -> Reply:
    result = await invocation.services.briefings.run_now(invocation.request.tenant, briefing.id)
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
    return await invocation.services.briefings.compose(
        briefing, datetime.now(UTC), footer=f"Preview of {saved} · only you see this"
    )


async def _refused(invocation: Invocation, briefing: Briefing, verb: str) -> Reply | None:
    """The refusal when the requester is neither the briefing's creator nor an admin."""
    request = invocation.request
    if request.user_id == briefing.created_by or await request.is_admin():
        return None
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
    if not argument.isdigit():
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
