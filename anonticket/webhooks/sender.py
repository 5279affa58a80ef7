"""The webhook sender: delivers the outbox's due events to WEBHOOK_URL, signed at every attempt.

One task, a start/stop pair like the monitor. It works from the database only: each
pass reads the due rows, attempts them (at most WEBHOOK_MAX_IN_FLIGHT at once, each with
its own timeout) and stores the outcomes, so a restart resumes exactly what was not
delivered, and an event can never be lost by the sender (it may be sent twice if the
process dies between the receiver's answer and the stored outcome: receivers dedupe on
``webhook-id``). A pass runs when a commit wrote events (``wake``), when the next retry
is due, and at least every ``IDLE_PASS_SECS`` (which also refreshes the queue gauges).
On PostgreSQL the task runs only while this instance is active (service/app.py starts it with each
term): a new leader's first pass sends whatever the old one left unmarked, and a stale
leader's marks are fenced (storage/postgres/outbox.py), so a takeover may repeat an event,
with its ``webhook-id``, but never skips one.

Status handling follows Standard Webhooks: 2xx delivered; 3xx a failure (redirects are
never followed); 410 Gone turns delivery off for this URL until ``webhook enable``; any
other answer or no answer is a failure retried on WEBHOOK_RETRY_SCHEDULE_SECS (jittered,
never earlier than a Retry-After); after the last retry the event is dead. Nothing here
logs the URL (it may hold a password), a body or a receiver's answer.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp

from anonticket.ledger.batching import SequenceBatcher
from anonticket.domain.errors import StorageUnavailable
from anonticket.runtime.state import State
from anonticket.storage import AttemptResult, OutboxEvent
from anonticket.storage.outbox import url_digest
from anonticket.domain.webhook import (
    TEST_EVENT_TYPE,
    event_body,
    new_message_id,
    parse_secret,
    signed_headers,
)

log = logging.getLogger("anonticket.webhooks")

IDLE_PASS_SECS = 60.0
BATCH = 64  # due rows read per query; a pass reads again until fewer come back
JITTER = (0.8, 1.2)
MAX_RETRY_AFTER_SECS = 86400.0  # a Retry-After beyond a day is the receiver's bug, not a plan
_BACKOFF_CAP_SECS = 60.0
_ANSWER_BYTES_READ = 65536  # read (and ignore) this much of an answer, so the connection is reused
USER_AGENT = "anonticket-webhooks/1"


def failure_reason(result: str) -> str:
    """A stored result word (``http_503``, ``timeout``) as its metric label."""
    if not result.startswith("http_"):
        return result if result in ("timeout", "unreachable") else "error"
    status = int(result[5:])
    if 300 <= status < 400:
        return "redirect"
    if status == 429:
        return "rate_limited"
    if status == 410:
        return "gone"
    if 400 <= status < 500:
        return "client_error"
    return "server_error" if status >= 500 else "error"


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date), or None
    for anything else. Never raises: the receiver writes this header, and an exception
    here would leave its attempt without a stored outcome. Digits are ASCII ones
    (``"²".isdigit()`` is true); a date past year 9999 or any overflow is ignored; the
    wait is at most ``MAX_RETRY_AFTER_SECS``."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return min(float(value), MAX_RETRY_AFTER_SECS)  # float: inf at worst, never an error
    try:
        when = parsedate_to_datetime(value)
        if when.tzinfo is None:
            return None
        return min(max(0.0, when.timestamp() - now), MAX_RETRY_AFTER_SECS)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


class WebhookSender:
    def __init__(self, state: State, *, rng: random.Random | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        config = state.config
        if not config.webhook_url or not config.webhook_secret:
            raise ValueError("the webhook sender needs WEBHOOK_URL and WEBHOOK_SECRET")
        self.state = state
        self._url = config.webhook_url
        self._url_digest = url_digest(config.webhook_url)
        # the current secret signs first; the previous one too while a rotation lasts
        self._keys = [parse_secret(config.webhook_secret)]
        if config.webhook_secret_previous:
            self._keys.append(parse_secret(config.webhook_secret_previous))
        self._schedule = config.webhook_retry_schedule_secs
        self._timeout = config.webhook_timeout_secs
        self._slots = asyncio.Semaphore(config.webhook_max_in_flight)
        self._rng = rng or random.Random()
        self._clock = clock
        self._wake = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self._marks: SequenceBatcher[AttemptResult, None] = SequenceBatcher(self._store)
        self._oldest_pending: int | None = None
        self._gone = False  # a 410 in this pass: attempt nothing more
        self._failing: str | None = None  # the failure being reported, logged once per streak
        self._storage_failures = 0

    @property
    def max_attempts(self) -> int:
        return len(self._schedule) + 1

    def wake(self) -> None:
        """Called after a COMMIT that wrote events (and by the admin routes)."""
        self._wake.set()

    async def start(self) -> None:
        # trust_env=False: no proxy from the environment may see the signed bodies; the
        # connector's limit is the in-flight bound once more, for the ping too
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.state.config.webhook_max_in_flight + 1),
            timeout=aiohttp.ClientTimeout(total=self._timeout),
            trust_env=False, headers={"User-Agent": USER_AGENT},
        )
        self.state.metrics.webhook_queue_age.set_function(self._queue_age)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _queue_age(self) -> float:
        oldest = self._oldest_pending
        return 0.0 if oldest is None else max(0.0, time.time() - oldest)

    # ------------------------------------------------------------------ the loop
    async def run(self) -> None:
        while True:
            self._wake.clear()  # before reading: a commit during the pass wakes the next one
            try:
                delay = await self.deliver_due()
                self._storage_failures = 0
            except StorageUnavailable:
                self._storage_failures += 1
                delay = min(_BACKOFF_CAP_SECS, 2.0 ** self._storage_failures)
            except Exception as exc:  # noqa: BLE001 - a bug must not end the task silently
                log.error("webhook pass failed (%s)", type(exc).__name__)
                self._storage_failures += 1
                delay = min(_BACKOFF_CAP_SECS, 2.0 ** self._storage_failures)
            try:
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def deliver_due(self) -> float:
        """Attempt every event due now; returns the seconds until the next pass is needed.

        The queue gauges are refreshed whatever the pass did, failure included: they are
        what the docs tell operators to alert on, so a failing sender must not freeze them
        at their last good value."""
        try:
            await self._attempt_due()
        finally:
            queue = await self.state.ledger.storage.webhook_queue()
            metrics = self.state.metrics
            metrics.webhook_queue_events.set(queue["pending"])
            metrics.webhook_dead_events.set(queue["dead"])
            self._oldest_pending = queue["oldest_pending_created_at"]
        next_due = queue["next_attempt_at"]
        if self._gone or next_due is None:
            return IDLE_PASS_SECS
        return min(IDLE_PASS_SECS, max(0.0, next_due - self._clock()))

    async def _attempt_due(self) -> None:
        storage = self.state.ledger.storage
        disabled = await storage.get_webhook_disabled()
        self._gone = disabled is not None and disabled[1] == self._url_digest
        self.state.metrics.webhook_disabled.set(1 if self._gone else 0)
        while not self._gone:
            due = await storage.due_webhook_events(self._clock(), BATCH)
            if due:
                # every attempt finishes (and stores its outcome) before the next read, even
                # when one fails: a row still in flight must never be read as due again
                outcomes = await asyncio.gather(*(self._deliver(event) for event in due),
                                                return_exceptions=True)
                for outcome in outcomes:
                    if isinstance(outcome, BaseException):
                        raise outcome
            if len(due) < BATCH:
                break

    async def _deliver(self, event: OutboxEvent) -> None:
        async with self._slots:
            if self._gone:
                return  # stays due: delivered once the operator enables the URL again
            attempt = event.attempts + 1
            result, _, retry_after = await self._attempt(event.id, event.body.encode())
        now = self._clock()
        metrics = self.state.metrics
        counted, next_at = True, None
        if result == "delivered":
            metrics.webhook_delivered.inc()
            if self._failing is not None:
                log.info("webhook deliveries recovered")
                self._failing = None
        else:
            reason = failure_reason(result)
            metrics.webhook_failed[reason].inc()
            if reason == "gone":
                await self._disable(now)
                counted, next_at = False, now  # due again as soon as delivery is enabled
            elif attempt >= self.max_attempts:
                metrics.webhook_dead.inc()
                log.warning("webhook event %s is dead after %d attempts (last: %s); "
                            "see 'anonticket webhook list --dead'", event.id, attempt, result)
            else:
                delay = self._schedule[attempt - 1] * self._rng.uniform(*JITTER)
                if retry_after is not None:
                    delay = max(delay, min(retry_after, MAX_RETRY_AFTER_SECS))
                next_at = now + delay
            if self._failing != result and reason != "gone":
                log.warning("webhook delivery failed (%s); retrying with backoff", result)
                self._failing = result
        await self._marks.submit(AttemptResult(event.seq, attempt, int(now), result, next_at,
                                               counted))

    async def _disable(self, now: float) -> None:
        if not self._gone:
            self._gone = True
            self.state.metrics.webhook_disabled.set(1)
            log.warning("the webhook receiver answered 410 Gone: delivery is off until "
                        "'anonticket webhook enable' (or another WEBHOOK_URL); events keep "
                        "being recorded")
        await self.state.ledger.storage.set_webhook_disabled(self._url, int(now))

    async def _store(self, results: list[AttemptResult]) -> list[None]:
        await self.state.ledger.storage.record_webhook_attempts(results)
        return [None] * len(results)

    async def _attempt(self, message_id: str, body: bytes
                       ) -> tuple[str, int | None, float | None]:
        """One signed POST: (result word, HTTP status, Retry-After seconds). Never raises
        for the receiver's behaviour: every way it can fail is a result word."""
        session = self._session
        if session is None:
            raise RuntimeError("WebhookSender.start() was not called")
        timestamp = int(self._clock())
        headers = signed_headers(self._keys, message_id, timestamp, body)
        headers["Content-Type"] = "application/json"
        try:
            async with session.post(self._url, data=body, headers=headers,
                                    allow_redirects=False) as resp:
                status = resp.status
                retry_after = parse_retry_after(resp.headers.get("Retry-After"), self._clock())
                await resp.content.read(_ANSWER_BYTES_READ)
        # TimeoutError first: aiohttp's connect timeout is also a ClientConnectorError
        except TimeoutError:
            return "timeout", None, None
        except (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError, OSError):
            return "unreachable", None, None
        except aiohttp.ClientError:
            return "error", None, None
        except Exception as exc:  # noqa: BLE001 - an attempt always ends in a result word
            # the type only: a message could quote the receiver's answer or the URL
            log.error("webhook attempt failed unexpectedly (%s)", type(exc).__name__)
            return "error", None, None
        if 200 <= status < 300:
            return "delivered", status, None
        return f"http_{status}", status, retry_after

    # ------------------------------------------------------------------ operator tools
    async def ping(self) -> dict[str, Any]:
        """Send one signed ``webhook.test`` event now, outside the outbox, and report what
        the receiver answered; it is sent even while a 410 keeps delivery off."""
        message_id = new_message_id()
        now = self._clock()
        body = event_body(TEST_EVENT_TYPE, int(now), {"message": "anonticket webhook test"})
        started = time.monotonic()
        result, status, _ = await self._attempt(message_id, body.encode())
        return {"webhook_id": message_id, "delivered": result == "delivered",
                "result": result, "http_status": status,
                "seconds": round(time.monotonic() - started, 3)}
