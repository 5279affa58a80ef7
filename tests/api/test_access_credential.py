"""The access page with ACCESS_COOKIE_CREDENTIAL=true: the browser gets a credential in the
access cookie and the token in a refresh cookie only /access receives; an expired credential
is renewed from it without a form (for the very browser that holds it), a planted refresh
cookie or a revoked token gets the form, and logging out forgets both."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from http.cookies import SimpleCookie
from pathlib import Path

import aiohttp
import pytest

from anonticket.crypto.credential import sign_credential
from anonticket.crypto.paseto_v4 import b64url_decode
from anonticket.domain.ids import PaymentId, ServiceToken, token_subject
from anonticket.service.app import Service, start_service
from conftest import make_config, transfer, url

BOTH_BACKENDS = True
SAME_SITE = {"Sec-Fetch-Site": "same-origin"}


@pytest.fixture
async def svc(tmp_path: Path, database_url: str) -> AsyncIterator[Service]:
    running = await start_service(make_config(tmp_path, DATABASE_URL=database_url,
                                              ACCESS_COOKIE_CREDENTIAL="true"))
    yield running
    await running.aclose()


async def issue(service: Service) -> str:
    pid = PaymentId.generate()
    await service.state.ledger.credit([transfer(pid, 5000)], None)
    return (await service.state.ledger.redeem(pid)).token.hex()  # type: ignore[union-attr]


def cookies(headers: aiohttp.typedefs.LooseHeaders) -> dict[str, tuple[str, dict[str, str]]]:
    """name -> (value, lowercased attributes) of every Set-Cookie."""
    found = {}
    for raw in headers.getall("Set-Cookie", []):  # type: ignore[union-attr]
        parts = [p.strip() for p in raw.split(";")]
        name, _, value = parts[0].partition("=")
        found[name] = (value, {k.lower(): v for k, _, v in (p.partition("=") for p in parts[1:])})
    return found


async def log_in(http: aiohttp.ClientSession, service: Service, token: str,
                 headers: dict[str, str] | None = None) -> aiohttp.typedefs.LooseHeaders:
    async with http.post(url(service.public_address, "/access"), allow_redirects=False,
                         data={"token": token, "next": "/docs/a"},
                         headers={**SAME_SITE, **(headers or {})}) as resp:
        assert (resp.status, resp.headers["Location"]) == (303, "/docs/a")
        return resp.headers


async def access(http: aiohttp.ClientSession, service: Service, cookie: str,
                 query: str = "?next=/docs/a") -> tuple[int, aiohttp.typedefs.LooseHeaders, str]:
    async with http.get(url(service.public_address, "/access" + query), allow_redirects=False,
                        headers={"Cookie": cookie}) as resp:
        return resp.status, resp.headers, await resp.text()


async def check(http: aiohttp.ClientSession, service: Service, cookie: str) -> int:
    async with http.get(url(service.internal_address, "/api/v1/check"),
                        headers={"Cookie": cookie}) as resp:
        return resp.status


def expired_credential(service: Service, token: str) -> str:
    """What the browser holds once its credential has run out: one this service signed."""
    ring = service.state.ledger.credentials.ring  # type: ignore[union-attr]
    key = ring.signing_key()
    assert key is not None
    from datetime import datetime, timedelta, timezone

    then = datetime.now(timezone.utc) - timedelta(hours=1)
    return sign_credential(key.secret_key, {"sub": token_subject(bytes.fromhex(token)),
                                            "iat": then, "exp": then + timedelta(minutes=5)})


async def test_logging_in_hands_the_browser_a_credential_and_keeps_the_token_for_access(
        svc: Service, http: aiohttp.ClientSession) -> None:
    token = await issue(svc)
    set_cookies = cookies(await log_in(http, svc, token))
    credential, attrs = set_cookies["anonticket_access"]
    assert credential.startswith("v4.public.") and token not in credential
    assert attrs["path"] == "/" and "httponly" in attrs and attrs["samesite"] == "Strict"
    claims = json.loads(b64url_decode(credential.split(".")[2])[:-64])
    assert claims["sub"] == token_subject(bytes.fromhex(token))
    refresh, refresh_attrs = set_cookies["anonticket_access_refresh"]
    assert refresh == token and refresh_attrs["path"] == "/access"
    assert "httponly" in refresh_attrs and refresh_attrs["samesite"] == "Strict"
    assert await check(http, svc, f"anonticket_access={credential}") == 200
    # over HTTPS: the __Host- credential and a __Secure- refresh cookie (a __Host- one needs Path=/)
    secure = cookies(await log_in(http, svc, token, {"X-Forwarded-Proto": "https"}))
    assert {"__Host-anonticket_access", "__Secure-anonticket_access_refresh"} <= set(secure)
    assert "secure" in secure["__Secure-anonticket_access_refresh"][1]


async def test_an_expired_credential_is_renewed_without_a_form(
        svc: Service, http: aiohttp.ClientSession) -> None:
    token = await issue(svc)
    old = expired_credential(svc, token)
    jar = f"anonticket_access={old}; anonticket_access_refresh={token}"
    assert await check(http, svc, f"anonticket_access={old}") == 401
    status, headers, _ = await access(http, svc, jar)
    assert (status, headers["Location"]) == (303, "/docs/a")
    renewed = cookies(headers)["anonticket_access"][0]
    assert renewed != old and await check(http, svc, f"anonticket_access={renewed}") == 200
    # a credential still valid is not renewed: the form, whatever the gateway said
    status, headers, body = await access(http, svc, f"anonticket_access={renewed}; "
                                                    f"anonticket_access_refresh={token}",
                                         "?reason=token_required&next=/api/x")
    assert status == 200 and "Set-Cookie" not in headers and "paid per request" in body


async def test_a_planted_refresh_cookie_gets_the_form(svc: Service, http: aiohttp.ClientSession) -> None:
    victim, attacker = await issue(svc), await issue(svc)
    mine = expired_credential(svc, victim)
    for jar in (f"anonticket_access={mine}; anonticket_access_refresh={attacker}",
                f"anonticket_access_refresh={attacker}",  # no credential of its own
                f"anonticket_access={mine}; anonticket_access_refresh={victim}; "
                f"anonticket_access_refresh={attacker}"):  # two copies
        status, headers, body = await access(http, svc, jar)
        assert status == 200 and "Set-Cookie" not in headers, jar
        assert 'action="/access"' in body
    assert svc.state.metrics.credential["issued"].value == 0


async def test_a_revoked_token_gets_the_form_and_loses_its_refresh_cookie(
        svc: Service, http: aiohttp.ClientSession) -> None:
    token = await issue(svc)
    await svc.state.ledger.revoke(ServiceToken(bytes.fromhex(token)), "test", None)
    jar = f"anonticket_access={expired_credential(svc, token)}; anonticket_access_refresh={token}"
    status, headers, body = await access(http, svc, jar)
    assert status == 200 and "has been revoked" in body
    value, attrs = cookies(headers)["anonticket_access_refresh"]
    assert (value, attrs["max-age"], attrs["path"]) == ("", "0", "/access")


async def test_logging_out_forgets_both(svc: Service, http: aiohttp.ClientSession) -> None:
    async with http.post(url(svc.public_address, "/access/logout"), headers=SAME_SITE,
                         allow_redirects=False) as resp:
        assert resp.status == 200
        forgotten = cookies(resp.headers)
    assert forgotten["anonticket_access"][0] == "" and forgotten["anonticket_access"][1]["max-age"] == "0"
    assert forgotten["anonticket_access_refresh"][1]["path"] == "/access"
    assert forgotten["anonticket_access_refresh"][1]["max-age"] == "0"


def test_the_cookie_names_follow_the_access_cookies() -> None:
    from anonticket.api.access_cookie import AccessCookie

    for name, secure, names in (
            ("anonticket_access", "auto", ("__Secure-anonticket_access_refresh",
                                           "anonticket_access_refresh")),
            ("anonticket_access", "false", ("anonticket_access_refresh",) * 2),
            ("__Host-x", "true", ("__Secure-x_refresh", None))):
        config = make_config(Path("/nonexistent"), ACCESS_COOKIE_NAME=name,
                             ACCESS_COOKIE_SECURE=secure)
        refresh = AccessCookie.refresh_from_config(config)
        assert (refresh.secure_name, refresh.plain_name) == names
    assert SimpleCookie("__Secure-x_refresh=1")["__Secure-x_refresh"].value == "1"
