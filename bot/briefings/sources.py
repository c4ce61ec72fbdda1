"""The section sources built on Jamono's own data: pending approvals, persona activity and the
persona's answer to a free prompt. Jira and calendar sources come from their integrations."""

from __future__ import annotations

from datetime import timedelta

from agents.runtime import AgentRuntime, TurnRequest
from bot.briefings.sections import BriefingContext, SectionContent, SectionSpec, SourceUnavailable
from storage.repositories import Repositories

ACTIVITY_WINDOW = timedelta(hours=24)


class ApprovalsSource:
    """Approval requests still waiting for a decision (storage.repositories.approvals)."""

    def __init__(self, repos: Repositories) -> None:
        self._repos = repos

    async def gather(self, context: BriefingContext, spec: SectionSpec) -> SectionContent:
        pending = await self._repos.approvals.pending_for(
            context.briefing.tenant, context.scheduled_for
        )
        lines = [
            f"`{request.tool}` on {request.target} — asked by <@{request.requested_by}>, "
            f"expires {request.expires_at:%Y-%m-%d %H:%M} UTC"
            for request in pending
        ]
        return SectionContent(spec.title, lines, empty="no approvals waiting")


class ActivitySource:
    """What the personas did in the 24 hours before the run (turns, tool calls, tokens)."""

    def __init__(self, repos: Repositories) -> None:
        self._repos = repos

    async def gather(self, context: BriefingContext, spec: SectionSpec) -> SectionContent:
        figures = await self._repos.metrics.usage_since(
            context.briefing.tenant, context.scheduled_for - ACTIVITY_WINDOW
        )
        if not figures.turns and not figures.tool_calls:
            return SectionContent(spec.title, empty="no persona activity")
        lines = [
            f"{figures.turns} answers in {figures.conversations} conversations, "
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
        return SectionContent(spec.title, text=outcome.text)
