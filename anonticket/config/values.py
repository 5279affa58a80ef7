"""What each setting's text may be, and the value it becomes: one parser per kind.

Apart from ``config`` so that the declarations there read as a table. A parser raises
``ValueError`` saying what is expected; ``config`` names the setting, and masks the value
of a secret one.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable
from dataclasses import dataclass
import re
from urllib.parse import unquote_plus, urlsplit, urlunsplit

from anonticket.domain.amount import MAX_PICONERO, parse_xmr
from anonticket.domain.webhook import parse_secret


@dataclass(frozen=True, slots=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true/false, 1/0, yes/no or on/off")


def parse_host_port(text: str) -> HostPort:
    host, sep, port_text = text.strip().rpartition(":")
    if not sep or not host:
        raise ValueError("expected HOST:PORT, e.g. 127.0.0.1:8080 or [::1]:8080")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    port = parse_int(port_text, 0, 65535)
    return HostPort(host, port)


def parse_int(text: str, low: int | None = None, high: int | None = None) -> int:
    # ASCII digits with an optional minus: int() alone also takes "1_000", "٣" and "³"'s kin
    digits = text.strip().removeprefix("-")
    if not (digits.isascii() and digits.isdigit()):
        raise ValueError("expected a whole number")
    try:
        value = int(text.strip(), 10)
    except ValueError:  # more than 4,300 digits
        raise ValueError("expected a whole number") from None
    if low is not None and value < low:
        raise ValueError(f"must be at least {low}")
    if high is not None and value > high:
        raise ValueError(f"must be at most {high}")
    return value


def parse_int_at_least(low: int) -> Callable[[str], int]:
    return lambda text: parse_int(text, low)


_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def parse_decimal(text: str) -> float:
    """A number as an operator writes one, in ASCII: ``float()`` alone also takes other
    scripts' digits, ``1_000``, ``inf`` and ``nan``, which no setting means."""
    text = text.strip()
    if not _DECIMAL.fullmatch(text):
        raise ValueError("not a number")
    return float(text)


def parse_positive_seconds(text: str) -> float:
    try:
        value = parse_decimal(text)
    except ValueError:
        raise ValueError("expected a number of seconds (fractions allowed)") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError("must be a positive number of seconds")
    return value


def parse_non_negative_seconds(text: str) -> float:
    try:
        value = parse_decimal(text)
    except ValueError:
        raise ValueError("expected a number of seconds (fractions allowed)") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError("must be zero or a positive number of seconds")
    return value


def parse_file_mode(text: str) -> int:
    try:
        if not (text.strip().isascii() and text.strip().isdigit()):
            raise ValueError
        mode = int(text.strip(), 8)
    except ValueError:
        raise ValueError("expected an octal file mode such as 0660") from None
    if not 0 <= mode <= 0o777:
        raise ValueError("must be between 0000 and 0777")
    return mode


def parse_optional_path(text: str) -> str | None:
    return text or None


def parse_optional_text(text: str) -> str | None:
    return text or None


def parse_database_url(text: str) -> str:
    if not text.strip():
        raise ValueError("must not be empty")
    return text


def parse_synchronous(text: str) -> str:
    value = text.strip().upper()
    if value not in ("NORMAL", "FULL"):
        raise ValueError("expected NORMAL or FULL")
    return value


JSON_RPC_PATH = "/json_rpc"
_WALLET_URL_RULE = ("expected an http or https URL of a host, with an optional port and path, "
                    "and no credentials (set MONERO_RPC_USER and MONERO_RPC_PASSWORD instead), "
                    "query, fragment or whitespace")


