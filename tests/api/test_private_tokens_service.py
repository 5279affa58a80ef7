"""Privacy Pass through the real service, on SQLite and PostgreSQL: the issuer directory,
batch issuance paid by one debit (exactly once with an Idempotency-Key, refusals that
change nothing, RFC 9578's 422s), redemption at the gateway check (a request unit, a
session unit answered with a credential, a second spend refused, concurrent spends of one
token: exactly one wins), the PrivateToken challenges on a 401, hostile input never a 500,
and the stored state after two customers' issuances and redemptions holding nothing that
ties one to the other."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anonticket.crypto.privacy_pass import (
    TokenKey, TokenRequest, TokenResponse, create_token_request, finalize_token,
)
from anonticket.crypto.privacy_pass_http import (
    IssuerDirectory, b64url_decode, format_authorization, parse_www_authenticate,
)
from anonticket.domain.ids import PaymentId
from anonticket.service.app import Service, start_service
from conftest import make_config, transfer, url
from test_credential_routes import provisional_tokens

BOTH_BACKENDS = True
DIRECTORY = "/.well-known/private-token-issuer-directory"
ISSUE = "/api/v1/private-token"
UNITS = "hour=session:3600:100, call=request:7"


@pytest.fixture
async def svc(tmp_path: Path, database_url: str) -> AsyncIterator[Service]:
    running = await start_service(make_config(tmp_path, DATABASE_URL=database_url,
                                              PRIVATE_TOKEN_UNITS=UNITS,
                                              PRIVATE_TOKEN_ISSUER_NAME="issuer.test"))
    yield running
    await running.aclose()


async def new_token(service: Service, amount: int = 5000) -> str:
    pid = PaymentId.generate()
    await service.state.ledger.credit([transfer(pid, amount)], None)
    return (await service.state.ledger.redeem(pid)).token.hex()  # type: ignore[union-attr]


async def remaining(service: Service, token: str) -> int:
    record = await service.state.storage.get_token(bytes.fromhex(token)) if hasattr(
        service.state, "storage") else await service.state.ledger.storage.get_token(
        bytes.fromhex(token))
    return record.remaining  # type: ignore[union-attr]


async def directory(http: aiohttp.ClientSession, service: Service) -> tuple[Any, dict[str, Any]]:
    async with http.get(url(service.public_address, DIRECTORY)) as resp:
        assert resp.status == 200
        return resp.headers, json.loads(await resp.read())


def unit_keys(document: dict[str, Any]) -> dict[str, TokenKey]:
    parsed = IssuerDirectory.from_json(document)
    return {item["anonticket-unit"]: entry.token_key
            for item, entry in zip(document["token-keys"], parsed.token_keys, strict=True)}


def challenge_of(service: Service) -> bytes:
    return service.state.ledger.private_tokens.challenge  # type: ignore[union-attr]


async def post_batch(http: aiohttp.ClientSession, service: Service, token: str | None,
                     body: bytes, key: str | None = "k1", **headers: str
                     ) -> tuple[int, Any, bytes]:
    sent = {"Content-Type": "application/private-token-request", **headers}
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    if key is not None:
        sent["Idempotency-Key"] = key
    async with http.post(url(service.public_address, ISSUE), data=body, headers=sent) as resp:
        return resp.status, resp.headers, await resp.read()


async def fetch(http: aiohttp.ClientSession, service: Service, token: str, units: list[str],
                key: str | None = None) -> list[Any]:
    _, document = await directory(http, service)
    keys = unit_keys(document)
    pending = [create_token_request(challenge_of(service), keys[name]) for name in units]
    body = b"".join(request.encode() for request, _ in pending)
    status, headers, answer = await post_batch(http, service, token, body,
                                               key or secrets.token_hex(8))
    assert status == 200, answer
    assert headers["Content-Type"] == "application/private-token-response"
    assert len(answer) == 256 * len(units)
    return [finalize_token(state, TokenResponse(answer[i * 256:(i + 1) * 256]))
            for i, (_, state) in enumerate(pending)]


async def check(http: aiohttp.ClientSession, service: Service, headers: Any,
                cost: int = 0) -> tuple[int, Any, bytes]:
    sent = dict(headers)
    if cost:
        sent["X-Anonticket-Cost"] = str(cost)
    async with http.get(url(service.internal_address, "/api/v1/check"), headers=sent) as resp:
        return resp.status, resp.headers, await resp.read()


# ---------------------------------------------------------------------- directory
async def test_the_directory_lists_one_key_per_unit_with_distinct_truncated_ids(
        svc: Service, http: aiohttp.ClientSession) -> None:
    headers, document = await directory(http, svc)
    assert headers["Content-Type"] == "application/private-token-issuer-directory"
    assert headers["Cache-Control"].startswith("public, max-age=")
    assert document["issuer-request-uri"] == ISSUE
    keys = unit_keys(document)
    assert set(keys) == {"hour", "call"}
    assert len({key.truncated_token_key_id for key in keys.values()}) == 2
    assert all(item["token-type"] == 2 and "not-before" in item for item in document["token-keys"])


# ---------------------------------------------------------------------- issue and redeem
async def test_a_batch_is_paid_once_and_each_token_redeems_once(
        svc: Service, http: aiohttp.ClientSession) -> None:
    token = await new_token(svc)
    before = await remaining(svc, token)
    tokens = await fetch(http, svc, token, ["call", "call", "hour"])
    assert await remaining(svc, token) == before - 7 - 7 - 100
    call1, call2, hour = tokens
    status, headers, _ = await check(http, svc, {"Authorization": format_authorization(call1)})
    assert status == 200 and len(headers["X-Anonticket-Subject"]) == 32
    assert headers["Cache-Control"] == "no-store" and "X-Anonticket-Credential" not in headers
    status, headers, body = await check(http, svc, {"Authorization": format_authorization(call1)})
    assert status == 401 and headers["X-Anonticket-Reason"] == "private_token_spent"
    assert json.loads(body)["error"] == "private_token_spent"
    # a request unit pays at a metered location; the location's cost is not charged
    status, _, _ = await check(http, svc, {"Authorization": format_authorization(call2)}, cost=5)
    assert status == 200
    assert await remaining(svc, token) == before - 114
    # a session unit: a credential for the session, and a cookie for browsers
    status, headers, _ = await check(http, svc, {"Authorization": format_authorization(hour)})
    assert status == 200
    credential = headers["X-Anonticket-Credential"]
    assert credential.startswith("v4.public.") and "Set-Cookie" in headers
    subject = headers["X-Anonticket-Subject"]
    status, again, _ = await check(http, svc, {"Authorization": f"Bearer {credential}"})
    assert status == 200 and again["X-Anonticket-Subject"] == subject
    assert subject != svc.state.ledger.credentials is not None  # a fresh random subject
    from anonticket.domain.ids import token_subject
    assert subject != token_subject(bytes.fromhex(token))


async def test_a_session_token_is_not_spent_at_a_metered_location(
        svc: Service, http: aiohttp.ClientSession) -> None:
    token = await new_token(svc)
    [hour] = await fetch(http, svc, token, ["hour"])
    status, headers, _ = await check(http, svc, {"Authorization": format_authorization(hour)},
                                     cost=5)
    assert status == 401 and headers["X-Anonticket-Reason"] == "token_required"
    status, _, _ = await check(http, svc, {"Authorization": format_authorization(hour)})
    assert status == 200


async def test_concurrent_spends_of_one_token_let_exactly_one_through(
        svc: Service, http: aiohttp.ClientSession) -> None:
    token = await new_token(svc)
    tokens = await fetch(http, svc, token, ["call", "call"])
    answers = await asyncio.gather(*(
        check(http, svc, {"Authorization": format_authorization(tokens[i % 2])})
        for i in range(24)))
    statuses = [status for status, _, _ in answers]
    assert statuses.count(200) == 2 and statuses.count(401) == 22
    assert sum((await svc.state.ledger.storage.count_spent_private_tokens()).values()) == 2


async def test_a_retry_returns_the_same_signatures_and_charges_once(
        svc: Service, http: aiohttp.ClientSession) -> None:
    token = await new_token(svc)
    _, document = await directory(http, svc)
    key = unit_keys(document)["call"]
    body = b"".join(create_token_request(challenge_of(svc), key)[0].encode() for _ in range(3))
    before = await remaining(svc, token)
    first = await post_batch(http, svc, token, body, "retry-1")
    second = await post_batch(http, svc, token, body, "retry-1")
    assert first[0] == second[0] == 200 and first[2] == second[2]
    assert second[1]["Idempotent-Replayed"] == "true"
    assert await remaining(svc, token) == before - 21
    other = b"".join(create_token_request(challenge_of(svc), key)[0].encode() for _ in range(3))
    status, _, answer = await post_batch(http, svc, token, other, "retry-1")
    assert status == 422 and json.loads(answer)["error"] == "idempotency_key_reused"
    assert await remaining(svc, token) == before - 21


async def test_refusals_change_nothing(svc: Service, http: aiohttp.ClientSession) -> None:
    token = await new_token(svc, amount=1050)  # 1,050 piconero: ten hours at most
    _, document = await directory(http, svc)
    keys = unit_keys(document)
    good = create_token_request(challenge_of(svc), keys["hour"])[0]
    before = await remaining(svc, token)
    cases = {
        "unsupported_token_type": b"\x00\x01" + good.encode()[2:],
        "unknown_token_key": TokenRequest((good.truncated_token_key_id + 1) % 256 if (
            good.truncated_token_key_id + 1) % 256 not in {
            k.truncated_token_key_id for k in keys.values()} else
            (good.truncated_token_key_id + 2) % 256, good.blinded_msg).encode(),
        "malformed_message": good.encode()[:-1],
    }
    for code, body in cases.items():
        status, _, answer = await post_batch(http, svc, token, body)
        assert (status, json.loads(answer)["error"]) == (422, code)
    # a blinded message not below the modulus: 422, nothing signed or charged
    status, _, answer = await post_batch(
        http, svc, token, TokenRequest(good.truncated_token_key_id, b"\xff" * 256).encode())
    assert (status, json.loads(answer)["error"]) == (422, "malformed_message")
    status, _, answer = await post_batch(http, svc, token, good.encode() * 11, "eleven")
    assert (status, json.loads(answer)["error"]) == (402, "insufficient_balance")
    status, headers, answer = await post_batch(http, svc, None, good.encode())
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
    status, _, answer = await post_batch(http, svc, token, good.encode(), key=None)
    assert (status, json.loads(answer)["error"]) == (400, "idempotency_key_required")
    status, _, answer = await post_batch(http, svc, token, good.encode(),
                                         **{"Content-Type": "application/json"})
    assert status == 415
    status, _, answer = await post_batch(http, svc, token, good.encode() * 65, "too-many")
    assert (status, json.loads(answer)["error"]) == (422, "malformed_message")
    assert await remaining(svc, token) == before
    # a token that cannot pay is refused before anything is signed, and nothing is kept for
    # its key: the same key then serves a request the balance covers
    status, _, _ = await post_batch(http, svc, token, good.encode(), "eleven")
    assert status == 200 and await remaining(svc, token) == before - 100
    for unknown, code in (("00" * 32, 404), ):
        status, _, answer = await post_batch(http, svc, unknown, good.encode(), "x")
        assert (status, json.loads(answer)["error"]) == (code, "token_not_found")


async def test_no_private_tokens_on_provisional_credit(
        svc: Service, http: aiohttp.ClientSession) -> None:
    """A private token verifies offline and cannot be tied to its issuance, so nothing could
    take one back from a double spender once the payment is withdrawn: like a credential,
    issuance waits for final credit (403 token_provisional, nothing signed, charged or kept
    for the key), while the token itself keeps paying the gateway; the same request is
    granted once the payment has its confirmations. A withdrawn token is refused as the
    check refuses it."""
    ledger = svc.state.ledger
    _, document = await directory(http, svc)
    key = unit_keys(document)["call"]
    body = b"".join(create_token_request(challenge_of(svc), key)[0].encode() for _ in range(2))
    tokens = await provisional_tokens(ledger, ("final", "withdrawn"))
    for token, _, _ in tokens.values():
        status, headers, answer = await post_batch(http, svc, token, body, "early")
        assert (status, json.loads(answer)["error"]) == (403, "token_provisional")
        assert headers["Cache-Control"] == "no-store"
        assert await remaining(svc, token) == 5000
        assert (await check(http, svc, {"Authorization": f"Bearer {token}"}, cost=1))[0] == 200
    # more than the balance is a 402 first: waiting would not cure it
    hours = create_token_request(challenge_of(svc), unit_keys(document)["hour"])[0].encode()
    status, _, answer = await post_batch(http, svc, tokens["final"][0], hours * 60, "too-much")
    assert (status, json.loads(answer)["error"]) == (402, "insufficient_balance")
    token, pid, pooled = tokens["final"]
    await ledger.credit([transfer(pid, 5000, 100, pooled.txid)], None)  # N confirmations
    status, _, answer = await post_batch(http, svc, token, body, "early")  # nothing was kept
    assert status == 200 and len(answer) == 2 * 256
    assert await remaining(svc, token) == 5000 - 1 - 14
    token, pid, pooled = tokens["withdrawn"]
    await ledger.withdraw([pooled.txid], [pid.raw])
    status, _, answer = await post_batch(http, svc, token, body, "late")
    assert (status, json.loads(answer)["error"]) == (403, "payment_withdrawn")
    tallies = svc.state.metrics.private_token
    assert (tallies["token_provisional"].value, tallies["issued"].value) == (2, 1)


async def test_a_401_offers_a_private_token_challenge_for_each_unit(
        svc: Service, http: aiohttp.ClientSession) -> None:
    _, document = await directory(http, svc)
    keys = unit_keys(document)
    for headers in ({}, {"Authorization": "PrivateToken token=AAAA"}):
        status, answer, _ = await check(http, svc, headers)
        assert status == 401
        value = answer["WWW-Authenticate"]
        assert value.startswith('Bearer realm="anonticket"')
        found = parse_www_authenticate(value)
        assert {TokenKey.from_spki(item.token_key) for item in found} == set(keys.values())
        assert {item.challenge for item in found} == {challenge_of(svc)}


async def test_a_token_for_another_challenge_or_issuer_is_refused(
        svc: Service, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    token = await new_token(svc)
    _, document = await directory(http, svc)
    key = unit_keys(document)["call"]
    from anonticket.crypto.privacy_pass import TokenChallenge
    other = TokenChallenge("elsewhere.test").encode()
    request, state = create_token_request(other, key)
    status, _, answer = await post_batch(http, svc, token, request.encode(), "other")
    assert status == 200  # the issuer cannot see the challenge: it is blinded
    spent = finalize_token(state, TokenResponse(answer))
    status, headers, _ = await check(http, svc, {"Authorization": format_authorization(spent)})
    assert status == 401 and headers["X-Anonticket-Reason"] == "private_token_invalid"


# ---------------------------------------------------------------------- hostile input
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=st.binary(max_size=600), value=st.text(max_size=300))
async def test_hostile_bodies_and_headers_are_refused_never_a_500(
        svc: Service, http: aiohttp.ClientSession, body: bytes, value: str) -> None:
    status, _, _ = await post_batch(http, svc, "00" * 32, body)
    assert status in (401, 404, 422)
    printable = "".join(ch for ch in value if " " <= ch <= "~")
    status, _, _ = await check(http, svc, {"Authorization": "PrivateToken " + printable})
    assert status == 401
    status, _, _ = await check(http, svc, {
        "Authorization": 'PrivateToken token="' + printable.replace('"', "") + '"'})
    assert status == 401


# ---------------------------------------------------------------------- unlinkability
async def _every_row(service: Service) -> list[tuple[str, tuple[Any, ...]]]:
    storage = service.state.ledger.storage
    tables = ["payments", "service_tokens", "debits", "idempotency_keys", "signing_keys",
              "private_token_spent"]
    rows = []
    for table in tables:
        for row in await storage._read(f"SELECT * FROM {table}"):  # noqa: SLF001
            rows.append((table, tuple(row)))
    return rows


def _needles(value: bytes) -> list[bytes | str]:
    import base64
    return [value, value.hex(), base64.urlsafe_b64encode(value).decode().rstrip("=")]


async def test_stored_state_and_logs_do_not_tie_a_redemption_to_its_issuance(
        svc: Service, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="anonticket")
    alice, bob = await new_token(svc), await new_token(svc)
    alice_tokens = await fetch(http, svc, alice, ["call", "call"])
    bob_tokens = await fetch(http, svc, bob, ["call", "call"])
    spent = [alice_tokens[0], bob_tokens[1], bob_tokens[0], alice_tokens[1]]
    for item in spent:
        status, _, _ = await check(http, svc, {"Authorization": format_authorization(item)})
        assert status == 200
    rows = await _every_row(svc)
    # what a redemption leaves: its key id, its nonce, the minute; nothing names a buyer
    spent_rows = [row for table, row in rows if table == "private_token_spent"]
    assert len(spent_rows) == 4
    assert all(len(row) == 3 and row[2] % 60 == 0 for row in spent_rows)
    assert {row[0] for row in spent_rows} == {alice_tokens[0].token_key_id.hex()}
    # nothing of a redeemed token (nonce aside, in its own table; the signature; the whole
    # token) is stored anywhere else, in any form
    for item in spent:
        for table, row in rows:
            for needle in _needles(item.authenticator) + _needles(item.encode()):
                assert all(needle not in cell for cell in row
                           if isinstance(cell, (bytes, str)) and type(cell) is type(needle)), table
            if table != "private_token_spent":
                for needle in _needles(item.nonce):
                    assert all(needle not in cell for cell in row
                               if isinstance(cell, (bytes, str)) and type(cell) is type(needle))
    # the issuance side holds the buyers' debits and retry records: neither names a nonce,
    # and the spent rows hold no token, amount, time of issue or order of issue
    customers = {bytes.fromhex(alice), bytes.fromhex(bob)}
    for row in spent_rows:
        assert not customers & {cell for cell in row if isinstance(cell, bytes)}
    # both batches were one debit each, indistinguishable but for the buyer
    debits = [row for table, row in rows if table == "debits"]
    assert len(debits) == 2
    text = caplog.text
    for item in spent:
        for needle in _needles(item.nonce) + _needles(item.authenticator):
            assert str(needle) not in text
    for customer in (alice, bob):
        assert customer not in text


async def test_the_operator_rotates_an_issuer_key_through_the_internal_api(
        svc: Service, http: aiohttp.ClientSession) -> None:
    token = await new_token(svc)
    [before] = await fetch(http, svc, token, ["call"])
    rotate = url(svc.internal_address, "/api/v1/keys/rotate")
    async with http.post(rotate, json={"purpose": "private_token:call"}) as resp:
        assert resp.status == 422  # the schedule rotates it; by hand only --now / --compromised
    async with http.post(rotate, json={"purpose": "private_token:week", "immediately": True}) as resp:
        assert resp.status == 422
    async with http.post(rotate, json={"purpose": "private_token:", "immediately": True}) as resp:
        assert resp.status == 400
    async with http.post(rotate, json={"purpose": "private_token:call", "compromised": True}) as resp:
        answer = await resp.json()
        assert resp.status == 200 and answer["rotated"]["status"] == "signing"
        assert "secret" not in json.dumps(answer)
    _, document = await directory(http, svc)
    assert unit_keys(document)["call"].token_key_id.hex() == answer["rotated"]["key_id"]
    status, headers, _ = await check(http, svc, {"Authorization": format_authorization(before)})
    assert status == 401 and headers["X-Anonticket-Reason"] == "private_token_invalid"
    [after] = await fetch(http, svc, token, ["call"])
    status, _, _ = await check(http, svc, {"Authorization": format_authorization(after)})
    assert status == 200
