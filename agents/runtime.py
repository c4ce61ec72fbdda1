"""The agent loop: persona prompt + memory → LLM → tool calls → answer, all of it audited."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

import structlog
from slack_sdk.web.async_client import AsyncWebClient

from agents.budgets import Budgets, OverLimit, TurnBudget
from agents.llm import NOT_CONFIGURED_HINT, Completion, LLMClient, LLMError, ToolCallRequest
from agents.memory import estimate_tokens, fit_history
from agents.personas import Persona
from agents.policy import ActionGate, ApprovalNotifier
from agents.tools.registry import ToolContext, ToolRegistry, invoke
from integrations import json_limits
from integrations.json_limits import JSONLimitError
from storage.repositories import Repositories
from storage.repositories.approvals import DEFAULT_TTL
from storage.repositories.conversations import LLMCallUsage
from storage.repositories.policy import ActionPolicy
from storage.tenancy import Tenant

if TYPE_CHECKING:
    from slack_sdk.web.async_client import AsyncWebClient

log = structlog.get_logger(__name__)

TurnStatus = Literal["ok", "max_steps", "error", "not_configured", "limited"]
RESULT_LIMIT = 8_000  # characters of one tool result given back to the model
SUMMARY_LIMIT = 500  # characters of a result kept in the audit trail


def new_instance_id() -> str:
    """A process id unique across hosts and restarts: ``{hostname}-{pid}-{6 hex}``, at most 64
    characters (the width of ``turns.owner``: a long host name is cut, its end kept)."""
    suffix = f"-{os.getpid()}-{secrets.token_hex(3)}"
    return socket.gethostname()[-(64 - len(suffix)):] + suffix


@dataclass(frozen=True)
class TurnRequest:
    """One user message to a persona. ``thread_ts`` keys the conversation (see bot/turns.py)."""

    tenant: Tenant
    persona: Persona
    channel_id: str
    thread_ts: str
    user_id: str
    text: str
    timezone: str = "UTC"
    slack: AsyncWebClient | None = None  # the workspace's Web API client, for tools and approvals


@dataclass(frozen=True)
class ToolRun:
    """What one tool call did, for the audit trail and the "tools used" line under an answer."""

    name: str
    arguments: dict[str, Any]
    # ok | error | invalid_arguments | timeout | unknown_tool | refused | awaiting_approval
    status: str
    summary: str
    duration_ms: int


@dataclass
class TurnOutcome:
    text: str
    status: TurnStatus
    tool_runs: list[ToolRun] = field(default_factory=list)
    usage: list[LLMCallUsage] = field(default_factory=list)  # one entry per LLM call
    # Nothing new to tell: a refusal the person already heard until the limit resets.
    quiet: bool = False


class AgentRuntime:
    """Runs turns. One instance per process; safe for concurrent turns.

    ``tool_timeout`` is in seconds per tool call; ``context_tokens`` is the history budget
    (approximate tokens, see :mod:`agents.memory`). Tool calls pass the workspace's action
    policy first (:class:`agents.policy.ActionGate`): write tools needing approval become
    requests shown by ``notifier`` that wait up to ``approval_ttl``. ``budgets`` admits each
    turn and each LLM call and picks the model (:mod:`agents.budgets`); without it (tests,
    benches) nothing is limited and a persona's model is used as set.

    Each step (the user's message, an LLM reply, a tool result) is stored as it happens, in
    turns owned by ``owner`` (this process's instance id; unique by default), so a process
    killed mid-turn leaves in memory what really ran and its turns can be closed
    (:meth:`storage.repositories.conversations.ConversationRepository.close_orphans`).

    ``observe_turn`` hears ``(persona, status, seconds)`` as each turn ends (the metrics'
    latency histogram).
    """

    def __init__(
        self,
        *,
        llm: LLMClient | None,
        registry: ToolRegistry,
        repos: Repositories,
        default_model: str,
        tool_timeout: float,
        context_tokens: int,
        notifier: ApprovalNotifier | None = None,
        approval_ttl: timedelta = DEFAULT_TTL,
        budgets: Budgets | None = None,
        owner: str | None = None,
        observe_turn: Callable[[str, str, float], None] | None = None,
    ) -> None:
        self.llm = llm
        self.owner = owner or new_instance_id()
        self.registry = registry
        self.repos = repos
        self.default_model = default_model
        self.tool_timeout = tool_timeout
        self.context_tokens = context_tokens
        self.budgets = budgets
        self.observe_turn = observe_turn
        self.gate = ActionGate(
            repos=repos,
            registry=registry,
            notifier=notifier,
            ttl=approval_ttl,
            tool_timeout=tool_timeout,
        )

    async def run(
        self, request: TurnRequest, on_admitted: Callable[[], None] | None = None
    ) -> TurnOutcome:
        """Answer one message. Never raises for LLM or tool failures: the outcome says what failed.

        ``on_admitted`` is called once the limits admitted the turn, before the model is asked
        (a refused turn never calls it). Raises only for storage failures (the caller reports
        them) and cancellation.
        """
        if self.llm is None:
            return TurnOutcome(NOT_CONFIGURED_HINT, "not_configured")
        async with AsyncExitStack() as admitted:
            # Admitted before anything is read: a flood of refused turns must stay cheap for
            # the database the other workspaces share (one write each, below).
            try:
                budget = await admitted.enter_async_context(self._admit(request))
            except OverLimit as exc:
                return await self._refused(request, exc)
            if on_admitted is not None:
                on_admitted()
            return await self._answer(request, budget)

    async def _refused(self, request: TurnRequest, refused: OverLimit) -> TurnOutcome:
        """Store the person's message with the refused turn, so asking again picks it up."""
        message = {"role": "user", "content": request.text}
        await self.repos.conversations.record_refused_turn(
            request.tenant,
            request.channel_id,
            request.thread_ts,
            request.persona.name,
            request.user_id,
            [message],
            [estimate_tokens(message)],
            "limited",
            f"over the limit {refused.refusal.limit.value}",
        )
        if self.observe_turn is not None:
            self.observe_turn(request.persona.name, "limited", 0.0)
        told = self.budgets is None or self.budgets.first_notice(
            request.tenant, request.user_id, refused.refusal
        )
        return TurnOutcome(refused.refusal.message, "limited", quiet=not told)

    async def _answer(self, request: TurnRequest, budget: TurnBudget | None) -> TurnOutcome:
        started = time.perf_counter()
        persona = request.persona
        new_messages: list[dict[str, Any]] = [{"role": "user", "content": request.text}]
        turn_id, stored = await self.repos.conversations.begin_turn(
            request.tenant,
            request.channel_id,
            request.thread_ts,
            persona.name,
            request.user_id,
            owner=self.owner,
            messages=new_messages,
            tokens=[estimate_tokens(new_messages[0])],
        )
        history = fit_history(stored, self.context_tokens)
        outcome = TurnOutcome(text="", status="ok")
        recorded = [len(new_messages), 0]  # messages and LLM calls already stored

        async def record() -> None:
            messages, usage = new_messages[recorded[0] :], outcome.usage[recorded[1] :]
            await self.repos.conversations.record_step(
                request.tenant, turn_id, messages, [estimate_tokens(m) for m in messages], usage
            )
            self._spent(request.tenant, usage)
            recorded[:] = len(new_messages), len(outcome.usage)  # else finish stores them

        async def finish(status: str, error: str | None) -> None:
            if self.observe_turn is not None:
                self.observe_turn(persona.name, status, time.perf_counter() - started)
            # Shielded: a turn cut short by shutdown still stores what it did, so the
            # thread's memory and the audit stay whole.
            messages, usage = new_messages[recorded[0] :], outcome.usage[recorded[1] :]
            await asyncio.shield(
                self.repos.conversations.finish_turn(
                    request.tenant,
                    turn_id,
                    messages,
                    [estimate_tokens(m) for m in messages],
                    status,
                    error,
                    round((time.perf_counter() - started) * 1000),
                    usage,
                )
            )
            self._spent(request.tenant, usage)

        try:
            await self._loop(request, turn_id, history, new_messages, outcome, budget, record)
        except OverLimit as exc:
            # The person's message (and any tool round already done) is stored: nothing lost.
            outcome.status, outcome.text = "limited", exc.refusal.message
            await finish("limited", f"over the limit {exc.refusal.limit.value}")
        except LLMError as exc:
            log.warning("llm_call_failed", tenant=request.tenant.id, reason=str(exc))
            outcome.status = "error"
            outcome.text = (
                f"Sorry, I could not get an answer: {exc}. Please try again in a moment; "
                f"`/{persona.command_prefix}-status` shows whether the model is reachable."
            )
            await finish("error", str(exc))
        except asyncio.CancelledError:
            await finish("interrupted", "interrupted by a shutdown before the answer")
            raise
        except Exception as exc:
            await finish("error", f"internal error ({type(exc).__name__})")
            raise
        else:
            await finish(outcome.status, None)
        return outcome

    async def _loop(
        self,
        request: TurnRequest,
        turn_id: int,
        history: list[dict[str, Any]],
        new_messages: list[dict[str, Any]],
        outcome: TurnOutcome,
        budget: TurnBudget | None,
        record: Callable[[], Awaitable[None]],
    ) -> None:
        persona = request.persona
        tools = self.registry.for_persona(persona)
        specs = [tool.openai_spec() for tool in tools]
        system = {"role": "system", "content": self._system_prompt(request)}
        context = ToolContext(
            tenant=request.tenant,
            persona=persona,
            user_id=request.user_id,
            channel_id=request.channel_id,
            thread_ts=request.thread_ts,
            timezone=request.timezone,
            slack=request.slack,
        )
        policy: ActionPolicy | None = None  # loaded at the turn's first tool call
        steps = 0
        while True:
            if budget is not None:
                # Nothing pending: every earlier call of this turn is stored by now (record()
                # runs before its tools), and the check already counts what is stored.
                await budget.check()
            completion = await self._complete(request, [system, *history, *new_messages], specs)
            outcome.usage.append(
                LLMCallUsage(
                    completion.model,
                    completion.prompt_tokens,
                    completion.completion_tokens,
                    completion.duration_ms,
                )
            )
            new_messages.append(completion.as_chat_message())
            if not completion.tool_calls:
                outcome.text = completion.content or "(the model returned an empty answer)"
                return
            if steps == persona.max_tool_steps:
                break
            steps += 1
            if policy is None:
                policy = await self.gate.policy(request.tenant)
            calls = completion.tool_calls
            allowed = budget.allowed_tool_calls(len(calls)) if budget else len(calls)
            await record()  # the calls are in memory before any of them runs
            for call in calls[:allowed]:
                run, content = await self._run_tool(call, context, turn_id, policy)
                outcome.tool_runs.append(run)
                new_messages.append({"role": "tool", "tool_call_id": call.id, "content": content})
                await record()  # what ran is in memory even if the process dies next
            for call in calls[allowed:]:  # not run: one reply cannot flood tools or approvals
                new_messages.append(
                    {"role": "tool", "tool_call_id": call.id, "content": _over_tool_limit(allowed)}
                )
        # Every tool_calls message needs its tool results, or the stored history is invalid.
        for call in completion.tool_calls:
            new_messages.append(
                {"role": "tool", "tool_call_id": call.id, "content": "not run: step limit reached"}
            )
        outcome.status = "max_steps"
        outcome.text = (
            f"I stopped after {persona.max_tool_steps} tool steps without reaching an answer. "
            "Ask me to continue, or narrow the request."
        )

    async def _complete(
        self, request: TurnRequest, messages: list[dict[str, Any]], specs: list[dict[str, Any]]
    ) -> Completion:
        persona = request.persona
        return await self.llm.complete(
            model=self.model_for(persona),
            messages=messages,
            tools=specs,
            temperature=persona.temperature,
        )

    def model_for(self, persona: Persona) -> str:
        """The model a persona's calls use (an admin's pick only while it is allowed)."""
        if self.budgets is None:
            return persona.model or self.default_model
        return self.budgets.models.resolve(persona.model)

    def _spent(self, tenant: Tenant, usage: list[LLMCallUsage]) -> None:
        if self.budgets is not None and usage:
            self.budgets.stored(tenant, usage)

    def _admit(self, request: TurnRequest) -> AbstractAsyncContextManager[TurnBudget | None]:
        if self.budgets is None:
            return nullcontext()
        return self.budgets.turn(request.tenant, request.user_id)

    async def _run_tool(
        self, call: ToolCallRequest, context: ToolContext, turn_id: int, policy: ActionPolicy
    ) -> tuple[ToolRun, str]:
        """Validate, screen by the policy, run with a timeout and audit one call; returns the
        run and the tool message."""
        started = time.perf_counter()
        arguments: dict[str, Any] = {}
        tool = self.registry.get(call.name)
        if tool is None or tool.name not in context.persona.tools:
            status, content = "unknown_tool", f"error: there is no tool named {call.name!r}"
        else:
            try:
                parsed = json_limits.loads(call.arguments or "{}")
            except JSONLimitError as exc:  # the model's text is untrusted: depth is bounded
                parsed, status = None, "invalid_arguments"
                content = f"error: arguments are not valid JSON ({exc}); send a JSON object"
            if parsed is not None:
                problems = tool.argument_errors(parsed)
                if problems:
                    status = "invalid_arguments"
                    content = "error: invalid arguments: " + "; ".join(problems)
                else:
                    arguments = parsed
                    screened = await self.gate.screen(policy, tool, context, arguments, call.id)
                    status, content = screened or await invoke(
                        tool, context, arguments, self.tool_timeout
                    )
        duration_ms = round((time.perf_counter() - started) * 1000)
        summary = content[:SUMMARY_LIMIT]
        await self.repos.audit.record_tool_call(
            context.tenant,
            turn_id=turn_id,
            persona=context.persona.name,
            user_id=context.user_id,
            tool=call.name,
            arguments=arguments if arguments else _raw_arguments(call.arguments),
            result_summary=summary,
            status=status,
            duration_ms=duration_ms,
        )
        log.info(
            "tool_call",
            tenant=context.tenant.id,
            tool=call.name,
            status=status,
            duration_ms=duration_ms,
        )
        return ToolRun(call.name, arguments, status, summary, duration_ms), content[:RESULT_LIMIT]

    def _system_prompt(self, request: TurnRequest) -> str:
        now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        return (
            f"{request.persona.instructions()}\n\n"
            f"Context: you are talking with Slack user <@{request.user_id}> in channel "
            f"{request.channel_id}. The workspace timezone is {request.timezone}. "
            f"It is now {now}."
        )


def _over_tool_limit(allowed: int) -> str:
    return (
        f"not run: at most {allowed} tool calls of one reply are executed. Ask for the "
        "remaining ones in your next reply if they are still needed."
    )


def _raw_arguments(raw: str) -> dict[str, Any]:
    """What the model sent when it was not a valid object, kept verbatim for the audit."""
    try:
        value = json_limits.loads(raw or "{}")
    except JSONLimitError:
        return {"_raw": raw[:SUMMARY_LIMIT]}
    return value if isinstance(value, dict) else {"_raw": value}
