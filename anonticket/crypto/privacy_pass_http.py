"""The HTTP face of Privacy Pass type 0x0002: header values and the issuer directory.

- ``WWW-Authenticate: PrivateToken challenge="…", token-key="…"`` and
  ``Authorization: PrivateToken token="…"`` (RFC 9577 §2.1, §2.2), read with the RFC 9110
  grammar of ``http_auth`` so a PrivateToken challenge beside a Bearer one is found;
- the issuer directory object served at ``/.well-known/private-token-issuer-directory``
  (RFC 9578 §4), and the choice of the key a client uses from it.

Values are base64url; we write them padded (RFC 9578 §4 asks it of the directory, and
privacypass-ts rejects an unpadded value) and read them padded or not. Parsers raise only
``privacy_pass.PrivacyPassError`` subclasses, whatever the input.
"""

from __future__ import annotations

import base64
import math
import re
from dataclasses import dataclass
from typing import Any, Iterable

from anonticket.crypto.http_auth import AuthHeaderError, format_challenge, parse_challenges
from anonticket.crypto.privacy_pass import (
    TOKEN_TYPE, MalformedMessage, Token, TokenChallenge, TokenKey,
)

AUTH_SCHEME = "PrivateToken"
DIRECTORY_MEDIA_TYPE = "application/private-token-issuer-directory"
DIRECTORY_PATH = "/.well-known/private-token-issuer-directory"


def b64url_encode(data: bytes) -> str:
    """base64url with padding."""
    return base64.urlsafe_b64encode(data).decode("ascii")


_B64URL = re.compile(r"[A-Za-z0-9_-]*={0,2}")


def b64url_decode(text: str) -> bytes:
    """base64url, padded or not (both are seen in the wild); anything else is malformed."""
    if _B64URL.fullmatch(text) is None:
        raise MalformedMessage()
    unpadded = text.rstrip("=")
    if len(unpadded) % 4 == 1 or (text != unpadded and len(text) % 4):
        raise MalformedMessage()
    return base64.urlsafe_b64decode(unpadded + "=" * (-len(unpadded) % 4))


# --- header values (RFC 9577 §2.1, §2.2) ------------------------------------------------------


@dataclass(frozen=True)
class PrivateTokenChallenge:
    """One ``PrivateToken`` challenge of a WWW-Authenticate field, decoded."""

    challenge: bytes
    token_key: bytes
    max_age: int | None = None


def format_www_authenticate(challenge: bytes, token_key: TokenKey,
                            max_age: int | None = None) -> str:
    """``PrivateToken challenge="…", token-key="…"[, max-age="…"]`` (RFC 9577 §2.1)."""
    params = {"challenge": b64url_encode(challenge), "token-key": b64url_encode(token_key.spki)}
    if max_age is not None:
        params["max-age"] = str(int(max_age))
    return format_challenge(AUTH_SCHEME, params)


def parse_www_authenticate(value: str) -> list[PrivateTokenChallenge]:
    """Every PrivateToken challenge in a WWW-Authenticate value (others, e.g. Bearer, skipped).

    The challenge is checked to decode as a TokenChallenge; the key is returned as the SPKI
    bytes (``TokenKey.from_spki`` checks it), since a client compares it with the directory.
    """
    try:
        challenges = parse_challenges(value)
    except AuthHeaderError:
        raise MalformedMessage() from None
    found = []
    for item in challenges:
        if item.scheme != AUTH_SCHEME.lower():
            continue
        if "challenge" not in item.params or "token-key" not in item.params:
            raise MalformedMessage()
        challenge = b64url_decode(item.params["challenge"])
        TokenChallenge.decode(challenge)
        max_age = item.params.get("max-age")
        # a plain count of seconds; ten digits bound int() (which refuses 4,300+ digits anyway)
        if max_age is not None and not (max_age.isascii() and max_age.isdigit() and len(max_age) <= 10):
            raise MalformedMessage()
        found.append(PrivateTokenChallenge(challenge, b64url_decode(item.params["token-key"]),
                                           int(max_age) if max_age is not None else None))
    return found


def format_authorization(token: Token) -> str:
    """``PrivateToken token="…"`` (RFC 9577 §2.2)."""
    return format_challenge(AUTH_SCHEME, {"token": b64url_encode(token.encode())})


def parse_authorization(value: str) -> Token | None:
    """The Token of an ``Authorization: PrivateToken token="…"`` value.

    None when the credentials are of another scheme (a Bearer token is not ours to judge);
    MalformedMessage or UnsupportedTokenType when they are PrivateToken but unusable.
    """
    try:
        credentials = parse_challenges(value)
    except AuthHeaderError:
        raise MalformedMessage() from None
    if not any(item.scheme == AUTH_SCHEME.lower() for item in credentials):
        return None
    if len(credentials) != 1 or "token" not in credentials[0].params:
        raise MalformedMessage()
    return Token.decode(b64url_decode(credentials[0].params["token"]))


# --- the issuer directory (RFC 9578 §4) -------------------------------------------------------


@dataclass(frozen=True)
class DirectoryKey:
    token_key: TokenKey
    not_before: int | None = None


@dataclass(frozen=True)
class IssuerDirectory:
    issuer_request_uri: str
    token_keys: tuple[DirectoryKey, ...]

    def to_json(self) -> dict[str, Any]:
        """The directory object; keys in order of preference, as the issuer lists them."""
        keys = []
        for entry in self.token_keys:
            item: dict[str, Any] = {"token-type": TOKEN_TYPE,
                                    "token-key": b64url_encode(entry.token_key.spki)}
            if entry.not_before is not None:
                item["not-before"] = int(entry.not_before)
            keys.append(item)
        return {"issuer-request-uri": self.issuer_request_uri, "token-keys": keys}

    @classmethod
    def from_json(cls, data: Any) -> IssuerDirectory:
        """Parse a directory object; entries of other token types are skipped."""
        if not isinstance(data, dict) or not isinstance(data.get("issuer-request-uri"), str) \
                or not isinstance(data.get("token-keys"), list):
            raise MalformedMessage()
        keys = []
        for item in data["token-keys"]:
            if not isinstance(item, dict) or type(item.get("token-type")) is not int:
                raise MalformedMessage()
            if item["token-type"] != TOKEN_TYPE:
                continue
            not_before = item.get("not-before")
            if not isinstance(item.get("token-key"), str) or not (
                    not_before is None or type(not_before) is int):
                raise MalformedMessage()
            keys.append(DirectoryKey(TokenKey.from_spki(b64url_decode(item["token-key"])),
                                     not_before))
        return cls(data["issuer-request-uri"], tuple(keys))

    def current_key(self, now: float) -> DirectoryKey | None:
        """The key a client uses now: the first with no not-before, or one already past."""
        for entry in self.token_keys:
            if entry.not_before is None or entry.not_before <= math.floor(now):
                return entry
        return None


def issuer_directory(issuer_request_uri: str,
                     keys: Iterable[tuple[TokenKey, int | None]]) -> dict[str, Any]:
    """The JSON object served at DIRECTORY_PATH (media type DIRECTORY_MEDIA_TYPE)."""
    entries = tuple(DirectoryKey(key, not_before) for key, not_before in keys)
    return IssuerDirectory(issuer_request_uri, entries).to_json()
