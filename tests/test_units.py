"""Pure logic: settings, payload parsing, memory budget, tool schemas, rendering, config words."""

from __future__ import annotations

import pytest

from agents.channels import ChannelError, canonical_id, resolve
from agents.memory import estimate_tokens, fit_history
from agents.personas import ATLAS, NOX, effective, for_channel
from agents.tools.clock import TOOL as GET_TIME
from agents.tools.registry import Tool, ToolContext, ToolError, ToolRegistry
from bot.commands.config import ConfigError, _temperature, _timezone
from bot.render import MAX_BLOCKS, SECTION_LIMIT, answer, split_text
from bot.server import parse_slack_body
from bot.settings import SettingsError, load_settings
from bot.slack_client import oauth_authorize_url
from storage.repositories.config import Override, WorkspaceConfig
from storage.repositories.conversations import StoredMessage
from storage.secrets import generate_key
from storage.tenancy import Tenant


def settings(**values):
    return load_settings(_env_file=None, **values)


class TestSettings:
    def test_defaults(self):
        s = settings()
        assert s.database_url == "sqlite+aiosqlite:///./jamono.db"
        assert s.port == 3000 and s.slack_api_url == "https://slack.com/api/"
        assert not s.slack_configured and not s.llm_configured

    def test_every_bad_value_is_named_and_secrets_are_hidden(self):
        with pytest.raises(SettingsError) as caught:
            settings(
                PORT="abc",
                LOG_FORMAT="xml",
                SLACK_BOT_TOKEN="secret-value",
                DATABASE_URL="mysql://db",
                REDIS_URL="http://x",
            )
        text = "\n".join(caught.value.problems)
        for name in (
            "PORT='abc'",
            "LOG_FORMAT='xml'",
            "SLACK_BOT_TOKEN=(hidden)",
            "DATABASE_URL='mysql://db'",
            "REDIS_URL='http://x'",
        ):
            assert name in text
        assert "secret-value" not in text

    def test_blank_json_settings_take_their_defaults(self):
        s = settings(JAMONO_LLM_PRICES=" ", JAMONO_LLM_DEFAULT_PRICE="")
        assert s.llm_prices == {} and s.llm_default_price == (10.0, 30.0)

    @pytest.mark.parametrize(
        "values, problem",
        [
            ({"JAMONO_INSTANCE_ID": "x" * 65}, "JAMONO_INSTANCE_ID"),  # wider than turns.owner
            (  # the figures name every workspace and its spend: not open beyond the host
                {"JAMONO_METRICS_PORT": "9464", "JAMONO_METRICS_HOST": "0.0.0.0"},
                "set JAMONO_METRICS_TOKEN too",
            ),
        ],
    )
    def test_unsafe_process_settings_are_refused(self, values, problem):
        with pytest.raises(SettingsError) as caught:
            settings(**values)
        assert problem in "\n".join(caught.value.problems)

    def test_metrics_on_loopback_need_no_token(self):
        assert settings(JAMONO_METRICS_PORT="9464").metrics_port == 9464

    @pytest.mark.parametrize(
        "values, problem",
        [
            (
                {"SLACK_BOT_TOKEN": "xoxb-1"},
                "SLACK_APP_TOKEN (Socket Mode) or SLACK_SIGNING_SECRET",
            ),
            ({"SLACK_APP_TOKEN": "xapp-1"}, "SLACK_BOT_TOKEN (one workspace)"),
            (
                {
                    "SLACK_CLIENT_ID": "1.2",
                    "SLACK_SIGNING_SECRET": "s",
                    "SLACK_BOT_TOKEN": "xoxb-1",
                },
                "SLACK_CLIENT_ID and SLACK_CLIENT_SECRET go together",
            ),
            (
                {"SLACK_CLIENT_ID": "1.2", "SLACK_CLIENT_SECRET": "c", "SLACK_APP_TOKEN": "xapp-1"},
                "SLACK_SIGNING_SECRET is needed with OAuth",
            ),
        ],
    )
    def test_incomplete_slack_settings(self, values, problem):
        with pytest.raises(SettingsError) as caught:
            settings(**values)
        assert any(problem in p for p in caught.value.problems)

    @pytest.mark.parametrize(
        "values",
        [
            {"SLACK_BOT_TOKEN": "xoxb-1", "SLACK_APP_TOKEN": "xapp-1"},
            {"SLACK_BOT_TOKEN": "xoxb-1", "SLACK_SIGNING_SECRET": "s"},
            {
                "SLACK_CLIENT_ID": "1.2",
                "SLACK_CLIENT_SECRET": "c",
                "SLACK_SIGNING_SECRET": "s",
                "JAMONO_SECRET_KEY": generate_key(),
            },
        ],
    )
    def test_complete_slack_settings(self, values):
        assert settings(**values).slack_configured

    def test_normalisation(self):
        s = settings(
            SLACK_API_URL="http://127.0.0.1:9/api",
            LOG_LEVEL="debug",
            OPENAI_BASE_URL="http://localhost:11434/v1",
        )
        assert s.slack_api_url == "http://127.0.0.1:9/api/"
        assert s.log_level == "DEBUG" and s.llm_configured


