"""Webhook delivery end to end: the service on real sockets, a real receiver on loopback
that verifies each delivery with ``standardwebhooks``, and every way a receiver misbehaves;
on SQLite and on PostgreSQL, where a takeover by a second instance loses no event."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from standardwebhooks.webhooks import Webhook

from anonticket.service.app import Service, start_service
from anonticket.domain.ids import PaymentId, token_id
from anonticket.service.housekeeping import Housekeeper
from anonticket.domain.webhook import new_secret
from anonticket.webhooks.sender import MAX_RETRY_AFTER_SECS
from conftest import REPO, make_config, transfer, url
from crash_helpers import wait_until
from webhook_receiver import Receiver

BOTH_BACKENDS = True
SECRET = new_secret()
FAST_RETRIES = "0.05,0.05"  # three attempts in a tenth of a second, then dead


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with Receiver(SECRET) as running:
        yield running


Start = Callable[..., Any]


@pytest.fixture
async def start(tmp_path: Path, database_url: str, receiver: Receiver) -> AsyncIterator[Start]:
    """Start the service in-process with webhooks to ``receiver`` (settings overridable)."""
    services: list[Service] = []

    async def starter(**settings: object) -> Service:
        values: dict[str, object] = {"DATABASE_URL": database_url,
                                     "WEBHOOK_URL": receiver.url, "WEBHOOK_SECRET": SECRET,
                                     "WEBHOOK_RETRY_SCHEDULE_SECS": FAST_RETRIES,
                                     "WEBHOOK_TIMEOUT_SECS": "2"}
        values.update(settings)
        service = await start_service(make_config(tmp_path, **values))
        services.append(service)
        return service

    yield starter
    for service in services:
        await service.aclose()


async def paid_token(service: Service, http: aiohttp.ClientSession, amount: int = 5000
                     ) -> tuple[PaymentId, str]:
    pid = PaymentId.generate()
    await service.state.ledger.credit([transfer(pid, amount)], None)
    async with http.post(url(service.public_address, "/api/v1/redeem"),
                         json={"pid": pid.hex()}) as resp:
        body = await resp.json()
    assert body["status"] == "success", body
    return pid, body["service_token"]


async def internal(http: aiohttp.ClientSession, service: Service, method: str, path: str,
                   body: Any = None) -> tuple[int, Any]:
    async with http.request(method, url(service.internal_address, path), json=body) as resp:
        return resp.status, await resp.json()


def event_validator() -> Any:
    """anonticket/api/openapi.yaml's event schemas as JSON Schema (OpenAPI 3.0's nullable spelled
    out), with the validator schemathesis brings along."""
    import jsonschema_rs

    spec = yaml.safe_load((REPO / "anonticket" / "api" / "openapi.yaml").read_text())

    def convert(node: Any) -> Any:
        if isinstance(node, dict):
            out = {k: convert(v) for k, v in node.items() if k != "nullable"}
            if node.get("nullable"):
                out = {"anyOf": [out, {"type": "null"}]}
            if "$ref" in out:
                out["$ref"] = out["$ref"].replace("#/components/schemas/", "#/$defs/")
            return out
        return [convert(v) for v in node] if isinstance(node, list) else node

    defs = convert(spec["components"]["schemas"])
    return jsonschema_rs.Draft202012Validator({"$defs": defs, "$ref": "#/$defs/WebhookEvent"},
                                              validate_formats=True)


async def drained(service: Service) -> bool:
    """No event waits: every outcome the receiver gave has been stored."""
    return (await service.state.ledger.storage.webhook_queue())["pending"] == 0


async def _if(text: Any, check: Callable[[str], bool]) -> str:
    value = await text
    return value if check(value) else ""


async def test_every_event_type_is_delivered_once_and_verifies(
        start: Start, receiver: Receiver, http: aiohttp.ClientSession) -> None:
    previous = new_secret()
    # 1000 piconero (the minimum payment) buys one second, so the second token (5000) has
    # expired five seconds on
    service = await start(WEBHOOK_SECRET_PREVIOUS=previous, ACCESS_PRICE_PER_DAY=1000 * 86400)
    pid, token = await paid_token(service, http)
    await service.state.ledger.credit([transfer(pid, 2000)], None)  # a payment to the claimed PID
    second = PaymentId.generate()
    await service.state.ledger.credit([transfer(second, 3000)], None)
    async with http.post(url(service.public_address, f"/api/v1/token/{token}/topup"),
                         json={"pid": second.hex()}) as resp:
        assert resp.status == 200
    status, _ = await internal(http, service, "POST", f"/api/v1/token/{token}/revoke",
                               {"reason": "chargeback", "abuse_score": 3})
    assert status == 200
    _, other = await paid_token(service, http)
    storage = service.state.ledger.storage
    assert await storage.notice_expired_tokens(int(time.time()) + 5) >= 1
    await Housekeeper(service.state).sweep_expired()  # a second look notices nothing new
    await receiver.wait_for(lambda r: len(r.accepted) == 6, "six deliveries")

    deliveries = receiver.accepted
    assert all(d.verified for d in receiver.requests) and len(receiver.requests) == 6
    assert len({d.id for d in deliveries}) == 6
    for delivery in deliveries:  # both secrets verify while the rotation lasts
        for secret in (SECRET, previous):
            Webhook(secret).verify(delivery.body, delivery.headers)
        assert delivery.headers["content-type"] == "application/json"
    kinds = sorted(d.payload["type"] for d in deliveries)
    assert kinds == ["token.expired", "token.issued", "token.issued", "token.revoked",
                     "token.topped_up", "token.topped_up"]
    validator = event_validator()
    for delivery in deliveries:
        validator.validate(delivery.payload)
    # the payload names the token as internal introspection does, and says no more
    status, view = await internal(http, service, "GET", f"/api/v1/token/{token}")
    assert view["token_id"] == token_id(bytes.fromhex(token))
    about = [d.payload for d in deliveries if d.payload["data"]["token_id"] == view["token_id"]]
    assert [p["type"] for p in about] == ["token.issued", "token.topped_up", "token.topped_up",
                                          "token.revoked"]
    assert [p["data"].get("added") for p in about[1:3]] == ["2000", "3000"]
    assert about[2]["data"]["amount"] == str(view["amount"]) == "10000"
    assert about[3]["data"] == {"token_id": view["token_id"], "revoked_at": view["revoked_at"],
                                "reason": "chargeback", "abuse_score": 3}
    expired = [d.payload for d in deliveries if d.payload["type"] == "token.expired"]
    assert expired[0]["data"]["token_id"] == token_id(bytes.fromhex(other))
    text = " ".join(d.body.decode() + repr(d.headers) for d in deliveries).lower()
    for secret_hex in (token, other, pid.hex(), second.hex()):
        assert secret_hex[:16] not in text and secret_hex[-16:] not in text
    async def scraped() -> str:
        return await (await http.get(url(service.internal_address, "/metrics"))).text()

    metrics = await wait_until(
        lambda: _if(scraped(), lambda text: "anonticket_webhook_queue_events 0.0" in text),
        "the queue gauge to be refreshed")
    assert "anonticket_webhook_delivered_total 6.0" in metrics
    assert "anonticket_webhook_queue_age_seconds 0.0" in metrics


async def test_a_failed_attempt_is_retried_with_the_same_id_and_a_fresh_signature(
        start: Start, receiver: Receiver, http: aiohttp.ClientSession) -> None:
    receiver.answer(500)
    receiver.answer(503, headers={"Retry-After": "1"})
    service = await start()
    await paid_token(service, http)
    await receiver.wait_for(lambda r: len(r.accepted) == 1, "the third attempt")
    first, second, third = receiver.requests
    assert first.id == second.id == third.id
    assert first.body == second.body == third.body
    assert all(d.verified for d in receiver.requests)
    assert third.at - second.at >= 0.95  # Retry-After: 1 beats the 0.05 s schedule
    assert second.at - first.at < 0.9
    await wait_until(lambda: drained(service), "the outcome to be stored")
    status, listed = await internal(http, service, "GET", "/api/v1/webhooks")
    assert listed["events"][0]["status"] == "delivered" and listed["events"][0]["attempts"] == 3
    metrics = await (await http.get(url(service.internal_address, "/metrics"))).text()
    assert 'anonticket_webhook_failed_attempts_total{reason="server_error"} 2.0' in metrics


async def test_a_hanging_receiver_times_out_and_never_slows_the_api(
        start: Start, receiver: Receiver, http: aiohttp.ClientSession) -> None:
    receiver.default.hang = 30.0  # every delivery hangs
    service = await start(WEBHOOK_TIMEOUT_SECS="0.3", WEBHOOK_RETRY_SCHEDULE_SECS="0.05")
    await paid_token(service, http)
    await receiver.wait_for(lambda r: len(r.requests) >= 1, "the first attempt")
    started = time.perf_counter()
    for _ in range(5):  # while attempts hang, customers are answered at once
        await paid_token(service, http)
    assert time.perf_counter() - started < 1.0
    async with http.get(url(service.public_address, "/health/ready")) as resp:
        assert resp.status == 200  # a down receiver never makes the service unready
    storage = service.state.ledger.storage

    async def all_dead() -> bool:
        return (await storage.webhook_queue())["dead"] == 6

    await wait_until(all_dead, "six dead events", timeout=15)
    assert len(receiver.requests) == 12  # two attempts each, then given up
    metrics = await (await http.get(url(service.internal_address, "/metrics"))).text()
    assert 'anonticket_webhook_failed_attempts_total{reason="timeout"} 12.0' in metrics
    assert "anonticket_webhook_dead_total 6.0" in metrics


async def test_a_redirect_is_a_failure_and_never_followed(
        start: Start, receiver: Receiver, http: aiohttp.ClientSession) -> None:
    receiver.default.status = 302
    receiver.default.headers = {"Location": f"http://127.0.0.1:{receiver.port}/elsewhere"}
    service = await start()
    await paid_token(service, http)
    await receiver.wait_for(lambda r: len(r.requests) == 3 and r.requests[-1].status == 302,
                            "three attempts")
    storage = service.state.ledger.storage

    async def dead() -> bool:
        return (await storage.webhook_queue())["dead"] == 1

    await wait_until(dead, "the event to be dead")
    assert receiver.redirect_hits == 0
    status, listed = await internal(http, service, "GET", "/api/v1/webhooks?dead=true")
    assert [(e["status"], e["attempts"], e["last_result"]) for e in listed["events"]] == [
        ("dead", 3, "http_302")]
    # the operator fixes the receiver and replays every dead event: the same id again
    receiver.default.status, receiver.default.headers = 204, {}
    status, answer = await internal(http, service, "POST", "/api/v1/webhooks/replay",
                                    {"all_dead": True})
    assert (status, answer) == (200, {"replayed": 1})
    await receiver.wait_for(lambda r: len(r.accepted) == 1, "the replay")
    assert receiver.accepted[0].id == receiver.requests[0].id
    status, answer = await internal(http, service, "POST", "/api/v1/webhooks/replay",
                                    {"id": "msg_unknown"})
    assert (status, answer["error"]) == (404, "webhook_event_not_found")


async def test_410_gone_turns_delivery_off_until_enabled_and_loses_nothing(
        start: Start, receiver: Receiver, http: aiohttp.ClientSession) -> None:
    receiver.answer(410)
    service = await start()
    await paid_token(service, http)
    await receiver.wait_for(lambda r: len(r.requests) == 1 and r.requests[0].status == 410,
                            "the 410")
    storage = service.state.ledger.storage
    await wait_until(storage.get_webhook_disabled, "delivery to be disabled")
    await paid_token(service, http)  # still recorded while delivery is off
    status, listed = await internal(http, service, "GET", "/api/v1/webhooks")
    assert listed["disabled_at"] is not None and listed["pending"] == 2
    metrics = await (await http.get(url(service.internal_address, "/metrics"))).text()
    assert "anonticket_webhook_disabled 1.0" in metrics
    assert len(receiver.requests) == 1  # the second event was not attempted
    status, answer = await internal(http, service, "POST", "/api/v1/webhooks/enable")
    assert status == 200 and answer["disabled_at"] is None
    await receiver.wait_for(lambda r: len(r.accepted) == 2, "both events after the enable")
    assert receiver.requests[0].id in {d.id for d in receiver.accepted}  # the 410'd one


async def test_an_unreachable_receiver_and_a_restart_lose_nothing(
        tmp_path: Path, database_url: str, http: aiohttp.ClientSession) -> None:
    async with Receiver(SECRET) as probe:
        port = probe.port  # a free port, closed again: nothing listens there
    config = make_config(tmp_path, DATABASE_URL=database_url,
                         WEBHOOK_URL=f"http://127.0.0.1:{port}/hook",
                         WEBHOOK_SECRET=SECRET, WEBHOOK_RETRY_SCHEDULE_SECS="60")
    service = await start_service(config)
    try:
        await paid_token(service, http)
        storage = service.state.ledger.storage

        async def attempted() -> list[dict[str, Any]]:
            listed = await storage.list_webhook_events(dead_only=False, limit=5)
            return listed if listed and listed[0]["attempts"] == 1 else []

        listed = await wait_until(attempted, "the first attempt")
        assert listed[0]["last_result"] == "unreachable"
    finally:
        await service.aclose()
    async with Receiver(SECRET, port=port) as receiver:
        config = make_config(tmp_path, DATABASE_URL=database_url, WEBHOOK_URL=receiver.url,
                             WEBHOOK_SECRET=SECRET,
                             WEBHOOK_RETRY_SCHEDULE_SECS="0.05")
        service = await start_service(config)
        try:
            # due in a minute by the schedule; replayed by the operator, it is sent now
            status, _ = await internal(http, service, "POST", "/api/v1/webhooks/replay",
                                       {"id": listed[0]["id"]})
            assert status == 200
            await receiver.wait_for(lambda r: len(r.accepted) == 1, "the resumed event")
            assert receiver.accepted[0].id == listed[0]["id"]
        finally:
            await service.aclose()


async def test_the_test_ping_is_signed_and_reports_the_answer(
        start: Start, receiver: Receiver, http: aiohttp.ClientSession) -> None:
    service = await start()
    receiver.answer(500)
    status, answer = await internal(http, service, "POST", "/api/v1/webhooks/test")
    assert status == 200
    assert (answer["delivered"], answer["result"], answer["http_status"]) == (
        False, "http_500", 500)
    status, answer = await internal(http, service, "POST", "/api/v1/webhooks/test")
    assert (answer["delivered"], answer["http_status"]) == (True, 204)
    assert receiver.requests[-1].payload["type"] == "webhook.test"
    assert receiver.requests[-1].verified
    assert (await service.state.ledger.storage.webhook_queue())["pending"] == 0  # not queued


async def test_with_webhooks_off_nothing_is_recorded_and_the_ping_is_refused(
        tmp_path: Path, database_url: str, http: aiohttp.ClientSession) -> None:
    service = await start_service(make_config(tmp_path, DATABASE_URL=database_url))
    try:
        await paid_token(service, http)
        assert service.state.webhooks is None
        queue = await service.state.ledger.storage.webhook_queue()
        assert (queue["pending"], queue["dead"]) == (0, 0)
        status, answer = await internal(http, service, "POST", "/api/v1/webhooks/test")
        assert (status, answer["error"]) == (409, "webhooks_off")
        status, listed = await internal(http, service, "GET", "/api/v1/webhooks")
        assert (status, listed["enabled"], listed["events"]) == (200, False, [])
    finally:
        await service.aclose()


@pytest.mark.parametrize(("result", "reason"), [
    ("http_301", "redirect"), ("http_308", "redirect"), ("http_429", "rate_limited"),
    ("http_410", "gone"), ("http_404", "client_error"), ("http_500", "server_error"),
    ("http_503", "server_error"), ("http_101", "error"), ("timeout", "timeout"),
    ("unreachable", "unreachable"), ("error", "error")])
def test_every_result_has_its_metric_label(result: str, reason: str) -> None:
    from anonticket.runtime.metrics import WEBHOOK_FAILURES
    from anonticket.webhooks.sender import failure_reason
    assert failure_reason(result) == reason and reason in WEBHOOK_FAILURES


def test_retry_after_as_seconds_or_a_date() -> None:
    from anonticket.webhooks.sender import parse_retry_after
    now = 1_767_225_600.0  # Thu, 01 Jan 2026 00:00:00 GMT
    assert parse_retry_after("120", now) == 120.0
    assert parse_retry_after("Thu, 01 Jan 2026 00:02:00 GMT", now) == 120.0
    assert parse_retry_after("Wed, 31 Dec 2025 23:00:00 GMT", now) == 0.0  # in the past
    for garbage in (None, "", "soon", "-5", "1.5e3", "Thu, 01 Jan 2026 00:02:00"):
        assert parse_retry_after(garbage, now) is None
    # what once raised inside the sender: a digit that is not ASCII, a year int() refuses
    for hostile in ("²", "١٢٠", "Fri, 31 Dec 99999999999999999999 23:59:59 GMT",
                    "Fri, 31 Dec 99999 23:59:59 GMT"):
        assert parse_retry_after(hostile, now) is None
    # far in the future, however written: capped at a day
    for far in ("9" * 400, "9" * 5000, "Fri, 31 Dec 9999 23:59:59 GMT",
                "Fri, 31 Dec 9999 23:59:59 -2359"):
        assert parse_retry_after(far, now) == MAX_RETRY_AFTER_SECS


@pytest.mark.parametrize("retry_after", ["²", "Fri, 31 Dec 99999999999999999999 23:59:59 GMT"],
                         ids=["superscript two", "year past what datetime holds"])
async def test_a_retry_after_the_sender_cannot_read_still_ends_every_attempt(
        start: Start, receiver: Receiver, http: aiohttp.ClientSession, retry_after: str) -> None:
    """Once it raised inside the sender: no outcome was stored, so the event was re-posted
    forever and never became dead, and the queue gauges were never refreshed."""
    receiver.default.status = 503
    receiver.default.headers = {"Retry-After": retry_after}
    service = await start()
    await paid_token(service, http)
    storage = service.state.ledger.storage

    async def dead() -> bool:
        return (await storage.webhook_queue())["dead"] == 1

    await wait_until(dead, "the event to be dead after its three attempts")
    assert len(receiver.requests) == 3  # each attempt stored; the schedule, not a loop
    status, listed = await internal(http, service, "GET", "/api/v1/webhooks?dead=true")
    assert [(e["attempts"], e["last_result"]) for e in listed["events"]] == [(3, "http_503")]

    async def scraped() -> str:
        return await (await http.get(url(service.internal_address, "/metrics"))).text()

    metrics = await wait_until(
        lambda: _if(scraped(), lambda text: "anonticket_webhook_dead_events 1.0" in text),
        "the dead gauge to be refreshed")
    assert "anonticket_webhook_queue_events 0.0" in metrics


async def test_a_retry_after_far_in_the_future_waits_a_day_at_most(
        start: Start, receiver: Receiver, http: aiohttp.ClientSession) -> None:
    receiver.answer(503, headers={"Retry-After": "Fri, 31 Dec 9999 23:59:59 GMT"})
    service = await start()
    await paid_token(service, http)
    storage = service.state.ledger.storage

    async def attempted() -> list[dict[str, Any]]:
        listed = await storage.list_webhook_events(dead_only=False, limit=5)
        return listed if listed and listed[0]["attempts"] == 1 else []

    listed = await wait_until(attempted, "the first attempt's outcome")
    assert listed[0]["last_result"] == "http_503"
    assert time.time() + 3600 < listed[0]["next_attempt_at"] <= time.time() + 86400


async def test_a_failing_pass_still_refreshes_the_queue_gauges(
        start: Start, receiver: Receiver, http: aiohttp.ClientSession,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A pass that fails (here its read of the due events, a fault the real database
    gives only when it is broken) leaves gauges that say what waits, not what did."""
    receiver.default.status = 204
    service = await start(WEBHOOK_RETRY_SCHEDULE_SECS="60")
    storage = service.state.ledger.storage

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug in the pass")

    monkeypatch.setattr(storage, "due_webhook_events", broken)
    await paid_token(service, http)
    await paid_token(service, http)

    async def scraped() -> str:
        return await (await http.get(url(service.internal_address, "/metrics"))).text()

    await wait_until(
        lambda: _if(scraped(), lambda text: "anonticket_webhook_queue_events 2.0" in text),
        "the queue gauge to show the two waiting events")
    assert receiver.requests == []


