"""The HTTP authentication grammar, RFC 9110 §11: challenges, credentials and auth-params.

Privacy Pass (RFC 9577) puts its values in ordinary auth-params, and a ``WWW-Authenticate``
field may carry several challenges at once (``Bearer …, PrivateToken challenge=…, …``), so
finding ours takes the real grammar, not a split on commas:

    challenge   = auth-scheme [ 1*SP ( token68 / #auth-param ) ]
    credentials = auth-scheme [ 1*SP ( token68 / #auth-param ) ]
    auth-param  = token BWS "=" BWS ( token / quoted-string )

Parsing never raises anything but ``AuthHeaderError`` (a ValueError with a fixed message), on any
input: a header is attacker-controlled text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# an unquoted value may end in base64 padding: not RFC 9110 (a token has no "="), but
# privacypass-ts writes `challenge=AAIA…==` unquoted by default, so readers must take it
_TOKEN_VALUE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+=*")
_TOKEN68 = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_QUOTED = re.compile(r'"((?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*)"')
_OWS = re.compile(r"[ \t]*")
_SP = re.compile(r" +")


class AuthHeaderError(ValueError):
    """An authentication header that does not follow RFC 9110 §11 (fixed message)."""

    def __init__(self) -> None:
        super().__init__("malformed authentication header")


@dataclass(frozen=True)
class Challenge:
    """One challenge (or the credentials) of an authentication header.

    ``scheme`` is lower-cased (schemes are case-insensitive), so are the parameter names;
    ``params`` keeps the first value of a repeated name. ``token68`` is set instead of params
    for schemes like Bearer.
    """

    scheme: str
    params: dict[str, str] = field(default_factory=dict)
    token68: str | None = None


def _param_at(value: str, pos: int) -> tuple[str, str, int] | None:
    """An auth-param starting at pos: (name, value, end), or None if there is none there."""
    name = _TOKEN.match(value, pos)
    if name is None:
        return None
    at = _OWS.match(value, name.end()).end()
    if value[at : at + 1] != "=":
        return None
    at = _OWS.match(value, at + 1).end()
    quoted = _QUOTED.match(value, at)
    if quoted is not None:
        return name.group().lower(), re.sub(r"\\(.)", r"\1", quoted.group(1)), quoted.end()
    token = _TOKEN_VALUE.match(value, at)
    if token is not None:
        return name.group().lower(), token.group(), token.end()
    return None


def _at_list_end(value: str, pos: int) -> bool:
    """True when only OWS is left before a comma or the end of the field."""
    at = _OWS.match(value, pos).end()
    return at == len(value) or value[at] == ","


def parse_challenges(value: str) -> list[Challenge]:
    """Every challenge in a WWW-Authenticate field value (RFC 9110 §11.6.1)."""
    challenges: list[Challenge] = []
    pos = 0
    while True:
        # #rule: empty list elements and the OWS around commas are allowed
        while True:
            pos = _OWS.match(value, pos).end()
            if value[pos : pos + 1] != ",":
                break
            pos += 1
        if pos == len(value):
            return challenges
        scheme = _TOKEN.match(value, pos)
        if scheme is None:
            raise AuthHeaderError()
        pos = scheme.end()
        challenge = Challenge(scheme.group().lower())
        challenges.append(challenge)
        space = _SP.match(value, pos)
        if space is None:
            if not _at_list_end(value, pos):
                raise AuthHeaderError()
            continue
        pos = space.end()
        param = _param_at(value, pos)
        if param is None:
            token68 = _TOKEN68.match(value, pos)
            if token68 is not None and _at_list_end(value, token68.end()):
                challenges[-1] = Challenge(challenge.scheme, token68=token68.group())
                pos = token68.end()
            # else: a scheme with no parameters, the next challenge follows a comma
            elif not _at_list_end(value, pos):
                raise AuthHeaderError()
            continue
        while param is not None:
            name, param_value, pos = param
            challenge.params.setdefault(name, param_value)
            pos = _OWS.match(value, pos).end()
            if pos == len(value):
                return challenges
            if value[pos] != ",":
                raise AuthHeaderError()
            # after a comma: another auth-param of this challenge, or the next challenge
            after = pos + 1
            while True:
                after = _OWS.match(value, after).end()
                if value[after : after + 1] != ",":
                    break
                after += 1
            param = _param_at(value, after)
            if param is not None:
                pos = after


def parse_credentials(value: str) -> Challenge:
    """The credentials of an Authorization field value: exactly one scheme and its params."""
    challenges = parse_challenges(value)
    if len(challenges) != 1:
        raise AuthHeaderError()
    return challenges[0]


def format_challenge(scheme: str, params: dict[str, str]) -> str:
    """``scheme name="value", …``; values are always quoted (base64url padding is no tchar)."""
    if _TOKEN.fullmatch(scheme) is None:
        raise ValueError("an auth-scheme is a token")
    parts = []
    for name, param_value in params.items():
        if _TOKEN.fullmatch(name) is None or '"' in param_value or "\\" in param_value:
            raise ValueError("auth-param names are tokens and values need no escaping here")
        parts.append(f'{name}="{param_value}"')
    return f"{scheme} {', '.join(parts)}" if parts else scheme
