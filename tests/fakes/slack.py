"""A fake Slack: Web API, Socket Mode and response_url over real HTTP and WebSocket.

It speaks the wire format of contracts.md and ../shared/slack/samples: clients are pointed at
it with their normal settings (``SLACK_API_URL`` = :attr:`FakeSlack.api_url`).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import WSMsgType, web

APP_ID = "A0JAMONO"


@dataclass
class Call:
    """One Web API request as the fake received it; ``at`` is ``time.monotonic()``;
    ``response`` is the JSON the fake answered (``None`` until answered)."""

    method: str
    params: dict[str, Any]
    token: str | None
    headers: dict[str, str]
    at: float
    response: dict[str, Any] | None = None

    @property
    def blocks(self) -> list[dict[str, Any]]:
        """The ``blocks`` argument, decoded (slack_sdk sends it as JSON text in forms)."""
        return _json_field(self.params.get("blocks") or [])


@dataclass
class UploadedFile:
    """A file shared through files upload v2: its bytes and where it was shared."""

    id: str
    filename: str
    title: str
    content: bytes
    channel_id: str | None = None
    thread_ts: str | None = None
    initial_comment: str | None = None


@dataclass
class Workspace:
    team_id: str
    bot_token: str
    bot_user_id: str
    team_name: str
    enterprise_id: str | None = None
    users: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class SocketConnection:
    ws: web.WebSocketResponse
    acks: dict[str, tuple[dict[str, Any], float]] = field(default_factory=dict)


class FakeSlack:
    """Start with ``async with FakeSlack() as slack`` (or ``await start()`` / ``stop()``)."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        # Called with each Web API call as it arrives (before it is answered); cheaper than
        # wait_for when a benchmark follows thousands of calls.
        self.observers: list[Callable[[Call], None]] = []
        self.responses: list[tuple[str, dict[str, Any]]] = []  # (response_url id, JSON body)
        self.url = ""
        self._workspaces: dict[str, Workspace] = {}
        self._app_tokens: set[str] = set()
        self._oauth_app: tuple[str, str] | None = None
        self._oauth_codes: dict[str, dict[str, Any]] = {}
        self._ts = itertools.count(1)
        self._faults: dict[str, list[tuple[int, int]]] = defaultdict(list)
        self._delays: dict[str, float] = {}
        self._limits: dict[str, tuple[float, str]] = {}
        self._last_post: dict[tuple[str, str], float] = {}
        self._sockets: list[SocketConnection] = []
        self._sent_at: dict[str, float] = {}
        self._channels: dict[str, dict[str, bool]] = {}
        self._inactive: set[str] = set()
        self._refresh_tokens: dict[str, str] = {}  # refresh token → team_id
        self._rotations = itertools.count(1)
        self.views: list[dict[str, Any]] = []
        self.posted: list[dict[str, Any]] = []  # accepted chat.postMessage: channel, ts, text, at
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.files: dict[str, UploadedFile] = {}  # shared by files.completeUploadExternal
        self._pending_uploads: dict[str, dict[str, Any]] = {}
        self._trigger_ids: set[str] = set()
        self.views: list[dict[str, Any]] = []  # views opened by views.open

    # Lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> FakeSlack:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/api/{method}", self._web_api)  # Slack takes GET and POST
        app.router.add_get("/socket-mode/{id}", self._socket)
        app.router.add_post("/response/{id}", self._response_url)
        app.router.add_post("/upload/{id}", self._upload)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        for connection in self._sockets:
            await connection.ws.close()
        if self._runner:
            await self._runner.cleanup()

    @property
    def api_url(self) -> str:
        return self.url + "/api/"

    # Set-up ------------------------------------------------------------------------------

    def add_workspace(
        self, team_id: str, bot_token: str, bot_user_id: str = "U0NOX", team_name: str = "",
        enterprise_id: str | None = None,
    ) -> Workspace:
        workspace = Workspace(team_id, bot_token, bot_user_id, team_name or team_id, enterprise_id)
        self._workspaces[bot_token] = workspace
        return workspace

    def add_user(
        self, team_id: str, user_id: str, name: str, email: str | None = None,
        tz: str = "Europe/Paris", is_admin: bool = False, is_owner: bool = False,
        is_bot: bool = False,
    ) -> None:
        workspace = next(w for w in self._workspaces.values() if w.team_id == team_id)
        workspace.users[user_id] = {
            "id": user_id, "team_id": team_id, "name": name, "real_name": name, "tz": tz,
            "tz_offset": 3600, "is_admin": is_admin, "is_owner": is_owner,
            "is_primary_owner": False, "is_bot": is_bot, "deleted": False,
            "profile": {"email": email, "real_name": name, "display_name": name},
        }

    def add_app_token(self, token: str) -> None:
        self._app_tokens.add(token)

    def set_oauth_app(self, client_id: str, client_secret: str) -> None:
        self._oauth_app = (client_id, client_secret)

    def register_oauth_code(
        self, code: str, team_id: str, bot_token: str, bot_user_id: str = "U0NOX",
        team_name: str = "", installer: str = "U0ADMIN",
    ) -> None:
        """``code`` becomes valid once at ``oauth.v2.access``; it installs that workspace."""
        self._oauth_codes[code] = {
            "team_id": team_id, "bot_token": bot_token, "bot_user_id": bot_user_id,
            "team_name": team_name or team_id, "installer": installer,
        }

    def set_channel(
        self, channel_id: str, *, exists: bool = True, is_member: bool = True,
        is_archived: bool = False, name: str | None = None, is_private: bool = False,
        members: list[str] | None = None, user: str | None = None,
    ) -> None:
        """How ``channel_id`` looks to the bot; unknown channels exist and have the bot in.

        ``name`` (default: the id in lower case) is what ``conversations.list`` finds;
        ``members`` are the people in it (default: every user of the workspace); a ``D…``
        direct message is the bot's with ``user``. A private channel the bot is not in is
        invisible to it, as in Slack (``channel_not_found``, not listed).
        """
        self._channels[channel_id] = {
            "exists": exists, "is_member": is_member, "is_archived": is_archived,
            "name": name or channel_id.lower(), "is_private": is_private, "members": members,
            "user": user,
        }

    def deactivate(self, team_id: str) -> None:
        """Every call with the workspace's token now fails with ``account_inactive``."""
        self._inactive.add(team_id)

    def enable_token_rotation(self, team_id: str, refresh_token: str) -> None:
        """``oauth.v2.access`` with ``grant_type=refresh_token`` and this token issues a new
        bot token for the workspace (``expires_in`` 43,200 s); the old one stops working."""
        self._refresh_tokens[refresh_token] = team_id

    def fail_next(self, method: str, status: int = 500, retry_after: int = 1, times: int = 1):
        self._faults[method].extend([(status, retry_after)] * times)

    def delay(self, method: str, seconds: float) -> None:
        self._delays[method] = seconds

    def rate_limit(self, method: str, per_seconds: float, scope: str = "channel") -> None:
        """At most one ``method`` call per ``per_seconds`` per channel (or workspace): else 429."""
        self._limits[method] = (per_seconds, scope)

    # Observations ------------------------------------------------------------------------

    def calls_to(self, method: str) -> list[Call]:
        return [call for call in self.calls if call.method == method]

    async def wait_for(self, method: str, predicate=None, count: int = 1, timeout: float = 10.0,
                       answered: bool = False):
        """The first ``count`` calls to ``method`` matching ``predicate(params)``.

        A call counts once received; with ``answered``, once the fake has also handled it
        (``call.response`` set, e.g. the view ``views.open`` stored).
        """
        def matching() -> list[Call]:
            return [c for c in self.calls_to(method)
                    if (predicate is None or predicate(c.params))
                    and (not answered or c.response is not None)]

        try:
            async with self._changed:
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: len(matching()) >= count), timeout
                )
        except TimeoutError:
            seen = "\n".join(f"  {c.method} {json.dumps(c.params)[:300]}" for c in self.calls)
            raise AssertionError(
                f"expected {count} {method} call(s) within {timeout} s; got:\n{seen or '  none'}"
            ) from None
        return matching()[:count]

    async def wait_for_response(self, predicate=None, timeout: float = 10.0) -> dict[str, Any]:
        def found():
            return next((b for _, b in self.responses if predicate is None or predicate(b)), None)

        try:
            async with self._changed:
                await asyncio.wait_for(self._changed.wait_for(lambda: found() is not None),
                                       timeout)
        except TimeoutError:
            raise AssertionError(f"no response_url post matched; got {self.responses}") from None
        return found()

    def new_response_url(self) -> str:
        return f"{self.url}/response/{uuid.uuid4().hex}"

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # Web API -----------------------------------------------------------------------------

    async def _web_api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        params = await _params(request)
        token = _bearer(request) or params.pop("token", None)
        call = Call(method, params, token, dict(request.headers), time.monotonic())
        self.calls.append(call)
        for observer in self.observers:
            observer(call)
        await self._notify()
        if method in self._delays:
            await asyncio.sleep(self._delays[method])
        if self._faults[method]:
            status, retry_after = self._faults[method].pop(0)
            return _error_status(status, retry_after)
        if method == "apps.connections.open":
            return self._connections_open(token)
        if method == "oauth.v2.access":
            return self._oauth_access(request, params)
        workspace = self._workspaces.get(token or "")
        if token is None:
            return web.json_response({"ok": False, "error": "not_authed"})
        if workspace is None:
            return web.json_response({"ok": False, "error": "invalid_auth"})
        if workspace.team_id in self._inactive:
            return web.json_response({"ok": False, "error": "account_inactive"})
        limited = self._rate_limited(method, workspace, params)
        if limited:
            return limited
        handler = getattr(self, "_m_" + method.replace(".", "_"), None)
        if handler is None:
            return web.json_response({"ok": False, "error": "unknown_method"})
        call.response = handler(workspace, params)
        await self._notify()  # for wait_for(answered=True)
        return web.json_response(call.response)

    def _rate_limited(self, method, workspace, params) -> web.Response | None:
        if method not in self._limits:
            return None
        per_seconds, scope = self._limits[method]
        key = (workspace.team_id, params.get("channel", "") if scope == "channel" else "")
        now = time.monotonic()
        last = self._last_post.get(key)
        if last is not None and now - last < per_seconds:
            return _error_status(429, max(1, round(per_seconds - (now - last))))
        self._last_post[key] = now
        return None

    def _next_ts(self) -> str:
        return f"{1_700_000_000 + next(self._ts)}.000100"

    def _m_auth_test(self, w: Workspace, _: dict) -> dict:
        return {
            "ok": True, "url": f"https://{w.team_name.lower()}.slack.com/", "team": w.team_name,
            "user": "nox", "team_id": w.team_id, "user_id": w.bot_user_id, "bot_id": "B0NOX",
            "enterprise_id": w.enterprise_id, "is_enterprise_install": False,
        }

    def _message(self, w: Workspace, params: dict, ts: str) -> dict:
        message = {"type": "message", "ts": ts, "user": w.bot_user_id, "bot_id": "B0NOX",
                   "text": params.get("text", ""), "app_id": APP_ID}
        if params.get("blocks"):
            message["blocks"] = _json_field(params["blocks"])
        if params.get("thread_ts"):
            message["thread_ts"] = params["thread_ts"]
        return message

    def _m_chat_postMessage(self, w: Workspace, params: dict) -> dict:
        if not params.get("channel"):
            return {"ok": False, "error": "channel_not_found"}
        if not params.get("text") and not params.get("blocks"):
            return {"ok": False, "error": "no_text"}
        state = self._channels.get(params["channel"], {})
        if not state.get("exists", True):
            return {"ok": False, "error": "channel_not_found"}
        if state.get("is_archived"):
            return {"ok": False, "error": "is_archived"}
        if not state.get("is_member", True):
            return {"ok": False, "error": "not_in_channel"}
        ts = self._next_ts()
        self.posted.append({"channel": params["channel"], "ts": ts,
                            "text": params.get("text", ""), "at": time.time()})
        return {"ok": True, "channel": params["channel"], "ts": ts,
                "message": self._message(w, params, ts)}

    def _m_chat_update(self, w: Workspace, params: dict) -> dict:
        return {"ok": True, "channel": params.get("channel"), "ts": params.get("ts"),
                "text": params.get("text", ""), "message": self._message(w, params, params["ts"])}

    def _m_chat_postEphemeral(self, w: Workspace, params: dict) -> dict:
        if not params.get("channel") or not params.get("user"):
            return {"ok": False, "error": "channel_not_found" if params.get("user")
                    else "user_not_in_channel"}
        return {"ok": True, "message_ts": self._next_ts()}

    def _m_chat_delete(self, w: Workspace, params: dict) -> dict:
        return {"ok": True, "channel": params.get("channel"), "ts": params.get("ts")}

    def _m_reactions_add(self, w: Workspace, params: dict) -> dict:
        return {"ok": True}

    _m_reactions_remove = _m_reactions_add

    def _m_views_publish(self, w: Workspace, params: dict) -> dict:
        return {"ok": True, "view": {"id": "V0HOME", **_json_field(params.get("view", "{}"))}}

    def _m_users_info(self, w: Workspace, params: dict) -> dict:
        user = w.users.get(params.get("user", ""))
        return {"ok": True, "user": user} if user else {"ok": False, "error": "user_not_found"}

    def _visible(self, channel: str) -> dict | None:
        """The channel's state when the bot can see it (as conversations.* do), else None."""
        state = self._channels.get(channel, {})
        hidden = state.get("is_private") and not state.get("is_member", True)
        return None if not state.get("exists", True) or hidden else state

    def _conversation(self, channel: str, state: dict) -> dict:
        is_im = channel.startswith("D")
        conversation = {
            "id": channel, "name": "" if is_im else state.get("name") or channel.lower(),
            "is_channel": channel.startswith("C") and not state.get("is_private", False),
            "is_group": state.get("is_private", False), "is_im": is_im, "is_mpim": False,
            "is_private": state.get("is_private", False) or is_im,
            "is_member": state.get("is_member", True),
            "is_archived": state.get("is_archived", False), "created": 1_700_000_000,
            "creator": "U0ADMIN", "is_general": False, "is_shared": False,
            "is_ext_shared": False, "is_org_shared": False, "context_team_id": None,
        }
        conversation["name_normalized"] = conversation["name"]
        if is_im:
            conversation["user"] = state.get("user")
        return conversation

    def _m_conversations_info(self, w: Workspace, params: dict) -> dict:
        channel = params.get("channel", "")
        state = self._visible(channel)
        if state is None:
            return {"ok": False, "error": "channel_not_found"}
        conversation = self._conversation(channel, state)
        conversation["context_team_id"] = w.team_id
        return {"ok": True, "channel": conversation}

    def _m_conversations_list(self, w: Workspace, params: dict) -> dict:
        """Channels set with :meth:`set_channel` that the bot can see, in pages of ``limit``
        (``response_metadata.next_cursor``, empty on the last page)."""
        types = set((params.get("types") or "public_channel").split(","))
        archived_too = str(params.get("exclude_archived", "false")).lower() not in ("1", "true")
        found = []
        for channel in sorted(self._channels):
            state = self._visible(channel)
            if state is None or (state.get("is_archived") and not archived_too):
                continue
            kind = ("im" if channel.startswith("D") else
                    "private_channel" if state.get("is_private") else "public_channel")
            if kind in types:
                conversation = self._conversation(channel, state)
                conversation["context_team_id"] = w.team_id
                found.append(conversation)
        return {"ok": True, **_page(found, params, "channels")}

    def _m_conversations_members(self, w: Workspace, params: dict) -> dict:
        """The user ids in a conversation the bot can see, paged like conversations.list."""
        channel = params.get("channel", "")
        state = self._visible(channel)
        if state is None:
            return {"ok": False, "error": "channel_not_found"}
        if channel.startswith("D"):
            members = [w.bot_user_id, state.get("user")]
        elif state.get("members") is not None:
            members = list(state["members"])
        else:
            members = [*w.users, w.bot_user_id]
        return {"ok": True, **_page([m for m in members if m], params, "members")}

    def _m_views_open(self, w: Workspace, params: dict) -> dict:
        trigger_id = params.get("trigger_id", "")
        if trigger_id not in self._trigger_ids:
            return {"ok": False, "error": "invalid_trigger_id"}
        self._trigger_ids.discard(trigger_id)  # a trigger_id opens one view
        view = _json_field(params.get("view", "{}"))
        if view.get("type") != "modal" or not view.get("title") or not view.get("blocks"):
            return {"ok": False, "error": "invalid_arguments"}
        opened = {"id": "V" + uuid.uuid4().hex[:10].upper(), "team_id": w.team_id,
                  "app_id": APP_ID, "state": {"values": {}}, "hash": uuid.uuid4().hex, **view}
        self.views.append(opened)
        return {"ok": True, "view": opened}

    def _m_files_getUploadURLExternal(self, w: Workspace, params: dict) -> dict:
        filename, length = params.get("filename"), str(params.get("length", ""))
        if not filename or not length.isdigit() or int(length) <= 0:
            return {"ok": False, "error": "invalid_arguments"}
        file_id = "F" + uuid.uuid4().hex[:10].upper()
        self._pending_uploads[file_id] = {"filename": filename, "length": int(length),
                                          "team_id": w.team_id, "content": None}
        return {"ok": True, "upload_url": f"{self.url}/upload/{file_id}", "file_id": file_id}

    def _m_files_completeUploadExternal(self, w: Workspace, params: dict) -> dict:
        files = _json_field(params.get("files", "[]"))
        channel, thread_ts = params.get("channel_id") or None, params.get("thread_ts") or None
        if thread_ts and not channel:
            return {"ok": False, "error": "invalid_arguments"}
        if not files:
            return {"ok": False, "error": "invalid_arguments"}
        for f in files:
            pending = self._pending_uploads.get(f.get("id", ""))
            if pending is None or pending["team_id"] != w.team_id or pending["content"] is None:
                return {"ok": False, "error": "file_not_found"}
        shared = []
        for f in files:
            pending = self._pending_uploads.pop(f["id"])
            upload = UploadedFile(f["id"], pending["filename"], f.get("title") or
                                  pending["filename"], pending["content"], channel, thread_ts,
                                  params.get("initial_comment") or None)
            self.files[upload.id] = upload
            shared.append({"id": upload.id, "name": upload.filename, "title": upload.title,
                           "size": len(upload.content), "user": w.bot_user_id,
                           "user_team": w.team_id, "mimetype": "text/calendar",
                           "created": int(time.time()), "timestamp": int(time.time())})
        return {"ok": True, "files": shared}

    def _connections_open(self, token: str | None) -> web.Response:
        if token not in self._app_tokens:
            return web.json_response({"ok": False, "error": "invalid_auth"})
        return web.json_response(
            {"ok": True, "url": f"ws://127.0.0.1:{self.url.rsplit(':', 1)[1]}/socket-mode/"
                                f"{uuid.uuid4().hex}"}
        )

    def _oauth_access(self, request: web.Request, params: dict) -> web.Response:
        client = _basic(request) or (params.get("client_id"), params.get("client_secret"))
        if self._oauth_app is None or tuple(client) != self._oauth_app:
            return web.json_response({"ok": False, "error": "invalid_client_id"})
        if params.get("grant_type") == "refresh_token":
            return self._refresh(params.get("refresh_token", ""))
        grant = self._oauth_codes.pop(params.get("code", ""), None)
        if grant is None:
            return web.json_response({"ok": False, "error": "invalid_code"})
        workspace = self.add_workspace(grant["team_id"], grant["bot_token"], grant["bot_user_id"],
                                       grant["team_name"])
        return web.json_response({
            "ok": True, "app_id": APP_ID, "authed_user": {"id": grant["installer"]},
            "scope": "app_mentions:read,chat:write,commands", "token_type": "bot",
            "access_token": workspace.bot_token, "bot_user_id": workspace.bot_user_id,
            "team": {"id": workspace.team_id, "name": workspace.team_name},
            "enterprise": None, "is_enterprise_install": False,
        })

    def _refresh(self, refresh_token: str) -> web.Response:
        team_id = self._refresh_tokens.pop(refresh_token, None)
        if team_id is None:
            return web.json_response({"ok": False, "error": "invalid_refresh_token"})
        old_token, workspace = next(
            (t, w) for t, w in self._workspaces.items() if w.team_id == team_id
        )
        rotation = next(self._rotations)
        workspace.bot_token = f"xoxe.xoxb-{team_id.lower()}-{rotation}"
        new_refresh = f"xoxe-1-{team_id.lower()}-{rotation}"
        del self._workspaces[old_token]
        self._workspaces[workspace.bot_token] = workspace
        self._refresh_tokens[new_refresh] = team_id
        return web.json_response({
            "ok": True, "app_id": APP_ID, "token_type": "bot", "scope": "chat:write,commands",
            "access_token": workspace.bot_token, "refresh_token": new_refresh,
            "expires_in": 43200, "bot_user_id": workspace.bot_user_id,
            "team": {"id": team_id, "name": workspace.team_name}, "enterprise": None,
            "is_enterprise_install": False,
        })

    async def _upload(self, request: web.Request) -> web.Response:
        """The upload URL from files.getUploadURLExternal: the bytes, of the announced length."""
        pending = self._pending_uploads.get(request.match_info["id"])
        body = await request.read()
        if pending is None:
            return web.Response(status=404, text="upload_url not found")
        if len(body) != pending["length"]:
            return web.Response(status=400, text="length mismatch")
        pending["content"] = body
        await self._notify()
        return web.Response(text=f"OK - {len(body)}")

    async def _response_url(self, request: web.Request) -> web.Response:
        self.responses.append((request.match_info["id"], await request.json()))
        await self._notify()
        return web.Response(text="ok")

    # Socket Mode -------------------------------------------------------------------------

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        connection = SocketConnection(ws)
        self._sockets.append(connection)
        await ws.send_json({
            "type": "hello", "num_connections": 1,
            "debug_info": {"host": "fake-slack", "approximate_connection_time": 3600},
            "connection_info": {"app_id": APP_ID},
        })
        await self._notify()
        async for message in ws:
            if message.type != WSMsgType.TEXT:
                continue
            ack = json.loads(message.data)
            envelope_id = ack.get("envelope_id")
            if envelope_id:
                connection.acks[envelope_id] = (ack, time.monotonic())
                await self._notify()
        return ws

    @property
    def socket_connection_count(self) -> int:
        return len(self._sockets)

    def _current_socket(self) -> SocketConnection:
        live = [c for c in self._sockets if not c.ws.closed]
        if not live:
            raise AssertionError("no Socket Mode connection is open")
        return live[-1]

    async def socket_send_envelope(
        self, type: str, payload: dict[str, Any], retry_attempt: int = 0,
        retry_reason: str = "", accepts_response_payload: bool = False,
    ) -> str:
        envelope_id = str(uuid.uuid4())
        self._sent_at[envelope_id] = time.monotonic()
        await self._current_socket().ws.send_json({
            "envelope_id": envelope_id, "type": type, "payload": payload,
            "accepts_response_payload": accepts_response_payload,
            "retry_attempt": retry_attempt, "retry_reason": retry_reason,
        })
        return envelope_id

    async def wait_for_ack(self, envelope_id: str, timeout: float = 5.0):
        """``(ack JSON, seconds from sending the envelope to receiving its ack)``."""
        def ack():
            return next((c.acks[envelope_id] for c in self._sockets if envelope_id in c.acks),
                        None)

        try:
            async with self._changed:
                await asyncio.wait_for(self._changed.wait_for(lambda: ack() is not None), timeout)
        except TimeoutError:
            raise AssertionError(f"no ack for envelope {envelope_id}") from None
        body, at = ack()
        return body, at - self._sent_at[envelope_id]

    async def socket_disconnect(self, reason: str = "refresh_requested") -> None:
        connection = self._current_socket()
        await connection.ws.send_json({"type": "disconnect", "reason": reason,
                                       "debug_info": {"host": "fake-slack"}})
        await asyncio.sleep(0.2)
        await connection.ws.close()

    async def wait_for_socket_connections(self, count: int, timeout: float = 10.0) -> None:
        try:
            async with self._changed:
                await asyncio.wait_for(
                    self._changed.wait_for(
                        lambda: sum(not c.ws.closed for c in self._sockets) >= 1
                        and len(self._sockets) >= count
                    ),
                    timeout,
                )
        except TimeoutError:
            raise AssertionError(
                f"expected {count} Socket Mode connections, saw {len(self._sockets)}"
            ) from None

    # Payload builders --------------------------------------------------------------------

    def new_ts(self) -> str:
        return self._next_ts()

    def event_callback(
        self, team_id: str, event: dict[str, Any], event_id: str | None = None,
    ) -> dict[str, Any]:
        """The Events API body Slack POSTs for ``event``."""
        workspace = next(w for w in self._workspaces.values() if w.team_id == team_id)
        return {
            "token": "verification-token-unused", "team_id": team_id,
            "enterprise_id": workspace.enterprise_id, "api_app_id": APP_ID,
            "event": event, "type": "event_callback",
            "event_id": event_id or "Ev" + uuid.uuid4().hex[:10].upper(),
            "event_time": int(time.time()), "event_context": "4-" + uuid.uuid4().hex,
            "is_ext_shared_channel": False,
            "authorizations": [{
                "enterprise_id": workspace.enterprise_id, "team_id": team_id,
                "user_id": workspace.bot_user_id, "is_bot": True, "is_enterprise_install": False,
            }],
        }

    def app_mention_event(
        self, user: str, channel: str, text: str, ts: str | None = None,
        thread_ts: str | None = None,
    ) -> dict[str, Any]:
        event = {"type": "app_mention", "user": user, "text": text, "ts": ts or self.new_ts(),
                 "channel": channel, "event_ts": "", "client_msg_id": str(uuid.uuid4())}
        event["event_ts"] = event["ts"]
        if thread_ts:
            event["thread_ts"] = thread_ts
        return event

    def message_event(
        self, user: str | None, channel: str, text: str, channel_type: str = "im",
        ts: str | None = None, thread_ts: str | None = None, subtype: str | None = None,
        bot_id: str | None = None,
    ) -> dict[str, Any]:
        event: dict[str, Any] = {"type": "message", "channel": channel, "text": text,
                                 "ts": ts or self.new_ts(), "channel_type": channel_type}
        event["event_ts"] = event["ts"]
        if user:
            event["user"] = user
        for key, value in (("thread_ts", thread_ts), ("subtype", subtype), ("bot_id", bot_id)):
            if value:
                event[key] = value
        return event

    def slash_command_payload(
        self, team_id: str, user_id: str, channel_id: str, command: str, text: str = "",
    ) -> dict[str, str]:
        """The form fields Slack POSTs for a slash command."""
        return {
            "token": "verification-token-unused", "team_id": team_id, "team_domain": "acme",
            "channel_id": channel_id, "channel_name": channel_id.lower(), "user_id": user_id,
            "user_name": user_id.lower(), "command": command, "text": text,
            "api_app_id": APP_ID, "is_enterprise_install": "false",
            "response_url": self.new_response_url(),
            "trigger_id": self.new_trigger_id(),
        }

    def new_trigger_id(self) -> str:
        """A trigger_id views.open accepts once."""
        trigger_id = f"{uuid.uuid4().int % 10**13}.{uuid.uuid4().hex[:8]}"
        self._trigger_ids.add(trigger_id)
        return trigger_id

    def view_submission_payload(
        self, team_id: str, user_id: str, view: dict[str, Any], values: dict[str, Any],
    ) -> dict[str, Any]:
        """The interactivity payload Slack POSTs when ``user_id`` submits the opened ``view``.

        ``values`` maps each input block's block_id to the text typed into its plain-text
        input (``None`` for left empty), or, for other elements, to their state as Slack
        sends it (``{"selected_conversation": "C1"}``, ``{"selected_options": [...]}`` …).
        """
        state: dict[str, dict[str, Any]] = {}
        for block in view.get("blocks", []):
            if block.get("type") != "input":
                continue
            element = block["element"]
            value = values.get(block["block_id"])
            chosen = value if isinstance(value, dict) else {"value": value}
            state[block["block_id"]] = {element["action_id"]: {"type": element["type"], **chosen}}
        return {
            "type": "view_submission", "team": {"id": team_id, "domain": "acme"},
            "user": {"id": user_id, "username": user_id.lower(), "name": user_id.lower(),
                     "team_id": team_id},
            "api_app_id": APP_ID, "token": "verification-token-unused",
            "trigger_id": self.new_trigger_id(),
            "view": {**view, "state": {"values": state}, "root_view_id": view.get("id"),
                     "previous_view_id": None},
            "enterprise": None, "is_enterprise_install": False, "response_urls": [],
        }


    def block_actions_payload(
        self, team_id: str, user_id: str, message: Call, action_id: str, value: str,
    ) -> dict[str, str]:
        """The form Slack POSTs when ``user_id`` clicks a button of the message that
        ``message`` (a ``chat.postMessage`` call) posted: ``payload=<block_actions JSON>``."""
        workspace = next(w for w in self._workspaces.values() if w.team_id == team_id)
        assert message.response is not None, "the message was not posted"
        channel, ts = message.response["channel"], message.response["ts"]
        posted = message.response["message"]
        block_id = next((b.get("block_id", "") for b in posted.get("blocks", [])
                         if any(e.get("action_id") == action_id
                                for e in b.get("elements", []))), "")
        payload = {
            "type": "block_actions", "token": "verification-token-unused",
            "api_app_id": APP_ID, "is_enterprise_install": False,
            "enterprise": None if workspace.enterprise_id is None
            else {"id": workspace.enterprise_id, "name": workspace.enterprise_id},
            "team": {"id": team_id, "domain": workspace.team_name.lower()},
            "user": {"id": user_id, "username": user_id.lower(), "name": user_id.lower(),
                     "team_id": team_id},
            "container": {"type": "message", "message_ts": ts, "channel_id": channel,
                          "is_ephemeral": False, "thread_ts": posted.get("thread_ts", "")},
            "trigger_id": f"{uuid.uuid4().int % 10**13}.{uuid.uuid4().hex[:8]}",
            "channel": {"id": channel, "name": channel.lower()},
            "message": posted, "state": {"values": {}},
            "response_url": self.new_response_url(),
            "actions": [{
                "type": "button", "action_id": action_id, "block_id": block_id,
                "text": {"type": "plain_text", "text": action_id, "emoji": True},
                "value": value, "action_ts": f"{time.time():.6f}",
            }],
        }
        return {"payload": json.dumps(payload)}