def json_rpc_url(url: str) -> str:
    """The wallet's /json_rpc endpoint for a base URL or a /json_rpc URL; ValueError otherwise.

    The one rule for the wallet URL: ``MONERO_RPC_URL`` is parsed with it and the wallet
    client applies it again, so a URL ``config --check`` accepts never fails at start-up.
    epee answers 404 to ``/json_rpc/`` and to ``/``, so both are rewritten. Credentials in
    the URL are refused: they belong in the user and password settings, where they are
    never printed. The message is fixed: the URL may hold a password.
    """
    # urlsplit silently drops tabs and newlines, and yarl keeps a space in a host name
    if not isinstance(url, str) or not url.isprintable() or any(c.isspace() for c in url):
        raise ValueError(_WALLET_URL_RULE)
    try:
        parts = urlsplit(url)
        port_ok = parts.port is None or parts.port > 0
    except ValueError:  # its messages quote the port text
        raise ValueError(_WALLET_URL_RULE) from None
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or not port_ok
        or parts.username is not None
        or parts.password is not None
        or parts.query
        or parts.fragment
    ):
        raise ValueError(_WALLET_URL_RULE)
    path = parts.path.rstrip("/")
    if not path.endswith(JSON_RPC_PATH):
        path += JSON_RPC_PATH
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def check_wallet_user(user: str) -> str:
    """The wallet login user as HTTP digest auth can send it, or ValueError (fixed text).

    Applied by ``MONERO_RPC_USER``'s parser and by the wallet client, like ``json_rpc_url``.
    """
    if not user or ":" in user or not user.isprintable():
        raise ValueError("must be non-empty, without ':' or control characters")
    return user


def parse_wallet_url(text: str) -> str:
    json_rpc_url(text)
    return text


def parse_piconero_or_xmr(text: str) -> int:
    """A price: whole piconero (``50000000000``) or XMR with a decimal point (``0.05``),
    parsed exactly (never through float)."""
    text = text.strip()
    if "." in text:
        return parse_xmr(text)
    value = parse_int(text, 1)
    return value


def parse_piconero_or_zero(text: str) -> int:
    """An amount that may be 0 (a cap that turns its feature off): piconero or XMR."""
    text = text.strip()
    if text == "0":
        return 0
    return parse_piconero_or_xmr(text)


def parse_optional_price(text: str) -> int | None:
    return parse_piconero_or_xmr(text) if text.strip() else None


def parse_wallet_user(text: str) -> str | None:
    return check_wallet_user(text) if text else None


def redact_userinfo(text: str) -> str:
    """``text`` with anything between ``://`` and the last ``@`` shown as ``***``.

    For log lines: a ``user:password@`` URL must never be printed, even one that slipped
    past its parser. It errs on the side of hiding (an ``@`` in a path hides the path too).
    """
    scheme, sep, rest = text.partition("://")
    if not sep or "@" not in rest:
        return text
    return f"{scheme}://***@{rest.rpartition('@')[2]}"


# a query parameter whose (decoded) name says it holds a secret: libpq's password and
# sslpassword, and anything named like a key or a token
_SECRET_PARAMETER = re.compile(r"pass|secret|token|key|auth", re.IGNORECASE)


def redact_secrets(text: str) -> str:
    """``text`` with a URL's userinfo and the values of its secret-looking query
    parameters shown as ``***``: ``postgresql://db/x?password=…`` reaches asyncpg as a
    password, so it must never reach a log line or ``config --check`` either.

    Names are compared decoded (``pass%77ord`` is ``password`` to a URL parser).
    """
    text = redact_userinfo(text)
    head, sep, query = text.partition("?")
    if not sep:
        return text
    query, hash_sign, fragment = query.partition("#")
    parts = []
    for part in query.split("&"):
        name, equals, _ = part.partition("=")
        if equals and _SECRET_PARAMETER.search(unquote_plus(name)):
            part = f"{name}=***"
        parts.append(part)
    return f"{head}?{'&'.join(parts)}{hash_sign}{fragment}"


# the checkout's offers: how many, and the longest duration one may sell
_MAX_OFFERS = 12
_MAX_OFFER_DAYS = 3650
NETWORKS = ("mainnet", "testnet", "stagenet")


@dataclass(frozen=True, slots=True)
class Offer:
    """One thing the checkout sells: ``days`` of access (priced by ACCESS_PRICE_PER_DAY)
    or a fixed ``piconero`` amount of credit. ``key`` is what the order form sends back,
    so a form rendered before the operator changed the offers cannot buy another one."""

    days: int | None = None
    piconero: int | None = None

    @property
    def key(self) -> str:
        return f"{self.days}d" if self.days is not None else str(self.piconero)


