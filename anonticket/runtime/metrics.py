"""Every Prometheus series, declared once and pre-registered at zero.

Each labelled child is created up front so the first scrape already shows every
series (alerts on ``rate()`` need them) and so the hot path never formats a label.
Labels are fixed vocabularies: outcomes, results, route templates — never a PID,
token, txid or a raw path.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import CounterMetricFamily
from prometheus_client.registry import Collector

REDEEM_OUTCOMES = ("success", "already_claimed", "pending", "underpaid", "invalid", "not_found",
                   "unavailable")
TOKEN_OUTCOMES = ("active", "expired", "revoked", "withdrawn", "invalid", "not_found",
                  "unavailable")
TOPUP_OUTCOMES = ("topped_up", "pending", "underpaid", "pid_already_claimed", "token_revoked",
                  "invalid", "not_found", "unavailable")
DEBIT_OUTCOMES = ("success", "replayed", "insufficient_balance", "token_expired",
                  "token_revoked", "payment_withdrawn", "not_found", "key_reused", "invalid",
                  "unavailable")
# the gateway check's answers: allowed, or the reason it sends in X-Anonticket-Reason;
# invalid_cost and gateway_unauthorized are the proxy's configuration, unavailable storage
GATEWAY_OUTCOMES = ("allowed", "allowed_credential", "token_missing", "invalid_token",
                    "token_not_found", "token_revoked", "payment_withdrawn", "token_expired",
                    "insufficient_balance", "invalid_credential", "credential_expired", "credential_revoked",
                    "token_required", "invalid_cost", "gateway_unauthorized", "unavailable",
                    "allowed_private_token", "private_token_invalid", "private_token_spent")
# POST /api/v1/private-token: issued (a batch), replayed, or the refusal
PRIVATE_TOKEN_OUTCOMES = ("issued", "replayed", "invalid", "unknown_token_key",
                          "unsupported_token_type", "token_missing", "invalid_token",
                          "token_not_found", "token_revoked", "payment_withdrawn", "token_expired",
                          "insufficient_balance", "token_provisional", "key_reused",
                          "unavailable")
# POST /api/v1/credential: issued, or the refusal (the gateway's reasons for a token)
CREDENTIAL_OUTCOMES = ("issued", "token_missing", "invalid_token", "token_not_found",
                       "token_revoked", "payment_withdrawn", "token_expired",
                       "token_provisional", "invalid_audience", "invalid", "unavailable")
POLL_RESULTS = ("ok", "unreachable", "timeout", "http_error", "bad_response", "rpc_error",
                "unauthorized", "storage_error", "internal")
TRANSFER_RESULTS = ("credited", "pending", "zero_pid", "long_pid", "locked", "double_spend",
                    "invalid", "uncreditable", "unallocated_subaddress")
# what a subaddress checkout's allocation came to (CHECKOUT_ADDRESS_MODE=subaddress)
ALLOCATION_OUTCOMES = ("allocated", "capped", "rate_limited", "wallet_error", "unavailable")
# Route templates as registered (plus two for unmatched requests); never a concrete path.
ROUTES = ("/api/v1/redeem", "/api/v1/token/{token}", "/api/v1/token/{token}/revoke",
          "/api/v1/token/{token}/topup", "/api/v1/token/{token}/debit", "/api/v1/stats",
          "/health/live", "/health/ready", "/metrics", "/docs/openapi.yaml",
          "/api/v1/webhooks", "/api/v1/webhooks/replay", "/api/v1/webhooks/test",
          "/api/v1/webhooks/enable", "/api/v1/monitor/rescan", "/pay", "/pay/status", "/pay/redeem",
          "/api/v1/check", "/access", "/access/logout", "/api/v1/credential",
          "/.well-known/anonticket-credential-keys", "/api/v1/keys", "/api/v1/keys/rotate",
          "/api/v1/private-token", "/.well-known/private-token-issuer-directory", "unmatched")
# why a webhook delivery attempt failed: a fixed vocabulary, never the receiver's text
WEBHOOK_FAILURES = ("timeout", "unreachable", "redirect", "rate_limited", "gone", "client_error",
                    "server_error", "error")
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Tally:
    """A counter the request path bumps for ~50 ns where a prometheus_client child takes
    a lock (~0.5 µs): only the event loop writes it, the scrape reads it."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def inc(self, amount: int = 1) -> None:
        self.value += amount


