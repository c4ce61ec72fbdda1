"""manifest.yml validates against Slack's manifest schema and declares what the code needs."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft7Validator

from bot.app import BOT_SCOPES
from tests.conftest import unavailable

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = ROOT.parent / "shared" / "slack" / "manifest.schema.json"


@pytest.fixture(scope="module")
def manifest() -> dict:
    return yaml.safe_load((ROOT / "manifest.yml").read_text())


@pytest.fixture(scope="module")
def validator() -> Draft7Validator:
    if not SCHEMA.exists():
        unavailable(f"Slack's manifest schema is not at {SCHEMA}")
    schema = json.loads(SCHEMA.read_text())
    assert "draft-07" in schema["$schema"]
    return Draft7Validator(schema)


def test_manifest_validates(manifest, validator):
    assert [e.message for e in validator.iter_errors(manifest)] == []


def test_a_broken_manifest_is_rejected(manifest, validator):
    broken = copy.deepcopy(manifest)
    del broken["features"]["slash_commands"][0]["description"]
    broken["display_information"]["name"] = ""
    assert len(list(validator.iter_errors(broken))) == 2


def test_scopes_match_the_oauth_install(manifest):
    assert sorted(manifest["oauth_config"]["scopes"]["bot"]) == sorted(BOT_SCOPES)
    for scope in ("app_mentions:read", "im:history", "chat:write", "commands", "im:read",
                  "im:write", "users:read", "users:read.email", "files:write"):
        assert scope in BOT_SCOPES


def test_events_commands_and_modes(manifest):
    settings = manifest["settings"]
    assert set(settings["event_subscriptions"]["bot_events"]) == {
        "app_mention", "message.im", "app_home_opened", "app_uninstalled", "tokens_revoked"
    }
    assert settings["socket_mode_enabled"] is True
    assert settings["interactivity"]["is_enabled"] is True
    commands = {c["command"] for c in manifest["features"]["slash_commands"]}
    assert commands == {"/nox-status", "/nox-help", "/nox-metrics", "/nox-config",
                        "/nox-connect", "/nox-incident", "/nox-link", "/nox-brief",
                        "/nox-audit"}
    assert manifest["features"]["app_home"]["messages_tab_enabled"] is True
