"""A fake Jira REST server (API v2) for Cloud and Data Center, over real HTTP.

It speaks the wire format of contracts.md ("Jira REST (pycontribs jira 3.10)") well enough for
the unmodified ``jira`` library: ``serverInfo``, ``myself``, ``field``, ``project``,
``priority``, ``issuetype``, search (Cloud: ``/search/jql`` with ``nextPageToken``/``isLast``
and ``/search`` answering 410; Data Center: ``/search`` with ``startAt``/``total``), issues,
comments and transitions. Errors are ``{"errorMessages": [...], "errors": {...}}``.

Auth: Cloud takes HTTP Basic (email, API token), Data Center ``Authorization: Bearer <PAT>``;
anything else gets 401. ``serverInfo`` answers anonymously, as real Jira does.

JQL subset: clauses joined by ``AND``; ``field = v``, ``field != v``, ``field in (a, b)``,
``field not in (…)``, ``field is EMPTY`` / ``is not EMPTY``, ``text ~ "words"`` (also
``summary ~``, ``description ~``). Fields: project, key (issuekey), status, issuetype (type),
priority, labels, assignee, reporter, summary, description, text. Values may be quoted.
``ORDER BY …`` is accepted and ignored (results come newest first). Anything else (``OR``,
functions, unknown fields) is a 400 like Jira's "Error in the JQL Query".

Fault injection: :meth:`FakeJira.fail_next` (an HTTP status for the next requests, with an
optional ``Retry-After``), :meth:`FakeJira.delay` (slow answers), :meth:`FakeJira.down` /
:meth:`FakeJira.up` (connection refused, then the same port again). Every request is recorded
in :attr:`FakeJira.requests`, faulted ones included.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from aiohttp import web

Flavour = Literal["cloud", "datacenter"]

CLOUD_EMAIL = "nox@example.com"
CLOUD_API_TOKEN = "cloud-api-token-123"
DATACENTER_PAT = "dc-personal-access-token-456"

STATUSES = {
    "To Do": {"id": "10000", "category": {"id": 2, "key": "new", "name": "To Do"}},
    "In Progress": {"id": "3", "category": {"id": 4, "key": "indeterminate",
                                            "name": "In Progress"}},
    "Done": {"id": "10001", "category": {"id": 3, "key": "done", "name": "Done"}},
}
# A simplified workflow: from any status, one transition to each other status, named after it.
TRANSITION_IDS = {"To Do": "11", "In Progress": "21", "Done": "31"}
ISSUE_TYPES = {"10001": "Task", "10002": "Bug", "10003": "Incident"}
PRIORITIES = {"1": "Highest", "2": "High", "3": "Medium", "4": "Low", "5": "Lowest"}
PROJECTS = {"10000": ("OPS", "Operations"), "10001": ("PAY", "Payments")}


@dataclass
class RecordedRequest:
    """One request as the fake received it; ``json`` is the parsed body or ``None``."""

    method: str
    path: str
    query: dict[str, str]
    json: Any
    headers: dict[str, str]


@dataclass
class _Issue:
    id: str
    key: str
    project_id: str
    issuetype_id: str
    summary: str
    description: str | None = None
    status: str = "To Do"
    priority_id: str = "3"
    labels: list[str] = field(default_factory=list)
    assignee: str | None = None
    reporter: str | None = None
    comments: list[dict[str, Any]] = field(default_factory=list)
    created: str = ""


class JQLError(ValueError):
    pass


class FakeJira:
    """Start with ``async with FakeJira(flavour="cloud") as jira``; :attr:`url` is the site."""

    def __init__(self, flavour: Flavour = "cloud") -> None:
        if flavour not in ("cloud", "datacenter"):
            raise ValueError(f"unknown flavour {flavour!r}")
        self.flavour: Flavour = flavour
        self.email = CLOUD_EMAIL
        self.api_token = CLOUD_API_TOKEN
        self.pat = DATACENTER_PAT
        self.requests: list[RecordedRequest] = []
        self.url = ""
        self._port = 0
        self._runner: web.AppRunner | None = None
        self._faults: list[tuple[int, int | None]] = []
        self._delay = 0.0
        self._ids = itertools.count(10100)
        self._comment_ids = itertools.count(20000)
        self._issues: dict[str, _Issue] = {}
        self._counters: dict[str, int] = {}
        self._seed()

    async def __aenter__(self) -> FakeJira:
        await self.up()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.down()

    # -- control --------------------------------------------------------------------------

    async def up(self) -> None:
        """Listen (again): on a random port the first time, on the same port afterwards."""
        if self._runner:
            return
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self._port)
        await site.start()
        self._runner = runner
        self._port = site._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self._port}"

    async def down(self) -> None:
        """Stop listening and drop open connections: clients get "connection refused"."""
        if self._runner:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    def fail_next(self, status: int = 500, times: int = 1, retry_after: int | None = None):
        """Answer the next ``times`` requests with ``status`` (and ``Retry-After`` seconds)."""
        self._faults.extend([(status, retry_after)] * times)

    def delay(self, seconds: float) -> None:
        """Wait ``seconds`` before answering every request (0 to stop)."""
        self._delay = seconds

    def requests_to(self, method: str, path: str) -> list[RecordedRequest]:
        """Recorded requests with this method and exact path, e.g. ``POST /rest/api/2/issue``."""
        return [r for r in self.requests if r.method == method and r.path == path]

    def issue(self, key: str) -> dict[str, Any]:
        """The stored issue as Jira's JSON (for assertions)."""
        return self._issue_json(self._issues[key], None)

    def add_issue(self, project: str, summary: str, **fields: Any) -> str:
        """Seed an issue in ``project`` (key); returns the issue key."""
        project_id = next(pid for pid, (k, _) in PROJECTS.items() if k == project)
        issue = _Issue(id=str(next(self._ids)), key=self._next_key(project),
                       project_id=project_id, issuetype_id=fields.pop("issuetype_id", "10001"),
                       summary=summary, created=_now(), **fields)
        self._issues[issue.key] = issue
        return issue.key

    # -- plumbing ---------------------------------------------------------------------------

    def _seed(self) -> None:
        self.add_issue("OPS", "Disk full on build agent", status="Done",
                       labels=["infra"], assignee="alice")
        self.add_issue("OPS", "Payments API latency above SLO", status="In Progress",
                       issuetype_id="10003", priority_id="2", labels=["incident", "payments"],
                       assignee="bob", description="p99 latency at 2 s since 09:00")
        self.add_issue("OPS", "Rotate TLS certificates", description="Expires next month")
        self.add_issue("PAY", "Refund job retries forever", issuetype_id="10002",
                       priority_id="2", labels=["payments"])

    def _next_key(self, project: str) -> str:
        self._counters[project] = self._counters.get(project, 0) + 1
        return f"{project}-{self._counters[project]}"

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        body: Any = None
        if request.can_read_body:
            raw = await request.read()
            try:
                body = await request.json() if raw else None
            except ValueError:
                body = raw.decode("utf-8", "replace")
        self.requests.append(RecordedRequest(
            request.method, request.path, dict(request.query), body, dict(request.headers)))
        if self._delay:
            await asyncio.sleep(self._delay)
        if self._faults:
            status, retry_after = self._faults.pop(0)
            headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
            return _error(status, [f"Injected HTTP {status}"], headers=headers)
        if not request.path.startswith("/rest/api/2/"):
            return web.Response(status=404, text="<html><body>Not Found</body></html>",
                                content_type="text/html")
        route = request.path.removeprefix("/rest/api/2/")
        if route == "serverInfo" and request.method == "GET":
            return web.json_response(self._server_info())
        if (user := self._authenticate(request)) is None:
            return _error(401, ["You are not authenticated. Authentication required to "
                                "perform this operation."])
        for method, pattern, handler in self._routes():
            if request.method == method and (m := re.fullmatch(pattern, route)):
                return await handler(request, body, user, *m.groups())
        return _error(404, [f"No REST resource for {request.method} /rest/api/2/{route}"])

    def _routes(self) -> list[tuple[str, str, Callable]]:
        return [
            ("GET", r"myself", self._myself),
            ("GET", r"field", self._fields),
            ("GET", r"project", self._projects),
            ("GET", r"project/([^/]+)", self._project),
            ("GET", r"priority", self._priorities),
            ("GET", r"issuetype", self._issuetypes),
            ("GET", r"search/jql", self._search_jql),
            ("POST", r"search/jql", self._search_jql),
            ("GET", r"search", self._search),
            ("POST", r"search", self._search),
            ("POST", r"issue", self._create_issue),
            ("GET", r"issue/([^/]+)", self._get_issue),
            ("POST", r"issue/([^/]+)/comment", self._add_comment),
            ("GET", r"issue/([^/]+)/transitions", self._transitions),
            ("POST", r"issue/([^/]+)/transitions", self._do_transition),
        ]

    def _authenticate(self, request: web.Request) -> str | None:
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if self.flavour == "cloud" and scheme.lower() == "basic":
            try:
                email, _, token = base64.b64decode(value).decode().partition(":")
            except ValueError:
                return None
            if (email, token) == (self.email, self.api_token):
                return "nox"
        if self.flavour == "datacenter" and scheme.lower() == "bearer" and value == self.pat:
            return "nox"
        return None

    # -- metadata ---------------------------------------------------------------------------

    def _server_info(self) -> dict[str, Any]:
        cloud = self.flavour == "cloud"
        version = [1001, 0, 0] if cloud else [9, 12, 4]
        return {
            "baseUrl": self.url,
            "displayUrl": self.url,
            "version": ".".join(map(str, version)) + ("-SNAPSHOT" if cloud else ""),
            "versionNumbers": version,
            "deploymentType": "Cloud" if cloud else "Server",
            "buildNumber": 100289 if cloud else 9120004,
            "buildDate": "2026-11-01T00:00:00.000+0000",
            "serverTime": _now(),
            "scmInfo": "0123456789abcdef",
            "serverTitle": "Jira",
        }

    def _user_json(self, name: str | None) -> dict[str, Any] | None:
        if name is None:
            return None
        user = {"self": f"{self.url}/rest/api/2/user", "displayName": name.title(),
                "emailAddress": f"{name}@example.com", "active": True, "timeZone": "UTC"}
        if self.flavour == "cloud":
            user.update(accountId=f"5b10ac8d82e05b22cc7d{name}", accountType="atlassian")
        else:
            user.update(name=name, key=f"JIRAUSER{len(name)}")
        return user

    async def _myself(self, request, body, user) -> web.Response:
        return web.json_response(self._user_json(user))

    async def _fields(self, request, body, user) -> web.Response:
        names = {"summary": "Summary", "description": "Description", "status": "Status",
                 "assignee": "Assignee", "reporter": "Reporter", "priority": "Priority",
                 "issuetype": "Issue Type", "project": "Project", "labels": "Labels",
                 "created": "Created", "comment": "Comment"}
        return web.json_response([
            {"id": fid, "key": fid, "name": name, "custom": False, "navigable": True,
             "searchable": True, "clauseNames": [fid]}
            for fid, name in names.items()
        ])

    def _project_json(self, project_id: str) -> dict[str, Any]:
        key, name = PROJECTS[project_id]
        return {"self": f"{self.url}/rest/api/2/project/{project_id}", "id": project_id,
                "key": key, "name": name, "projectTypeKey": "software"}

    async def _projects(self, request, body, user) -> web.Response:
        return web.json_response([self._project_json(pid) for pid in PROJECTS])

    async def _project(self, request, body, user, key_or_id) -> web.Response:
        for pid, (key, _) in PROJECTS.items():
            if key_or_id in (pid, key):
                return web.json_response(self._project_json(pid))
        return _error(404, [f"No project could be found with key '{key_or_id}'."])

    async def _priorities(self, request, body, user) -> web.Response:
        return web.json_response([{"self": f"{self.url}/rest/api/2/priority/{pid}",
                                   "id": pid, "name": name} for pid, name in PRIORITIES.items()])

    async def _issuetypes(self, request, body, user) -> web.Response:
        return web.json_response([{"self": f"{self.url}/rest/api/2/issuetype/{tid}", "id": tid,
                                   "name": name, "subtask": False}
                                  for tid, name in ISSUE_TYPES.items()])

    # -- search -----------------------------------------------------------------------------

    def _search_args(self, request: web.Request, body: Any) -> dict[str, Any]:
        if request.method == "POST":
            return dict(body or {})
        args: dict[str, Any] = dict(request.query)
        fields = [f for v in request.query.getall("fields", []) for f in v.split(",")]
        args["fields"] = fields or None
        return args

    def _matching(self, jql: str) -> list[_Issue]:
        predicate = parse_jql(jql)
        found = [i for i in self._issues.values() if predicate(i)]
        return sorted(found, key=lambda i: int(i.id), reverse=True)

    async def _search_jql(self, request, body, user) -> web.Response:
        if self.flavour != "cloud":
            return _error(404, ["null for uri: /rest/api/2/search/jql"])
        args = self._search_args(request, body)
        try:
            found = self._matching(args.get("jql", ""))
        except JQLError as exc:
            return _error(400, [str(exc)])
        start = int(args.get("nextPageToken") or 0)
        size = min(int(args.get("maxResults") or 50), 100)
        page = found[start:start + size]
        answer: dict[str, Any] = {
            "issues": [self._issue_json(i, args.get("fields")) for i in page],
            "isLast": start + size >= len(found),
        }
        if not answer["isLast"]:
            answer["nextPageToken"] = str(start + size)
        return web.json_response(answer)

    async def _search(self, request, body, user) -> web.Response:
        if self.flavour == "cloud":
            return _error(410, ["The requested API has been removed. Please migrate to the "
                                "/rest/api/2/search/jql API."])
        args = self._search_args(request, body)
        try:
            found = self._matching(args.get("jql", ""))
        except JQLError as exc:
            return _error(400, [str(exc)])
        start = int(args.get("startAt") or 0)
        size = min(int(args.get("maxResults") or 50), 1000)
        return web.json_response({
            "expand": "schema,names", "startAt": start, "maxResults": size,
            "total": len(found),
            "issues": [self._issue_json(i, args.get("fields"))
                       for i in found[start:start + size]],
        })

    # -- issues -----------------------------------------------------------------------------

    def _issue_json(self, issue: _Issue, fields: list[str] | None) -> dict[str, Any]:
        status = STATUSES[issue.status]
        everything = {
            "summary": issue.summary,
            "description": issue.description,
            "status": {"self": f"{self.url}/rest/api/2/status/{status['id']}",
                       "id": status["id"], "name": issue.status,
                       "statusCategory": status["category"]},
            "issuetype": {"id": issue.issuetype_id, "name": ISSUE_TYPES[issue.issuetype_id],
                          "subtask": False},
            "project": self._project_json(issue.project_id),
            "priority": {"id": issue.priority_id, "name": PRIORITIES[issue.priority_id]},
            "labels": list(issue.labels),
            "assignee": self._user_json(issue.assignee),
            "reporter": self._user_json(issue.reporter),
            "created": issue.created,
            "updated": issue.created,
            "comment": {"comments": list(issue.comments), "maxResults": len(issue.comments),
                        "total": len(issue.comments), "startAt": 0},
        }
        wanted = [f for f in fields or [] if not f.startswith("*")]
        if wanted:
            everything = {k: v for k, v in everything.items() if k in wanted}
        return {"expand": "renderedFields,names,schema,transitions,changelog",
                "id": issue.id, "self": f"{self.url}/rest/api/2/issue/{issue.id}",
                "key": issue.key, "fields": everything}

    def _find(self, key_or_id: str) -> _Issue | None:
        return self._issues.get(key_or_id.upper()) or next(
            (i for i in self._issues.values() if i.id == key_or_id), None)

    async def _get_issue(self, request, body, user, key) -> web.Response:
        if not (issue := self._find(key)):
            return _not_found()
        fields = request.query.get("fields")
        return web.json_response(self._issue_json(issue, fields.split(",") if fields else None))

    async def _create_issue(self, request, body, user) -> web.Response:
        fields = (body or {}).get("fields") if isinstance(body, dict) else None
        if not isinstance(fields, dict):
            return _error(400, ["Can not deserialize the request: 'fields' is required."])
        errors: dict[str, str] = {}
        project_id = _lookup({pid: key for pid, (key, _) in PROJECTS.items()},
                             fields.get("project"), "key")
        if project_id is None:
            errors["project"] = "valid project is required"
        issuetype_id = _lookup(ISSUE_TYPES, fields.get("issuetype"), "name")
        if issuetype_id is None:
            errors["issuetype"] = "valid issue type is required"
        summary = fields.get("summary")
        if not isinstance(summary, str) or not summary.strip():
            errors["summary"] = "You must specify a summary of the issue."
        elif len(summary) > 255:
            errors["summary"] = "Summary must be less than 255 characters."
        priority_id = "3"
        if "priority" in fields:
            priority_id = _lookup(PRIORITIES, fields["priority"], "name")
            if priority_id is None:
                errors["priority"] = (f"Specify a valid priority: "
                                      f"{', '.join(PRIORITIES.values())}")
        labels = fields.get("labels", [])
        if not isinstance(labels, list) or any(
                not isinstance(x, str) or " " in x for x in labels):
            errors["labels"] = "Labels are strings without spaces."
        description = fields.get("description")
        if description is not None and not isinstance(description, str):
            errors["description"] = "Operation value must be a string"
        if errors:
            return _error(400, [], errors)
        issue = _Issue(id=str(next(self._ids)), key=self._next_key(PROJECTS[project_id][0]),
                       project_id=project_id, issuetype_id=issuetype_id, summary=summary,
                       description=description, priority_id=priority_id, labels=labels,
                       reporter=user, created=_now())
        self._issues[issue.key] = issue
        return web.json_response(
            {"id": issue.id, "key": issue.key,
             "self": f"{self.url}/rest/api/2/issue/{issue.id}"}, status=201)

    async def _add_comment(self, request, body, user, key) -> web.Response:
        if not (issue := self._find(key)):
            return _not_found()
        text = body.get("body") if isinstance(body, dict) else None
        if not isinstance(text, str) or not text.strip():
            return _error(400, [], {"comment": "Comment body can not be empty!"})
        comment_id = str(next(self._comment_ids))
        comment = {"self": f"{self.url}/rest/api/2/issue/{issue.id}/comment/{comment_id}",
                   "id": comment_id, "author": self._user_json(user), "body": text,
                   "updateAuthor": self._user_json(user), "created": _now(),
                   "updated": _now()}
        issue.comments.append(comment)
        return web.json_response(comment, status=201)

    def _transition_list(self, issue: _Issue) -> list[dict[str, Any]]:
        return [
            {"id": tid, "name": name, "hasScreen": False, "isGlobal": True,
             "isInitial": False, "isConditional": False,
             "to": {"self": f"{self.url}/rest/api/2/status/{STATUSES[name]['id']}",
                    "id": STATUSES[name]["id"], "name": name,
                    "statusCategory": STATUSES[name]["category"]}}
            for name, tid in TRANSITION_IDS.items() if name != issue.status
        ]

    async def _transitions(self, request, body, user, key) -> web.Response:
        if not (issue := self._find(key)):
            return _not_found()
        return web.json_response({"expand": "transitions",
                                  "transitions": self._transition_list(issue)})

    async def _do_transition(self, request, body, user, key) -> web.Response:
        if not (issue := self._find(key)):
            return _not_found()
        wanted = str(((body or {}).get("transition") or {}).get("id", ""))
        for transition in self._transition_list(issue):
            if transition["id"] == wanted:
                issue.status = transition["to"]["name"]
                return web.Response(status=204)
        return _error(400, [f"Transition id '{wanted}' is not valid for this issue."])


