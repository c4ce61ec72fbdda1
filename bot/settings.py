"""The one settings object: every environment variable Jamono reads is a field here.

Values come from the environment, then from a ``.env`` file in the working directory.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    AliasChoices,
    Field,
    NonNegativeFloat,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from bot.logs import Redactor
from integrations.egress import EgressPolicy, parse_networks
from integrations.pools import PoolLimits
from storage.db import async_url
from storage.secrets import SecretBox, parse_keys

Price = tuple[NonNegativeFloat, NonNegativeFloat]  # USD per million tokens: input, output


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False
    )

    # Storage
    database_url: str = "sqlite+aiosqlite:///./jamono.db"
    redis_url: str | None = None

    # Slack
    slack_bot_token: SecretStr | None = None
    slack_app_token: SecretStr | None = None
    slack_signing_secret: SecretStr | None = None
    slack_client_id: str | None = None
    slack_client_secret: SecretStr | None = None
    slack_api_url: str = "https://slack.com/api/"

    # LLM (any OpenAI-compatible endpoint)
    openai_api_key: SecretStr | None = None
    openai_base_url: str | None = None
    model: str = Field("gpt-4o-mini", validation_alias=AliasChoices("JAMONO_MODEL"))
    llm_timeout: float = Field(60.0, gt=0, validation_alias=AliasChoices("JAMONO_LLM_TIMEOUT"))
    tool_timeout: float = Field(30.0, gt=0, validation_alias=AliasChoices("JAMONO_TOOL_TIMEOUT"))
    context_tokens: int = Field(
        6000, ge=500, validation_alias=AliasChoices("JAMONO_CONTEXT_TOKENS")
    )
    # Seconds an answer may take before the 👀 reaction goes up on the person's message.
    working_indicator_delay: float = Field(
        1.0, ge=0, validation_alias=AliasChoices("JAMONO_WORKING_INDICATOR_DELAY")
    )

    # Actions: approvals and encrypted credentials
    approval_ttl: float = Field(
        24.0, gt=0, validation_alias=AliasChoices("JAMONO_APPROVAL_TTL")
    )  # hours an approval request waits for a decision
    secret_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices("JAMONO_SECRET_KEY")
    )  # Fernet keys, comma-separated, newest first

    # Integrations: defaults for a workspace that stored no credentials of its own
    jira_url: str | None = None
    jira_email: str | None = None
    jira_api_token: SecretStr | None = None
    jira_pat: SecretStr | None = None
    caldav_url: str | None = None
    caldav_username: str | None = None
    caldav_password: SecretStr | None = None
    caldav_calendar: str | None = None
    integration_timeout: float = Field(
        10.0, gt=0, validation_alias=AliasChoices("JAMONO_INTEGRATION_TIMEOUT")
    )

    # Outbound guard and fair shares (issue 10): which addresses user-supplied URLs may reach,
    # and each integration's thread pool (threads per integration, per workspace, and the
    # overall deadline in seconds of one outside call, waiting for a thread included).
    egress_allow: str = Field("", validation_alias=AliasChoices("JAMONO_EGRESS_ALLOW"))
    integration_threads: int = Field(
        64, ge=1, le=256, validation_alias=AliasChoices("JAMONO_INTEGRATION_THREADS")
    )
    integration_workspace_threads: int = Field(
        4, ge=1, le=256, validation_alias=AliasChoices("JAMONO_INTEGRATION_WORKSPACE_THREADS")
    )
    integration_deadline: float = Field(
        20.0, gt=0, validation_alias=AliasChoices("JAMONO_INTEGRATION_DEADLINE")
    )

    @field_validator("egress_allow")
    @classmethod
    def _egress_allow(cls, value: str) -> str:
        parse_networks(value)  # raises ValueError naming the entry
        return value

    @property
    def egress_policy(self) -> EgressPolicy:
        """With OAuth install every workspace is an outside party: private addresses are
        refused; one workspace (the operator's) may reach them. ``JAMONO_EGRESS_ALLOW``
        (comma-separated networks) opens what the operator chooses in either case."""
        return EgressPolicy(allow_private=not self.oauth_enabled,
                            allow=parse_networks(self.egress_allow))

    @property
    def pool_limits(self) -> PoolLimits:
        return PoolLimits(threads=self.integration_threads,
                          per_workspace=self.integration_workspace_threads,
                          deadline=self.integration_deadline)

    # Cross-session gateway (GET /ws); on when a token key is set
    gateway_secret: SecretStr | None = Field(
        None, validation_alias=AliasChoices("JAMONO_GATEWAY_SECRET")
    )
    gateway_algorithm: Literal["HS256", "RS256", "ES256"] = Field(
        "HS256", validation_alias=AliasChoices("JAMONO_GATEWAY_ALGORITHM")
    )
    gateway_public_key: str | None = Field(
        None, validation_alias=AliasChoices("JAMONO_GATEWAY_PUBLIC_KEY")
    )
    gateway_private_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices("JAMONO_GATEWAY_PRIVATE_KEY")
    )
    gateway_issuer: str | None = Field(None, validation_alias=AliasChoices("JAMONO_GATEWAY_ISSUER"))
    gateway_allowed_origins: str = Field(
        "", validation_alias=AliasChoices("JAMONO_GATEWAY_ALLOWED_ORIGINS")
    )
    gateway_allow_missing_origin: bool = Field(
        True, validation_alias=AliasChoices("JAMONO_GATEWAY_ALLOW_MISSING_ORIGIN")
    )
    gateway_max_sessions_per_user: int = Field(
        20, ge=1, validation_alias=AliasChoices("JAMONO_GATEWAY_MAX_SESSIONS_PER_USER")
    )
    gateway_heartbeat: float = Field(
        5.0, ge=0.2, le=300, validation_alias=AliasChoices("JAMONO_GATEWAY_HEARTBEAT")
    )
    gateway_max_message: int = Field(
        64 * 1024, ge=1024, le=16 * 1024 * 1024,
        validation_alias=AliasChoices("JAMONO_GATEWAY_MAX_MESSAGE"),
    )
    gateway_rate: float = Field(20.0, gt=0, validation_alias=AliasChoices("JAMONO_GATEWAY_RATE"))
    gateway_burst: int = Field(40, ge=1, validation_alias=AliasChoices("JAMONO_GATEWAY_BURST"))
    gateway_link_ttl: int = Field(
        3600, ge=60, le=30 * 86400, validation_alias=AliasChoices("JAMONO_GATEWAY_LINK_TTL")
    )
    instance_id: str | None = Field(
        None, max_length=64, validation_alias=AliasChoices("JAMONO_INSTANCE_ID")
    )  # 64: the width of turns.owner

    # Process
    host: str = "127.0.0.1"
    port: int = Field(3000, ge=1, le=65535)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_format: Literal["console", "json"] = "console"
    shutdown_grace: float = Field(
        20.0, ge=0, validation_alias=AliasChoices("JAMONO_SHUTDOWN_GRACE")
    )

    # Briefings (seconds): a run missed by less than the grace time is still delivered; the
    # leader's lease bounds the hand-over after a leader dies to about 1⅓ leases.
    briefing_grace: float = Field(
        600.0, ge=0, validation_alias=AliasChoices("JAMONO_BRIEFING_GRACE")
    )
    leader_lease: float = Field(
        15.0, ge=1, le=20, validation_alias=AliasChoices("JAMONO_LEADER_LEASE")
    )

    # Briefing limits (issue 10, briefings): briefings a workspace may have, and the shortest
    # time between two runs of one briefing (seconds), checked when a briefing is added.
    briefings_per_workspace: int = Field(
        20, ge=0, validation_alias=AliasChoices("JAMONO_BRIEFINGS_PER_WORKSPACE")
    )
    briefing_min_interval: float = Field(
        3600.0, ge=60, validation_alias=AliasChoices("JAMONO_BRIEFING_MIN_INTERVAL")
    )
    # Budgets and limits on LLM turns (agents/budgets.py). 0 turns a limit off; the operator
    # overrides them per workspace with `jamono config --team T limit NAME VALUE`.
    turns_per_minute_user: int = Field(
        10, ge=0, validation_alias=AliasChoices("JAMONO_TURNS_PER_MINUTE_USER")
    )
    turns_per_minute_workspace: int = Field(
        60, ge=0, validation_alias=AliasChoices("JAMONO_TURNS_PER_MINUTE_WORKSPACE")
    )
    concurrent_turns: int = Field(
        10, ge=0, validation_alias=AliasChoices("JAMONO_CONCURRENT_TURNS")
    )
    tokens_per_day: int = Field(
        2_000_000, ge=0, validation_alias=AliasChoices("JAMONO_TOKENS_PER_DAY")
    )  # per workspace, since 00:00 UTC
    usd_per_day: float = Field(
        5.0, ge=0, validation_alias=AliasChoices("JAMONO_USD_PER_DAY")
    )  # per workspace, since 00:00 UTC, priced by JAMONO_LLM_PRICES
    tool_calls_per_reply: int = Field(
        8, ge=0, validation_alias=AliasChoices("JAMONO_TOOL_CALLS_PER_REPLY")
    )
    allowed_models: str = Field(
        "", validation_alias=AliasChoices("JAMONO_ALLOWED_MODELS")
    )  # comma-separated models admins may pick; JAMONO_MODEL is always allowed
    llm_prices: Annotated[dict[str, Price], NoDecode] = Field(
        default_factory=dict, validation_alias=AliasChoices("JAMONO_LLM_PRICES")
    )  # JSON {"model": [input, output]} in USD per million tokens, over the built-in table
    llm_default_price: Annotated[Price, NoDecode] = Field(
        (10.0, 30.0), validation_alias=AliasChoices("JAMONO_LLM_DEFAULT_PRICE")
    )  # JSON [input, output]: the price of a model not in the table
    # Turns that die mid-way (issue 10, helper 7): seconds between heartbeats of the turns a
    # process runs; a turn silent for 4 heartbeats belongs to a dead process and is closed.
    turn_heartbeat: float = Field(
        15.0, ge=0.5, le=300, validation_alias=AliasChoices("JAMONO_TURN_HEARTBEAT")
    )

    # Metrics (GET /metrics, Prometheus): off unless a port or a token is set. On its own port
    # (bound to JAMONO_METRICS_HOST) it is kept off the public one; on the public port it
    # needs the bearer token. A token, when set, is required on either.
    metrics_port: int | None = Field(
        None, ge=1, le=65535, validation_alias=AliasChoices("JAMONO_METRICS_PORT")
    )
    metrics_host: str = Field("127.0.0.1", validation_alias=AliasChoices("JAMONO_METRICS_HOST"))
    metrics_token: SecretStr | None = Field(
        None, validation_alias=AliasChoices("JAMONO_METRICS_TOKEN")
    )

    @field_validator("metrics_token")
    @classmethod
    def _metrics_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        if len(value.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters (e.g. `openssl rand -hex 32`)")
        return value
    # Ingress limits (issue 10, finding 9): untrusted bodies and unauthenticated sockets
    max_request_body: int = Field(
        1024 * 1024, ge=64 * 1024, le=64 * 1024 * 1024,
        validation_alias=AliasChoices("JAMONO_MAX_REQUEST_BODY"),
    )  # bytes of one HTTP request body (Slack's payloads are far smaller)
    max_json_depth: int = Field(
        64, ge=8, le=256, validation_alias=AliasChoices("JAMONO_MAX_JSON_DEPTH")
    )  # nesting levels of untrusted JSON (Slack bodies, /ws messages)
    gateway_register_timeout: float = Field(
        5.0, gt=0, le=60, validation_alias=AliasChoices("JAMONO_GATEWAY_REGISTER_TIMEOUT")
    )  # seconds a new /ws socket has to authenticate
    gateway_max_unauthenticated: int = Field(
        256, ge=1, validation_alias=AliasChoices("JAMONO_GATEWAY_MAX_UNAUTHENTICATED")
    )  # /ws sockets not yet authenticated, on this instance
    gateway_max_unauthenticated_per_address: int = Field(
        16, ge=1, validation_alias=AliasChoices("JAMONO_GATEWAY_MAX_UNAUTHENTICATED_PER_ADDRESS")
    )  # the same, per remote address

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("log_format", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("llm_prices", "llm_default_price", mode="before")
    @classmethod
    def _json(cls, value: object, info: ValidationInfo) -> object:
        # Decoded here rather than by pydantic-settings, so bad JSON is reported like any
        # other bad value (SettingsError), not raised as a traceback. Blank: the default.
        if isinstance(value, str):
            if not value.strip():
                return cls.model_fields[info.field_name].get_default(call_default_factory=True)
            try:
                return json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"not valid JSON ({exc.msg})") from None
        return value

    @field_validator("database_url")
    @classmethod
    def _database(cls, value: str) -> str:
        async_url(value)  # raises ValueError with the reason
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis(cls, value: str | None) -> str | None:
        if value and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value or None

    @field_validator("slack_api_url", "openai_base_url", "jira_url", "caldav_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @field_validator("slack_api_url")
    @classmethod
    def _trailing_slash(cls, value: str) -> str:
        return value if value.endswith("/") else value + "/"

    @field_validator("secret_key")
    @classmethod
    def _secret_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        try:
            parse_keys(value.get_secret_value())
        except ValueError as exc:  # the message names a bad key by position, never its value
            raise ValueError(str(exc).removeprefix("JAMONO_SECRET_KEY: ")) from None
        return value

    @field_validator("slack_bot_token")
    @classmethod
    def _bot_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value and not value.get_secret_value().startswith("xoxb-"):
            raise ValueError("a bot token starts with xoxb-")
        return value

    @field_validator("slack_app_token")
    @classmethod
    def _app_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value and not value.get_secret_value().startswith("xapp-"):
            raise ValueError("an app-level token starts with xapp- (scope connections:write)")
        return value

    # Derived facts ---------------------------------------------------------------------

    @property
    def oauth_enabled(self) -> bool:
        """Multi-workspace install through ``/slack/install`` (OAuth v2)."""
        return bool(self.slack_client_id and self.slack_client_secret)

    @property
    def socket_mode(self) -> bool:
        return self.slack_app_token is not None

    @property
    def http_events(self) -> bool:
        """``POST /slack/events`` can verify requests, so it is served."""
        return self.slack_signing_secret is not None

    @property
    def slack_configured(self) -> bool:
        return any(
            (
                self.slack_bot_token,
                self.slack_app_token,
                self.slack_signing_secret,
                self.slack_client_id,
                self.slack_client_secret,
            )
        )

    @property
    def gateway_enabled(self) -> bool:
        """The cross-session gateway runs: a key to verify session tokens is configured."""
        if self.gateway_algorithm == "HS256":
            return self.gateway_secret is not None
        return bool(self.gateway_public_key)

    @property
    def gateway_origins(self) -> frozenset[str]:
        """``JAMONO_GATEWAY_ALLOWED_ORIGINS``: comma-separated origins, e.g.
        ``https://addin.example.com``."""
        return frozenset(o.strip() for o in self.gateway_allowed_origins.split(",") if o.strip())

    def gateway_problems(self) -> list[str]:
        """Gateway settings that cannot work together (empty when fine)."""
        problems = []
        asymmetric = self.gateway_algorithm != "HS256"
        if asymmetric and self.gateway_secret is not None:
            problems.append(
                "JAMONO_GATEWAY_SECRET is for HS256; with "
                f"{self.gateway_algorithm} set JAMONO_GATEWAY_PUBLIC_KEY (PEM)"
            )
        if not asymmetric and (self.gateway_public_key or self.gateway_private_key):
            problems.append(
                "JAMONO_GATEWAY_PUBLIC_KEY/PRIVATE_KEY need JAMONO_GATEWAY_ALGORITHM "
                "RS256 or ES256"
            )
        if self.gateway_secret is not None and len(self.gateway_secret.get_secret_value()) < 32:
            problems.append("JAMONO_GATEWAY_SECRET must be at least 32 characters (RFC 7518 §3.2)")
        return problems

    @property
    def model_choices(self) -> frozenset[str]:
        """``JAMONO_ALLOWED_MODELS`` with ``JAMONO_MODEL``: the models admins may pick."""
        return frozenset(
            m.strip() for m in self.allowed_models.split(",") if m.strip()
        ) | {self.model}
    def metrics_problems(self) -> list[str]:
        """Metrics settings that cannot work together (empty when fine)."""
        if self.metrics_port is not None and self.metrics_port == self.port:
            return ["JAMONO_METRICS_PORT must differ from PORT (leave it unset and set "
                    "JAMONO_METRICS_TOKEN to serve /metrics on PORT)"]
        if (
            self.metrics_port is not None
            and self.metrics_token is None
            and not _loopback(self.metrics_host)
        ):
            # The figures name every workspace and its spend: off this host, only with a token.
            return [f"JAMONO_METRICS_HOST={self.metrics_host} serves /metrics beyond this "
                    "machine: set JAMONO_METRICS_TOKEN too (scrapers send it as a bearer token)"]
        return []

    @property
    def llm_configured(self) -> bool:
        return bool(self.openai_api_key or self.openai_base_url)

    def secret_box(self) -> SecretBox | None:
        """Encrypts credentials at rest; ``None`` without ``JAMONO_SECRET_KEY``."""
        if self.secret_key is None:
            return None
        return SecretBox.from_setting(self.secret_key.get_secret_value())

    # Secrets at rest (issue 10): tokens of OAuth installs are stored encrypted --------------

    def secrets_problems(self) -> list[str]:
        """Settings that would leave a secret unencrypted at rest (empty when fine)."""
        if self.oauth_enabled and self.secret_key is None:
            return [
                "JAMONO_SECRET_KEY is needed with OAuth install (SLACK_CLIENT_ID): the Slack "
                "tokens of each installed workspace are stored encrypted with it; generate one "
                "with `jamono secrets generate-key`"
            ]
        return []

    def secret_values(self) -> list[str]:
        """The value of every secret setting (each key of ``JAMONO_SECRET_KEY`` apart), for
        the log redactor: those without a recognisable shape, like the signing secret."""
        values = []
        for name in _SECRET_FIELDS:
            secret = getattr(self, name)
            if secret is not None:
                values.extend(secret.get_secret_value().split(",") if name == "secret_key"
                              else [secret.get_secret_value()])
        return [value.strip() for value in values if value.strip()]

    def integration_problems(self) -> list[str]:
        """What is missing for the Jira and CalDAV defaults given (empty when fine)."""
        problems = []
        cloud = bool(self.jira_email or self.jira_api_token)
        if self.jira_url and not (self.jira_pat or (self.jira_email and self.jira_api_token)):
            problems.append(
                "JIRA_URL needs JIRA_EMAIL and JIRA_API_TOKEN (Jira Cloud) or JIRA_PAT "
                "(Data Center)"
            )
        if self.jira_url and cloud and self.jira_pat:
            problems.append(
                "set JIRA_EMAIL/JIRA_API_TOKEN (Cloud) or JIRA_PAT (Data Center), not both"
            )
        if not self.jira_url and (cloud or self.jira_pat):
            problems.append("JIRA_EMAIL, JIRA_API_TOKEN and JIRA_PAT need JIRA_URL")
        caldav = (self.caldav_username, self.caldav_password, self.caldav_calendar)
        if self.caldav_url and not self.caldav_calendar:
            problems.append("CALDAV_URL needs CALDAV_CALENDAR (the calendar's name)")
        if not self.caldav_url and any(caldav):
            problems.append("CALDAV_USERNAME, CALDAV_PASSWORD and CALDAV_CALENDAR need CALDAV_URL")
        for name, url in (("JIRA_URL", self.jira_url), ("CALDAV_URL", self.caldav_url)):
            if url and "@" in urlsplit(url).netloc:
                problems.append(f"{name} must not hold a user name or password: set them in "
                                "their own variables")
        if self.oauth_enabled and (self.jira_url or self.caldav_url):
            # Defaults would hand one Jira or calendar to every workspace that installs.
            problems.append(
                "JIRA_URL and CALDAV_URL connect the single workspace of SLACK_BOT_TOKEN; with "
                "OAuth install (SLACK_CLIENT_ID) each workspace connects its own with "
                "/nox-connect, so leave them unset"
            )
        return problems

    def slack_problems(self) -> list[str]:
        """What is missing for the Slack settings given to make a working app (empty when fine)."""
        if not self.slack_configured:
            return []
        problems = []
        if bool(self.slack_client_id) != bool(self.slack_client_secret):
            problems.append("SLACK_CLIENT_ID and SLACK_CLIENT_SECRET go together (OAuth install)")
        if not (self.slack_bot_token or self.oauth_enabled):
            problems.append(
                "SLACK_BOT_TOKEN (one workspace) or SLACK_CLIENT_ID/SLACK_CLIENT_SECRET "
                "(OAuth install) is needed to call Slack"
            )
        if not (self.socket_mode or self.http_events):
            problems.append(
                "SLACK_APP_TOKEN (Socket Mode) or SLACK_SIGNING_SECRET (HTTP events) is needed "
                "to receive events"
            )
        if self.oauth_enabled and not self.slack_signing_secret:
            problems.append("SLACK_SIGNING_SECRET is needed with OAuth install (HTTP endpoints)")
        return problems


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class SettingsError(Exception):
    """Invalid settings; ``problems`` holds one readable line per bad value."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


_SECRET_FIELDS = {
    name
    for name, field in Settings.model_fields.items()
    if field.annotation in (SecretStr, SecretStr | None)
}


def load_settings(**overrides: object) -> Settings:
    """Read the settings; raise :class:`SettingsError` naming every bad value (secrets masked)."""
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError([_describe(error) for error in exc.errors()]) from None
    problems = (
        settings.slack_problems()
        + settings.integration_problems()
        + settings.gateway_problems()
        + settings.secrets_problems()
        + settings.metrics_problems()
    )
    if problems:
        raise SettingsError(problems)
    return settings


def _describe(error: dict) -> str:
    loc = str(error["loc"][0]) if error["loc"] else "settings"
    # Fields read under an alias (JAMONO_…) report the alias as their location.
    field = _FIELDS_BY_ENV_NAME.get(loc.lower(), loc)
    env_name = _ENV_NAMES.get(field, field).upper()
    # A URL's password (DATABASE_URL, REDIS_URL…) would reach the terminal and log collectors.
    shown = "(hidden)" if field in _SECRET_FIELDS else Redactor().redact(repr(error.get("input")))
    message = error["msg"].removeprefix("Value error, ")
    return f"{env_name}={shown}: {message}"


_ENV_NAMES = {
    name: (field.validation_alias.choices[0] if field.validation_alias else name)
    for name, field in Settings.model_fields.items()
}
_FIELDS_BY_ENV_NAME = {env.lower(): name for name, env in _ENV_NAMES.items()}