def parse_offers(text: str) -> tuple[Offer, ...]:
    """``7d, 30d`` (days of access) or ``0.05, 0.2`` (XMR, or whole piconero); empty: none."""
    offers: list[Offer] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        if item.endswith("d"):
            offer = Offer(days=parse_int(item[:-1], 1, _MAX_OFFER_DAYS))
        else:
            try:
                offer = Offer(piconero=parse_piconero_or_xmr(item))
            except ValueError:
                raise ValueError("each offer is a number of days (30d) or an amount "
                                 "(0.05 XMR, or whole piconero)") from None
        if offer in offers:
            raise ValueError("an offer is listed twice")
        offers.append(offer)
    if len(offers) > _MAX_OFFERS:
        raise ValueError(f"at most {_MAX_OFFERS} offers")
    return tuple(offers)


def parse_network(text: str) -> str:
    value = text.strip().lower()
    if value not in NETWORKS:
        raise ValueError("expected mainnet (also for regtest), testnet or stagenet")
    return value
# RFC 6265 cookie-name: an HTTP token (RFC 9110 tchar)
_COOKIE_NAME_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789"
                               "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


def parse_cookie_name(text: str) -> str:
    if not text or not set(text) <= _COOKIE_NAME_CHARS:
        raise ValueError("expected a cookie name: letters, digits and !#$%&'*+-.^_`|~")
    return text


def parse_cookie_secure(text: str) -> str:
    value = text.strip().lower()
    if value == "auto":
        return value
    return "true" if parse_bool(value) else "false"


def parse_plain_pids(text: str) -> str:
    value = text.strip().lower()
    if value not in ("refuse", "allow"):
        raise ValueError("expected refuse or allow")
    return value


def parse_positive_rate(text: str) -> float:
    try:
        value = parse_decimal(text)
    except ValueError:
        raise ValueError("expected a number per second (fractions allowed)") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError("must be a positive number per second")
    return value


def parse_address_mode(text: str) -> str:
    value = text.strip().lower()
    if value not in ("integrated", "subaddress"):
        raise ValueError("expected integrated or subaddress")
    return value


def parse_log_level(text: str) -> str:
    value = text.strip().upper()
    if value not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError("expected DEBUG, INFO, WARNING or ERROR")
    return value


_WEBHOOK_URL_RULE = "expected an http or https URL of a host, without a fragment or whitespace"
# Standard Webhooks' example schedule: the delays before attempts 2 to 10, 75.6 h in all
DEFAULT_WEBHOOK_RETRIES = "5,300,1800,7200,18000,36000,50400,72000,86400"


def parse_webhook_url(text: str) -> str | None:
    """The receiver's URL, or None (webhooks off). A ``user:password@`` is allowed (sent as
    basic auth) and masked wherever settings are printed; the message never quotes it."""
    if not text:
        return None
    if not text.isprintable() or any(c.isspace() for c in text):
        raise ValueError(_WEBHOOK_URL_RULE)
    try:
        parts = urlsplit(text)
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        raise ValueError(_WEBHOOK_URL_RULE) from None
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok or parts.fragment:
        raise ValueError(_WEBHOOK_URL_RULE)
    return text


def parse_webhook_secret(text: str) -> str | None:
    if not text:
        return None
    parse_secret(text)
    return text


def parse_retry_schedule(text: str) -> tuple[float, ...]:
    try:
        delays = tuple(parse_decimal(part) for part in text.split(","))
    except ValueError:
        raise ValueError("expected seconds separated by commas, e.g. 5,300,1800") from None
    if not delays or len(delays) > 50 or not all(math.isfinite(d) and d > 0 for d in delays):
        raise ValueError("expected 1 to 50 positive numbers of seconds, separated by commas")
    return delays


def parse_int_between(low: int, high: int) -> Callable[[str], int]:
    return lambda text: parse_int(text, low, high)


# an audience is a name a service is known by: printable, no separators, short
_AUDIENCE = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def parse_audiences(text: str) -> tuple[str, ...]:
    """Comma-separated audience names (``files,api``): what a credential's ``aud`` may be."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    for name in names:
        if not _AUDIENCE.fullmatch(name):
            raise ValueError("each audience is 1-64 characters of A-Z a-z 0-9 . _ : -")
    if len(set(names)) != len(names):
        raise ValueError("an audience is listed twice")
    return tuple(names)
