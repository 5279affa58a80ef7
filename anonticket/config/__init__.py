"""Every setting declared once: name, default, parser, help.

``anonticket config``, the settings table of docs/settings.md and ``Config`` all derive
from ``SETTINGS``, and a docs test checks that page against it. Variable names are the
Rust original's, so an operator can switch implementations without rewriting units.

May import: crypto, domain.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from anonticket.domain.amount import MAX_PICONERO
from anonticket.config.values import (
    DEFAULT_WEBHOOK_RETRIES,
    HostPort,
    Offer,
    parse_address_mode,
    parse_audiences,
    parse_bool,
    parse_cookie_name,
    parse_cookie_secure,
    parse_database_url,
    parse_file_mode,
    parse_host_port,
    parse_int_at_least,
    parse_int_between,
    parse_log_level,
    parse_network,
    parse_non_negative_seconds,
    parse_offers,
    parse_optional_path,
    parse_optional_price,
    parse_piconero_or_zero,
    parse_optional_text,
    parse_plain_pids,
    parse_positive_rate,
    parse_positive_seconds,
    parse_retry_schedule,
    parse_synchronous,
    parse_wallet_url,
    parse_wallet_user,
    parse_webhook_secret,
    parse_webhook_url,
    redact_secrets,
)
from anonticket.config.units import Unit, parse_issuer_name, parse_units
from anonticket.domain.errors import ConfigError
from anonticket.domain.timestamp import MAX_CREDIT_SECONDS, SECONDS_PER_DAY


@dataclass(frozen=True, slots=True)
class Setting:
    name: str
    attr: str
    default: str
    parse: Callable[[str], Any]
    help: str
    secret: bool = False


SETTINGS: tuple[Setting, ...] = (
    Setting("DATABASE_URL", "database_url", "./var/anonticket.db", parse_database_url,
            "SQLite file: a path or sqlite://path, created with its directory if missing; or "
            "postgresql://… (several hosts with target_session_attrs=read-write) for PostgreSQL."),
    Setting("DATABASE_SYNCHRONOUS", "database_synchronous", "NORMAL", parse_synchronous,
            "NORMAL (fast; a power cut may lose the last commits) or FULL (fsync every commit)."),
    Setting("DATABASE_BUSY_TIMEOUT_MS", "database_busy_timeout_ms", "5000", parse_int_at_least(0),
            "How long a write waits for a lock held by another process before answering 503."),
    Setting("DATABASE_LEADER_CHECK_SECS", "database_leader_check_secs", "1", parse_positive_seconds,
            "PostgreSQL only: how often the active instance checks its leader lock and a "
            "standing-by one tries to take it (the takeover time is about this plus start-up)."),
    Setting("API_BIND_ADDRESS", "api_bind_address", "127.0.0.1:8080", parse_host_port,
            "Public listener (customer routes) as HOST:PORT; unused when API_UNIX_SOCKET is set."),
    Setting("API_UNIX_SOCKET", "api_unix_socket", "", parse_optional_path,
            "If set, the public listener is this Unix socket instead of TCP."),
    Setting("API_UNIX_SOCKET_MODE", "api_unix_socket_mode", "0660", parse_file_mode,
            "File mode of the public Unix socket (octal)."),
    Setting("API_INTERNAL_BIND_ADDRESS", "api_internal_bind_address", "127.0.0.1:9090",
            parse_host_port,
            "Internal listener (/metrics, admin routes) as HOST:PORT; must be loopback unless "
            "API_INTERNAL_TOKEN is set."),
    Setting("API_INTERNAL_UNIX_SOCKET", "api_internal_unix_socket", "", parse_optional_path,
            "If set, the internal listener is this Unix socket (mode 0600) instead of TCP."),
    Setting("API_INTERNAL_TOKEN", "api_internal_token", "", parse_optional_text,
            "Bearer token required on admin routes when set (required for a non-loopback "
            "internal address).", secret=True),
    Setting("API_NEGATIVE_CACHE_TTL_SECS", "api_negative_cache_ttl_secs", "0.5",
            parse_non_negative_seconds, "How long an unknown PID is answered 404 without a lookup."),
    Setting("API_NEGATIVE_CACHE_CAPACITY", "api_negative_cache_capacity", "100000",
            parse_int_at_least(0), "Most unknown PIDs remembered by the negative cache."),
    Setting("API_ACCEPT_LONG_PIDS", "api_accept_long_pids", "false", parse_bool,
            "Accept genuine 64-hex payment IDs (clear text on chain, so they can be front-run)."),
    Setting("REDEEM_PLAIN_PIDS", "redeem_plain_pids", "refuse", parse_plain_pids,
            "refuse: a bare PID (no receipt) redeems or tops up only payments credited before "
            "the database adopted receipts, and any other payment answers it as unknown; "
            "allow: every bare PID claims its payment, so whoever saw the integrated address "
            "(the payer's exchange or wallet) can too (docs/operations.md#receipts)."),
    Setting("API_MAX_IN_FLIGHT", "api_max_in_flight", "512", parse_int_at_least(1),
            "Requests handled at once per listener; beyond it a fast 503 with Retry-After."),
    Setting("API_KEEPALIVE_TIMEOUT_SECS", "api_keepalive_timeout_secs", "15", parse_positive_seconds,
            "An idle or slowly-sent-headers connection is closed after this long."),
    Setting("API_BODY_TIMEOUT_SECS", "api_body_timeout_secs", "10", parse_positive_seconds,
            "A request body must arrive within this long, or the answer is 408."),
    Setting("API_ACCESS_LOG", "api_access_log", "true", parse_bool,
            "Write an access log line per request (method, route template, status, duration)."),
    Setting("LOG_LEVEL", "log_level", "INFO", parse_log_level, "DEBUG, INFO, WARNING or ERROR."),
    Setting("MONERO_RPC_URL", "monero_rpc_url", "http://127.0.0.1:18082", parse_wallet_url,
            "monero-wallet-rpc base URL or its /json_rpc URL; no user:password@ in it (the "
            "login goes in MONERO_RPC_USER and MONERO_RPC_PASSWORD), no query or fragment."),
    Setting("MONERO_RPC_USER", "monero_rpc_user", "", parse_wallet_user,
            "wallet-rpc login user (HTTP digest), if --rpc-login is used."),
    Setting("MONERO_RPC_PASSWORD", "monero_rpc_password", "", parse_optional_text,
            "wallet-rpc login password (HTTP digest).", secret=True),
    Setting("MONERO_RPC_TIMEOUT_SECS", "monero_rpc_timeout_secs", "10", parse_positive_seconds,
            "Timeout of each wallet-rpc call."),
    Setting("MONITOR_ENABLED", "monitor_enabled", "true", parse_bool,
            "Run the wallet monitor (false/0 to serve from the database only)."),
    Setting("MONITOR_START_HEIGHT", "monitor_start_height", "0", parse_int_at_least(0),
            "First block height scanned on an empty database (later the stored cursor wins); "
            "the rescan margin never reads below it, so keep it set."),
    Setting("MONITOR_POLL_INTERVAL_SECS", "monitor_poll_interval_secs", "5", parse_positive_seconds,
            "Seconds between wallet polls (fractions allowed)."),
    Setting("MONITOR_MIN_CONFIRMATIONS", "monitor_min_confirmations", "10", parse_int_at_least(1),
            "Confirmations a transfer needs before it is credited."),
    Setting("MONITOR_RESCAN_MARGIN_BLOCKS", "monitor_rescan_margin_blocks", "100",
            parse_int_at_least(0),
            "How many of the last scanned blocks are re-read when a reorg may have changed them "
            "(and every 2 min), so a payment a reorg deeper than MONITOR_MIN_CONFIRMATIONS mines "
            "there is still credited; 0 turns it off."),
    Setting("MONITOR_MIN_PAYMENT_AMOUNT", "monitor_min_payment_amount", "10000000000",
            parse_int_at_least(0), "Smallest confirmed total (piconero) a PID can redeem."),
    Setting("PROVISIONAL_MAX_PER_PID", "provisional_max_per_pid", "0", parse_piconero_or_zero,
            "Provisional credit (docs/operations.md#provisional-credit): the most a PID may "
            "hold credited before MONITOR_MIN_CONFIRMATIONS (piconero, or XMR with a decimal "
            "point), access at once from the pool; 0: off, payments wait for confirmations."),
    Setting("PROVISIONAL_MAX_OUTSTANDING", "provisional_max_outstanding", "1.0",
            parse_piconero_or_zero,
            "The most all provisional credits may add up to at once (piconero, or XMR with a "
            "decimal point): the operator's bound on what failed payments can cost; beyond "
            "it, payments wait for confirmations."),
    Setting("PROVISIONAL_WITHDRAW_GRACE_SECS", "provisional_withdraw_grace_secs", "120",
            parse_positive_seconds,
            "How long a provisionally credited payment may be missing from both the wallet's "
            "pool and its blocks before its credit is withdrawn (a double spend the wallet "
            "flags is withdrawn at once)."),
    Setting("MONITOR_READY_MAX_AGE_SECS", "monitor_ready_max_age_secs", "30", parse_positive_seconds,
            "Readiness fails when no wallet poll succeeded for this long."),
    Setting("ACCESS_PRICE_PER_DAY", "access_price_per_day", "", parse_optional_price,
            "Price of one day of access, in piconero or XMR with a decimal point (0.01); "
            "empty: tokens never expire. MONITOR_MIN_PAYMENT_AMOUNT must buy from one second "
            "to 100 years; one credit buys 100 years at most, no expiry passes year 9999."),
    Setting("DEBIT_IDEMPOTENCY_TTL_SECS", "debit_idempotency_ttl_secs", "86400",
            parse_int_at_least(86400),
            "How long a debit's Idempotency-Key is remembered (at least 24 h)."),
    Setting("WEBHOOK_URL", "webhook_url", "", parse_webhook_url,
            "Where signed event notifications are POSTed (http or https; docs/webhooks.md); "
            "empty: webhooks off, no event is recorded."),
    Setting("WEBHOOK_SECRET", "webhook_secret", "", parse_webhook_secret,
            "Signing secret, whsec_ + base64 of 24-64 random bytes ('anonticket webhook "
            "secret' makes one); required with WEBHOOK_URL.", secret=True),
    Setting("WEBHOOK_SECRET_PREVIOUS", "webhook_secret_previous", "", parse_webhook_secret,
            "The secret being rotated out: while set, every delivery carries both signatures.",
            secret=True),
    Setting("WEBHOOK_TIMEOUT_SECS", "webhook_timeout_secs", "15", parse_positive_seconds,
            "Each delivery attempt must be answered within this long, or it failed."),
    Setting("WEBHOOK_MAX_IN_FLIGHT", "webhook_max_in_flight", "4", parse_int_at_least(1),
            "Delivery attempts in flight at once."),
    Setting("WEBHOOK_RETRY_SCHEDULE_SECS", "webhook_retry_schedule_secs",
            DEFAULT_WEBHOOK_RETRIES, parse_retry_schedule,
            "Delays before each retry (jittered; a longer Retry-After wins); after the last "
            "retry fails the event is dead. The default spans about 75 hours."),
    Setting("WEBHOOK_RETENTION_SECS", "webhook_retention_secs", "604800", parse_int_at_least(3600),
            "How long a delivered event stays listed (and replayable) before it is pruned."),
    Setting("MERCHANT_ADDRESS", "merchant_address", "", parse_optional_text,
            "The operator's primary address the checkout builds integrated addresses from; "
            "empty: asked from the wallet (get_address). Both set: they must match."),
    Setting("MONERO_NETWORK", "monero_network", "mainnet", parse_network,
            "mainnet (regtest uses its addresses too), testnet or stagenet: the network "
            "MERCHANT_ADDRESS and the wallet's address must belong to."),
    Setting("CHECKOUT_OFFERS", "checkout_offers", "", parse_offers,
            "What /pay sells, comma-separated: days of access (7d, 30d; needs "
            "ACCESS_PRICE_PER_DAY) or amounts (0.05 XMR or piconero); empty: one offer at "
            "MONITOR_MIN_PAYMENT_AMOUNT."),
    Setting("CHECKOUT_ADDRESS_MODE", "checkout_address_mode", "integrated", parse_address_mode,
            "integrated: /pay shows an integrated address (no state before payment); "
            "subaddress: /pay allocates a fresh subaddress of the wallet per payment, which "
            "exchanges and batching wallets can pay (docs/operations.md#subaddresses)."),
    Setting("SUBADDRESS_ACCOUNT", "subaddress_account", "0", parse_int_at_least(0),
            "The wallet account subaddresses are allocated in; a dedicated one (create_account) "
            "keeps the operator's own subaddresses apart from the checkout's."),
    Setting("SUBADDRESS_UNPAID_TTL_SECS", "subaddress_unpaid_ttl_secs", "86400",
            parse_int_at_least(60),
            "How long an unpaid allocation counts against SUBADDRESS_MAX_UNPAID; a payment "
            "after that is still credited."),
    Setting("SUBADDRESS_MAX_UNPAID", "subaddress_max_unpaid", "10000", parse_int_at_least(1),
            "Most unpaid, unexpired allocations at once; beyond it the checkout answers 503 "
            "and allocates nothing."),
    Setting("SUBADDRESS_ALLOCATIONS_PER_SEC", "subaddress_allocations_per_sec", "2",
            parse_positive_rate,
            "Global allocation rate (a token bucket, bursts of 10 × this): over Tor there is no "
            "client identity, so the limit is for everyone at once; beyond it 503."),
    Setting("ACCESS_COOKIE_NAME", "access_cookie_name", "anonticket_access", parse_cookie_name,
            "Name of the cookie /access sets and the gateway check reads; a Secure one is "
            "__Host-<name>, which no sibling subdomain can set (the shipped proxy configs "
            "strip both by this name). A name already __Host- or __Secure- is kept."),
    Setting("ACCESS_COOKIE_SECURE", "access_cookie_secure", "auto", parse_cookie_secure,
            "auto: the access cookie is Secure when the proxy says the request came over HTTPS "
            "(X-Forwarded-Proto: https), not over a plain-HTTP onion service; true or false."),
    Setting("ACCESS_COOKIE_MAX_AGE_SECS", "access_cookie_max_age_secs", "0", parse_int_at_least(0),
            "Lifetime of the access cookie; 0: a session cookie, gone when the browser closes."),
    Setting("ACCESS_COOKIE_CREDENTIAL", "access_cookie_credential", "false", parse_bool,
            "true: /access puts a credential in the access cookie instead of the token, and "
            "keeps the token in a second cookie only /access receives, to renew it "
            "(docs/customers.md); metered locations then refuse browsers."),
    Setting("CREDENTIAL_TTL_SECS", "credential_ttl_secs", "300", parse_int_between(30, 86400),
            "Lifetime of a credential (POST /api/v1/credential), never past its token's expiry. "
            "A revoked token's credentials still open services that verify offline until they "
            "expire: this is that bound (docs/operations.md, Credentials)."),
    Setting("CREDENTIAL_AUDIENCES", "credential_audiences", "", parse_audiences,
            "The audiences (aud) a credential may be asked for, comma-separated (files,api): "
            "a credential for one is refused by services expecting another or none; empty: "
            "none. The gateway check takes credentials without an audience only."),
    Setting("PRIVATE_TOKEN_UNITS", "private_token_units", "", parse_units,
            "The Privacy Pass units sold, comma-separated: name=session:SECONDS:PRICE (a spent "
            "token opens a session of SECONDS, at most 86400) or name=request:PRICE (one "
            "request); PRICE (piconero or XMR) is debited per token issued. Each unit has its "
            "own issuer key. Empty: Privacy Pass off (docs/operations.md, Private tokens)."),
    Setting("PRIVATE_TOKEN_KEY_EPOCH_SECS", "private_token_key_epoch_secs", "2592000",
            parse_int_between(3600, 366 * 86400),
            "How long one issuer key of a unit signs before the next takes over; the next is "
            "published a quarter of an epoch (at most 7 days) ahead with its not-before."),
    Setting("PRIVATE_TOKEN_KEY_GRACE_SECS", "private_token_key_grace_secs", "604800",
            parse_int_between(600, 366 * 86400),
            "How long a key whose epoch ended still redeems the tokens it signed; then it is "
            "removed with its spent nonces, and its unspent tokens are worthless."),
    Setting("PRIVATE_TOKEN_ISSUER_NAME", "private_token_issuer_name", "anonticket",
            parse_issuer_name,
            "The issuer name in every TokenChallenge this deployment sends and accepts "
            "(typically its public host name)."),
    Setting("PRIVATE_TOKEN_MAX_BATCH", "private_token_max_batch", "64", parse_int_between(1, 1000),
            "How many tokens one issuance request may ask for."),
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
    redeem_plain_pids: str
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
    provisional_max_per_pid: int
    provisional_max_outstanding: int
    provisional_withdraw_grace_secs: float
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
    checkout_address_mode: str
    subaddress_account: int
    subaddress_unpaid_ttl_secs: int
    subaddress_max_unpaid: int
    subaddress_allocations_per_sec: float
    access_cookie_name: str
    access_cookie_secure: str
    access_cookie_max_age_secs: int
    access_cookie_credential: bool
    credential_ttl_secs: int
    credential_audiences: tuple[str, ...]
    private_token_units: tuple[Unit, ...]
    private_token_key_epoch_secs: int
    private_token_key_grace_secs: int
    private_token_issuer_name: str
    private_token_max_batch: int

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
                problem = redact_secrets(str(exc))
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
        self._check_price()
        if 0 < self.provisional_max_outstanding < self.provisional_max_per_pid or (
                self.provisional_max_per_pid and not self.provisional_max_outstanding):
            raise ConfigError("PROVISIONAL_MAX_OUTSTANDING: below PROVISIONAL_MAX_PER_PID, "
                              "no PID could ever reach its own cap")
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

    def _check_price(self) -> None:
        """The smallest redeemable payment must buy at least one second, and at most what
        one credit may buy (anonticket/domain/timestamp.py): a price outside that range is a
        typo (piconero for XMR) or a unit mistake, and would issue tokens expired at
        issue or good for centuries."""
        price = self.access_price_per_day
        if price is None:
            return
        bought = self.monitor_min_payment_amount * SECONDS_PER_DAY // price
        if bought < 1:
            raise ConfigError("ACCESS_PRICE_PER_DAY: MONITOR_MIN_PAYMENT_AMOUNT would buy less "
                              "than one second at this price")
        if bought > MAX_CREDIT_SECONDS:
            raise ConfigError("ACCESS_PRICE_PER_DAY: MONITOR_MIN_PAYMENT_AMOUNT would buy more "
                              "than 100 years at this price (one credit buys 100 years at most)")

    def offer_price(self, offer: Offer) -> int:
        """Piconero the customer pays for ``offer`` (checked by ``check``)."""
        if offer.days is not None:
            return offer.days * (self.access_price_per_day or 0)
        return offer.piconero or 0

    def describe(self) -> dict[str, str]:
        """Effective settings for the start-up log and ``config --check``: a secret setting
        shows as ``***``, and so do the userinfo and the secret query parameters
        (``?password=``) of any URL in the others."""
        out = {}
        for setting in SETTINGS:
            value = getattr(self, setting.attr)
            if setting.secret and value:
                value = "***"
            elif setting.parse is parse_file_mode:
                value = f"{value:04o}"
            elif setting.parse is parse_retry_schedule:
                value = ",".join(f"{delay:g}" for delay in value)
            elif setting.parse is parse_webhook_url and value and "?" in value:
                value = value.split("?", 1)[0] + "?***"  # a query may hold a key too
            elif setting.parse is parse_offers:
                value = ", ".join(offer.key for offer in value)
            elif setting.parse is parse_audiences:
                value = ",".join(value)
            elif setting.parse is parse_units:
                value = ", ".join(unit.spec() for unit in value)
            out[setting.name] = "" if value is None else redact_secrets(str(value))
        return out



def settings_table_markdown() -> str:
    """The settings table of docs/settings.md, derived from SETTINGS (a docs test keeps them equal)."""
    rows = ["| Variable | Default | Meaning |", "| --- | --- | --- |"]
    for setting in SETTINGS:
        default = f"`{setting.default}`" if setting.default else "(empty)"
        rows.append(f"| `{setting.name}` | {default} | {setting.help} |")
    return "\n".join(rows) + "\n"
