"""Briefing sections: what a subscription asks for, and the sources that gather it.

A section spec is stored as JSON on the subscription: ``{"kind": "approvals"}``,
``{"kind": "jira", "title": "Open incidents", "jql": "project = OPS AND status != Done"}``,
``{"kind": "prompt", "prompt": "What should the on-call watch today?"}``.

A :class:`Source` gathers one kind of section for one run and returns its
:class:`SectionContent`, or raises :class:`SourceUnavailable` with a reason the channel can
read; the briefing then shows "unavailable: reason" for that section and the rest is delivered.

Kinds in :data:`AUDIENCE_SCOPED` show what happened in conversations (approval requests,
persona activity). A run shows only those of its audience, the one channel whose members
read it (:attr:`BriefingContext.audience`): never those of another channel, a private channel
or a DM.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import structlog

from agents.personas import Persona
from storage.repositories.briefings import Briefing

log = structlog.get_logger(__name__)

KINDS: dict[str, str] = {
    "jira": "Jira issues (JQL)",
    "calendar": "Upcoming calendar events",
    "approvals": "Pending approvals",
    "activity": "Persona activity, last 24 hours",
    "prompt": "From the persona (free prompt)",
}
AUDIENCE_SCOPED = frozenset({"approvals", "activity"})
MAX_SECTIONS = 10
MAX_JQL = 1000  # characters
MAX_PROMPT = 2000  # characters
MAX_TITLE = 100  # characters
SOURCE_TIMEOUT = 60.0  # seconds one source may take before its section is unavailable


class SectionError(ValueError):
    """A section spec that cannot be used; the message says what to change."""


@dataclass(frozen=True)
class SectionSpec:
    kind: str
    title: str
    jql: str | None = None
    prompt: str | None = None

    def as_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": self.kind, "title": self.title}
        if self.jql:
            data["jql"] = self.jql
        if self.prompt:
            data["prompt"] = self.prompt
        return data


def parse_section(data: dict[str, Any]) -> SectionSpec:
    """A spec from its JSON form (as stored or as built by the modal or the CLI).

    Raises:
        SectionError: unknown kind, a Jira section without JQL, a prompt section without a
            prompt, or text over its limit.
    """
    kind = str(data.get("kind", "")).strip().lower()
    if kind not in KINDS:
        raise SectionError(f"`{kind}` is not a section; use one of {', '.join(KINDS)}.")
    title = str(data.get("title") or KINDS[kind]).strip()
    jql = str(data.get("jql") or "").strip() or None
    prompt = str(data.get("prompt") or "").strip() or None
    for name, text in (("title", title), ("JQL query", jql), ("prompt", prompt)):
        # NUL cannot be stored in PostgreSQL text; other control characters are not text.
        if text and any(ord(char) < 32 and char not in "\n\t" for char in text):
            raise SectionError(f"The {name} contains control characters; write plain text.")
    title = title[:MAX_TITLE]
    if kind == "jira" and not jql:
        raise SectionError(
            "A Jira section needs a JQL query, e.g. `project = OPS AND status != Done`."
        )
    if jql and len(jql) > MAX_JQL:
        raise SectionError(f"The JQL query is longer than {MAX_JQL} characters.")
    if kind == "prompt" and not prompt:
        raise SectionError("A prompt section needs the question for the persona.")
    if prompt and len(prompt) > MAX_PROMPT:
        raise SectionError(f"The prompt is longer than {MAX_PROMPT} characters.")
    return SectionSpec(
        kind, title, jql if kind == "jira" else None, prompt if kind == "prompt" else None
    )


def parse_sections(items: list[dict[str, Any]]) -> list[SectionSpec]:
    """Raises :class:`SectionError` for an empty list, too many sections, or a bad one."""
    if not items:
        raise SectionError("Choose at least one section.")
    if len(items) > MAX_SECTIONS:
        raise SectionError(f"A briefing has at most {MAX_SECTIONS} sections.")
    return [parse_section(item) for item in items]


@dataclass(frozen=True)
class BriefingContext:
    """One run: the subscription, its persona (with the workspace's overrides), when it is
    for (aware; the scheduled fire time, or the moment of ``now``/``preview``) and its
    ``audience``: the channel whose approvals and activity it may show (the briefing's own
    channel), or ``None`` when its reader may not see that channel's (a preview elsewhere)."""

    briefing: Briefing
    persona: Persona
    scheduled_for: datetime
    audience: str | None = None


@dataclass(frozen=True)
class SectionContent:
    """A gathered section: ``lines`` become a bullet list, ``text`` free mrkdwn text.

    ``unavailable`` holds the reason when the source failed (then nothing else is shown).
    """

    title: str
    lines: list[str] = field(default_factory=list)
    text: str | None = None
    empty: str = "nothing to report"
    unavailable: str | None = None


class SourceUnavailable(Exception):
    """A source cannot gather its section; ``reason`` is shown as "unavailable: reason"."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Source(Protocol):
    async def gather(self, context: BriefingContext, spec: SectionSpec) -> SectionContent:
        """Gather the section; raise :class:`SourceUnavailable` with a readable reason."""
        ...


class Shared:
    """One result per key for callers that ask within ``keep`` seconds of each other.

    Briefings of one workspace due at the same moment gather the same workspace-wide data
    (pending approvals, activity, a JQL list): the first run's gathering serves the others.
    A failure is shared too, as it would repeat.
    """

    def __init__(self, keep: float = 60.0) -> None:
        self._keep = keep
        self._entries: dict[Hashable, tuple[float, asyncio.Task[Any]]] = {}

    async def get(self, key: Hashable, gather: Callable[[], Awaitable[Any]]) -> Any:
        now = asyncio.get_running_loop().time()
        for old in [k for k, (expires, _) in self._entries.items() if expires < now]:
            del self._entries[old]
        entry = self._entries.get(key)
        if entry is None:
            entry = (now + self._keep, asyncio.ensure_future(gather()))
            self._entries[key] = entry
        # Shielded: one caller's cancellation must not cancel the others' result.
        return await asyncio.shield(entry[1])


class Sources:
    """The sources by section kind (a kind with no source shows as unavailable).

    Sections of kinds in :data:`PER_BRIEFING` are gathered for each briefing; the others are
    workspace-wide and shared by the briefings of a workspace due at the same moment.
    """

    PER_BRIEFING = frozenset({"prompt"})

    def __init__(self, sources: dict[str, Source], timeout: float = SOURCE_TIMEOUT) -> None:
        self._sources = dict(sources)
        self._timeout = timeout
        self._shared = Shared()

    def register(self, kind: str, source: Source) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown section kind {kind!r}")
        self._sources[kind] = source

    async def gather(
        self, context: BriefingContext, specs: list[SectionSpec]
    ) -> list[SectionContent]:
        """Every section, concurrently, in order; never raises for a failing source."""
        return list(await asyncio.gather(*(self._one(context, spec) for spec in specs)))

    async def _one(self, context: BriefingContext, spec: SectionSpec) -> SectionContent:
        source = self._sources.get(spec.kind)
        if source is None:
            return SectionContent(spec.title, unavailable="no source for this kind of section")
        try:
            if spec.kind in self.PER_BRIEFING:
                return await asyncio.wait_for(source.gather(context, spec), self._timeout)
            briefing = context.briefing
            audience = context.audience if spec.kind in AUDIENCE_SCOPED else None
            key = (briefing.tenant.id, spec, context.scheduled_for, briefing.timezone, audience)
            return await self._shared.get(
                key, lambda: asyncio.wait_for(source.gather(context, spec), self._timeout)
            )
        except SourceUnavailable as exc:
            return SectionContent(spec.title, unavailable=exc.reason)
        except TimeoutError:
            return SectionContent(spec.title, unavailable=f"no answer within {self._timeout:g} s")
        except Exception as exc:  # one broken source must not cost the channel its briefing
            log.exception("briefing_source_failed", kind=spec.kind)
            return SectionContent(spec.title, unavailable=f"internal error ({type(exc).__name__})")