# -- JQL ------------------------------------------------------------------------------------

_TOKEN = re.compile(r"""\s*(?:"((?:[^"\\]|\\.)*)"|'((?:[^'\\]|\\.)*)'|(!=|!~|=|~|\(|\)|,)|"""
                    r"""([^\s=!~(),"']+))""")
_TEXT_FIELDS = {"summary", "description", "text"}
_ALIASES = {"issuekey": "key", "type": "issuetype"}


def _tokens(jql: str) -> list[tuple[str, str]]:
    """(kind, text) pairs: kind is "str" (quoted), "op" or "word"."""
    out, pos, jql = [], 0, jql.strip()
    while pos < len(jql):
        m = _TOKEN.match(jql, pos)
        if not m or m.end() == pos:
            raise JQLError(f"Error in the JQL Query: unexpected character at {pos}.")
        pos = m.end()
        if m.group(1) is not None or m.group(2) is not None:
            out.append(("str", m.group(1) if m.group(1) is not None else m.group(2)))
        elif m.group(3):
            out.append(("op", m.group(3)))
        else:
            out.append(("word", m.group(4)))
    return out


def parse_jql(jql: str) -> Callable[[_Issue], bool]:
    """A predicate for the JQL subset in the module docstring; :class:`JQLError` otherwise."""
    tokens = _tokens(jql)
    lowered = [t.lower() if kind == "word" else None for kind, t in tokens]
    for i in range(len(tokens) - 1):
        if lowered[i] == "order" and lowered[i + 1] == "by":
            tokens = tokens[:i]
            break
    clauses: list[Callable[[_Issue], bool]] = []
    pos = 0
    while pos < len(tokens):
        clause, pos = _clause(tokens, pos)
        clauses.append(clause)
        if pos < len(tokens):
            kind, text = tokens[pos]
            if kind != "word" or text.lower() != "and":
                raise JQLError(f"Error in the JQL Query: expecting 'AND' but got '{text}'. "
                               "This fake understands AND only.")
            pos += 1
            if pos == len(tokens):
                raise JQLError("Error in the JQL Query: expecting a clause after 'AND'.")
    return lambda issue: all(c(issue) for c in clauses)


