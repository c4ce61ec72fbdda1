"""The section sources: pending approvals, persona activity and the persona's answer to a free
prompt from Jamono's own data; Jira issues and upcoming events from the workspace's
integrations (through the same connections, retries and circuits as the persona's tools).

Pending approvals and activity are those of the run's audience channel only (see
bot.briefings.sections). Text that comes from stored requests, Jira or a calendar is escaped
before it reaches mrkdwn, so that a summary reading ``<!channel>`` does not notify anyone."""

from __future__ import annotations

from datetime import timedelta
from zoneinfo import ZoneInfo

from agents.connections import Connections, NotConnected, explain
from agents.runtime import AgentRuntime, TurnRequest
from bot.approvals import target_text
from bot.briefings.sections import BriefingContext, SectionContent, SectionSpec, SourceUnavailable
from bot.render import escape, no_broadcasts
from integrations.errors import IntegrationError
from storage.repositories import Repositories

ACTIVITY_WINDOW = timedelta(hours=24)
JIRA_LIMIT = 50  # issues fetched for one section; the renderer shortens long lists further
CALENDAR_WINDOW_DAYS = 1  # "today's post-mortems": the day after the run
CALENDAR_LIMIT = 25


def audience_of(context: BriefingContext) -> str:
    """The channel whose conversations the run may show.

    Raises:
        SourceUnavailable: the run's reader may not see that channel's conversations.
    """
    if context.audience is None:
        raise SourceUnavailable(
            f"shown only to the members of <#{context.briefing.channel_id}>: preview the "
            "briefing there"
        )
    return context.audience


class ApprovalsSource:
    """Approval requests made in the audience channel and still waiting for a decision."""

    def __init__(self, repos: Repositories) -> None:
        self._repos = repos

    async def gather(self, context: BriefingContext, spec: SectionSpec) -> SectionContent:
        pending = await self._repos.briefings.pending_approvals_in(
            context.briefing.tenant, audience_of(context), context.scheduled_for
        )
        lines = [
            f"`{escape(request.tool)}` on {target_text(request)} — asked by "
            f"<@{request.requested_by}>, expires {request.expires_at:%Y-%m-%d %H:%M} UTC"
            for request in pending
        ]
        return SectionContent(spec.title, lines, empty="no approvals waiting")


class ActivitySource:
    """What the personas did in the audience channel in the 24 hours before the run (turns,
    tool calls, tokens)."""

    def __init__(self, repos: Repositories) -> None:
        self._repos = repos

    async def gather(self, context: BriefingContext, spec: SectionSpec) -> SectionContent:
        figures = await self._repos.metrics.usage_since(
            context.briefing.tenant,
            context.scheduled_for - ACTIVITY_WINDOW,
            channel_id=audience_of(context),
        )
        if not figures.turns and not figures.tool_calls:
            return SectionContent(spec.title, empty="no persona activity")
        lines = [
            f"{figures.turns} answers in {figures.conversations} conversations in this channel, "
            f"{figures.errors} errors",
            f"{figures.prompt_tokens + figures.completion_tokens:,} LLM tokens "
            f"({figures.prompt_tokens:,} prompt, {figures.completion_tokens:,} completion)",
        ]
        lines += [f"`{tool}` × {count}" for tool, count in figures.tool_calls.items()]
        return SectionContent(spec.title, lines)


class PromptSource:
    """The persona's answer to the section's prompt, through the agent runtime (tools, memory
    and audit as for any turn). Each run is its own conversation."""

    def __init__(self, runtime: AgentRuntime) -> None:
        self._runtime = runtime

    async def gather(self, context: BriefingContext, spec: SectionSpec) -> SectionContent:
        if self._runtime.llm is None:
            raise SourceUnavailable(
                "no language model is configured (set OPENAI_API_KEY or OPENAI_BASE_URL)"
            )
        briefing = context.briefing
        outcome = await self._runtime.run(
            TurnRequest(
                tenant=briefing.tenant,
                persona=context.persona,
                channel_id=briefing.channel_id,
                thread_ts=f"brief:{briefing.id}:{context.scheduled_for:%Y%m%dT%H%M%S}",
                user_id=briefing.created_by,
                text=spec.prompt or "",
                timezone=briefing.timezone,
            )
        )
        if outcome.status != "ok":
            raise SourceUnavailable(
                f"{context.persona.display_name} could not answer ({outcome.status})"
            )
        return SectionContent(spec.title, text=no_broadcasts(outcome.text))


class JiraSource:
    """The issues a section's JQL finds in the workspace's Jira, as links with their status."""

    def __init__(self, connections: Connections) -> None:
        self._connections = connections

    async def gather(self, context: BriefingContext, spec: SectionSpec) -> SectionContent:
        try:
            jira = await self._connections.jira(context.briefing.tenant)
            found = await jira.search(spec.jql or "", limit=JIRA_LIMIT)
        except NotConnected:
            raise SourceUnavailable("Jira is not connected in this workspace") from None
        except IntegrationError as exc:
            raise SourceUnavailable(explain(exc)) from None
        lines = [
            f"<{escape(issue.url)}|{escape(issue.key)}> {escape(issue.summary)} — "
            f"{escape(issue.status)}" + (f" ({escape(issue.assignee)})" if issue.assignee else "")
            for issue in found.issues
        ]
        if found.total is not None and found.total > len(lines):
            lines.append(f"and {found.total - len(lines)} more in Jira")
        elif found.more:
            lines.append("and more in Jira")
        return SectionContent(spec.title, lines, empty="no matching issues")


class CalendarSource:
    """The workspace calendar's events in the day after the run, in the briefing's timezone."""

    def __init__(self, connections: Connections) -> None:
        self._connections = connections

    async def gather(self, context: BriefingContext, spec: SectionSpec) -> SectionContent:
        try:
            calendar = await self._connections.calendar(context.briefing.tenant)
            if calendar is None:
                raise SourceUnavailable("no calendar is connected in this workspace")
            events = await calendar.upcoming(
                context.scheduled_for, CALENDAR_WINDOW_DAYS, CALENDAR_LIMIT
            )
        except IntegrationError as exc:
            raise SourceUnavailable(explain(exc)) from None
        zone = ZoneInfo(context.briefing.timezone)
        lines = [
            f"{event.start.astimezone(zone):%a %H:%M}–{event.end.astimezone(zone):%H:%M} "
            f"{escape(event.summary)}"
            for event in events
        ]
        return SectionContent(spec.title, lines, empty="no events in the next 24 hours")