class TallyCounter(Collector):
    """One counter family, one ``Tally`` per label value, all exposed from the first scrape."""

    def __init__(self, name: str, documentation: str, label: str, values: tuple[str, ...],
                 registry: CollectorRegistry) -> None:
        self._name, self._documentation, self._label = name, documentation, label
        self.tallies = {value: Tally() for value in values}
        registry.register(self)

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self._name, self._documentation, labels=[self._label])
        for value, tally in self.tallies.items():
            family.add_metric([value], tally.value)
        yield family

    def describe(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(self._name, self._documentation, labels=[self._label])


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # the two counters every customer request bumps (docs/benchmarks.md)
        self.redeem = TallyCounter("anonticket_redeem_requests", "Redeem requests by outcome.",
                                   "outcome", REDEEM_OUTCOMES, r).tallies
        self.token = TallyCounter("anonticket_token_requests", "Token introspections by outcome.",
                                  "outcome", TOKEN_OUTCOMES, r).tallies
        self.topup = TallyCounter("anonticket_topup_requests", "Top-up requests by outcome.",
                                  "outcome", TOPUP_OUTCOMES, r).tallies
        self.debit = TallyCounter("anonticket_debit_requests", "Debit requests by outcome "
                                  "(replayed: an Idempotency-Key's stored answer).",
                                  "outcome", DEBIT_OUTCOMES, r).tallies
        self.debited = Counter(
            "anonticket_debited_piconero", "Piconero drawn from token balances by debits.",
            registry=r)
        self.gateway = TallyCounter("anonticket_gateway_checks", "Gateway checks (proxy "
                                    "auth requests) by outcome.", "outcome", GATEWAY_OUTCOMES,
                                    r).tallies
        self.credential = TallyCounter("anonticket_credential_requests", "Credential "
                                       "requests (POST /api/v1/credential) by outcome.",
                                       "outcome", CREDENTIAL_OUTCOMES, r).tallies
        self.private_token = TallyCounter(
            "anonticket_private_token_requests", "Privacy Pass issuance requests "
            "(POST /api/v1/private-token) by outcome.", "outcome", PRIVATE_TOKEN_OUTCOMES,
            r).tallies
        self.private_tokens_issued = Counter(
            "anonticket_private_tokens_issued", "Privacy Pass tokens blind-signed (retries "
            "not counted).", registry=r)
        self.key_rotations = Counter(
            "anonticket_key_rotations", "Signing key rotations made by this instance.",
            registry=r)
        self.gateway_debited = Counter(
            "anonticket_gateway_debited_piconero", "Piconero drawn from token balances by "
            "metered gateway checks.", registry=r)
        self.revocations = Counter(
            "anonticket_revocations", "Revocation requests that found their token.", registry=r)
        self.negative_cache_hits = Counter(
            "anonticket_negative_cache_hits", "Redeems answered 404 from the negative cache.",
            registry=r)
        self.negative_cache_entries = Gauge(
            "anonticket_negative_cache_entries", "PIDs currently in the negative cache.",
            registry=r)
        self.request_duration = Histogram(
            "anonticket_request_duration_seconds", "Request handling time by route template.",
            ["route"], buckets=_LATENCY_BUCKETS, registry=r)
        self.duration = {route: self.request_duration.labels(route) for route in ROUTES}
        self.rejected_overload = Counter(
            "anonticket_overload_rejections", "Requests refused with 503 because too many were in "
            "flight.", registry=r)
        self.active = Gauge(
            "anonticket_active", "1 while this instance is the active one (always on SQLite; "
            "on PostgreSQL the holder of the leader lock).", registry=r)
        self.active.set(1)
        self.wallet_height = Gauge(
            "anonticket_monitor_wallet_height", "Wallet block count at the last successful poll.",
            registry=r)
        self.scanned_height = Gauge(
            "anonticket_monitor_scanned_height", "Last block height fully scanned and credited.",
            registry=r)
        self.last_success = Gauge(
            "anonticket_monitor_last_success_timestamp_seconds",
            "Unix time of the last successful wallet poll.", registry=r)
        self.polls = Counter(
            "anonticket_monitor_polls", "Wallet polls by result.", ["result"], registry=r)
        self.poll = {res: self.polls.labels(res) for res in POLL_RESULTS}
        self.transfers = Counter(
            "anonticket_monitor_transfers", "Wallet transfers by the result they reached, each "
            "counted once per result.", ["result"], registry=r)
        self.transfer = {res: self.transfers.labels(res) for res in TRANSFER_RESULTS}
        # provisional credit (docs/operations.md#provisional-credit); no label names a payment
        self.provisional_credited = Counter(
            "anonticket_provisional_credits", "Transfers credited provisionally, before "
            "MONITOR_MIN_CONFIRMATIONS.", registry=r)
        self.provisional_over_cap = Counter(
            "anonticket_provisional_over_cap", "Unconfirmed transfers left to wait for "
            "confirmations because a provisional cap was reached (each counted once).",
            registry=r)
        self.provisional_withdrawn = Counter(
            "anonticket_provisional_withdrawn", "Provisional credits withdrawn (the payment "
            "left the pool unmined, was double-spent or reorganised out).", registry=r)
        self.provisional_withdrawn_piconero = Counter(
            "anonticket_provisional_withdrawn_piconero", "Piconero of the provisional credits "
            "withdrawn.", registry=r)
        self.provisional_unrecovered_piconero = Counter(
            "anonticket_provisional_unrecovered_piconero", "Piconero of withdrawn provisional "
            "credits that debits had already spent: the operator's loss (never taken back).",
            registry=r)
        self.subaddress_allocations = TallyCounter(
            "anonticket_subaddress_allocations", "Subaddress checkouts by outcome (capped: "
            "SUBADDRESS_MAX_UNPAID reached; rate_limited: SUBADDRESS_ALLOCATIONS_PER_SEC).",
            "outcome", ALLOCATION_OUTCOMES, r).tallies
        self.subaddress_unknown_to_wallet = Gauge(
            "anonticket_subaddress_unknown_to_wallet", "1 when the wallet does not know the "
            "highest subaddress index the checkout allocated (restored with too short a "
            "lookahead: payments to it go unseen), 0 when it does, -1 before the first check.",
            registry=r)
        self.subaddress_unknown_to_wallet.set(-1)
        self.subaddress_highest_index = Gauge(
            "anonticket_subaddress_highest_index", "Highest subaddress index the checkout "
            "allocated in SUBADDRESS_ACCOUNT (-1: none).", registry=r)
        self.subaddress_highest_index.set(-1)
        self.webhook_delivered = Counter(
            "anonticket_webhook_delivered", "Webhook events delivered (answered 2xx).", registry=r)
        self.webhook_failed_attempts = Counter(
            "anonticket_webhook_failed_attempts", "Webhook delivery attempts that failed, by "
            "reason.", ["reason"], registry=r)
        self.webhook_failed = {reason: self.webhook_failed_attempts.labels(reason)
                               for reason in WEBHOOK_FAILURES}
        self.webhook_dead = Counter(
            "anonticket_webhook_dead", "Webhook events given up after their last attempt.",
            registry=r)
        self.webhook_queue_events = Gauge(
            "anonticket_webhook_queue_events", "Webhook events waiting for delivery.", registry=r)
        self.webhook_dead_events = Gauge(
            "anonticket_webhook_dead_events", "Dead webhook events kept for a replay.", registry=r)
        self.webhook_queue_age = Gauge(
            "anonticket_webhook_queue_age_seconds", "Age of the oldest webhook event not yet "
            "delivered; 0 when none waits.", registry=r)
        self.webhook_disabled = Gauge(
            "anonticket_webhook_disabled", "1 while delivery is off because the receiver "
            "answered 410 Gone.", registry=r)
