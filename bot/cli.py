"""The ``jamono`` command (also ``python -m bot``).

Exit codes: 0 success, 1 a dependency failed at start, 2 invalid settings or usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import asdict
from datetime import UTC, datetime

import structlog

from agents import personas
from bot import __version__, logs
from bot.settings import Settings, SettingsError, load_settings
from storage.tenancy import Tenant

log = structlog.get_logger(__name__)

SETUP_HINT = """\
Slack is not configured, so Jamono starts the console: talk to the personas right here.

To connect Slack, create an app from manifest.yml (https://api.slack.com/apps → Create New
App → From an app manifest), install it to your workspace, then set in .env or the environment:
  Socket Mode (no public URL needed): SLACK_BOT_TOKEN=xoxb-…  SLACK_APP_TOKEN=xapp-…
  HTTP events:                        SLACK_BOT_TOKEN=xoxb-…  SLACK_SIGNING_SECRET=…
  Many workspaces (OAuth install):    SLACK_CLIENT_ID, SLACK_CLIENT_SECRET, SLACK_SIGNING_SECRET
Missing now: SLACK_BOT_TOKEN, SLACK_APP_TOKEN or SLACK_SIGNING_SECRET.
"""


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        print("Invalid settings:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  - {problem}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, settings.log_format, settings.secret_values())
    return args.handler(settings, args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jamono", description="AI agent colleagues for Slack.")
    parser.add_argument("--version", action="version", version=f"jamono {__version__}")
    sub = parser.add_subparsers(required=True, metavar="command")

    run = sub.add_parser("run", help="serve Slack (HTTP and/or Socket Mode); console without Slack")
    run.set_defaults(handler=_run)

    console = sub.add_parser("console", help="chat with a persona in the terminal")
    console.add_argument("--persona", default="nox", choices=sorted(personas.BUILTIN))
    console.set_defaults(handler=_console)

    db = sub.add_parser("db", help="database schema")
    db_sub = db.add_subparsers(required=True, metavar="action")
    upgrade = db_sub.add_parser("upgrade", help="apply pending migrations")
    upgrade.add_argument("revision", nargs="?", default="head")
    upgrade.set_defaults(handler=_db_upgrade)
    current = db_sub.add_parser("current", help="show the applied revision")
    current.set_defaults(handler=_db_current)

    gateway = sub.add_parser(
        "gateway",
        help="serve only the cross-session gateway (GET /ws); `gateway token` issues a token",
    )
    gateway.set_defaults(handler=_gateway)
    gateway_sub = gateway.add_subparsers(metavar="action")
    token = gateway_sub.add_parser("token", help="print a session token for a Slack user")
    token.add_argument("--team", required=True, help="team_id (enterprise_id for an org install)")
    token.add_argument("--user", required=True, help="the Slack user id (U…)")
    token.add_argument(
        "--ttl", type=int, default=None, help="seconds (default JAMONO_GATEWAY_LINK_TTL)"
    )
    token.set_defaults(handler=_gateway_token)

    config = sub.add_parser(
        "config",
        help="change a workspace's configuration, as /nox-config does",
        description=(
            "Same words as /nox-config, e.g.: jamono config --team T0123 atlas enable. "
            "Also, for the operator only: `limit` (the workspace's limits), "
            "`limit NAME VALUE` and `limit NAME default` (budgets and limits on LLM turns; "
            "0 is no limit)"
        ),
    )
    config.add_argument("--team", required=True, help="team_id (or enterprise_id with --org)")
    config.add_argument("--org", action="store_true", help="the id is an org-wide install's")
    config.add_argument("words", nargs="*", help="[persona] verb [value]; default: show")
    config.set_defaults(handler=_config)

    secrets = sub.add_parser("secrets", help="encryption of stored credentials and Slack tokens")
    secrets_sub = secrets.add_subparsers(required=True, metavar="action")
    rotate = secrets_sub.add_parser(
        "rotate",
        help="re-encrypt every stored credential and Slack token with the newest "
        "JAMONO_SECRET_KEY key",
        description="Put the new key first in JAMONO_SECRET_KEY (old keys after it), run "
        "this, then remove the old keys.",
    )
    rotate.set_defaults(handler=_secrets_rotate)
    generate = secrets_sub.add_parser("generate-key", help="print a new Fernet key")
    generate.set_defaults(handler=_secrets_generate_key)

    connect = sub.add_parser(
        "connect",
        help="connect a workspace's Jira or calendar, as /nox-connect does",
        description="The connection is tested before anything is saved; secrets are stored "
        "encrypted with JAMONO_SECRET_KEY.",
    )
    connect_sub = connect.add_subparsers(required=True, metavar="integration")
    jira = connect_sub.add_parser(
        "jira", help="Jira Cloud (email + API token) or Data Center (personal access token)"
    )
    jira.add_argument("--url", required=True, help="site URL, e.g. https://acme.atlassian.net")
    jira.add_argument("--email", help="Jira Cloud: the Atlassian account's email")
    jira.add_argument("--api-token", help="Jira Cloud: an API token (asked for when left out)")
    jira.add_argument("--pat", help="Jira Data Center: a personal access token (asked for when "
                      "neither --email nor --pat is given)")
    calendar = connect_sub.add_parser("calendar", help="a CalDAV calendar")
    calendar.add_argument("--url", required=True, help="CalDAV server URL")
    calendar.add_argument("--username", required=True)
    calendar.add_argument("--password", help="asked for when left out")
    calendar.add_argument("--calendar", required=True, help="the calendar's name")
    show = connect_sub.add_parser("show", help="what is connected (secrets masked)")
    for integration, parser_ in (("jira", jira), ("calendar", calendar), ("show", show)):
        parser_.add_argument("--team", required=True, help="team_id (or enterprise_id with --org)")
        parser_.add_argument("--org", action="store_true", help="the id is an org-wide install's")
        parser_.set_defaults(handler=_connect, integration=integration)

    audit = sub.add_parser("audit", help="a workspace's audit trail")
    audit_sub = audit.add_subparsers(required=True, metavar="action")
    export = audit_sub.add_parser(
        "export",
        help="print the trail as JSON Lines, newest first (tool calls and events)",
        description="One JSON object a line: source, id, created_at, kind, actor, subject, "
        "details. Only the given workspace's entries.",
    )
    export.add_argument("--team", required=True, help="team_id (or enterprise_id with --org)")
    export.add_argument("--org", action="store_true", help="the id is an org-wide install's")
    export.add_argument("--since", required=True, help="24h, 7d or an ISO date (UTC)")
    export.add_argument("--tool", help="only this tool's calls and the events about it")
    export.add_argument("--user", help="only what this Slack user (U…) did")
    export.set_defaults(handler=_audit_export)

    brief = sub.add_parser(
        "brief",
        help="manage a workspace's scheduled briefings, as /nox-brief does",
        description=(
            "Same verbs as /nox-brief, e.g.: jamono brief --team T0123 list; "
            "jamono brief --team T0123 add --channel C0OPS --schedule 'weekdays 08:30' "
            "--timezone Europe/Paris --section approvals --section activity"
        ),
    )
    brief.add_argument("--team", required=True, help="team_id (or enterprise_id with --org)")
    brief.add_argument("--org", action="store_true", help="the id is an org-wide install's")
    brief_sub = brief.add_subparsers(required=True, metavar="verb", dest="verb")
    add = brief_sub.add_parser("add", help="add a briefing (the channel is checked in Slack)")
    add.add_argument("--channel", required=True, help="channel_id, e.g. C0123ABCD")
    add.add_argument("--schedule", required=True, help="daily|weekdays HH:MM, weekly DAY HH:MM, "
                     "or cron M H DOM MON DOW")
    add.add_argument("--timezone", required=True, help="IANA name, e.g. Europe/Paris")
    add.add_argument("--section", action="append", default=[], help="approvals, activity, "
                     "jira, calendar or prompt; repeat for several")
    add.add_argument("--jql", default="", help="JQL of the jira section")
    add.add_argument("--prompt", default="", help="question of the prompt section")
    add.add_argument(
        "--persona", default=personas.DEFAULT_PERSONA, choices=sorted(personas.BUILTIN)
    )
    add.add_argument("--created-by", required=True, help="Slack user_id told about pauses")
    brief_sub.add_parser("list", help="the workspace's briefings with their next run")
    for verb, text in (
        ("remove", "delete a briefing"),
        ("pause", "stop a briefing without deleting it"),
        ("resume", "start a paused briefing again"),
        ("now", "post a briefing at once"),
        ("preview", "print a briefing without posting it"),
    ):
        brief_sub.add_parser(verb, help=text).add_argument("id", type=int)
    brief.set_defaults(handler=_brief)

    tenant = sub.add_parser(
        "tenant",
        help="everything stored for one workspace: export it or erase it",
        description="Uninstall the app from the workspace first: erasing deletes its tokens too.",
    )
    tenant_sub = tenant.add_subparsers(required=True, metavar="action", dest="action")
    for action, text in (
        ("export", "print every stored row as JSON Lines (secrets encrypted or left out)"),
        ("erase", "delete every stored row (needs --yes)"),
    ):
        parser_ = tenant_sub.add_parser(action, help=text)
        parser_.add_argument("--team", required=True, help="team_id (or enterprise_id with --org)")
        parser_.add_argument("--org", action="store_true", help="the id is an org-wide install's")
        if action == "erase":
            parser_.add_argument("--yes", action="store_true", help="really delete")
    tenant.set_defaults(handler=_tenant_data)
    return parser


def _run(settings: Settings, _: argparse.Namespace) -> int:
    from bot.server import serve

    async def main() -> None:
        async with _services(settings) as services:
            if settings.slack_configured:
                await serve(services)
                return
            print(SETUP_HINT, file=sys.stderr)
            from bot.console import run_console

            done = asyncio.Event()
            console = asyncio.create_task(run_console(services))
            console.add_done_callback(lambda _: done.set())
            await serve(services, until=done)
            if not console.cancelled():
                console.result()

    return _execute(main())


def _console(settings: Settings, args: argparse.Namespace) -> int:
    from bot.console import run_console

    async def main() -> None:
        async with _services(settings) as services:
            await run_console(services, args.persona)

    return _execute(main())


def _gateway(settings: Settings, _: argparse.Namespace) -> int:
    from bot.server import serve

    if not settings.gateway_enabled:
        print("The cross-session gateway needs JAMONO_GATEWAY_SECRET (HS256, 32+ characters) "
              "or JAMONO_GATEWAY_ALGORITHM=RS256|ES256 with JAMONO_GATEWAY_PUBLIC_KEY.",
              file=sys.stderr)
        return 2

    async def main() -> None:
        async with _services(settings) as services:
            await serve(services, slack=False)

    return _execute(main())


def _gateway_token(settings: Settings, args: argparse.Namespace) -> int:
    from bot.services import gateway_tokens
    from integrations.cross_session import Owner

    try:
        _, issuer = gateway_tokens(settings)
    except ValueError as exc:
        print(f"Cannot issue a token: {exc}", file=sys.stderr)
        return 2
    if issuer is None:
        print("Cannot issue a token: set JAMONO_GATEWAY_PRIVATE_KEY to sign "
              f"{settings.gateway_algorithm} tokens", file=sys.stderr)
        return 2
    ttl = args.ttl if args.ttl is not None else settings.gateway_link_ttl
    if ttl <= 0:
        print("--ttl must be a positive number of seconds", file=sys.stderr)
        return 2
    token, _ = issuer.issue(Owner(args.team, args.user), ttl)
    print(token)
    return 0


def _db_upgrade(settings: Settings, args: argparse.Namespace) -> int:
    from storage import migrate

    try:
        migrate.upgrade(settings.database_url, args.revision, settings.secret_box())
    except RuntimeError as exc:  # a migration needs JAMONO_SECRET_KEY; the message says so
        print(f"Cannot upgrade: {exc}", file=sys.stderr)
        return 1
    print(f"database at {args.revision}")
    return 0


def _db_current(settings: Settings, _: argparse.Namespace) -> int:
    from storage import migrate

    migrate.current(settings.database_url)
    return 0


def _tenant(args: argparse.Namespace) -> Tenant:
    return Tenant(
        team_id=None if args.org else args.team,
        enterprise_id=args.team if args.org else None,
        is_enterprise_install=args.org,
    )


def _config(settings: Settings, args: argparse.Namespace) -> int:
    from bot.commands import CommandRequest, CommandRouter

    tenant = _tenant(args)
    if args.words[:1] == ["limit"]:
        return _config_limit(settings, tenant, args.words[1:])

    async def main() -> None:
        from slack_sdk.errors import SlackApiError, SlackTokenRotationError

        from bot.briefings.clients import NotInstalled

        async with _services(settings) as services:
            try:  # the workspace's client looks channel names up; without it, ids only
                slack = await services.briefings.clients.for_tenant(tenant)
            except NotInstalled:
                slack = None
            except (SlackApiError, SlackTokenRotationError) as exc:
                print(f"Slack is unreachable ({exc}); channels by id only.", file=sys.stderr)
                slack = None
            reply = await CommandRouter(services).handle(
                CommandRequest(
                    tenant=tenant,
                    command="/nox-config",
                    text=" ".join(args.words),
                    user_id="cli",
                    channel_id="",
                    is_admin=_always,
                    slack=slack,
                )
            )
            print(reply.text)

    return _execute(main())


def _config_limit(settings: Settings, tenant: Tenant, words: list[str]) -> int:
    """``limit [NAME VALUE|default]``: a workspace's budgets, settable only here because its
    own admins are outside parties (agents/budgets.py)."""
    from agents.budgets import limit_named, parse_limit

    if len(words) not in (0, 2):
        print("Usage: jamono config --team T limit [NAME VALUE|default]", file=sys.stderr)
        return 2
    value: float | None = None
    try:
        if words:
            name, text = words
            value = None if text == "default" else parse_limit(name, text)
            limit_named(name)
    except ValueError as exc:
        print(f"Cannot change the limit: {exc}", file=sys.stderr)
        return 2

    async def main() -> None:
        async with _services(settings) as services:
            if words:
                await services.repos.budgets.set_override(tenant, words[0], value, "cli")
            limits = await services.budgets.limits_for(tenant)
            overrides = await services.repos.budgets.overrides(tenant)
            for name, current in asdict(limits).items():
                source = "set for this workspace" if name in overrides else "default"
                print(f"{name} = {current} ({'off' if not current else source})")
            if words and services.redis is None:
                print(f"Running servers apply the change within {services.workspace_cache.ttl:g} "
                      "seconds (at once when they share Redis).")

    return _execute(main())


def _secrets_rotate(settings: Settings, _: argparse.Namespace) -> int:
    if settings.secret_key is None:
        print(
            "JAMONO_SECRET_KEY is not set: nothing can be re-encrypted. Set it to the new key "
            "followed by the old ones (comma-separated), then run this again.",
            file=sys.stderr,
        )
        return 2

    async def main() -> None:
        from storage.installations import rotate_tokens

        async with _services(settings) as services:
            rotated = await services.repos.credentials.rotate_all()
            print(f"re-encrypted {rotated} stored credential(s) with the newest key")
            installations = await rotate_tokens(services.engine, settings.secret_box())
            print(f"re-encrypted the Slack tokens of {installations} installation row(s)")

    from storage.secrets import SecretsError

    try:
        return _execute(main())
    except SecretsError as exc:
        print(f"Cannot rotate: {exc}", file=sys.stderr)
        return 1


def _secrets_generate_key(_: Settings, __: argparse.Namespace) -> int:
    from storage.secrets import generate_key

    print(generate_key())
    return 0


def _connect(settings: Settings, args: argparse.Namespace) -> int:
    """Test then save (exit 0), or say what failed and save nothing (exit 1)."""
    from agents.connections import ConnectionFailed

    tenant = _tenant(args)
    fields = {
        name: getattr(args, name, None)
        for name in ("url", "email", "api_token", "pat", "username", "password", "calendar")
    }
    missing = _secret_to_ask(args.integration, fields)
    if missing and sys.stdin.isatty():
        # Typed at a prompt, a secret stays out of the shell history and the process list.
        import getpass

        fields[missing] = getpass.getpass(f"{missing.replace('_', ' ')}: ")

    async def main() -> int:
        async with _services(settings) as services:
            connections = services.connections
            if args.integration == "show":
                print("\n".join(await connections.describe(tenant)))
                return 0
            try:
                done = await connections.connect(
                    tenant, args.integration, fields, None,
                    test_timeout=settings.integration_timeout,
                )
            except ConnectionFailed as exc:
                print("Not saved:", file=sys.stderr)
                for field, why in exc.errors.items():
                    print(f"  --{field.replace('_', '-')}: {why}", file=sys.stderr)
                return 1
            print(f"Connected: {done}")
            return 0

    return _execute(main())


def _audit_export(settings: Settings, args: argparse.Namespace) -> int:
    from bot.commands.audit import AuditQueryError, parse_since
    from storage.db import create_engine, session_factory
    from storage.repositories import Repositories
    from storage.repositories.audit import MAX_PAGE

    try:
        since = parse_since(args.since, datetime.now(UTC))
    except AuditQueryError as exc:
        print(f"--since: {exc}".replace("`", ""), file=sys.stderr)
        return 2
    tenant = _tenant(args)

    async def main() -> int:
        engine = create_engine(settings.database_url)
        try:
            audit = Repositories.over(session_factory(engine)).audit
            after = None
            while True:  # page by page, so a long trail is never held in memory whole
                page = await audit.page(
                    tenant, since=since, tool=args.tool, user=args.user, after=after,
                    limit=MAX_PAGE,
                )
                for entry in page.entries:
                    print(json.dumps(entry.as_json(), ensure_ascii=False, sort_keys=True))
                if page.next is None:
                    return 0
                after = page.next
        finally:
            await engine.dispose()

    return _execute(main())


def _secret_to_ask(integration: str, fields: dict[str, str | None]) -> str | None:
    """The secret field ``jamono connect`` still needs, if any."""
    if integration == "jira" and not (fields["api_token"] or fields["pat"]):
        return "api_token" if fields["email"] else "pat"
    if integration == "calendar" and fields["password"] is None:
        return "password"
    return None


def _brief(settings: Settings, args: argparse.Namespace) -> int:
    from bot.briefings.clients import NotInstalled
    from bot.briefings.manage import (
        BriefingInputError,
        BriefingLimits,
        NewBriefing,
        add_briefing,
        describe,
    )
    from bot.commands import CommandRequest, CommandRouter

    tenant = _tenant(args)

    async def main() -> int:
        async with _services(settings) as services:
            if args.verb == "add":
                sections = [
                    {"kind": kind, "jql": args.jql, "prompt": args.prompt}
                    for kind in args.section
                ]
                try:
                    client = await services.briefings.clients.for_tenant(tenant)
                    briefing = await add_briefing(
                        services.repos,
                        client,
                        tenant,
                        args.created_by,
                        NewBriefing(
                            args.channel, args.schedule, args.timezone, sections, args.persona
                        ),
                        limits=BriefingLimits.of(settings),
                        is_admin=_always,  # the operator
                    )
                except (BriefingInputError, NotInstalled) as exc:
                    print(f"Not saved: {exc}", file=sys.stderr)
                    return 2
                print(f"Added: {describe(briefing)}")
                return 0
            text = args.verb if args.verb == "list" else f"{args.verb} {args.id}"
            reply = await CommandRouter(services).handle(
                CommandRequest(
                    tenant=tenant,
                    command="/nox-brief",
                    text=text,
                    user_id="cli",
                    channel_id="",
                    is_admin=_always,
                )
            )
            print(reply.text)
            return 0

    return _execute(main())


def _tenant_data(settings: Settings, args: argparse.Namespace) -> int:
    """``jamono tenant export|erase``: JSON Lines on stdout, a summary per table on stderr."""
    import json

    from storage.db import session_factory
    from storage.repositories.tenant_data import TenantDataRepository

    tenant = _tenant(args)

    async def main() -> int:
        async with _services(settings) as services:
            data = TenantDataRepository(session_factory(services.engine))
            if args.action == "export":
                async for line in data.export(tenant):
                    print(json.dumps(line, ensure_ascii=False, sort_keys=True))
                summary = await data.counts(tenant)
                print(f"Exported workspace {tenant.id}:", file=sys.stderr)
            elif not args.yes:
                held = await data.counts(tenant)
                print(f"Nothing erased. Workspace {tenant.id} has {sum(held.values())} "
                      "row(s); run again with --yes to delete them:", file=sys.stderr)
                _print_counts(held)
                return 2
            else:
                summary = await data.erase(tenant)
                await services.workspace_cache.changed(tenant.id)
                log.warning("tenant_erased", tenant=tenant.id, rows=sum(summary.values()))
                print(f"Erased workspace {tenant.id}:", file=sys.stderr)
        _print_counts(summary)
        return 0

    return _execute(main())


def _print_counts(counts: dict[str, int]) -> None:
    for table, count in counts.items():
        print(f"  {table}: {count}", file=sys.stderr)


async def _always() -> bool:
    return True


class _services:
    """``async with _services(settings) as services`` — start and always close."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def __aenter__(self):
        from bot.services import Services

        self.services = await Services.start(self.settings)
        return self.services

    async def __aexit__(self, *_) -> None:
        await self.services.close()


def _execute(coro) -> int:
    """Run ``coro``; its result is the exit code when it returns an int."""
    from bot.services import StartupError

    try:
        code = asyncio.run(coro)
    except StartupError as exc:
        log.error("startup_failed", reason=str(exc))
        print(f"Cannot start: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return code if isinstance(code, int) else 0