@pytest.mark.parametrize("limit", ["²", "١٠", "1" * 5000, "0", "1001", "-1", "+5", " 5"])
async def test_a_webhook_list_limit_is_ascii_digits(
        start: Start, http: aiohttp.ClientSession, limit: str) -> None:
    service = await start()
    async with http.get(url(service.internal_address, "/api/v1/webhooks"),
                        params={"limit": limit}) as resp:
        assert (resp.status, (await resp.json())["error"]) == (400, "invalid_request")


async def test_replay_refuses_a_null_id_beside_all_dead(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Found by schemathesis: the body is exactly one of id or all_dead; a null id is not absent."""
    import aiohttp

    from anonticket.service.app import start_service
    from conftest import make_config, url
    service = await start_service(make_config(tmp_path))
    try:
        async with aiohttp.ClientSession(trust_env=False) as http:
            async with http.post(url(service.internal_address, "/api/v1/webhooks/replay"),
                                 json={"all_dead": True, "id": None}) as resp:
                assert (resp.status, (await resp.json())["error"]) == (400, "invalid_request")
    finally:
        await service.aclose()


def _sender_tasks() -> int:
    """Webhook sender loops running in this process (every service here names its task)."""
    import asyncio
    return sum(task.get_name() == "anonticket-webhooks" and not task.done()
               for task in asyncio.all_tasks())


async def test_on_postgresql_only_the_active_instance_sends_and_a_takeover_loses_nothing(
        tmp_path: Path, pg: Any, receiver: Receiver, http: aiohttp.ClientSession) -> None:
    """Two instances on one PostgreSQL database, both with WEBHOOK_URL. The active one
    redeems and starts delivering; its attempt hangs at the receiver, and the instance goes
    away before the answer (a crash mid-delivery, as seen from the database: nothing was
    marked). The standby never ran a sender; once it takes over it sends the event again,
    with the same webhook-id and the same signed bytes, and marks it delivered."""
    name = pg.create_database()
    try:
        settings = {"DATABASE_URL": pg.dsn(name), "WEBHOOK_URL": receiver.url,
                    "WEBHOOK_SECRET": SECRET, "WEBHOOK_TIMEOUT_SECS": "60",
                    "DATABASE_LEADER_CHECK_SECS": "0.1"}
        first = await start_service(make_config(tmp_path / "a", **settings))
        second = await start_service(make_config(tmp_path / "b", **settings))
        try:
            assert first.state.active and not second.state.active
            assert _sender_tasks() == 1  # the standby's sender never started
            receiver.answer(204, hang=60.0)  # the first attempt is never answered in time
            _, token = await paid_token(first, http)
            await receiver.wait_for(lambda r: len(r.requests) == 1, "the first attempt")
            in_flight = receiver.requests[0]
            await first.aclose()  # leaves with the attempt in flight, its outcome unstored

            await receiver.wait_for(lambda r: len(r.accepted) == 1, "the new leader's attempt")
            assert second.state.active and _sender_tasks() == 1
            again = receiver.accepted[0]
            assert (again.id, again.body) == (in_flight.id, in_flight.body)  # a duplicate
            assert again.verified and again.payload["type"] == "token.issued"
            assert again.payload["data"]["token_id"] == token_id(bytes.fromhex(token))
            await wait_until(lambda: drained(second), "the delivery to be marked")
            listed = await second.state.ledger.storage.list_webhook_events(dead_only=False,
                                                                           limit=5)
            assert [(e["id"], e["status"]) for e in listed] == [(in_flight.id, "delivered")]
        finally:
            await first.aclose()
            await second.aclose()
    finally:
        pg.drop_database(name)
