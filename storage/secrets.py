"""Encryption of secrets at rest: Fernet tokens under a list of keys, newest first (MultiFernet).

``JAMONO_SECRET_KEY`` holds the keys comma-separated, newest first. New secrets are encrypted
with the newest key; every listed key can still decrypt, so a key is replaced by putting the new
one in front, running ``rotate`` over the stored tokens, then removing the old one. Fernet is
AES-128-CBC with HMAC-SHA256 (cryptography's ``Fernet`` spec, https://github.com/fernet/spec).
"""

from __future__ import annotations

import binascii
from collections.abc import Sequence
from urllib.parse import urlsplit

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

MASK = "••••"


class SecretsError(Exception):
    """A secret cannot be encrypted or decrypted; the message says why and what to do."""


class UndecryptableSecret(SecretsError):
    """No configured key opens a token: it was written under a key no longer configured,
    or the stored value was altered."""


def parse_keys(value: str, setting: str = "JAMONO_SECRET_KEY") -> list[str]:
    """Split a comma-separated key list (newest first) and check each is a Fernet key.

    Blanks around commas and empty items (a trailing comma) are ignored. The message of an
    error names the key by position, never its value.

    Raises:
        ValueError: no key at all, or an item that is not 32 url-safe base64-encoded bytes.
    """
    keys = [item.strip() for item in value.split(",") if item.strip()]
    if not keys:
        raise ValueError(f"{setting} holds no key; generate one with Fernet.generate_key()")
    for position, key in enumerate(keys, start=1):
        try:
            Fernet(key)
        except (ValueError, binascii.Error):
            raise ValueError(
                f"{setting}: key #{position} of {len(keys)} is not a Fernet key "
                "(32 url-safe base64-encoded bytes, 44 characters)"
            ) from None
    return keys


def without_userinfo(url: str) -> str:
    """``url`` without any ``user:password@`` (RFC 3986 §3.2.1 userinfo), fit to show, log or
    store in clear."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


def generate_key() -> str:
    """A new random Fernet key (44 url-safe base64 characters)."""
    return Fernet.generate_key().decode("ascii")


def mask(secret: str | None, visible: int = 4) -> str:
    """``"••••abcd"`` for showing a secret back: its last ``visible`` characters at most.

    Secrets shorter than three times ``visible`` show no characters at all, so a short
    password is not mostly revealed. ``None`` or ``""`` gives ``""``.
    """
    if not secret:
        return ""
    if len(secret) < 3 * visible:
        return MASK
    return MASK + secret[-visible:]


class SecretBox:
    """Encrypts and decrypts text with the newest of several Fernet keys.

    Args:
        keys: Fernet keys (str or bytes), newest first; at least one.

    Raises:
        ValueError: no key, or a malformed key.
    """

    def __init__(self, keys: Sequence[str | bytes]) -> None:
        if not keys:
            raise ValueError("a SecretBox needs at least one Fernet key")
        try:
            self._fernet = MultiFernet([Fernet(key) for key in keys])
        except (ValueError, binascii.Error):
            raise ValueError(
                "a key is not a Fernet key (32 url-safe base64-encoded bytes)"
            ) from None

    @classmethod
    def from_setting(cls, value: str, setting: str = "JAMONO_SECRET_KEY") -> SecretBox:
        """Build from the comma-separated setting; see :func:`parse_keys` for the errors."""
        return cls(parse_keys(value, setting))

    def encrypt(self, plaintext: str) -> str:
        """A Fernet token (url-safe base64 text) of ``plaintext`` under the newest key."""
        return self._fernet.encrypt(plaintext.encode("utf-8")).decode("ascii")

    def decrypt(self, token: str) -> str:
        """The plaintext of ``token``.

        Raises:
            UndecryptableSecret: no configured key opens it.
        """
        try:
            return self._fernet.decrypt(token.encode("ascii")).decode("utf-8")
        except (InvalidToken, UnicodeEncodeError):
            raise UndecryptableSecret(_NO_KEY_OPENS_IT) from None

    def rotate(self, token: str) -> str:
        """``token`` re-encrypted under the newest key (its original timestamp is kept).

        Raises:
            UndecryptableSecret: no configured key opens it.
        """
        try:
            return self._fernet.rotate(token.encode("ascii")).decode("ascii")
        except (InvalidToken, UnicodeEncodeError):
            raise UndecryptableSecret(_NO_KEY_OPENS_IT) from None


_NO_KEY_OPENS_IT = (
    "no key configured in JAMONO_SECRET_KEY opens this secret: it was encrypted with a key "
    "that is no longer listed (put that key back, after the newest) or the stored value was altered"
)