def _clause(tokens, pos) -> tuple[Callable[[_Issue], bool], int]:
    def take() -> tuple[str, str]:
        nonlocal pos
        if pos >= len(tokens):
            raise JQLError("Error in the JQL Query: the query ends too early.")
        pos += 1
        return tokens[pos - 1]

    kind, name = take()
    if kind == "op":
        raise JQLError(f"Error in the JQL Query: expecting a field name but got '{name}'.")
    fname = _ALIASES.get(name.lower(), name.lower())
    if fname not in {"project", "key", "status", "issuetype", "priority", "labels",
                     "assignee", "reporter"} | _TEXT_FIELDS:
        raise JQLError(f"Field '{name}' does not exist or you do not have permission to "
                       "view it.")
    _, op = take()
    op = op.lower()
    if op == "is":
        negate = pos < len(tokens) and tokens[pos][1].lower() == "not"
        if negate:
            pos += 1
        _, empty = take()
        if empty.lower() not in ("empty", "null"):
            raise JQLError("Error in the JQL Query: expecting EMPTY after IS.")
        return (lambda i: bool(_values(i, fname)) == negate), pos
    if op == "not":
        _, op2 = take()
        if op2.lower() != "in":
            raise JQLError("Error in the JQL Query: expecting IN after NOT.")
        op = "not in"
    if op in ("in", "not in"):
        if take() != ("op", "("):
            raise JQLError("Error in the JQL Query: expecting '(' after IN.")
        wanted = []
        while True:
            vk, v = take()
            if vk == "op":
                raise JQLError(f"Error in the JQL Query: unexpected '{v}' in a list.")
            wanted.append(v.lower())
            sep = take()
            if sep == ("op", ")"):
                break
            if sep != ("op", ","):
                raise JQLError("Error in the JQL Query: expecting ',' or ')' in a list.")
        inside = op == "in"
        return (lambda i: bool(set(_values(i, fname)) & set(wanted)) == inside), pos
    if op in ("=", "!="):
        vk, v = take()
        if vk == "op":
            raise JQLError(f"Error in the JQL Query: expecting a value but got '{v}'.")
        equal = op == "="
        return (lambda i: (v.lower() in _values(i, fname)) == equal), pos
    if op in ("~", "!~"):
        if fname not in _TEXT_FIELDS:
            raise JQLError(f"The operator '{op}' is not supported by the '{name}' field.")
        _, v = take()
        words = v.lower().split()
        contains = op == "~"
        return (lambda i: all(w in " ".join(_values(i, fname)) for w in words)
                == contains), pos
    raise JQLError(f"Error in the JQL Query: unknown operator '{op}'.")


