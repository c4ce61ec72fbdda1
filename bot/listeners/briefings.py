"""``/nox-brief add`` opens a modal; its ``view_submission`` validates and saves the briefing.

Registered before the generic slash-command listener so that ``add`` (which needs the
request's ``trigger_id`` for ``views.open``) is handled here; every other ``/nox-brief`` verb
goes through bot.commands.brief. A bad submission is answered with ``response_action:
errors`` on the field at fault and saves nothing (Slack: "Handling and responding to
interactions", view_submission).
"""

from __future__ import annotations

import re
from typing import Any

import structlog
from slack_bolt.async_app import AsyncApp
from slack_bolt.context.async_context import AsyncBoltContext
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from agents import personas
from bot.briefings.manage import (
    BriefingInputError,
    BriefingLimits,
    NewBriefing,
    add_briefing,
    describe,
)
from bot.briefings.schedule import MAX_SCHEDULE, MAX_TIMEZONE
from bot.briefings.schedule import USAGE as SCHEDULE_USAGE
from bot.briefings.sections import KINDS, MAX_JQL, MAX_PROMPT
from bot.listeners.context import tenant_of
from bot.services import Services
from bot.slack_client import is_workspace_admin, slack_error

log = structlog.get_logger(__name__)

CALLBACK_ID = "brief_add"
ADD = re.compile(r"^\s*add\s*$", re.IGNORECASE)
PREFIXES = "|".join(p.command_prefix for p in personas.BUILTIN.values())
BRIEF_COMMAND = re.compile(rf"^/({PREFIXES})-brief$")
DEFAULT_SECTIONS = ("approvals", "activity")


def register(app: AsyncApp, services: Services) -> None:
    async def is_add(command: dict[str, Any]) -> bool:
        return bool(ADD.match(command.get("text", "")))

    @app.command(BRIEF_COMMAND, matchers=[is_add])
    async def open_form(
        ack, command: dict[str, Any], context: AsyncBoltContext, client: AsyncWebClient
    ) -> None:
        await ack()
        config = await services.repos.config.load(tenant_of(context))
        prefix = command["command"].removeprefix("/").split("-")[0]
        persona = personas.by_prefix(prefix) or personas.BUILTIN[personas.DEFAULT_PERSONA]
        try:
            await client.views_open(
                trigger_id=command["trigger_id"],
                view=form(command.get("channel_id", ""), persona.name, config.timezone),
            )
        except SlackApiError as exc:
            log.warning("brief_form_failed", error=slack_error(exc))

    @app.view(CALLBACK_ID)
    async def on_submit(
        ack, body: dict[str, Any], context: AsyncBoltContext, client: AsyncWebClient
    ) -> None:
        user_id = body["user"]["id"]
        new = submitted(body["view"]["state"]["values"])
        try:
            briefing = await add_briefing(
                services.repos,
                client,
                tenant_of(context),
                user_id,
                new,
                limits=BriefingLimits.of(services.settings),
                is_admin=lambda: is_workspace_admin(client, user_id),
            )
        except BriefingInputError as exc:
            await ack(response_action="errors", errors={exc.field: str(exc)})
            return
        except Exception:  # the modal must be answered, or Slack shows its own vague error
            log.exception("brief_add_failed")
            await ack(
                response_action="errors",
                errors={
                    "channel": "Something failed on my side and nothing was saved; try "
                    "again in a minute."
                },
            )
            return
        await ack()
        if services.scheduler is not None:
            services.scheduler.sync_soon()
        try:
            await client.chat_postMessage(
                channel=user_id, text=f"✅ Briefing added: {describe(briefing)}"
            )
        except SlackApiError as exc:
            log.warning("brief_confirmation_failed", error=slack_error(exc))


def form(channel_id: str, persona: str, timezone: str) -> dict[str, Any]:
    """The modal of ``/nox-brief add``; block ids are the fields of :class:`NewBriefing`."""
    channel: dict[str, Any] = {
        "type": "conversations_select",
        "action_id": "value",
        "filter": {"include": ["public", "private"], "exclude_bot_users": True},
    }
    if channel_id.startswith(("C", "G")):  # not a DM: the select lists channels only
        channel["initial_conversation"] = channel_id
    persona_options = [_option(p.display_name, p.name) for p in personas.BUILTIN.values()]
    section_options = [_option(label, kind) for kind, label in KINDS.items()]
    return {
        "type": "modal",
        "callback_id": CALLBACK_ID,
        "title": _plain("New briefing"),
        "submit": _plain("Add"),
        "close": _plain("Cancel"),
        "blocks": [
            _input("channel", "Channel", channel),
            _input(
                "persona",
                "Persona",
                {
                    "type": "static_select",
                    "action_id": "value",
                    "options": persona_options,
                    "initial_option": next(o for o in persona_options if o["value"] == persona),
                },
            ),
            _input(
                "schedule",
                "Schedule",
                {
                    "type": "plain_text_input",
                    "action_id": "value",
                    "initial_value": "weekdays 08:30",
                    "max_length": MAX_SCHEDULE,
                },
                hint=SCHEDULE_USAGE.replace("`", ""),
            ),
            _input(
                "timezone",
                "Timezone (IANA)",
                {
                    "type": "plain_text_input",
                    "action_id": "value",
                    "initial_value": timezone,
                    "max_length": MAX_TIMEZONE,
                },
            ),
            _input(
                "sections",
                "Sections",
                {
                    "type": "checkboxes",
                    "action_id": "value",
                    "options": section_options,
                    "initial_options": [
                        o for o in section_options if o["value"] in DEFAULT_SECTIONS
                    ],
                },
            ),
            _input(
                "jql",
                "JQL for the Jira section",
                {
                    "type": "plain_text_input",
                    "action_id": "value",
                    "placeholder": _plain("project = OPS AND status != Done"),
                    "max_length": MAX_JQL,
                },
                optional=True,
            ),
            _input(
                "prompt",
                "Question for the persona (free prompt section, admins only)",
                {
                    "type": "plain_text_input",
                    "action_id": "value",
                    "multiline": True,
                    "max_length": MAX_PROMPT,
                },
                optional=True,
            ),
        ],
    }


def submitted(values: dict[str, Any]) -> NewBriefing:
    """A :class:`NewBriefing` from ``view.state.values`` of the modal (not yet validated)."""

    def field(block: str) -> dict[str, Any]:
        return values.get(block, {}).get("value", {})

    sections = []
    for option in field("sections").get("selected_options") or []:
        kind = option["value"]
        item: dict[str, Any] = {"kind": kind}
        if kind == "jira":
            item["jql"] = field("jql").get("value") or ""
        if kind == "prompt":
            item["prompt"] = field("prompt").get("value") or ""
        sections.append(item)
    persona = (field("persona").get("selected_option") or {}).get("value")
    return NewBriefing(
        channel_id=field("channel").get("selected_conversation") or "",
        schedule=field("schedule").get("value") or "",
        timezone=field("timezone").get("value") or "",
        sections=sections,
        persona=persona or personas.DEFAULT_PERSONA,
    )


def _input(
    block_id: str, label: str, element: dict[str, Any], hint: str = "", optional: bool = False
) -> dict[str, Any]:
    block = {
        "type": "input",
        "block_id": block_id,
        "label": _plain(label),
        "element": element,
        "optional": optional,
    }
    if hint:
        block["hint"] = _plain(hint)
    return block


def _option(text: str, value: str) -> dict[str, Any]:
    return {"text": _plain(text), "value": value}


def _plain(text: str) -> dict[str, str]:
    return {"type": "plain_text", "text": text}
