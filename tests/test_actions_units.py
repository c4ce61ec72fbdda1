"""Pure logic of actions: secret keys and masking, the action policy rule."""

from __future__ import annotations

import base64

import pytest
from cryptography.fernet import Fernet

from storage.repositories.policy import ANY_CHANNEL, ActionPolicy, Verdict
from storage.secrets import SecretBox, UndecryptableSecret, mask, parse_keys

# Fixed keys, not generated ones: parametrized ids must be equal in every pytest-xdist worker.
K1, K2, K3 = (base64.urlsafe_b64encode(bytes([n]) * 32).decode() for n in (1, 2, 3))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (K1, [K1]),
        (f"{K1},{K2}", [K1, K2]),
        (f" {K1} , {K2} ,", [K1, K2]),
    ],
)
def test_key_lists_parse_newest_first(value, expected):
    assert parse_keys(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "holds no key"),
        (" , ", "holds no key"),
        ("not-a-key", "key #1 of 1 is not a Fernet key"),
        (f"{K1},{K2[:-4]}", "key #2 of 2 is not a Fernet key"),
        (f"{K1},{'A' * 44}x", "key #2 of 2"),
    ],
)
def test_malformed_key_lists_are_refused_without_echoing_them(value, message):
    with pytest.raises(ValueError, match=message) as caught:
        parse_keys(value)
    assert K1 not in str(caught.value)
    assert "JAMONO_SECRET_KEY" in str(caught.value)


@pytest.mark.parametrize(
    ("secret", "expected"),
    [
        (None, ""),
        ("", ""),
        ("short", "••••"),
        ("elevenchars", "••••"),
        ("ATATT3xFfGF0abcd", "••••abcd"),
    ],
)
def test_mask_shows_at_most_the_tail(secret, expected):
    assert mask(secret) == expected


def test_a_secret_round_trips_and_rotates_to_the_newest_key():
    old = SecretBox([K1])
    token = old.encrypt("pässword")
    assert token != "pässword"
    assert old.decrypt(token) == "pässword"

    both = SecretBox.from_setting(f"{K2},{K1}")
    assert both.decrypt(token) == "pässword"
    rotated = both.rotate(token)
    assert Fernet(K2).decrypt(rotated.encode()) == "pässword".encode()
    assert SecretBox([K2]).decrypt(rotated) == "pässword"


@pytest.mark.parametrize("token", ["garbage", "gAAAAA" + "x" * 80, "ünicode"])
def test_a_token_no_key_opens_is_a_clear_error(token):
    box = SecretBox([K3])
    for attempt in (box.decrypt, box.rotate):
        with pytest.raises(UndecryptableSecret, match="no key configured in JAMONO_SECRET_KEY"):
            attempt(token)
    with pytest.raises(UndecryptableSecret):
        box.decrypt(SecretBox([K1]).encrypt("x"))


def test_a_box_needs_valid_keys():
    with pytest.raises(ValueError, match="at least one"):
        SecretBox([])
    with pytest.raises(ValueError, match="not a Fernet key"):
        SecretBox(["nope"])


ZONED = ActionPolicy(
    auto_approve={
        ("jira_add_comment", ANY_CHANNEL): True,
        ("jira_add_comment", "C0PROD"): False,
        ("jira_create_issue", "C0OPS"): True,
    },
    zones={
        "nox": {
            "C0OPS": None,
            "C0PROD": frozenset({"jira_search", "jira_add_comment"}),
        }
    },
)


@pytest.mark.parametrize(
    ("persona", "tool", "risk", "channel", "verdict"),
    [
        # inside a zone without a tool list: every tool; auto-approval by channel
        ("nox", "jira_create_issue", "write", "C0OPS", Verdict(True, False)),
        ("nox", "calendar_schedule_meeting", "write", "C0OPS", Verdict(True, True)),
        ("nox", "jira_search", "read", "C0OPS", Verdict(True, False)),
        # workspace-wide auto-approval, overridden in one channel
        ("nox", "jira_add_comment", "write", "C0OPS", Verdict(True, False)),
        ("nox", "jira_add_comment", "write", "C0PROD", Verdict(True, True)),
        # a zone with a tool list
        ("nox", "jira_search", "read", "C0PROD", Verdict(True, False)),
        (
            "nox",
            "jira_create_issue",
            "write",
            "C0PROD",
            Verdict(
                False,
                False,
                "tool_not_in_zone",
                ("C0OPS", "C0PROD"),
                ("jira_add_comment", "jira_search"),
            ),
        ),
        # outside every zone: read tools too
        (
            "nox",
            "jira_search",
            "read",
            "C0GENERAL",
            Verdict(False, False, "outside_zones", ("C0OPS", "C0PROD")),
        ),
        # a persona without zones acts anywhere
        ("atlas", "jira_create_issue", "write", "C0GENERAL", Verdict(True, True)),
        ("atlas", "jira_create_issue", "write", "C0OPS", Verdict(True, False)),
        ("atlas", "get_time", "read", "C0GENERAL", Verdict(True, False)),
    ],
)
def test_policy_check(persona, tool, risk, channel, verdict):
    assert ZONED.check(persona, tool, risk, channel) == verdict


@pytest.mark.parametrize(
    ("tool", "risk", "channel", "needs_approval"),
    [
        ("jira_create_issue", "write", "C1", True),
        ("jira_search", "read", "C1", False),
        ("anything", "read", "D0DM", False),
    ],
)
def test_an_empty_policy_allows_everything_and_approves_writes(tool, risk, channel, needs_approval):
    assert ActionPolicy().check("nox", tool, risk, channel) == Verdict(True, needs_approval)


@pytest.mark.parametrize(
    ("approvers", "user", "is_admin", "within_reach", "may"),
    [
        ("requester_or_admin", "U0ALICE", False, True, True),
        ("requester_or_admin", "U0ALICE", False, False, False),
        ("requester_or_admin", "U0BOB", False, True, False),
        ("requester_or_admin", "U0BOB", True, False, True),
        ("admins_only", "U0ALICE", False, True, False),
        ("admins_only", "U0ALICE", True, False, True),
        ("admins_only", "U0BOB", True, True, True),
    ],
)
def test_who_may_approve(approvers, user, is_admin, within_reach, may):
    policy = ActionPolicy(approvers=approvers)
    assert policy.may_approve(
        user, requested_by="U0ALICE", is_admin=is_admin, within_reach=within_reach
    ) is may