def test_oauth_authorize_url_follows_the_api_host():
    assert oauth_authorize_url("https://slack.com/api/") == "https://slack.com/oauth/v2/authorize"
    assert oauth_authorize_url("http://127.0.0.1:5/api/") == "http://127.0.0.1:5/oauth/v2/authorize"


@pytest.mark.parametrize(
    "body, content_type, ok",
    [
        ('{"type":"event_callback"}', "application/json", True),
        ("[1,2]", "application/json", False),
        ("{not json", "application/json", False),
        ("garbage \x00 body", "text/plain", False),
        ("command=%2Fnox-status&text=", "application/x-www-form-urlencoded", True),
        (
            "payload=%7B%22type%22%3A%22block_actions%22%7D",
            "application/x-www-form-urlencoded",
            True,
        ),
        ("payload=%7Bbroken", "application/x-www-form-urlencoded", False),
        ("ssl_check=1&token=x", "application/x-www-form-urlencoded", True),
        ("", "application/json", False),
        ('{"a":' * 65 + "1" + "}" * 65, "application/json", False),
        ("payload=" + "%5B" * 5000, "application/x-www-form-urlencoded", False),
        # Bolt reads only the first of repeated fields, and so does the check: a deep second
        # payload is never parsed, a deep first one is refused whatever follows.
        ("payload=%7B%7D&payload=" + "%5B" * 5000, "application/x-www-form-urlencoded", True),
        ("payload=" + "%5B" * 5000 + "&payload=%7B%7D", "application/x-www-form-urlencoded",
         False),
    ],
)
def test_parse_slack_body(body, content_type, ok):
    if ok:
        assert isinstance(parse_slack_body(body, content_type, 64), dict)
    else:
        with pytest.raises(ValueError):
            parse_slack_body(body, content_type, 64)


def stored(turn: int, role: str, content: str, tokens: int, **extra) -> StoredMessage:
    return StoredMessage(
        turn, role, content, extra.get("tool_calls"), extra.get("tool_call_id"), tokens
    )


class TestMemory:
    def test_keeps_newest_whole_turns_within_budget(self):
        messages = [
            stored(1, "user", "old", 50),
            stored(1, "assistant", "old answer", 50),
            stored(2, "user", "mid", 30),
            stored(2, "assistant", None, 10, tool_calls=[{"id": "c1"}]),
            stored(2, "tool", "result", 10, tool_call_id="c1"),
            stored(2, "assistant", "mid answer", 10),
            stored(3, "user", "new", 20),
            stored(3, "assistant", "new answer", 20),
        ]
        kept = fit_history(messages, budget=110)
        assert [m["content"] for m in kept] == [
            "mid",
            None,
            "result",
            "mid answer",
            "new",
            "new answer",
        ]
        assert kept[1]["tool_calls"] == [{"id": "c1"}] and kept[2]["tool_call_id"] == "c1"

    def test_a_turn_that_does_not_fit_is_left_out_whole(self):
        messages = [stored(1, "user", "a", 10), stored(2, "user", "b", 500)]
        assert fit_history(messages, budget=100) == []

    def test_estimate_grows_with_text(self):
        short = estimate_tokens({"role": "user", "content": "hi"})
        long = estimate_tokens({"role": "user", "content": "hi" * 400})
        assert (short, long) == (4, 204)  # overhead 4, then 800 chars / 4


