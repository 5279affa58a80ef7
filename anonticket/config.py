"""Every setting declared once: name, default, parser, help.

``anonticket config``, the README's settings table and ``Config`` all derive from
``SETTINGS``, and a docs test checks the README against it. Variable names are the
Rust original's, so an operator can switch implementations without rewriting units.
"""

from __future__ import annotations

import ipaddress
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from anonticket.amount import MAX_PICONERO, parse_xmr
from anonticket.errors import ConfigError
from anonticket.webhook import parse_secret


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
    port = _parse_int(port_text, 0, 65535)
    return HostPort(host, port)


def _parse_int(text: str, low: int | None = None, high: int | None = None) -> int:
    try:
        value = int(text.strip(), 10)
    except ValueError:
        raise ValueError("expected a whole number") from None
    if low is not None and value < low:
        raise ValueError(f"must be at least {low}")
    if high is not None and value > high:
        raise ValueError(f"must be at most {high}")
    return value


def _int_at_least(low: int) -> Callable[[str], int]:
    return lambda text: _parse_int(text, low)


def _positive_seconds(text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError("expected a number of seconds (fractions allowed)") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError("must be a positive number of seconds")
    return value


def _non_negative_seconds(text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError("expected a number of seconds (fractions allowed)") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError("must be zero or a positive number of seconds")
    return value


def _file_mode(text: str) -> int:
    try:
        mode = int(text.strip(), 8)
    except ValueError:
        raise ValueError("expected an octal file mode such as 0660") from None
    if not 0 <= mode <= 0o777:
        raise ValueError("must be between 0000 and 0777")
    return mode


def _optional_path(text: str) -> str | None:
    return text or None


def _optional_text(text: str) -> str | None:
    return text or None


def _database_url(text: str) -> str:
    if not text.strip():
        raise ValueError("must not be empty")
    return text


def _synchronous(text: str) -> str:
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


def _wallet_url(text: str) -> str:
    json_rpc_url(text)
    return text


def parse_piconero_or_xmr(text: str) -> int:
    """A price: whole piconero (``50000000000``) or XMR with a decimal point (``0.05``),
    parsed exactly (never through float)."""
    text = text.strip()
    if "." in text:
        return parse_xmr(text)
    value = _parse_int(text, 1)
    return value


def _optional_price(text: str) -> int | None:
    return parse_piconero_or_xmr(text) if text.strip() else None


def _wallet_user(text: str) -> str | None:
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
            offer = Offer(days=_parse_int(item[:-1], 1, _MAX_OFFER_DAYS))
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


def _network(text: str) -> str:
    value = text.strip().lower()
    if value not in NETWORKS:
        raise ValueError("expected mainnet (also for regtest), testnet or stagenet")
    return value
# RFC 6265 cookie-name: an HTTP token (RFC 9110 tchar)
_COOKIE_NAME_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789"
                               "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


def _cookie_name(text: str) -> str:
    if not text or not set(text) <= _COOKIE_NAME_CHARS:
        raise ValueError("expected a cookie name: letters, digits and !#$%&'*+-.^_`|~")
    return text


def _cookie_secure(text: str) -> str:
    value = text.strip().lower()
    if value == "auto":
        return value
    return "true" if parse_bool(value) else "false"


def _log_level(text: str) -> str:
    value = text.strip().upper()
    if value not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError("expected DEBUG, INFO, WARNING or ERROR")
    return value


_WEBHOOK_URL_RULE = "expected an http or https URL of a host, without a fragment or whitespace"
# Standard Webhooks' example schedule: the delays before attempts 2 to 10, 75.6 h in all
DEFAULT_WEBHOOK_RETRIES = "5,300,1800,7200,18000,36000,50400,72000,86400"


def _webhook_url(text: str) -> str | None:
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


def _webhook_secret(text: str) -> str | None:
    if not text:
        return None
    parse_secret(text)
    return text


def _retry_schedule(text: str) -> tuple[float, ...]:
    try:
        delays = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise ValueError("expected seconds separated by commas, e.g. 5,300,1800") from None
    if not delays or len(delays) > 50 or not all(math.isfinite(d) and d > 0 for d in delays):
        raise ValueError("expected 1 to 50 positive numbers of seconds, separated by commas")
    return delays


@dataclass(frozen=True, slots=True)
class Setting:
    name: str
    attr: str
    default: str
    parse: Callable[[str], Any]
    help: str
    secret: bool = False


SETTINGS: tuple[Setting, ...] = (
    Setting("DATABASE_URL", "database_url", "./var/anonticket.db", _database_url,
            "SQLite file: a path or sqlite://path, created with its directory if missing; or "
            "postgresql://… (several hosts with target_session_attrs=read-write) for PostgreSQL."),
    Setting("DATABASE_SYNCHRONOUS", "database_synchronous", "NORMAL", _synchronous,
            "NORMAL (fast; a power cut may lose the last commits) or FULL (fsync every commit)."),
    Setting("DATABASE_BUSY_TIMEOUT_MS", "database_busy_timeout_ms", "5000", _int_at_least(0),
            "How long a write waits for a lock held by another process before answering 503."),
    Setting("DATABASE_LEADER_CHECK_SECS", "database_leader_check_secs", "1", _positive_seconds,
            "PostgreSQL only: how often the active instance checks its leader lock and a "
            "standing-by one tries to take it (the takeover time is about this plus start-up)."),
    Setting("API_BIND_ADDRESS", "api_bind_address", "127.0.0.1:8080", parse_host_port,
            "Public listener (customer routes) as HOST:PORT; unused when API_UNIX_SOCKET is set."),
    Setting("API_UNIX_SOCKET", "api_unix_socket", "", _optional_path,
            "If set, the public listener is this Unix socket instead of TCP."),
    Setting("API_UNIX_SOCKET_MODE", "api_unix_socket_mode", "0660", _file_mode,
            "File mode of the public Unix socket (octal)."),
    Setting("API_INTERNAL_BIND_ADDRESS", "api_internal_bind_address", "127.0.0.1:9090",
            parse_host_port,
            "Internal listener (/metrics, admin routes) as HOST:PORT; must be loopback unless "
            "API_INTERNAL_TOKEN is set."),
    Setting("API_INTERNAL_UNIX_SOCKET", "api_internal_unix_socket", "", _optional_path,
            "If set, the internal listener is this Unix socket (mode 0600) instead of TCP."),
    Setting("API_INTERNAL_TOKEN", "api_internal_token", "", _optional_text,
            "Bearer token required on admin routes when set (required for a non-loopback "
            "internal address).", secret=True),
    Setting("API_NEGATIVE_CACHE_TTL_SECS", "api_negative_cache_ttl_secs", "0.5",
            _non_negative_seconds, "How long an unknown PID is answered 404 without a lookup."),
    Setting("API_NEGATIVE_CACHE_CAPACITY", "api_negative_cache_capacity", "100000",
            _int_at_least(0), "Most unknown PIDs remembered by the negative cache."),
    Setting("API_ACCEPT_LONG_PIDS", "api_accept_long_pids", "false", parse_bool,
            "Accept genuine 64-hex payment IDs (clear text on chain, so they can be front-run)."),
    Setting("API_MAX_IN_FLIGHT", "api_max_in_flight", "512", _int_at_least(1),
            "Requests handled at once per listener; beyond it a fast 503 with Retry-After."),
    Setting("API_KEEPALIVE_TIMEOUT_SECS", "api_keepalive_timeout_secs", "15", _positive_seconds,
            "An idle or slowly-sent-headers connection is closed after this long."),
    Setting("API_BODY_TIMEOUT_SECS", "api_body_timeout_secs", "10", _positive_seconds,
            "A request body must arrive within this long, or the answer is 408."),
    Setting("API_ACCESS_LOG", "api_access_log", "true", parse_bool,
            "Write an access log line per request (method, route template, status, duration)."),
    Setting("LOG_LEVEL", "log_level", "INFO", _log_level, "DEBUG, INFO, WARNING or ERROR."),
    Setting("MONERO_RPC_URL", "monero_rpc_url", "http://127.0.0.1:18082", _wallet_url,
            "monero-wallet-rpc base URL or its /json_rpc URL; no user:password@ in it (the "
            "login goes in MONERO_RPC_USER and MONERO_RPC_PASSWORD), no query or fragment."),
    Setting("MONERO_RPC_USER", "monero_rpc_user", "", _wallet_user,
            "wallet-rpc login user (HTTP digest), if --rpc-login is used."),
    Setting("MONERO_RPC_PASSWORD", "monero_rpc_password", "", _optional_text,
            "wallet-rpc login password (HTTP digest).", secret=True),
    Setting("MONERO_RPC_TIMEOUT_SECS", "monero_rpc_timeout_secs", "10", _positive_seconds,
            "Timeout of each wallet-rpc call."),
    Setting("MONITOR_ENABLED", "monitor_enabled", "true", parse_bool,
            "Run the wallet monitor (false/0 to serve from the database only)."),
    Setting("MONITOR_START_HEIGHT", "monitor_start_height", "0", _int_at_least(0),
            "First block height scanned on an empty database (later the stored cursor wins); "
            "the rescan margin never reads below it, so keep it set."),
    Setting("MONITOR_POLL_INTERVAL_SECS", "monitor_poll_interval_secs", "5", _positive_seconds,
            "Seconds between wallet polls (fractions allowed)."),
    Setting("MONITOR_MIN_CONFIRMATIONS", "monitor_min_confirmations", "10", _int_at_least(1),
            "Confirmations a transfer needs before it is credited."),
    Setting("MONITOR_RESCAN_MARGIN_BLOCKS", "monitor_rescan_margin_blocks", "100",
            _int_at_least(0),
            "How many of the last scanned blocks are re-read when a reorg may have changed them "
            "(and every 2 min), so a payment a reorg deeper than MONITOR_MIN_CONFIRMATIONS mines "
            "there is still credited; 0 turns it off."),
    Setting("MONITOR_MIN_PAYMENT_AMOUNT", "monitor_min_payment_amount", "10000000000",
            _int_at_least(0), "Smallest confirmed total (piconero) a PID can redeem."),
    Setting("MONITOR_READY_MAX_AGE_SECS", "monitor_ready_max_age_secs", "30", _positive_seconds,
            "Readiness fails when no wallet poll succeeded for this long."),
    Setting("ACCESS_PRICE_PER_DAY", "access_price_per_day", "", _optional_price,
            "Price of one day of access, in piconero or XMR with a decimal point (0.01); "
            "empty: tokens never expire."),
    Setting("DEBIT_IDEMPOTENCY_TTL_SECS", "debit_idempotency_ttl_secs", "86400",
            _int_at_least(86400),
            "How long a debit's Idempotency-Key is remembered (at least 24 h)."),
    Setting("WEBHOOK_URL", "webhook_url", "", _webhook_url,
            "Where signed event notifications are POSTed (http or https; docs/webhooks.md); "
            "empty: webhooks off, no event is recorded."),
    Setting("WEBHOOK_SECRET", "webhook_secret", "", _webhook_secret,
            "Signing secret, whsec_ + base64 of 24-64 random bytes ('anonticket webhook "
            "secret' makes one); required with WEBHOOK_URL.", secret=True),
    Setting("WEBHOOK_SECRET_PREVIOUS", "webhook_secret_previous", "", _webhook_secret,
            "The secret being rotated out: while set, every delivery carries both signatures.",
            secret=True),
    Setting("WEBHOOK_TIMEOUT_SECS", "webhook_timeout_secs", "15", _positive_seconds,
            "Each delivery attempt must be answered within this long, or it failed."),
    Setting("WEBHOOK_MAX_IN_FLIGHT", "webhook_max_in_flight", "4", _int_at_least(1),
            "Delivery attempts in flight at once."),
    Setting("WEBHOOK_RETRY_SCHEDULE_SECS", "webhook_retry_schedule_secs",
            DEFAULT_WEBHOOK_RETRIES, _retry_schedule,
            "Delays before each retry (jittered; a longer Retry-After wins); after the last "
            "retry fails the event is dead. The default spans about 75 hours."),
    Setting("WEBHOOK_RETENTION_SECS", "webhook_retention_secs", "604800", _int_at_least(3600),
            "How long a delivered event stays listed (and replayable) before it is pruned."),
    Setting("MERCHANT_ADDRESS", "merchant_address", "", _optional_text,
            "The operator's primary address the checkout builds integrated addresses from; "
            "empty: asked from the wallet (get_address). Both set: they must match."),
    Setting("MONERO_NETWORK", "monero_network", "mainnet", _network,
            "mainnet (regtest uses its addresses too), testnet or stagenet: the network "
            "MERCHANT_ADDRESS and the wallet's address must belong to."),
    Setting("CHECKOUT_OFFERS", "checkout_offers", "", parse_offers,
            "What /pay sells, comma-separated: days of access (7d, 30d; needs "
            "ACCESS_PRICE_PER_DAY) or amounts (0.05 XMR or piconero); empty: one offer at "
            "MONITOR_MIN_PAYMENT_AMOUNT."),
    Setting("ACCESS_COOKIE_NAME", "access_cookie_name", "anonticket_access", _cookie_name,
            "Name of the cookie /access sets and the gateway check reads (the shipped proxy "
            "configs strip it by this name)."),
    Setting("ACCESS_COOKIE_SECURE", "access_cookie_secure", "auto", _cookie_secure,
            "auto: the access cookie is Secure when the proxy says the request came over HTTPS "
            "(X-Forwarded-Proto: https), not over a plain-HTTP onion service; true or false."),
    Setting("ACCESS_COOKIE_MAX_AGE_SECS", "access_cookie_max_age_secs", "0", _int_at_least(0),
            "Lifetime of the access cookie; 0: a session cookie, gone when the browser closes."),
)


@dataclass(frozen=True, slots=True)
class Config:
    database_url: str
    database_synchronous: str
    database_busy_timeout_ms: int
    database_leader_check_secs: float
    api_bind_address: HostPort
    api_unix_socket: str | None
    api_unix_socket_mode: int
    api_internal_bind_address: HostPort
    api_internal_unix_socket: str | None
    api_internal_token: str | None
    api_negative_cache_ttl_secs: float
    api_negative_cache_capacity: int
    api_accept_long_pids: bool
    api_max_in_flight: int
    api_keepalive_timeout_secs: float
    api_body_timeout_secs: float
    api_access_log: bool
    log_level: str
    monero_rpc_url: str
    monero_rpc_user: str | None
    monero_rpc_password: str | None
    monero_rpc_timeout_secs: float
    monitor_enabled: bool
    monitor_start_height: int
    monitor_poll_interval_secs: float
    monitor_min_confirmations: int
    monitor_rescan_margin_blocks: int
    monitor_min_payment_amount: int
    monitor_ready_max_age_secs: float
    access_price_per_day: int | None
    debit_idempotency_ttl_secs: int
    webhook_url: str | None
    webhook_secret: str | None
    webhook_secret_previous: str | None
    webhook_timeout_secs: float
    webhook_max_in_flight: int
    webhook_retry_schedule_secs: tuple[float, ...]
    webhook_retention_secs: int
    merchant_address: str | None
    monero_network: str
    checkout_offers: tuple[Offer, ...]
    access_cookie_name: str
    access_cookie_secure: str
    access_cookie_max_age_secs: int

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Config:
        """Parse every setting; the first bad one raises ConfigError naming it (not its value)."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for setting in SETTINGS:
            raw = environ.get(setting.name, setting.default)
            try:
                values[setting.attr] = setting.parse(raw)
            except ValueError as exc:
                problem = redact_userinfo(str(exc))
                if setting.secret and raw and raw in problem:
                    problem = "not a valid value (not shown: it is a secret)"
                raise ConfigError(f"{setting.name}: {problem}") from None
        values.update(overrides)
        config = cls(**values)
        config.check()
        return config

    def check(self) -> None:
        """Rules that span settings."""
        internal_is_tcp = self.api_internal_unix_socket is None
        if internal_is_tcp and not self.api_internal_bind_address.is_loopback and not self.api_internal_token:
            raise ConfigError(
                "API_INTERNAL_BIND_ADDRESS: a non-loopback internal address needs API_INTERNAL_TOKEN"
            )
        if (self.access_cookie_name.startswith(("__Host-", "__Secure-"))
                and self.access_cookie_secure != "true"):
            # browsers drop such a cookie unless it is Secure, so /access would loop
            raise ConfigError("ACCESS_COOKIE_NAME: a __Host- or __Secure- name needs "
                              "ACCESS_COOKIE_SECURE=true")
        if (self.monero_rpc_user is None) != (self.monero_rpc_password is None):
            raise ConfigError("MONERO_RPC_USER: set both MONERO_RPC_USER and MONERO_RPC_PASSWORD")
        if self.webhook_url and not self.webhook_secret:
            raise ConfigError("WEBHOOK_SECRET: required when WEBHOOK_URL is set")
        if self.webhook_secret_previous and not self.webhook_secret:
            raise ConfigError("WEBHOOK_SECRET_PREVIOUS: set WEBHOOK_SECRET too (the new secret)")
        for offer in self.checkout_offers:
            if offer.days is not None and self.access_price_per_day is None:
                raise ConfigError("CHECKOUT_OFFERS: offers in days need ACCESS_PRICE_PER_DAY")
            price = self.offer_price(offer)
            if price < self.monitor_min_payment_amount:
                raise ConfigError("CHECKOUT_OFFERS: an offer below MONITOR_MIN_PAYMENT_AMOUNT "
                                  "could never be redeemed")
            if price > MAX_PICONERO:
                raise ConfigError("CHECKOUT_OFFERS: an offer is larger than one Monero transfer "
                                  "can carry")

    def offer_price(self, offer: Offer) -> int:
        """Piconero the customer pays for ``offer`` (checked by ``check``)."""
        if offer.days is not None:
            return offer.days * (self.access_price_per_day or 0)
        return offer.piconero or 0

    def describe(self) -> dict[str, str]:
        """Effective settings for the start-up log and ``config --check``: a secret setting
        shows as ``***``, and so does the userinfo of any URL in the others."""
        out = {}
        for setting in SETTINGS:
            value = getattr(self, setting.attr)
            if setting.secret and value:
                value = "***"
            elif setting.parse is _file_mode:
                value = f"{value:04o}"
            elif setting.parse is _retry_schedule:
                value = ",".join(f"{delay:g}" for delay in value)
            elif setting.parse is _webhook_url and value and "?" in value:
                value = value.split("?", 1)[0] + "?***"  # a query may hold a key too
            elif setting.parse is parse_offers:
                value = ", ".join(offer.key for offer in value)
            out[setting.name] = "" if value is None else redact_userinfo(str(value))
        return out



def settings_table_markdown() -> str:
    """The README's settings table, derived from SETTINGS (a docs test keeps them equal)."""
    rows = ["| Variable | Default | Meaning |", "| --- | --- | --- |"]
    for setting in SETTINGS:
        default = f"`{setting.default}`" if setting.default else "(empty)"
        rows.append(f"| `{setting.name}` | {default} | {setting.help} |")
    return "\n".join(rows) + "\n"
