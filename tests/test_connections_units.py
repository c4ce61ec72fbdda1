"""Pure logic of connecting integrations: settings checks, credential fields, error wording."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet

from agents.connections import (
    ConnectionFailed,
    NotConnected,
    caldav_credentials,
    describe_credentials,
    explain,
    jira_credentials,
)
from agents.tools.calendar import _MAILTO, _SLACK_USER
from bot.settings import SettingsError, load_settings
from integrations.calendar import (
    CalDAVCredentials,
    CalendarAuthError,
    CalendarNotFound,
    CalendarRejected,
    CalendarUnavailable,
    classify,
)
from integrations.jira import CloudCredentials, DataCenterCredentials, JiraUnavailable
from integrations.resilience import CircuitOpenError, Failure


@pytest.mark.parametrize(
    "env, problem",
    [
        ({"JIRA_URL": "https://acme.atlassian.net"}, "JIRA_URL needs JIRA_EMAIL and"),
        ({"JIRA_URL": "https://j", "JIRA_EMAIL": "a@b.c", "JIRA_API_TOKEN": "t",
          "JIRA_PAT": "p"}, "not both"),
        ({"JIRA_PAT": "p"}, "need JIRA_URL"),
        ({"CALDAV_URL": "https://cal.example.com/"}, "CALDAV_URL needs CALDAV_CALENDAR"),
        ({"CALDAV_USERNAME": "nox"}, "need CALDAV_URL"),
        ({"JIRA_URL": "ftp://jira"}, "JIRA_URL='ftp://jira': must be an http:// or https:// URL"),
        ({"JIRA_URL": "https://jira.acme.test", "JIRA_PAT": "p", "SLACK_CLIENT_ID": "1.2",
          "SLACK_CLIENT_SECRET": "s", "SLACK_SIGNING_SECRET": "x"},
         "with OAuth install (SLACK_CLIENT_ID) each workspace connects its own"),
        ({"JAMONO_SECRET_KEY": "not-a-key"},
         "JAMONO_SECRET_KEY=(hidden): key #1 of 1 is not a Fernet key"),
    ],
)
def test_integration_settings_problems(env, problem):
    with pytest.raises(SettingsError) as caught:
        load_settings(_env_file=None, **env)
    assert problem in str(caught.value)
    assert "not-a-key" not in str(caught.value).replace("JAMONO_SECRET_KEY=(hidden)", "")


@pytest.mark.parametrize(
    "env",
    [
        {"JIRA_URL": "https://j", "JIRA_EMAIL": "a@b.c", "JIRA_API_TOKEN": "t"},
        {"JIRA_URL": "https://j", "JIRA_PAT": "p"},
        {"CALDAV_URL": "https://c/", "CALDAV_CALENDAR": "Incidents"},
        {"JAMONO_SECRET_KEY": f"{Fernet.generate_key().decode()}, "
                              f"{Fernet.generate_key().decode()}"},
    ],
)
def test_integration_settings_accepted(env):
    load_settings(_env_file=None, **env)


@pytest.mark.parametrize(
    "fields, expected",
    [
        ({"url": " https://acme.atlassian.net/ ", "email": "a@acme.com", "api_token": "t"},
         CloudCredentials("https://acme.atlassian.net/", "a@acme.com", "t")),
        ({"url": "https://jira.acme.com", "pat": "p", "email": "", "api_token": None},
         DataCenterCredentials("https://jira.acme.com", "p")),
    ],
)
def test_jira_credentials_from_fields(fields, expected):
    assert jira_credentials(fields) == expected


@pytest.mark.parametrize(
    "fields, field",
    [
        ({"url": "acme.atlassian.net", "email": "a@b.c", "api_token": "t"}, "url"),
        ({"url": "https://j", "email": "a@b.c"}, "api_token"),
        ({"url": "https://j"}, "email"),
        ({"url": "https://j", "email": "a@b.c", "api_token": "t", "pat": "p"}, "pat"),
    ],
)
def test_jira_credentials_name_the_wrong_field(fields, field):
    with pytest.raises(ConnectionFailed) as caught:
        jira_credentials(fields)
    assert field in caught.value.errors


@pytest.mark.parametrize(
    "fields, field",
    [
        ({"url": "cal.example.com", "username": "u", "calendar": "X"}, "url"),
        ({"url": "https://cal.example.com/", "username": "u", "calendar": " "}, "calendar"),
    ],
)
def test_caldav_credentials_name_the_wrong_field(fields, field):
    with pytest.raises(ConnectionFailed) as caught:
        caldav_credentials(fields)
    assert field in caught.value.errors


@pytest.mark.parametrize(
    "credentials, shown, hidden",
    [
        (CloudCredentials("https://a", "me@a.com", "token-abcdefgh1234"),
         "Jira Cloud at https://a as me@a.com, API token ••••1234", "token-abcdefgh"),
        (DataCenterCredentials("https://j", "short"), "personal access token ••••", "short"),
        (CalDAVCredentials("https://u:pw@cal/", "nox", "hunter2", "Incidents"),
         "calendar 'Incidents' at https://cal/ as nox, password ••••", "hunter2"),
    ],
)
def test_descriptions_mask_secrets(credentials, shown, hidden):
    text = describe_credentials(credentials)
    assert shown in text and hidden not in text


@pytest.mark.parametrize(
    "error, expected",
    [
        (JiraUnavailable("Cannot reach Jira at https://j: connection refused."),
         "Jira is unavailable: Cannot reach Jira at https://j: connection refused."),
        (CalendarUnavailable("the CalDAV server at https://c/ failed (HTTP 502)"),
         "Calendar is unavailable: the CalDAV server at https://c/ failed (HTTP 502)"),
        (CircuitOpenError("jira", 5, 12.2),
         "Jira is unavailable (circuit open after 5 failures; retrying in 13 s)"),
        (NotConnected("calendar"), "No calendar (CalDAV) is connected in this workspace. A "
                                   "workspace admin can connect it with `/nox-connect calendar`"),
    ],
)
def test_explain(error, expected):
    assert explain(error).startswith(expected)


@pytest.mark.parametrize(
    "error, failure",
    [
        (CalendarUnavailable("down", retry_after=3), Failure(transient=True, retry_after=3)),
        (CalendarRejected("refused"), Failure(caller_fault=True)),
        (ValueError("bad ics"), Failure(caller_fault=True)),
        (CalendarAuthError("401"), Failure()),
        (CalendarNotFound("no calendar", available=[]), Failure()),
    ],
)
def test_calendar_classifier(error, failure):
    assert classify(error) == failure


@pytest.mark.parametrize(
    "text, user",
    [("<@U0ALICE>", "U0ALICE"), ("<@U0ALICE|alice>", "U0ALICE"), ("W0BOB123", "W0BOB123"),
     ("alice@acme.test", None), ("<@C0OPS>", None)],
)
def test_attendees_as_slack_users(text, user):
    match = _SLACK_USER.match(text)
    assert (match and (match["ref"] or match["id"])) == user


def test_attendees_as_slack_formatted_emails():
    assert _MAILTO.match("<mailto:bob@acme.test|bob@acme.test>")["email"] == "bob@acme.test"