async def _params(request: web.Request) -> dict[str, Any]:
    """Arguments from the query string (slack_sdk's ``params=``) and the JSON or form body."""
    params: dict[str, Any] = dict(request.query)
    if request.content_type == "application/json":
        params.update(await request.json())
    else:
        params.update(parse_qsl((await request.read()).decode(), keep_blank_values=True))
    return params


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    return header.removeprefix("Bearer ").strip() or None if header.startswith("Bearer ") else None


def _basic(request: web.Request) -> tuple[str, str] | None:
    header = request.headers.get("Authorization", "")
    if not header.startswith("Basic "):
        return None
    user, _, password = base64.b64decode(header[6:]).decode().partition(":")
    return user, password


def _page(items: list[Any], params: dict, key: str) -> dict[str, Any]:
    """One page of ``items`` as Slack's cursor pagination gives it
    (https://api.slack.com/docs/pagination): opaque ``next_cursor``, empty at the end."""
    cursor = params.get("cursor") or ""
    start = int(base64.b64decode(cursor).decode().removeprefix("offset:")) if cursor else 0
    limit = int(params.get("limit") or 100)
    end = start + limit
    following = base64.b64encode(f"offset:{end}".encode()).decode() if end < len(items) else ""
    return {key: items[start:end], "response_metadata": {"next_cursor": following}}


def _json_field(value: Any) -> Any:
    """slack_sdk sends list/dict arguments as JSON strings in form bodies."""
    return json.loads(value) if isinstance(value, str) else value


def _error_status(status: int, retry_after: int) -> web.Response:
    if status == 429:
        return web.json_response({"ok": False, "error": "ratelimited"}, status=429,
                                 headers={"Retry-After": str(retry_after)})
    return web.json_response({"ok": False, "error": "fatal_error"}, status=status)
