"""The HTTP contract of both listeners, over real sockets against a real SQLite file."""

from __future__ import annotations

import re
from typing import Any

import aiohttp
import pytest

from anonticket.service.app import Service
from anonticket.domain.ids import PaymentId, derive_service_token
from conftest import transfer, url

BOTH_BACKENDS = True  # the HTTP contract on SQLite and on PostgreSQL
PID = "0123456789abcdef"


async def post(http: aiohttp.ClientSession, address: str, path: str, body: Any = None,
               data: bytes | None = None, headers: dict[str, str] | None = None
               ) -> tuple[int, dict[str, Any]]:
    kwargs: dict[str, Any] = {"headers": headers}
    if data is not None:
        kwargs["data"] = data
    elif body is not None:
        kwargs["json"] = body
    async with http.post(url(address, path), **kwargs) as resp:
        assert resp.content_type == "application/json"
        return resp.status, await resp.json()


async def get(http: aiohttp.ClientSession, address: str, path: str,
              headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    async with http.get(url(address, path), headers=headers) as resp:
        assert resp.content_type == "application/json"
        return resp.status, await resp.json()


async def credit(service: Service, pid_text: str, amount: int, height: int = 100,
                 txid: bytes | None = None) -> bytes:
    pid = PaymentId.parse(pid_text, accept_long=True)
    t = transfer(pid, amount, height, txid)
    await service.state.ledger.credit([t], None)
    return t.txid


def assert_error(status: int, body: dict[str, Any], expected_status: int, code: str) -> None:
    assert (status, body["error"]) == (expected_status, code), body
    assert isinstance(body["message"], str) and body["message"]


async def test_redeem_success_then_already_claimed(service: Service, http: aiohttp.ClientSession) -> None:
    txid = await credit(service, PID, 5000)
    expected = derive_service_token(PaymentId.parse(PID), txid.hex()).hex()
    status, body = await post(http, service.public_address, "/api/v1/redeem", {"pid": PID})
    assert (status, body) == (200, {"status": "success", "service_token": expected, "balance": 5000,
                                    "remaining": 5000, "expires_at": None})
    status, again = await post(http, service.public_address, "/api/v1/redeem", {"pid": PID.upper()})
    assert (status, again) == (200, {"status": "already_claimed", "service_token": expected,
                                     "balance": 5000, "remaining": 5000, "expires_at": None})


async def test_balance_includes_top_ups(service: Service, http: aiohttp.ClientSession) -> None:
    await credit(service, PID, 5000)
    await post(http, service.public_address, "/api/v1/redeem", {"pid": PID})
    await credit(service, PID, 700, height=120)
    status, body = await post(http, service.public_address, "/api/v1/redeem", {"pid": PID})
    assert (status, body["status"], body["balance"]) == (200, "already_claimed", 5700)
    status, info = await get(http, service.public_address, f"/api/v1/token/{body['service_token']}")
    assert (status, info["amount"]) == (200, 5700)


async def test_pending_and_pending_wins_over_underpaid(service: Service, http: aiohttp.ClientSession) -> None:
    pid = PaymentId.parse(PID)
    service.state.ledger.set_pending({pid.raw: 4})
    status, body = await post(http, service.public_address, "/api/v1/redeem", {"pid": PID})
    assert (status, body) == (202, {"status": "pending", "confirmations": 4, "required": 10})
    await credit(service, PID, 10)  # below the minimum of 1000 while something is pending
    status, body = await post(http, service.public_address, "/api/v1/redeem", {"pid": PID})
    assert status == 202 and body["status"] == "pending"
    service.state.ledger.set_pending({})
    status, body = await post(http, service.public_address, "/api/v1/redeem", {"pid": PID})
    assert_error(status, body, 402, "underpaid")
    assert (body["balance"], body["minimum"]) == (10, 1000)


async def test_underpaid_total_becomes_redeemable_after_another_payment(
        service: Service, http: aiohttp.ClientSession) -> None:
    await credit(service, PID, 600)
    status, body = await post(http, service.public_address, "/api/v1/redeem", {"pid": PID})
    assert_error(status, body, 402, "underpaid")
    await credit(service, PID, 600, height=101)
    status, body = await post(http, service.public_address, "/api/v1/redeem", {"pid": PID})
    assert (status, body["status"], body["balance"]) == (200, "success", 1200)


async def test_unknown_pid_is_404_and_not_echoed(service: Service, http: aiohttp.ClientSession) -> None:
    status, body = await post(http, service.public_address, "/api/v1/redeem", {"pid": "fedcba9876543210"})
    assert_error(status, body, 404, "payment_not_found")
    assert "fedcba9876543210" not in str(body)


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ({"pid": "0" * 16}, "invalid_pid"),
        ({"pid": "0" * 64}, "invalid_pid"),
        ({"pid": "ab" * 32}, "invalid_pid"),  # genuine long PID, not accepted by default
        ({"pid": " " + PID[1:]}, "invalid_pid"),
        ({"pid": 123}, "invalid_pid"),
        ({"pid": None}, "invalid_pid"),
        ({}, "invalid_request"),
        ([PID], "invalid_request"),
        ("just a string", "invalid_request"),
    ],
)
async def test_redeem_bad_input(service: Service, http: aiohttp.ClientSession, payload: Any, code: str) -> None:
    status, body = await post(http, service.public_address, "/api/v1/redeem", payload)
    assert_error(status, body, 400, code)


