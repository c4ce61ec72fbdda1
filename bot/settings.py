"""The one settings object: every environment variable Jamono reads is a field here.

Values come from the environment, then from a ``.env`` file in the working directory.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from storage.db import async_url


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

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("log_format", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

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

    @field_validator("slack_api_url", "openai_base_url")
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
    def llm_configured(self) -> bool:
        return bool(self.openai_api_key or self.openai_base_url)

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
    problems = settings.slack_problems()
    if problems:
        raise SettingsError(problems)
    return settings


def _describe(error: dict) -> str:
    field = str(error["loc"][0]) if error["loc"] else "settings"
    env_name = _ENV_NAMES.get(field, field).upper()
    shown = "(hidden)" if field in _SECRET_FIELDS else repr(error.get("input"))
    message = error["msg"].removeprefix("Value error, ")
    return f"{env_name}={shown}: {message}"


_ENV_NAMES = {
    name: (field.validation_alias.choices[0] if field.validation_alias else name)
    for name, field in Settings.model_fields.items()
}