class TestPersonas:
    def test_overrides_apply_and_none_keeps_builtin(self):
        config = WorkspaceConfig(
            overrides={
                "atlas": Override("atlas", enabled=True, temperature=0.0),
                "nox": Override("nox", model="local-llama", extra_instructions="Be terse."),
            },
            bindings={"C1": "atlas"},
            timezone="UTC",
        )
        atlas = effective("atlas", config)
        assert atlas.enabled and atlas.temperature == 0.0 and atlas.model is None
        nox = effective("nox", config)
        assert nox.model == "local-llama" and nox.temperature == NOX.temperature
        assert nox.instructions().endswith("Be terse.")
        assert for_channel(config, "C1").name == "atlas"
        assert for_channel(config, "C2").name == "nox"
        assert not ATLAS.enabled and NOX.enabled


CONTEXT = ToolContext(Tenant("T1"), NOX, "U1", "C1", "1.1", "Europe/Paris")


class TestTools:
    def test_schema_errors_are_readable(self):
        assert GET_TIME.argument_errors({}) == []
        errors = GET_TIME.argument_errors({"timezone": 5, "extra": True})
        assert any("timezone: 5 is not of type 'string'" in e for e in errors)
        assert any("Additional properties" in e for e in errors)

    async def test_get_time_uses_the_workspace_timezone(self):
        result = await GET_TIME.handler(CONTEXT)
        assert result["timezone"] == "Europe/Paris"
        assert result["iso"].endswith(("+01:00", "+02:00"))
        other = await GET_TIME.handler(CONTEXT, timezone="Asia/Tokyo")
        assert other["iso"].endswith("+09:00")

    async def test_get_time_rejects_unknown_zones(self):
        with pytest.raises(ToolError, match="`Mars/Base` is not an IANA timezone"):
            await GET_TIME.handler(CONTEXT, timezone="Mars/Base")

    def test_registry_refuses_duplicates_and_docless_tools(self):
        registry = ToolRegistry([GET_TIME])
        with pytest.raises(ValueError, match="registered twice"):
            registry.register(GET_TIME)

        async def nodoc(context):
            return None

        with pytest.raises(ValueError, match="docstring"):
            Tool.from_function(nodoc, parameters={"type": "object"})

    def test_openai_spec_shape(self):
        spec = GET_TIME.openai_spec()
        assert spec["type"] == "function"
        assert spec["function"]["name"] == "get_time"
        assert spec["function"]["parameters"]["type"] == "object"


class TestRender:
    def test_long_answers_split_into_sections_within_limits(self):
        from agents.runtime import TurnOutcome

        text = "\n\n".join(f"paragraph {i} " + "x" * 900 for i in range(200))
        reply = answer(TurnOutcome(text=text, status="ok"))
        assert len(reply.blocks) <= MAX_BLOCKS
        assert all(len(b["text"]["text"]) <= SECTION_LIMIT for b in reply.blocks)

    def test_split_text_hard_cuts_unbroken_text(self):
        pieces = split_text("y" * 7000, limit=3000)
        assert [len(p) for p in pieces] == [3000, 3000, 1000]

    def test_tools_used_line(self):
        from agents.runtime import ToolRun, TurnOutcome

        outcome = TurnOutcome(
            "It is noon.",
            "ok",
            [
                ToolRun("get_time", {"timezone": "UTC"}, "ok", "{}", 3),
                ToolRun("get_time", {}, "timeout", "", 30000),
            ],
        )
        context = answer(outcome).blocks[-1]["elements"][0]["text"]
        assert '`get_time(timezone="UTC")` ✓ 3 ms' in context
        assert "✗ timeout" in context


class TestConfigWords:
    @pytest.mark.parametrize(
        "value, channel",
        [
            ("<#C0123ABC|ops>", "C0123ABC"),
            ("<#C0123ABC>", "C0123ABC"),
            ("C0123ABCD", "C0123ABCD"),
        ],
    )
    async def test_channel_references(self, value, channel):
        assert await resolve(None, value) == channel

    async def test_bad_words(self):
        with pytest.raises(ChannelError):
            await resolve(None, "#ops")  # a name needs Slack to find its id
        with pytest.raises(ConfigError):
            _temperature("hot")
        with pytest.raises(ConfigError):
            _temperature("2.5")
        with pytest.raises(ConfigError):
            _timezone("Nowhere/City")
        assert _temperature("0.7") == 0.7 and _timezone("America/New_York") == "America/New_York"
        assert canonical_id("<#G0PRIVATE|secret>") == "G0PRIVATE"