@pytest.mark.parametrize("raw", [b"{", b"", b"\xff\xfe", b"pid=0123456789abcdef", b"null"])
async def test_redeem_malformed_json(service: Service, http: aiohttp.ClientSession, raw: bytes) -> None:
    status, body = await post(http, service.public_address, "/api/v1/redeem", data=raw)
    assert_error(status, body, 400, "invalid_request")


async def test_body_too_large_is_413_and_nothing_changes(service: Service, http: aiohttp.ClientSession) -> None:
    await credit(service, PID, 5000)
    big = b'{"pid": "' + PID.encode() + b'", "pad": "' + b"x" * 8000 + b'"}'
    status, body = await post(http, service.public_address, "/api/v1/redeem", data=big)
    assert_error(status, body, 413, "body_too_large")
    status, body = await post(http, service.public_address, "/api/v1/redeem", {"pid": PID})
    assert body["status"] == "success"  # the refused request claimed nothing


async def test_long_pids_when_enabled(config_factory, http: aiohttp.ClientSession) -> None:  # type: ignore[no-untyped-def]
    from anonticket.service.app import start_service

    service = await start_service(config_factory(API_ACCEPT_LONG_PIDS="1"))
    try:
        long_pid = "ab" * 32
        await credit(service, long_pid, 5000)
        status, body = await post(http, service.public_address, "/api/v1/redeem", {"pid": long_pid})
        assert (status, body["status"]) == (200, "success")
    finally:
        await service.aclose()


async def test_token_introspection(service: Service, http: aiohttp.ClientSession) -> None:
    await credit(service, PID, 5000)
    _, body = await post(http, service.public_address, "/api/v1/redeem", {"pid": PID})
    token = body["service_token"]
    status, info = await get(http, service.public_address, f"/api/v1/token/{token}")
    assert status == 200
    assert info["status"] == "active" and info["amount"] == 5000 and info["revoked_at"] is None
    assert info["abuse_score"] == 0
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", info["issued_at"])
    status, body = await get(http, service.public_address, "/api/v1/token/" + "ab" * 32)
    assert_error(status, body, 404, "token_not_found")
    # same 8-byte prefix as the issued token: memory cannot rule it out, SQLite answers 404
    lookalike = token[:16] + ("0" * 48 if token[16:] != "0" * 48 else "1" * 48)
    status, body = await get(http, service.public_address, f"/api/v1/token/{lookalike}")
    assert_error(status, body, 404, "token_not_found")
    status, body = await get(http, service.public_address, "/api/v1/token/xyz")
    assert_error(status, body, 400, "invalid_token")
    assert service.state.metrics.token["not_found"].value == 2


async def test_revoke_is_idempotent_and_audited(service: Service, http: aiohttp.ClientSession) -> None:
    await credit(service, PID, 5000)
    _, body = await post(http, service.public_address, "/api/v1/redeem", {"pid": PID})
    token = body["service_token"]
    internal = service.internal_address
    status, first = await post(http, internal, f"/api/v1/token/{token}/revoke",
                               {"reason": "chargeback", "abuse_score": 3})
    assert status == 200 and first["status"] == "revoked" and first["abuse_score"] == 3
    assert first["revoke_reason"] == "chargeback"
    status, second = await post(http, internal, f"/api/v1/token/{token}/revoke", {"reason": "other"})
    assert status == 200
    assert (second["revoked_at"], second["revoke_reason"], second["abuse_score"]) == (
        first["revoked_at"], "chargeback", 3)
    _, third = await post(http, internal, f"/api/v1/token/{token}/revoke", {"abuse_score": 7})
    assert third["abuse_score"] == 7
    status, public_view = await get(http, service.public_address, f"/api/v1/token/{token}")
    assert public_view["status"] == "revoked" and "revoke_reason" not in public_view
    status, detail = await get(http, internal, f"/api/v1/token/{token}")
    assert [entry["reason"] for entry in detail["audit"]] == ["chargeback", "other", None]
    assert detail["revoke_reason"] == "chargeback"


@pytest.mark.parametrize(
    "payload", [{"reason": "x" * 257}, {"reason": 5}, {"abuse_score": -1}, {"abuse_score": "3"},
                {"abuse_score": True}, {"abuse_score": 1.5}, [1]])
