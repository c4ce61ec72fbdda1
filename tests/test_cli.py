"""The ``jamono`` command as an operator runs it: exit codes, the console, the admin CLI."""

from __future__ import annotations

import asyncio
import os
import sys

import pytest

from tests.process import PASS_THROUGH, free_port


async def jamono(*args: str, env: dict[str, str], cwd, stdin: str = "") -> tuple[int, str, str]:
    """Run ``python -m bot ARGS`` with only ``env`` as settings; returns (code, stdout, stderr)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", *args,
        cwd=cwd,
        env={k: v for k, v in os.environ.items() if k in PASS_THROUGH} | env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(stdin.encode()), 60)
    return process.returncode, out.decode(), err.decode()


async def test_invalid_settings_exit_2_naming_each_bad_value(tmp_path):
    code, _, err = await jamono(
        "run", env={"PORT": "abc", "LOG_FORMAT": "xml", "SLACK_BOT_TOKEN": "not-a-token"},
        cwd=tmp_path,
    )
    assert code == 2
    assert "PORT='abc'" in err and "LOG_FORMAT='xml'" in err
    assert "SLACK_BOT_TOKEN=(hidden)" in err and "not-a-token" not in err


async def test_run_without_slack_explains_the_setup_and_opens_the_console(tmp_path, llm):
    env = {"OPENAI_BASE_URL": llm.base_url, "OPENAI_API_KEY": "sk-test",
           "PORT": str(free_port())}
    code, out, err = await jamono(
        "run", env=env, cwd=tmp_path, stdin="/nox-status\nwhat time is it?\nexit\n"
    )
    assert code == 0, err
    assert "Slack is not configured" in err and "manifest.yml" in err
    assert "SLACK_BOT_TOKEN" in err
    assert "*LLM:* ✅ reachable at" in out  # /nox-status answered in the console
    assert "NOX> Tool result: {" in out and "Tools used: `get_time()` ✓" in out
    assert (tmp_path / "jamono.db").exists()  # the embedded default, migrated at start


async def test_console_keeps_the_conversation_and_hints_without_an_llm(tmp_path, llm):
    env = {"OPENAI_BASE_URL": llm.base_url, "OPENAI_API_KEY": "sk-test"}
    code, out, _ = await jamono(
        "console", "--persona", "atlas", env=env, cwd=tmp_path, stdin="first\nsecond\n"
    )
    assert code == 0
    assert "ATLAS> <echo> first (user messages seen: 1)" in out
    assert "ATLAS> <echo> second (user messages seen: 2)" in out
    assert "You are ATLAS" in llm.requests[0]["messages"][0]["content"]

    code, out, _ = await jamono("console", env={}, cwd=tmp_path, stdin="hello\n/nox-help\n")
    assert code == 0
    assert "No language model is configured" in out and "OPENAI_BASE_URL" in out
    assert "/nox-metrics" in out  # slash commands still work


async def test_config_and_db_commands(tmp_path):
    code, out, _ = await jamono("db", "upgrade", env={}, cwd=tmp_path)
    assert code == 0 and "database at head" in out
    code, out, _ = await jamono(
        "config", "--team", "T0ACME", "atlas", "enable", env={}, cwd=tmp_path
    )
    assert code == 0 and "ATLAS is now enabled" in out
    code, out, _ = await jamono("config", "--team", "T0ACME", env={}, cwd=tmp_path)
    assert "*ATLAS* — enabled" in out
    code, out, _ = await jamono("config", "--team", "T0OTHER", env={}, cwd=tmp_path)
    assert "*ATLAS* — disabled" in out  # another workspace is untouched


@pytest.mark.parametrize(
    "integration, given, asked",
    [
        ("jira", {"email": "me@acme.test"}, "api_token"),
        ("jira", {}, "pat"),
        ("jira", {"email": "me@acme.test", "api_token": "t"}, None),
        ("jira", {"pat": "p"}, None),
        ("calendar", {}, "password"),
        ("calendar", {"password": ""}, None),  # an empty password given on purpose
    ],
)
def test_connect_asks_for_the_secret_it_still_needs(integration, given, asked):
    from bot.cli import _secret_to_ask

    fields = dict.fromkeys(("url", "email", "api_token", "pat", "username", "password")) | given
    assert _secret_to_ask(integration, fields) == asked
