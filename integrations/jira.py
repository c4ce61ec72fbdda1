"""Async Jira client (Cloud and Data Center) over the pycontribs ``jira`` library.

The library is blocking, so each call runs in the Jira :class:`~integrations.pools.IntegrationPool`
(the workspace's share of it, under an overall deadline). Every connection, redirects included,
goes through the :class:`~integrations.egress.EgressPolicy` (checked address pinned). Its own
retries are off (``max_retries=0``): :mod:`integrations.resilience` is the single retry layer,
and every HTTP request has a timeout. REST facts (Jira REST API v2): Cloud search goes to
``GET /rest/api/2/search/jql`` (the library picks it from ``serverInfo``'s ``deploymentType``),
Data Center to ``/rest/api/2/search``; auth is HTTP Basic (email, API token) on Cloud and
``Authorization: Bearer <personal access token>`` on Data Center.

Every failure is a :class:`JiraError` (an :class:`~integrations.errors.IntegrationError`) with
a message fit for a Slack user; no message ever holds a credential, nor the body of an answer
that is not Jira's JSON (a redirect may lead anywhere).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import requests
from jira import JIRA, JIRAError
from urllib3.exceptions import NameResolutionError, NewConnectionError

from integrations.egress import EgressPolicy, EgressRefused
from integrations.errors import IntegrationError
from integrations.pools import DeadlineExceeded, IntegrationPool, PoolBusy
from integrations.resilience import Failure, Resilience

INTEGRATION = "jira"
T = TypeVar("T")


# -- credentials ----------------------------------------------------------------------------

@dataclass(frozen=True)
class CloudCredentials:
    """Jira Cloud: the site URL (``https://acme.atlassian.net``), an Atlassian account email
    and an API token (id.atlassian.com → Security → API tokens)."""

    site_url: str
    email: str
    api_token: str = field(repr=False)

    @property
    def url(self) -> str:
        return self.site_url.rstrip("/")


@dataclass(frozen=True)
class DataCenterCredentials:
    """Jira Data Center / Server: the base URL and a personal access token (Jira 8.14+)."""

    base_url: str
    personal_access_token: str = field(repr=False)

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/")


JiraCredentials = CloudCredentials | DataCenterCredentials


# -- errors ---------------------------------------------------------------------------------

class JiraError(IntegrationError):
    """A failed Jira call. ``status`` is the HTTP status when Jira answered; ``failure`` is
    the verdict :func:`classify` hands to the resilience layer."""

    def __init__(self, message: str, *, status: int | None = None,
                 failure: Failure | None = None) -> None:
        super().__init__(INTEGRATION, message)
        self.status = status
        self.failure = failure or Failure()


class JiraUnavailable(JiraError):
    """Jira is unreachable, too slow, rate limiting (429) or failing (5xx): transient."""


class JiraAuthError(JiraError):
    """Jira rejected the credentials (401) or refused access (403)."""


class NotJiraError(JiraError):
    """The URL does not answer like a Jira site (no JSON ``serverInfo``)."""


class JiraRefused(JiraError):
    """The egress policy refused the address the URL (or a redirect) leads to."""


class JiraRequestError(JiraError):
    """Jira refused this request (400, 404 …); the message carries Jira's own reasons."""


class TransitionNotFound(JiraRequestError):
    """No transition of the issue has the requested name; ``valid`` lists those it has."""

    def __init__(self, key: str, name: str, valid: Sequence[str]) -> None:
        listed = ", ".join(f"'{v}'" for v in valid) or "none"
        super().__init__(f"{key} has no transition named '{name}'. Valid transitions: {listed}.",
                         failure=Failure(caller_fault=True))
        self.valid = list(valid)


def classify(exc: BaseException) -> Failure:
    """The :data:`~integrations.resilience.Classifier` for this client's errors."""
    return exc.failure if isinstance(exc, JiraError) else Failure()


# -- results --------------------------------------------------------------------------------

@dataclass(frozen=True)
class ServerCheck:
    """What :meth:`JiraClient.check` found: the server and the user the credentials are for.
    ``deployment`` is ``Cloud`` or ``Server`` (Data Center answers ``Server``)."""

    url: str
    deployment: str
    version: str
    server_title: str
    user: str
    user_email: str | None


@dataclass(frozen=True)
class IssueSummary:
    """One search hit; ``assignee`` is a display name or ``None``; ``url`` is the browse URL."""

    key: str
    summary: str
    status: str
    assignee: str | None
    url: str


@dataclass(frozen=True)
class SearchResult:
    """Hits in Jira's order. ``total`` is known on Data Center only (Cloud's ``/search/jql``
    has none); ``more`` says whether Jira has hits beyond ``issues``."""

    issues: list[IssueSummary]
    total: int | None
    more: bool


@dataclass(frozen=True)
class JiraIssue:
    """One issue's main fields; ``created`` is Jira's ISO 8601 timestamp text."""

    key: str
    summary: str
    status: str
    issue_type: str
    project: str
    priority: str | None
    assignee: str | None
    reporter: str | None
    labels: list[str]
    description: str | None
    created: str | None
    url: str


@dataclass(frozen=True)
class CreatedIssue:
    key: str
    url: str


@dataclass(frozen=True)
class AddedComment:
    issue_key: str
    comment_id: str
    url: str


@dataclass(frozen=True)
class TransitionResult:
    """``transition`` is the name as Jira spells it; ``status`` the issue's status after it."""

    key: str
    transition: str
    status: str
    url: str


# -- the client -----------------------------------------------------------------------------

class JiraClient:
    """Jira operations for one workspace's credentials.

    ``timeout`` (seconds) bounds each socket operation of an HTTP request to Jira.
    ``resilience`` (shared per process, so circuits outlive clients) retries and breaks
    circuits per (``workspace``, ``"jira"``). ``pool`` (shared per process) runs the blocking
    calls under the workspace's share and each call's overall deadline; ``egress`` checks and
    pins every connection. Built alone, a client trusts its caller's URL (private addresses
    allowed) and has a small pool of its own. All methods raise :class:`JiraError` subclasses,
    or :class:`~integrations.resilience.CircuitOpenError` while Jira's circuit is open.
    """

    def __init__(self, credentials: JiraCredentials, *, resilience: Resilience | None = None,
                 workspace: str = "default", timeout: float = 10.0,
                 pool: IntegrationPool | None = None,
                 egress: EgressPolicy | None = None) -> None:
        self.credentials = credentials
        self.url = credentials.url
        self.workspace = workspace
        self.timeout = timeout
        self._resilience = resilience or Resilience()
        # Alone: three times the socket timeout for each attempt, the retries included.
        self._pool = pool or IntegrationPool(
            INTEGRATION, threads=4, per_workspace=4,
            deadline=3 * timeout * self._resilience.retry.attempts)
        self._egress = egress or EgressPolicy(allow_private=True)
        # What earlier calls learnt, handed to each call's library client: serverInfo's
        # (versionNumbers, deploymentType) and the field list (JQL name → REST id).
        self._server: tuple[tuple[int, ...], str | None] | None = None
        self._fields: dict[str, str] = {}

    # -- plumbing -----------------------------------------------------------------------------

    def _connect(self, get_server_info: bool = True) -> JIRA:
        """A library client whose session connects through the egress policy. With
        ``get_server_info`` it reads ``serverInfo`` (one HTTP request), which tells the library
        Cloud from Data Center."""
        auth: dict[str, Any] = (
            {"basic_auth": (self.credentials.email, self.credentials.api_token)}
            if isinstance(self.credentials, CloudCredentials)
            else {"token_auth": self.credentials.personal_access_token}
        )
        # Built without a request, so the session is pinned before the first one: the library
        # takes no session of ours and its constructor would otherwise read serverInfo itself.
        jira = JIRA(server=self.url, max_retries=0, timeout=self.timeout, logging=False,
                    get_server_info=False, options={"check_update": False}, **auth)
        self._egress.pin(jira._session)
        if not get_server_info:
            return jira
        try:
            info = jira.server_info()
            # What the constructor would have set from the same answer.
            jira._version = tuple(info["versionNumbers"])
            jira.deploymentType = info.get("deploymentType")
            return jira
        except (ValueError, KeyError, TypeError) as exc:
            jira.close()
            raise self._not_jira() from exc
        except JIRAError as exc:
            jira.close()
            raise _unless_not_jira(exc, self._not_jira()) from None
        except BaseException:
            jira.close()
            raise

    def _with_library(self, work: Callable[[JIRA], T]) -> T:
        """Run ``work`` with a library client of its own, closed afterwards.

        One client per call, so every socket a call uses is opened within it and belongs to
        its deadline (a kept-alive connection from an earlier call would not be, and a server
        could trickle its next answer on it). What the library learns once — serverInfo and
        the field list — carries over from call to call; the library has no public way to
        hand them over, hence its private attributes.
        """
        if self._server is None:
            jira = self._connect()
            self._server = (jira._version, jira.deploymentType)
        else:
            jira = self._connect(get_server_info=False)
            jira._version, jira.deploymentType = self._server
        jira._fields_cache_value = self._fields
        try:
            return work(jira)
        finally:
            self._fields = jira._fields_cache_value
            jira.close()

    def _not_jira(self) -> NotJiraError:
        return NotJiraError(f"{self.url} does not look like a Jira site: it has no Jira REST "
                            "API at /rest/api/2/serverInfo. Check the URL.")

    def _translated(self, action: str, work: Callable[[], T]) -> T:
        """Run ``work`` (blocking), turning the library's exceptions into :class:`JiraError`."""
        try:
            return work()
        except JIRAError as exc:
            raise self._from_status(action, exc) from None
        except requests.RequestException as exc:
            raise self._from_transport(exc) from None
        except EgressRefused as exc:
            raise JiraRefused(f"Jira at {self.url} was not contacted: {exc}.") from None
        except (ValueError, RecursionError) as exc:
            # A 2xx body that is not JSON (or nests deeper than the decoder can follow, as a
            # hostile server's may): not Jira's REST API.
            raise self._not_jira() from exc

    async def _in_pool(self, action: str, work: Callable[[], T], *,
                       deadline: float | None = None, overall: float | None = None) -> T:
        """Run blocking ``work`` in the pool, translated; the pool's refusals as JiraErrors.
        ``deadline`` is what is left of the call's ``overall`` deadline (seconds, both), which
        the error names."""
        try:
            return await self._pool.run(self.workspace,
                                        lambda: self._translated(action, work),
                                        deadline=deadline)
        except DeadlineExceeded as exc:
            raise JiraUnavailable(
                f"Jira at {self.url} did not finish within {overall or exc.seconds:g} s, so the "
                "call was stopped.", failure=Failure(transient=True)) from None
        except PoolBusy as exc:
            # Our own limit, not Jira's health: neither retried nor counted against Jira.
            raise JiraUnavailable(
                f"Jira is busy for this workspace: {exc.share} calls to {self.url} are already "
                "running. Try again in a minute.", failure=Failure(caller_fault=True)) from None

    async def _call(self, action: str, work: Callable[[JIRA], T], *,
                    idempotent: bool = True) -> T:
        """``work`` with retries, all of them within the pool's deadline: a server that
        answers each attempt just in time must not hold the workspace's share for every
        attempt's deadline in turn."""
        end = time.monotonic() + self._pool.deadline

        async def attempt() -> T:
            left = end - time.monotonic()
            if left <= 0:
                raise JiraUnavailable(
                    f"Jira at {self.url} did not finish within {self._pool.deadline:g} s, so "
                    "the call was stopped.", failure=Failure(transient=True))
            return await self._in_pool(action, lambda: self._with_library(work), deadline=left,
                                       overall=self._pool.deadline)

        return await self._resilience.call(self.workspace, INTEGRATION, attempt,
                                           classify=classify, idempotent=idempotent,
                                           within=self._pool.deadline)

    def _from_transport(self, exc: requests.RequestException) -> JiraError:
        reason = getattr(exc.args[0], "reason", None) if exc.args else None
        if isinstance(exc, requests.ConnectTimeout):
            return JiraUnavailable(
                f"Jira at {self.url} did not accept a connection within {self.timeout:g} s.",
                failure=Failure(transient=True, unprocessed=True))
        if isinstance(exc, requests.Timeout):
            return JiraUnavailable(f"Jira at {self.url} did not answer within "
                                   f"{self.timeout:g} s.", failure=Failure(transient=True))
        if isinstance(exc, requests.exceptions.InvalidJSONError):
            return self._not_jira()
        if isinstance(exc, requests.exceptions.SSLError):
            return JiraUnavailable(f"The TLS connection to {self.url} failed: check the URL "
                                   "and the server's certificate.")
        if isinstance(exc, requests.ConnectionError):
            if isinstance(reason, NameResolutionError):
                return JiraUnavailable(f"Cannot reach Jira at {self.url}: host name not found.",
                                       failure=Failure(transient=True, unprocessed=True))
            if isinstance(reason, NewConnectionError):
                what = "connection refused" if "refused" in str(reason) else "cannot connect"
                return JiraUnavailable(f"Cannot reach Jira at {self.url}: {what}.",
                                       failure=Failure(transient=True, unprocessed=True))
            return JiraUnavailable(f"The connection to Jira at {self.url} broke off.",
                                   failure=Failure(transient=True))
        return NotJiraError(f"{self.url} is not a usable Jira URL.")

    def _from_status(self, action: str, exc: JIRAError) -> JiraError:
        status = exc.status_code
        reasons = _reasons(exc)
        detail = f": {reasons}" if reasons else "."
        if status == 401:
            what = ("the email and API token" if isinstance(self.credentials, CloudCredentials)
                    else "the personal access token")
            return JiraAuthError(f"Jira rejected the credentials (HTTP 401): check {what}.",
                                 status=status)
        if status == 403:
            return JiraAuthError(f"Jira refused to {action} (HTTP 403){detail}", status=status)
        if status == 429 or status == 503:
            retry_after = _retry_after(exc)
            wait = f"; retry after {retry_after:g} s" if retry_after is not None else ""
            what = "is rate limiting requests" if status == 429 else "is unavailable"
            return JiraUnavailable(f"Jira {what} (HTTP {status}{wait}).", status=status,
                                   failure=Failure(transient=True, retry_after=retry_after,
                                                   unprocessed=True))
        if status is not None and status >= 500:
            return JiraUnavailable(f"Jira failed to {action} (HTTP {status}: server error).",
                                   status=status, failure=Failure(transient=True))
        if status is None:
            return JiraError(f"Jira could not {action}{detail}")
        return JiraRequestError(f"Jira could not {action} (HTTP {status}){detail}",
                                status=status, failure=Failure(caller_fault=True))

    def _browse(self, key: str) -> str:
        return f"{self.url}/browse/{key}"

    # -- operations ---------------------------------------------------------------------------

    async def check(self, deadline: float | None = None) -> ServerCheck:
        """Test the credentials: ``GET serverInfo`` then ``GET myself``.

        One attempt, outside the retry policy and the circuit: it judges credentials before
        they are saved. ``deadline`` (seconds) overrides the pool's. Raises
        :class:`JiraUnavailable` (unreachable, timeout, deadline, 5xx), :class:`JiraRefused`
        (the egress policy refused the address), :class:`NotJiraError` (no Jira REST API at
        the URL) or :class:`JiraAuthError` (401/403).
        """
        def work() -> ServerCheck:
            with closing(self._connect(get_server_info=False)) as jira:
                return read(jira)

        def read(jira: JIRA) -> ServerCheck:
            try:
                info = jira.server_info()
            except JIRAError as exc:
                raise _unless_not_jira(exc, self._not_jira()) from None
            if not isinstance(info, dict) or "versionNumbers" not in info:
                raise self._not_jira()
            me = jira.myself()
            return ServerCheck(
                url=self.url, deployment=str(info.get("deploymentType", "Server")),
                version=str(info.get("version", "")),
                server_title=str(info.get("serverTitle", "Jira")),
                user=str(me.get("displayName") or me.get("name") or me.get("accountId")),
                user_email=me.get("emailAddress"),
            )

        return await self._in_pool("read the server information", work, deadline=deadline)

    async def search(self, jql: str, limit: int = 20) -> SearchResult:
        """Issues matching ``jql``, at most ``limit`` (1–100), in Jira's order."""
        if not jql.strip():
            raise JiraRequestError("The JQL query is empty.", failure=Failure(caller_fault=True))
        limit = max(1, min(limit, 100))

        def work(jira: JIRA) -> dict[str, Any]:
            return jira.search_issues(jql, maxResults=limit, json_result=True,
                                      fields=["summary", "status", "assignee"])

        page = await self._call("run the JQL search", work)
        issues = [
            IssueSummary(
                key=raw["key"],
                summary=raw["fields"].get("summary") or "",
                status=(raw["fields"].get("status") or {}).get("name", ""),
                assignee=_display_name(raw["fields"].get("assignee")),
                url=self._browse(raw["key"]),
            )
            for raw in page.get("issues", [])[:limit]
        ]
        total = page.get("total")
        more = (total > len(issues)) if total is not None else not page.get("isLast", True)
        return SearchResult(issues=issues, total=total, more=more)

    async def get_issue(self, key: str) -> JiraIssue:
        """One issue by key (``OPS-12``); :class:`JiraRequestError` (404) when it does not
        exist or the user may not see it."""
        key = key.strip().upper()

        def work(jira: JIRA) -> dict[str, Any]:
            return jira.issue(key, fields="summary,status,issuetype,project,priority,assignee,"
                                          "reporter,labels,description,created").raw

        raw = await self._call(f"get {key}", work)
        f = raw["fields"]
        return JiraIssue(
            key=raw["key"], summary=f.get("summary") or "",
            status=(f.get("status") or {}).get("name", ""),
            issue_type=(f.get("issuetype") or {}).get("name", ""),
            project=(f.get("project") or {}).get("key", ""),
            priority=(f.get("priority") or {}).get("name"),
            assignee=_display_name(f.get("assignee")),
            reporter=_display_name(f.get("reporter")),
            labels=list(f.get("labels") or []), description=f.get("description"),
            created=f.get("created"), url=self._browse(raw["key"]),
        )

    async def create_issue(self, project: str, issue_type: str, summary: str,
                           description: str | None = None, priority: str | None = None,
                           labels: Sequence[str] = ()) -> CreatedIssue:
        """``POST /rest/api/2/issue``: project by key, issue type and priority by name.

        Sent at most once unless Jira certainly did not act on it (connection refused, 429,
        503): a retried create could open a duplicate ticket. :class:`JiraRequestError` (400)
        carries Jira's per-field reasons.
        """
        fields: dict[str, Any] = {
            "project": {"key": project.strip().upper()},
            "issuetype": {"name": issue_type},
            "summary": summary,
        }
        if description:
            fields["description"] = description
        if priority:
            fields["priority"] = {"name": priority}
        if labels:
            fields["labels"] = list(labels)

        def work(jira: JIRA) -> str:
            # prefetch=False: no GET after the POST, whose failure would hide a created issue.
            return jira.create_issue(fields=fields, prefetch=False).key

        key = await self._call(f"create the issue in {fields['project']['key']}", work,
                               idempotent=False)
        return CreatedIssue(key=key, url=self._browse(key))

    async def add_comment(self, key: str, body: str) -> AddedComment:
        """``POST /rest/api/2/issue/{key}/comment`` with ``body`` (wiki text); sent at most
        once, like :meth:`create_issue`."""
        key = key.strip().upper()

        def work(jira: JIRA) -> str:
            return jira.add_comment(key, body).id

        comment_id = await self._call(f"comment on {key}", work, idempotent=False)
        return AddedComment(issue_key=key, comment_id=comment_id,
                            url=f"{self._browse(key)}?focusedCommentId={comment_id}")

    async def transition_issue(self, key: str, transition_name: str) -> TransitionResult:
        """Move the issue through the transition named ``transition_name`` (case-insensitive).

        ``GET …/transitions`` then ``POST …/transitions`` ``{"transition": {"id": …}}``.
        Raises :class:`TransitionNotFound`, listing the valid names, when none matches.
        """
        key = key.strip().upper()
        available = await self._call(f"list the transitions of {key}",
                                     lambda jira: jira.transitions(key))
        wanted = transition_name.strip().casefold()
        match = next((t for t in available if t["name"].casefold() == wanted), None)
        if match is None:
            raise TransitionNotFound(key, transition_name, [t["name"] for t in available])

        def work(jira: JIRA) -> None:
            jira.transition_issue(key, str(match["id"]))

        await self._call(f"move {key} to '{match['name']}'", work, idempotent=False)
        return TransitionResult(key=key, transition=match["name"],
                                status=(match.get("to") or {}).get("name", match["name"]),
                                url=self._browse(key))


# -- helpers --------------------------------------------------------------------------------

def _unless_not_jira(exc: JIRAError, not_jira: NotJiraError) -> Exception:
    """What a failed ``serverInfo`` means: Jira's answer when it is auth (401, 403), rate
    limiting or a server error; otherwise (404, 410 …) the URL is not a Jira site."""
    status = exc.status_code or 0
    return exc if status in (401, 403) or status >= 429 else not_jira


def _display_name(user: dict[str, Any] | None) -> str | None:
    if not user:
        return None
    return user.get("displayName") or user.get("name") or user.get("accountId")


def _reasons(exc: JIRAError) -> str:
    """Jira's ``errorMessages`` and ``errors`` (``field: reason``), without headers.

    Only from Jira's JSON error shape: any other body is never repeated (a URL or a redirect
    may lead to a server that is not Jira, whose page is none of the user's business); then
    only the kind of answer is named."""
    response = exc.response
    try:
        body = response.json() if response is not None else None
    except ValueError:
        body = None
    if isinstance(body, dict):
        messages = [str(m) for m in body.get("errorMessages") or []]
        errors = body.get("errors")
        if isinstance(errors, dict):
            messages += [f"{name}: {reason}" for name, reason in errors.items()]
        if messages:
            return "; ".join(messages)[:300]
    if response is None or not response.content:
        return ""
    kind = response.headers.get("Content-Type", "").split(";")[0].strip() or "untyped"
    return f"the answer was not Jira's JSON ({kind}, {len(response.content)} bytes)"


def _retry_after(exc: JIRAError) -> float | None:
    """``Retry-After`` in seconds: delay-seconds or an HTTP-date (RFC 9110 §10.2.3)."""
    value = exc.response.headers.get("Retry-After") if exc.response is not None else None
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError):
        return None
