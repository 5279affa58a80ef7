"""Credentials through the real service, on SQLite and PostgreSQL: issuing refused exactly as
the gateway check refuses the token, the claims a customer gets, the gateway taking a
credential (header or cookie) without storage, hostile credentials refused with a clear
reason and never a 500, metered locations refusing them, revocation at once, the key
document, rotation through the internal API, keys surviving a restart, and nothing secret
in bodies, logs or metrics."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from anonticket.crypto.credential import CredentialVerifier
from anonticket.crypto.paseto_v4 import b64url_decode, b64url_encode
from anonticket.domain.ids import PaymentId, ServiceToken, token_subject
from anonticket.service.app import Service, start_service
from anonticket.service.housekeeping import Housekeeper
from conftest import make_config, transfer, url

BOTH_BACKENDS = True
KEYS = "/.well-known/anonticket-credential-keys"


@pytest.fixture
async def svc(tmp_path: Path, database_url: str) -> AsyncIterator[Service]:
    running = await start_service(make_config(tmp_path, DATABASE_URL=database_url,
                                              CREDENTIAL_AUDIENCES="files,api"))
    yield running
    await running.aclose()


async def new_token(service: Service, amount: int = 5000) -> str:
    pid = PaymentId.generate()
    await service.state.ledger.credit([transfer(pid, amount)], None)
    return (await service.state.ledger.redeem(pid)).token.hex()  # type: ignore[union-attr]


async def post_credential(http: aiohttp.ClientSession, service: Service, headers: Any = None,
                          body: Any = None, data: bytes | None = None) -> tuple[int, Any, Any]:
    async with http.post(url(service.public_address, "/api/v1/credential"), headers=headers,
                         json=body, data=data) as resp:
        return resp.status, resp.headers, await resp.json()


async def check(http: aiohttp.ClientSession, service: Service, headers: Any) -> tuple[int, Any, bytes]:
    async with http.get(url(service.internal_address, "/api/v1/check"), headers=headers) as resp:
        return resp.status, resp.headers, await resp.read()


async def credential_for(http: aiohttp.ClientSession, service: Service, token: str,
                         **body: str) -> str:
    status, _, answer = await post_credential(http, service, {"Authorization": f"Bearer {token}"},
                                              body or None)
    assert status == 200, answer
    return answer["credential"]


def claims_of(credential: str) -> dict[str, Any]:
    return json.loads(b64url_decode(credential.split(".")[2])[:-64])


# ---------------------------------------------------------------------- issue
async def test_a_credential_opens_the_gateway_with_the_tokens_subject(
        svc: Service, http: aiohttp.ClientSession) -> None:
    token = await new_token(svc)
    status, headers, answer = await post_credential(http, svc, {"Authorization": f"Bearer {token}"})
    assert status == 200 and headers["Cache-Control"] == "no-store"
    assert set(answer) == {"credential", "expires_at", "audience"} and answer["audience"] is None
    credential = answer["credential"]
    claims = claims_of(credential)
    assert claims["sub"] == token_subject(bytes.fromhex(token)) and claims["unlimited"] is True
    assert answer["expires_at"] == claims["exp"]
    assert token not in json.dumps(answer)
    status, headers, body = await check(http, svc, {"Authorization": f"Bearer {credential}"})
    assert (status, body) == (200, b"")
    assert headers["X-Anonticket-Subject"] == claims["sub"]
    assert "X-Anonticket-Remaining" not in headers and "X-Anonticket-Expires-At" not in headers
    # the same from the access cookie, as the access page's credential mode sets it
    status, headers, _ = await check(http, svc, {"Cookie": f"a=1; anonticket_access={credential}"})
    assert (status, headers["X-Anonticket-Subject"]) == (200, claims["sub"])
    assert svc.state.metrics.gateway["allowed_credential"].value == 2
    assert svc.state.metrics.credential["issued"].value == 1


async def test_a_credential_carries_its_tokens_expiry_and_never_outlives_it(
        svc: Service, http: aiohttp.ClientSession) -> None:
    token = await new_token(svc)
    ledger = svc.state.ledger
    record = await ledger.find_token(ServiceToken(bytes.fromhex(token)))
    assert record is not None
    soon = ledger.clock() + 60
    ledger._records.put(record.token, replace(record, expires_at=soon))  # a token with 60 s left
    credential = await credential_for(http, svc, token)
    claims = claims_of(credential)
    assert claims["unlimited"] is False and claims["token_expires_at"] == claims["exp"]
    status, headers, _ = await check(http, svc, {"Authorization": f"Bearer {credential}"})
    assert (status, headers["X-Anonticket-Expires-At"]) == (200, claims["exp"])


@pytest.mark.parametrize("make_headers", [
    lambda token: {},
    lambda token: {"Authorization": "Basic eDp5"},
    lambda token: {"Authorization": "Bearer " + "zz" * 32},
    lambda token: {"Authorization": "Bearer " + token[:-1]},
    lambda token: {"Authorization": "Bearer " + "ab" * 32},
    lambda token: CIMultiDict([("Authorization", f"Bearer {token}")] * 2),
], ids=["missing", "basic", "not_hex", "short", "unknown", "twice"])
async def test_refusals_are_the_gateway_checks(svc: Service, http: aiohttp.ClientSession,
                                               make_headers: Any) -> None:
    token = await new_token(svc)
    headers = make_headers(token)
    status, issued, answer = await post_credential(http, svc, headers)
    checked, checked_headers, body = await check(http, svc, headers)
    assert (status, answer) == (checked, json.loads(body))
    for name in ("WWW-Authenticate", "X-Anonticket-Reason"):
        assert issued.get(name) == checked_headers.get(name), name
    assert status == 401


async def test_revoked_and_expired_tokens_are_refused_as_the_check_refuses_them(
        svc: Service, http: aiohttp.ClientSession) -> None:
    revoked, expired = await new_token(svc), await new_token(svc)
    await svc.state.ledger.revoke(ServiceToken(bytes.fromhex(revoked)), "test", None)
    ledger = svc.state.ledger
    record = await ledger.find_token(ServiceToken(bytes.fromhex(expired)))
    ledger._records.put(record.token, replace(record, expires_at=1))  # type: ignore[union-attr]
    for token, reason in ((revoked, "token_revoked"), (expired, "token_expired")):
        headers = {"Authorization": f"Bearer {token}"}
        status, issued, answer = await post_credential(http, svc, headers)
        checked, checked_headers, body = await check(http, svc, headers)
        assert (status, answer["error"]) == (403, reason)
        assert (status, answer) == (checked, json.loads(body))
        assert issued["X-Anonticket-Reason"] == checked_headers["X-Anonticket-Reason"] == reason



async def provisional_tokens(ledger: Any, names: tuple[str, ...]
                             ) -> dict[str, tuple[str, PaymentId, Any]]:
    """A token per name, each bought by one payment still in the pool and credited
    provisionally: (token hex, its PID, the pooled transfer to confirm or withdraw later)."""
    tokens = {}
    for name in names:
        pid = PaymentId.generate()
        pooled = transfer(pid, 5000, height=0)
        await ledger.credit_provisional([pooled], max_per_pid=10**6, max_outstanding=10**6)
        tokens[name] = ((await ledger.redeem(pid)).token.hex(), pid, pooled)
    return tokens


async def test_no_credential_on_provisional_credit_nor_on_a_withdrawn_one(
        svc: Service, http: aiohttp.ClientSession) -> None:
    """A credential verifies offline until it expires: issued on provisional credit, nothing
    could take it back when that payment is withdrawn (issue 25). So a provisional token is
    refused until its payment is final, and a withdrawn one as the check refuses it."""
    ledger = svc.state.ledger
    tokens = await provisional_tokens(ledger, ("final", "withdrawn"))
    for token, _, _ in tokens.values():
        status, _, answer = await post_credential(http, svc, {"Authorization": f"Bearer {token}"})
        assert (status, answer["error"]) == (403, "token_provisional")
        # the token itself keeps working at the gateway meanwhile
        assert (await check(http, svc, {"Authorization": f"Bearer {token}"}))[0] == 200
    token, pid, pooled = tokens["final"]
    await ledger.credit([transfer(pid, 5000, 100, pooled.txid)], None)  # N confirmations
    status, _, answer = await post_credential(http, svc, {"Authorization": f"Bearer {token}"})
    assert status == 200 and answer["credential"].startswith("v4.public.")
    token, pid, pooled = tokens["withdrawn"]
    await ledger.withdraw([pooled.txid], [pid.raw])
    headers = {"Authorization": f"Bearer {token}"}
    status, _, answer = await post_credential(http, svc, headers)
    checked, _, body = await check(http, svc, headers)
    assert (status, answer["error"]) == (403, "payment_withdrawn")
    assert (status, answer) == (checked, json.loads(body))
    tallies = svc.state.metrics.credential
    assert (tallies["token_provisional"].value, tallies["payment_withdrawn"].value,
            tallies["issued"].value) == (2, 1, 1)


async def test_a_credential_never_buys_another(svc: Service, http: aiohttp.ClientSession) -> None:
    credential = await credential_for(http, svc, await new_token(svc))
    status, _, answer = await post_credential(http, svc, {"Authorization": f"Bearer {credential}"})
    assert (status, answer["error"]) == (401, "invalid_token")
    # nor does the access cookie (a browser's) on this JSON route
    status, _, answer = await post_credential(
        http, svc, {"Cookie": f"anonticket_access={await new_token(svc)}"})
    assert (status, answer["error"]) == (401, "token_missing")


async def test_audiences_are_the_operators_and_the_gateway_takes_none(
        svc: Service, http: aiohttp.ClientSession) -> None:
    token = await new_token(svc)
    auth = {"Authorization": f"Bearer {token}"}
    credential = await credential_for(http, svc, token, aud="files")
    assert claims_of(credential)["aud"] == "files"
    keys = await key_document(http, svc)
    service_side = CredentialVerifier.from_key_document(keys, audience="files")
    assert service_side.verify(credential).subject == token_subject(bytes.fromhex(token))
    assert (await check(http, svc, {"Authorization": f"Bearer {credential}"}))[0] == 401
    # an audience the operator does not issue is well-formed: 422; a malformed body is 400
    for body, want in (({"aud": "other"}, (422, "invalid_audience")),
                       ({"aud": ""}, (422, "invalid_audience")),
                       ({"aud": 5}, (400, "invalid_request")),
                       ({"aud": "files", "sub": "x"}, (400, "invalid_request")),
                       ([1], (400, "invalid_request"))):
        status, _, answer = await post_credential(http, svc, auth, body)
        assert (status, answer["error"]) == want, body
        assert "other" not in answer["message"]
    status, _, answer = await post_credential(http, svc, auth, data=b"{nope")
    assert (status, answer["error"]) == (400, "invalid_request")
    status, _, answer = await post_credential(http, svc, auth, {"aud": None})
    assert status == 200 and answer["audience"] is None


# ---------------------------------------------------------------------- hostile credentials
def hostile(credential: str) -> dict[str, str]:
    _, _, payload, footer = credential.split(".")
    raw = b64url_decode(payload)
    flipped = bytearray(raw)
    flipped[5] ^= 1
    other_claims = json.dumps({**json.loads(raw[:-64]), "sub": "f" * 32}).encode() + raw[-64:]
    cases = {
        "tampered_claims": f"v4.public.{b64url_encode(bytes(flipped))}.{footer}",
        "swapped_claims": f"v4.public.{b64url_encode(other_claims)}.{footer}",
        "tampered_signature": f"v4.public.{b64url_encode(raw[:-1] + bytes([raw[-1] ^ 1]))}.{footer}",
        "truncated": credential[:-10],
        "no_footer": f"v4.public.{payload}",
        "padded": f"v4.public.{payload}=.{footer}",
        "re_encoded": f"v4.public.{payload.replace('-', '+').replace('_', '/')}.{footer}",
        "wrong_version": "v2.public." + credential[len("v4.public."):],
        "local_purpose": "v4.local." + credential[len("v4.public."):],
        "v3": "v3.public." + credential[len("v4.public."):],
        "prefix_only": "v4.public.",
        "extra_part": credential + ".x",
        "unicode": credential[:-3] + "é" + credential[-2:],
    }
    # a payload without '-' or '_' (about one credential in a hundred) reads the same in both
    # alphabets: there is nothing to re-encode, and comparing it would fail by chance
    return {name: bad for name, bad in cases.items() if name != "re_encoded" or bad != credential}


async def test_tampered_truncated_re_encoded_or_wrong_version_is_refused_never_a_500(
        svc: Service, http: aiohttp.ClientSession) -> None:
    credential = await credential_for(http, svc, await new_token(svc))
    assert (await check(http, svc, {"Authorization": f"Bearer {credential}"}))[0] == 200
    for name, bad in hostile(credential).items():
        assert bad != credential
        for headers in ({"Authorization": f"Bearer {bad}"},
                        {"Cookie": f"anonticket_access={bad}"}):
            try:
                status, got, body = await check(http, svc, headers)
            except (ValueError, UnicodeEncodeError):
                continue  # a header the HTTP client itself cannot send
            assert status == 401, (name, status)
            answer = json.loads(body)
            assert answer["error"] == got["X-Anonticket-Reason"] in (
                "invalid_credential", "invalid_token"), name
            assert bad not in body.decode() and credential not in body.decode()
            assert 'error="invalid_token"' in got["WWW-Authenticate"]
    assert svc.state.metrics.gateway["invalid_credential"].value >= 20


@settings(max_examples=60, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(tail=st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=400))
async def test_any_credential_shaped_garbage_is_a_401(svc: Service, tail: str) -> None:
    async with aiohttp.ClientSession() as http:
        status, _, body = await check(http, svc, {"Authorization": f"Bearer v4.public.{tail}"})
    assert status in (400, 401), status  # 400: aiohttp's own parser, for a header it refuses
    if status == 401:
        assert json.loads(body)["error"] in ("invalid_credential", "invalid_token")


async def test_a_metered_location_refuses_a_credential(svc: Service, http: aiohttp.ClientSession) -> None:
    token = await new_token(svc, 10_000)
    credential = await credential_for(http, svc, token)
    status, headers, body = await check(http, svc, {"Authorization": f"Bearer {credential}",
                                                    "X-Anonticket-Cost": "100"})
    assert (status, json.loads(body)["error"], headers["X-Anonticket-Reason"]) == (
        401, "token_required", "token_required")
    assert headers["WWW-Authenticate"].startswith('Bearer realm="anonticket"')
    record = await svc.state.ledger.find_token(ServiceToken(bytes.fromhex(token)))
    assert record is not None and record.spent == 0
    # the token itself pays there
    assert (await check(http, svc, {"Authorization": f"Bearer {token}",
                                    "X-Anonticket-Cost": "100"}))[0] == 200


# ---------------------------------------------------------------------- revocation
async def test_a_revoked_tokens_credentials_are_refused_at_once_and_after_a_restart(
        tmp_path: Path, database_url: str, http: aiohttp.ClientSession) -> None:
    config = make_config(tmp_path, DATABASE_URL=database_url)
    service = await start_service(config)
    try:
        token = await new_token(service)
        credential = await credential_for(http, service, token)
        other = await credential_for(http, service, await new_token(service))
        assert (await check(http, service, {"Authorization": f"Bearer {credential}"}))[0] == 200
        async with http.post(url(service.internal_address, f"/api/v1/token/{token}/revoke"),
                             json={"reason": "abuse"}) as resp:
            assert resp.status == 200
        status, headers, body = await check(http, service, {"Authorization": f"Bearer {credential}"})
        assert (status, json.loads(body)["error"]) == (403, "credential_revoked")
        assert headers["X-Anonticket-Reason"] == "credential_revoked"
        assert (await check(http, service, {"Authorization": f"Bearer {other}"}))[0] == 200
    finally:
        await service.aclose()
    service = await start_service(config)  # a fresh process loads the recent revocations
    try:
        status, _, body = await check(http, service, {"Authorization": f"Bearer {credential}"})
        assert (status, json.loads(body)["error"]) == (403, "credential_revoked")
        assert (await check(http, service, {"Authorization": f"Bearer {other}"}))[0] == 200
    finally:
        await service.aclose()


# ---------------------------------------------------------------------- keys
async def key_document(http: aiohttp.ClientSession, service: Service) -> dict[str, Any]:
    async with http.get(url(service.public_address, KEYS)) as resp:
        assert resp.status == 200
        return await resp.json()


async def test_the_key_document_is_cacheable_and_verifies_what_is_issued(
        svc: Service, http: aiohttp.ClientSession) -> None:
    async with http.get(url(svc.public_address, KEYS)) as resp:
        assert resp.status == 200 and resp.content_type == "application/json"
        assert resp.headers["Cache-Control"] == "public, max-age=150"  # half of 300 s
        etag = resp.headers["ETag"]
        document = await resp.json()
    assert [set(k) for k in document["keys"]] == [{"kid", "paserk", "not_before", "retired_at",
                                                   "expires_at"}]
    async with http.get(url(svc.public_address, KEYS), headers={"If-None-Match": etag}) as resp:
        assert resp.status == 304 and resp.headers["ETag"] == etag
    credential = await credential_for(http, svc, await new_token(svc))
    verifier = CredentialVerifier.from_key_document(document)
    assert verifier.verify(credential).key_id == document["keys"][0]["kid"]
    async with http.get(url(svc.internal_address, KEYS)) as resp:
        assert resp.status == 404  # the public listener's


async def test_rotation_through_the_internal_api(svc: Service, http: aiohttp.ClientSession) -> None:
    token = await new_token(svc)
    old = await credential_for(http, svc, token)
    (first,) = (await key_document(http, svc))["keys"]
    async with http.post(url(svc.internal_address, "/api/v1/keys/rotate"), json={}) as resp:
        rotated = await resp.json()
    assert resp.status == 200 and rotated["rotated"]["status"] == "next"
    document = await key_document(http, svc)
    assert [k["kid"] for k in document["keys"]] == [first["kid"], rotated["rotated"]["key_id"]]
    # published ahead: still signed with the old key until then
    assert claims_of(old) and (await credential_for(http, svc, token)).split(".")[3] == old.split(".")[3]
    async with http.post(url(svc.internal_address, "/api/v1/keys/rotate"),
                         json={"immediately": True}) as resp:
        now_key = (await resp.json())["rotated"]
    assert now_key["status"] == "signing"
    new = await credential_for(http, svc, token)
    assert json.loads(b64url_decode(new.split(".")[3]))["kid"] == now_key["key_id"]
    for credential in (old, new):  # the old key's credentials verify until they expire
        assert (await check(http, svc, {"Authorization": f"Bearer {credential}"}))[0] == 200
    async with http.get(url(svc.internal_address, "/api/v1/keys")) as resp:
        listed = (await resp.json())["keys"]
    assert [k["status"] for k in listed] == ["retired", "signing"]  # the "next" one never signed
    assert svc.state.metrics.key_rotations._value.get() == 2  # type: ignore[attr-defined]
    # a leaked key: every previous one goes at once
    async with http.post(url(svc.internal_address, "/api/v1/keys/rotate"),
                         json={"compromised": True}) as resp:
        assert resp.status == 200
    for credential in (old, new):
        status, _, body = await check(http, svc, {"Authorization": f"Bearer {credential}"})
        assert (status, json.loads(body)["error"]) == (401, "invalid_credential")
    assert len((await key_document(http, svc))["keys"]) == 1
    for body in ({"purpose": "nope"}, {"purpose": [None]}, {"purpose": 5}, {"immediately": "yes"},
                 {"other": 1}):
        async with http.post(url(svc.internal_address, "/api/v1/keys/rotate"), json=body) as resp:
            assert (resp.status, (await resp.json())["error"]) == (400, "invalid_request")


async def test_keys_survive_a_restart(tmp_path: Path, database_url: str,
                                      http: aiohttp.ClientSession) -> None:
    config = make_config(tmp_path, DATABASE_URL=database_url)
    service = await start_service(config)
    try:
        token = await new_token(service)
        credential = await credential_for(http, service, token)
        before = await key_document(http, service)
    finally:
        await service.aclose()
    service = await start_service(config)
    try:
        assert await key_document(http, service) == before
        assert (await check(http, service, {"Authorization": f"Bearer {credential}"}))[0] == 200
        again = await credential_for(http, service, token)
        assert again.split(".")[3] == credential.split(".")[3]  # the same key signs
    finally:
        await service.aclose()


async def test_housekeeping_removes_a_key_once_its_credentials_expired(
        svc: Service, http: aiohttp.ClientSession) -> None:
    ring = svc.state.ledger.credentials.ring  # type: ignore[union-attr]
    await ring.rotate(immediately=True)
    assert await Housekeeper(svc.state).tend_keys() == 0  # the old one still verifies
    real = ring.clock
    ring.clock = lambda: real() + 301  # type: ignore[method-assign]
    try:
        assert await Housekeeper(svc.state).tend_keys() == 1
    finally:
        ring.clock = real  # type: ignore[method-assign]
    assert len((await key_document(http, svc))["keys"]) == 1


# ---------------------------------------------------------------------- nothing secret
async def test_no_key_material_or_token_in_bodies_logs_or_metrics(
        svc: Service, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="anonticket")  # LOG_LEVEL=DEBUG's reach (cli/command)
    token = await new_token(svc)
    credential = await credential_for(http, svc, token)
    await check(http, svc, {"Authorization": f"Bearer {credential}"})
    await check(http, svc, {"Authorization": f"Bearer {credential[:-4]}"})
    async with http.post(url(svc.internal_address, "/api/v1/keys/rotate"),
                         json={"immediately": True}) as resp:
        bodies = [await resp.text()]
    async with http.get(url(svc.internal_address, "/api/v1/keys")) as resp:
        bodies.append(await resp.text())
    async with http.get(url(svc.internal_address, "/metrics")) as resp:
        bodies.append(await resp.text())
    bodies.append(json.dumps(await key_document(http, svc)))
    rows = await svc.state.ledger.storage.list_signing_keys()
    secrets = [token, credential, credential.split(".")[2]]
    for row in rows:
        secrets += [row.secret.hex(), b64url_encode(row.secret), repr(row.secret)[2:-1]]
        assert row.secret.hex() not in repr(row)
    ring = svc.state.ledger.credentials.ring  # type: ignore[union-attr]
    for key in ring.keys():
        assert row.secret.hex() not in repr(key) and "k4.secret" not in repr(key)
    logged = [r.getMessage() for r in caplog.records if r.name.startswith("anonticket")]
    text = "\n".join(bodies + logged)
    assert "k4.secret" not in text
    for secret in secrets:
        assert secret not in text
    assert any("rotated the credential signing key" in r.getMessage() for r in caplog.records)


async def test_concurrent_issuance_and_checks(svc: Service, http: aiohttp.ClientSession) -> None:
    tokens = [await new_token(svc) for _ in range(5)]
    answers = await asyncio.gather(*(credential_for(http, svc, t) for t in tokens * 10))
    assert len(set(answers)) == 50
    statuses = await asyncio.gather(*(check(http, svc, {"Authorization": f"Bearer {c}"})
                                      for c in answers))
    assert {s for s, _, _ in statuses} == {200}