def _values(issue: _Issue, fname: str) -> list[str]:
    """The lowercase values a JQL clause on ``fname`` compares against."""
    key, project_name = PROJECTS[issue.project_id]
    summary, description = issue.summary, issue.description or ""
    comments = " ".join(c["body"] for c in issue.comments)
    values = {
        "project": [key, project_name, issue.project_id],
        "key": [issue.key, issue.id],
        "status": [issue.status, STATUSES[issue.status]["id"]],
        "issuetype": [ISSUE_TYPES[issue.issuetype_id], issue.issuetype_id],
        "priority": [PRIORITIES[issue.priority_id], issue.priority_id],
        "labels": list(issue.labels),
        "assignee": [issue.assignee] if issue.assignee else [],
        "reporter": [issue.reporter] if issue.reporter else [],
        "summary": [summary],
        "description": [description] if description else [],
        "text": [summary, description, comments],
    }[fname]
    return [v.lower() for v in values]


# -- helpers --------------------------------------------------------------------------------

def _lookup(table: dict[str, str], ref: Any, by: str) -> str | None:
    """The id in ``table`` (id → name) that ``{"id": …}`` or ``{by: name}`` refers to."""
    if not isinstance(ref, dict):
        return None
    if "id" in ref and str(ref["id"]) in table:
        return str(ref["id"])
    wanted = str(ref.get(by, "")).lower()
    return next((i for i, name in table.items() if name.lower() == wanted), None)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000+0000")


def _not_found() -> web.Response:
    return _error(404, ["Issue does not exist or you do not have permission to see it."])


def _error(status: int, messages: list[str], errors: dict[str, str] | None = None,
           headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"errorMessages": messages, "errors": errors or {}},
                             status=status, headers=headers)
