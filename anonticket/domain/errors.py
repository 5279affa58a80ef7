"""Errors that carry their HTTP status and machine-readable code.

Handlers and lower layers raise these; one middleware renders them. Messages are
fixed strings chosen here, never built from request data, so no PID, token or
txid can ever reach a response body or a log line through an exception.
"""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """Base of every error the API turns into a JSON body."""

    status: int = 500
    code: str = "internal"
    message: str = "internal error"

    def __init__(self, message: str | None = None, **extra: Any) -> None:
        super().__init__(message or self.message)
        if message is not None:
            self.message = message
        self.extra = extra
        self.headers: dict[str, str] = {}

    def body(self) -> dict[str, Any]:
        return {"error": self.code, "message": self.message, **self.extra}


class InvalidRequest(ServiceError):
    status, code, message = 400, "invalid_request", "request body must be a JSON object with the documented fields"


class InvalidPid(ServiceError):
    status, code, message = 400, "invalid_pid", "pid must be 16 or 64 hex characters and not all zero"


class InvalidReceipt(ServiceError):
    status, code, message = (400, "invalid_receipt",
                             "receipt must be 64 hex characters, or eight groups of eight "
                             "separated by '-' or by spaces")


class InvalidToken(ServiceError):
    status, code, message = 400, "invalid_token", "token must be 64 hex characters"


class InvalidAudience(ServiceError):
    status, code, message = (422, "invalid_audience",
                             "aud must be one of the audiences this service issues "
                             "credentials for (CREDENTIAL_AUDIENCES)")


class Unauthorized(ServiceError):
    status, code, message = 401, "unauthorized", "a valid bearer token is required"


class GatewayUnauthorized(ServiceError):
    """The proxy calling the gateway check did not send ``API_INTERNAL_TOKEN`` in its own
    header. 407, not 401: nginx hands a 401 to the customer as "log in", but this is the
    operator's configuration, so it must become nginx's 500 (closed, and visible)."""

    status, code, message = (407, "gateway_unauthorized",
                             "the proxy must send the gateway credential in X-Anonticket-Gateway-Token")


class Underpaid(ServiceError):
    status, code, message = 402, "underpaid", "the confirmed total for this payment is below the minimum"


class IdempotencyKeyRequired(ServiceError):
    status, code, message = 400, "idempotency_key_required", "an Idempotency-Key header is required"


class InsufficientBalance(ServiceError):
    status, code, message = 402, "insufficient_balance", "the token's remaining balance is too low"


class TokenExpired(ServiceError):
    status, code, message = 403, "token_expired", "the token's access time has run out"


class TokenProvisional(ServiceError):
    status, code, message = (403, "token_provisional",
                             "this token holds provisional credit: credentials and private "
                             "tokens are issued once its payments are final (at their "
                             "confirmations)")


class PaymentWithdrawn(ServiceError):
    status, code, message = (403, "payment_withdrawn",
                             "the payment that bought this token's access was withdrawn (it "
                             "left the pool unmined or was double-spent): nothing is left on it")


class TokenRevoked(ServiceError):
    status, code, message = 403, "token_revoked", "the token has been revoked"


class PidAlreadyClaimed(ServiceError):
    status, code, message = 409, "pid_already_claimed", "this payment was already redeemed or added to a token"


class IdempotencyKeyReused(ServiceError):
    status, code, message = (422, "idempotency_key_reused",
                             "this Idempotency-Key was used with a different request")


class PaymentNotFound(ServiceError):
    status, code, message = 404, "payment_not_found", "no confirmed or pending payment for this receipt or pid"


class TokenNotFound(ServiceError):
    status, code, message = 404, "token_not_found", "no such service token"


class NotFound(ServiceError):
    status, code, message = 404, "not_found", "no such route"


class MethodNotAllowed(ServiceError):
    status, code, message = 405, "method_not_allowed", "method not allowed on this route"


class MonitorDisabled(ServiceError):
    status, code, message = 409, "monitor_disabled", "the wallet monitor is off (MONITOR_ENABLED=false)"


class BodyTooLarge(ServiceError):
    status, code, message = 413, "body_too_large", "request body is too large"


class RequestTimeout(ServiceError):
    status, code, message = 408, "request_timeout", "the request body did not arrive in time"


class UnsupportedMediaType(ServiceError):
    status, code, message = 415, "unsupported_media_type", "request body must be application/json"


class Unavailable(ServiceError):
    """Storage or capacity trouble that a retry may fix; always sent with Retry-After."""

    status, code, message = 503, "unavailable", "service temporarily unavailable, retry later"

    def __init__(self, message: str | None = None, retry_after: int = 1, **extra: Any) -> None:
        super().__init__(message, **extra)
        self.headers["Retry-After"] = str(retry_after)


class ChargeUnconfirmed(ServiceError):
    """The gateway check's debit failed in storage, possibly after it committed.

    500, not 503: a proxy in front of two instances asks the other one after a standby's
    503 (which comes before anything is read), and must never do so after a charge.
    """

    status, code, message = (500, "charge_unconfirmed",
                             "storage failed during the charge; it may have been applied")


class ConfigError(Exception):
    """A setting has a bad value; the message names the variable, never a secret value."""


class StorageUnavailable(Unavailable):
    """The database refused a statement (locked, disk full, I/O error); nothing was committed."""


class NotActive(StorageUnavailable):
    """This instance is not the active one any more (PostgreSQL: another took over, so
    its write was fenced out before it did anything). Answered as a standby answers, 503
    with Retry-After: nothing was applied, so the request may go to the active instance,
    a metered check's charge included (unlike a storage failure after the charge began,
    ``ChargeUnconfirmed``)."""

    message = "standing by: another instance is active"


class SchemaTooNew(Exception):
    """The database was written by a newer anonticket (its schema version is above this
    program's): nothing is changed, and ``serve`` exits with this one line."""

    def __init__(self, found: int, supported: int) -> None:
        super().__init__(f"the database's schema version {found} is newer than this program's "
                         f"({supported}): run the newer anonticket, or restore a backup")
        self.found = found
        self.supported = supported


class DatabaseConnectFailed(StorageUnavailable):
    """Opening the database failed: the server is unreachable or refused us (a wrong
    password, no such database). ``reason`` names the error class and SQLSTATE, never a
    value, so ``serve`` can exit with it in one line."""

    def __init__(self, reason: str) -> None:
        super().__init__()
        self.reason = reason


class StorageValueOutOfRange(Exception):
    """A write would store a number past a signed 64-bit column; nothing was committed.

    Times are capped well below (anonticket/domain/timestamp.py) and the API bounds what it
    accepts, so only sums of amounts a wallet reports get there (9.2 million XMR): the
    monitor skips the transfer that does it instead of failing every poll. Not a retry
    case, unlike ``StorageUnavailable``: the same write fails the same way again."""


class WebhookEventNotFound(ServiceError):
    status, code, message = 404, "webhook_event_not_found", "no such webhook event"


class WebhooksOff(ServiceError):
    status, code, message = 409, "webhooks_off", "webhooks are off: WEBHOOK_URL is empty"
