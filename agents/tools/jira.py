"""Jira tools: search (JQL), read, create, comment and transition issues.

Results are Slack mrkdwn the model can quote as is: issue keys are links (``<url|OPS-12>``).
A failing or unconnected Jira gives a :class:`ToolError` saying what failed and what to do.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from agents.connections import Connections, explain
from agents.tools.registry import Tool, ToolContext, ToolError
from integrations.errors import IntegrationError
from integrations.jira import JiraClient

T = TypeVar("T")

_KEY = {"type": "string", "pattern": r"^\s*[A-Za-z][A-Za-z0-9_]*-[0-9]+\s*$",
        "description": "Issue key, e.g. OPS-12."}


def link(url: str, key: str) -> str:
    """A Slack link to an issue: ``<https://…/browse/OPS-12|OPS-12>``."""
    return f"<{url}|{key}>"


def build(connections: Connections) -> list[Tool]:
    """The Jira tools, resolving each workspace's Jira through ``connections``."""

    async def call(context: ToolContext, work: Callable[[JiraClient], Awaitable[T]]) -> T:
        try:
            return await work(await connections.jira(context.tenant))
        except IntegrationError as exc:
            raise ToolError(explain(exc)) from None

    async def jira_search(context: ToolContext, jql: str, limit: int = 10) -> str:
        """Search Jira issues with a JQL query, e.g. `project = OPS AND status != Done`;
        returns key (as a link), summary, status and assignee of each."""
        found = await call(context, lambda jira: jira.search(jql, limit))
        if not found.issues:
            return f"No issues match `{jql}`."
        count = f"{found.total}" if found.total is not None else f"{len(found.issues)}"
        lines = [f"{count} issue(s) match `{jql}`"
                 + (f" (showing {len(found.issues)})" if found.more else "") + ":"]
        lines += [
            f"• {link(issue.url, issue.key)} {issue.summary} — {issue.status}"
            f" — {issue.assignee or 'unassigned'}"
            for issue in found.issues
        ]
        return "\n".join(lines)

    async def jira_get_issue(context: ToolContext, key: str) -> str:
        """Read one Jira issue by key: summary, status, type, priority, assignee, reporter,
        labels, description."""
        issue = await call(context, lambda jira: jira.get_issue(key))
        lines = [
            f"{link(issue.url, issue.key)} {issue.summary}",
            f"Status: {issue.status} · Type: {issue.issue_type} · "
            f"Priority: {issue.priority or 'none'} · Project: {issue.project}",
            f"Assignee: {issue.assignee or 'unassigned'} · Reporter: {issue.reporter or 'none'}",
        ]
        if issue.labels:
            lines.append("Labels: " + ", ".join(issue.labels))
        if issue.created:
            lines.append(f"Created: {issue.created}")
        if issue.description:
            lines.append(f"Description:\n{issue.description[:3000]}")
        return "\n".join(lines)

    async def jira_create_issue(
        context: ToolContext,
        project: str,
        summary: str,
        issue_type: str = "Task",
        description: str | None = None,
        priority: str | None = None,
        labels: list[str] | None = None,
    ) -> str:
        """Create a Jira issue (project key, issue type, summary, description, priority,
        labels); returns its key as a link."""
        created = await call(context, lambda jira: jira.create_issue(
            project, issue_type, summary, description, priority, labels or ()))
        return f"Created {link(created.url, created.key)}: {summary}"

    async def jira_add_comment(context: ToolContext, key: str, body: str) -> str:
        """Add a comment to a Jira issue."""
        added = await call(context, lambda jira: jira.add_comment(key, body))
        return f"Commented on {link(added.url, added.issue_key)}."

    async def jira_transition_issue(context: ToolContext, key: str, transition: str) -> str:
        """Move a Jira issue through a workflow transition given by name ("In Progress",
        "Done" …); a wrong name lists the valid ones."""
        moved = await call(context, lambda jira: jira.transition_issue(key, transition))
        return f"{link(moved.url, moved.key)} moved through '{moved.transition}'; " \
               f"status is now {moved.status}."

    def schema(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
        return {"type": "object", "properties": properties, "required": required,
                "additionalProperties": False}

    text = {"type": "string", "minLength": 1}
    return [
        Tool.from_function(jira_search, parameters=schema({
            "jql": {**text, "description": "JQL query."},
            "limit": {"type": "integer", "minimum": 1, "maximum": 50,
                      "description": "Most issues to return (default 10)."},
        }, ["jql"])),
        Tool.from_function(jira_get_issue, parameters=schema({"key": _KEY}, ["key"])),
        Tool.from_function(jira_create_issue, risk="write", target=_project, parameters=schema({
            "project": {**text, "description": "Project key, e.g. OPS."},
            "summary": {**text, "maxLength": 255, "description": "One-line title."},
            "issue_type": {**text, "description": "Issue type name: Task, Bug, Incident … "
                                                  "(default Task)."},
            "description": {"type": "string", "description": "Details (Jira wiki text)."},
            "priority": {**text, "description": "Priority name, e.g. Highest, High, Medium."},
            "labels": {"type": "array", "items": {"type": "string", "pattern": r"^\S+$"},
                       "description": "Labels, without spaces."},
        }, ["project", "summary"])),
        Tool.from_function(jira_add_comment, risk="write", target=_issue, parameters=schema({
            "key": _KEY, "body": {**text, "description": "The comment (Jira wiki text)."},
        }, ["key", "body"])),
        Tool.from_function(jira_transition_issue, risk="write", target=_issue,
                           parameters=schema({
            "key": _KEY,
            "transition": {**text, "description": "Transition name as shown in Jira."},
        }, ["key", "transition"])),
    ]


def _project(arguments: dict[str, Any]) -> str:
    """What an approval message names as the target of a new issue."""
    return f"Jira project {arguments.get('project', '?')}"


def _issue(arguments: dict[str, Any]) -> str:
    return f"Jira issue {arguments.get('key', '?')}"