async def test_revoke_bad_input(service: Service, http: aiohttp.ClientSession, payload: Any) -> None:
    await credit(service, PID, 5000)
    _, body = await post(http, service.public_address, "/api/v1/redeem", {"pid": PID})
    token = body["service_token"]
    status, err = await post(http, service.internal_address, f"/api/v1/token/{token}/revoke", payload)
    assert_error(status, err, 400, "invalid_request")
    _, info = await get(http, service.public_address, f"/api/v1/token/{token}")
    assert info["status"] == "active"  # nothing changed


async def test_revoke_unknown_token(service: Service, http: aiohttp.ClientSession) -> None:
    status, body = await post(http, service.internal_address, "/api/v1/token/" + "cd" * 32 + "/revoke", {})
    assert_error(status, body, 404, "token_not_found")


async def test_admin_routes_do_not_exist_publicly(service: Service, http: aiohttp.ClientSession) -> None:
    for path in ("/metrics", "/api/v1/stats", "/docs/openapi.yaml"):
        status, body = await get(http, service.public_address, path)
        assert_error(status, body, 404, "not_found")
    status, body = await post(http, service.public_address, "/api/v1/token/" + "ab" * 32 + "/revoke", {})
    assert_error(status, body, 404, "not_found")


async def test_unknown_path_and_wrong_method(service: Service, http: aiohttp.ClientSession) -> None:
    for address in (service.public_address, service.internal_address):
        status, body = await get(http, address, "/nope")
        assert_error(status, body, 404, "not_found")
        status, body = await get(http, address, "/api/v1/redeem")
        assert_error(status, body, 405, "method_not_allowed")
        status, body = await post(http, address, "/health/live", {})
        assert_error(status, body, 405, "method_not_allowed")


async def test_health(service: Service, http: aiohttp.ClientSession) -> None:
    assert await get(http, service.public_address, "/health/live") == (200, {"status": "ok"})
    assert await get(http, service.public_address, "/health/ready") == (200, {"status": "ready"})
    status, detail = await get(http, service.internal_address, "/health/ready")
    assert status == 200 and detail["monitor"]["enabled"] is False


async def test_readiness_turns_503_when_the_monitor_is_stale(
        service: Service, http: aiohttp.ClientSession) -> None:
    monitor = service.state.monitor
    monitor.enabled = True
    monitor.started_at -= 1000  # start-up grace long over, never a success
    monitor.last_error = "timeout"
    status, body = await get(http, service.public_address, "/health/ready")
    assert (status, body) == (503, {"status": "not_ready"})
    status, detail = await get(http, service.internal_address, "/health/ready")
    assert status == 503 and "timeout" in detail["reason"]


async def test_metrics_are_preregistered_and_count(service: Service, http: aiohttp.ClientSession) -> None:
    async with http.get(url(service.internal_address, "/metrics")) as resp:
        assert resp.status == 200
        text = await resp.text()
    for series in ('anonticket_redeem_requests_total{outcome="success"} 0.0',
                   'anonticket_redeem_requests_total{outcome="not_found"} 0.0',
                   'anonticket_token_requests_total{outcome="active"} 0.0',
                   "anonticket_revocations_total 0.0",
                   "anonticket_negative_cache_hits_total 0.0",
                   "anonticket_negative_cache_entries 0.0",
                   'anonticket_request_duration_seconds_count{route="/api/v1/redeem"} 0.0',
                   'anonticket_monitor_polls_total{result="ok"} 0.0',
                   'anonticket_monitor_transfers_total{result="zero_pid"} 0.0'):
        assert series in text
    await post(http, service.public_address, "/api/v1/redeem", {"pid": "fedcba9876543210"})
    await post(http, service.public_address, "/api/v1/redeem", {"pid": "fedcba9876543210"})
    async with http.get(url(service.internal_address, "/metrics")) as resp:
        text = await resp.text()
    assert 'anonticket_redeem_requests_total{outcome="not_found"} 2.0' in text
    assert "anonticket_negative_cache_hits_total 1.0" in text
    assert "anonticket_negative_cache_entries 1.0" in text
    assert "fedcba9876543210" not in text


async def test_internal_token_guards_admin_routes(config_factory, http: aiohttp.ClientSession) -> None:  # type: ignore[no-untyped-def]
    from anonticket.service.app import start_service

    service = await start_service(config_factory(API_INTERNAL_TOKEN="s3cret-operator-token"))
    try:
        internal = service.internal_address
        token_path = "/api/v1/token/" + "ab" * 32
        for headers in (None, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-operator-token"}):
            status, body = await get(http, internal, token_path, headers=headers)
            assert_error(status, body, 401, "unauthorized")
            status, body = await post(http, internal, token_path + "/revoke", {}, headers=headers)
            assert_error(status, body, 401, "unauthorized")
        good = {"Authorization": "Bearer s3cret-operator-token"}
        status, body = await get(http, internal, token_path, headers=good)
        assert_error(status, body, 404, "token_not_found")  # authorised, then looked up
        assert (await get(http, internal, "/health/live"))[0] == 200
    finally:
        await service.aclose()
