"""The Privacy Pass units an operator sells (``PRIVATE_TOKEN_UNITS``), parsed strictly.

One unit kind is one issuer key: every token of a kind is worth the same and is signed by
the same key as every other customer's in its epoch (docs/security.md). The syntax is a
comma-separated list of ``name=session:SECONDS:PRICE`` (a spent token opens a session of
that many seconds, answered with a credential) and ``name=request:PRICE`` (a spent token
opens one request); PRICE is what issuing one token debits from the authorising service
token's balance: whole piconero or XMR with a decimal point. Example::

    PRIVATE_TOKEN_UNITS=hour=session:3600:0.001, call=request:1000000
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from anonticket.config.values import parse_int, parse_piconero_or_xmr

MAX_UNITS = 16
# a batch of tokens costs count x price, one debit: that fits a debit's limit
MAX_PRICE = 2**52
# a session no longer than a credential ever lives at the gateway's other doors: a day
MAX_SESSION_SECS = 86_400
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
_RULE = ("expected name=session:SECONDS:PRICE or name=request:PRICE, comma-separated "
         "(names: 1-32 of a-z 0-9 _ -, starting with a letter or digit)")


@dataclass(frozen=True, slots=True)
class Unit:
    """A kind of private token: what spending one grants, and what issuing one costs."""

    name: str
    grants: str  # "session" or "request"
    seconds: int  # the session's length; 0 for a request
    price: int  # piconero debited per token issued

    @property
    def purpose(self) -> str:
        """Its keys' purpose in the signing-key storage."""
        return f"private_token:{self.name}"

    def spec(self) -> str:
        if self.grants == "session":
            return f"{self.name}=session:{self.seconds}:{self.price}"
        return f"{self.name}=request:{self.price}"


def parse_units(text: str) -> tuple[Unit, ...]:
    """``PRIVATE_TOKEN_UNITS``; empty: Privacy Pass off."""
    units = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            if text.strip():
                raise ValueError(_RULE)
            continue
        name, sep, rest = item.partition("=")
        name = name.strip()
        if not sep or not _NAME.fullmatch(name):
            raise ValueError(_RULE)
        fields = [field.strip() for field in rest.split(":")]
        if fields[0] == "session" and len(fields) == 3:
            seconds = parse_int(fields[1], 1, MAX_SESSION_SECS)
            units.append(Unit(name, "session", seconds, parse_piconero_or_xmr(fields[2])))
        elif fields[0] == "request" and len(fields) == 2:
            units.append(Unit(name, "request", 0, parse_piconero_or_xmr(fields[1])))
        else:
            raise ValueError(_RULE)
        if not 0 < units[-1].price <= MAX_PRICE:
            raise ValueError("a unit's price must be at least 1 piconero")
    if len({unit.name for unit in units}) != len(units):
        raise ValueError("a unit name is listed twice")
    if len(units) > MAX_UNITS:
        raise ValueError(f"at most {MAX_UNITS} units")
    return tuple(units)


# an issuer name goes into every TokenChallenge: ASCII, no separators the header would need
_ISSUER = re.compile(r"[A-Za-z0-9.:_-]{1,255}")


def parse_issuer_name(text: str) -> str:
    name = text.strip()
    if not _ISSUER.fullmatch(name):
        raise ValueError("1-255 characters of A-Z a-z 0-9 . : _ - (a host name, typically)")
    return name
