"""Privacy Pass tokens through the shipped gateway configs in the real proxies: the 401 offers
the PrivateToken challenges beside the Bearer one; a request unit opens one request and a
second use of it is refused (nginx's cached location never replays it); a session unit
opens the request and hands the client a credential (a response header and the access
cookie, through nginx) that opens the next requests under the same fresh subject; the
upstream never sees a token, a credential or the buyer's subject."""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from http.cookies import SimpleCookie
from pathlib import Path

import aiohttp
import pytest

from anonticket.crypto.privacy_pass import TokenResponse, create_token_request, finalize_token
from anonticket.crypto.privacy_pass_http import (
    IssuerDirectory, b64url_decode, format_authorization, parse_www_authenticate,
)
from anonticket.domain.ids import token_subject
from anonticket.service.app import start_service
from conftest import make_config
from proxy_helpers import open_directory, recording_app, serve_tcp
from test_gateway_proxies import (
    CREDENTIAL,
    Stack,
    assert_never_leaked,
    needs_caddy,
    needs_nginx,
    needs_traefik,
    proxy,
    upstream_headers,
)

UNITS = "hour=session:600:100, call=request:7"


@pytest.fixture
async def stack(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stack]:
    kind = request.param
    async with AsyncExitStack() as stack:
        service = await start_service(make_config(tmp_path, API_INTERNAL_TOKEN=CREDENTIAL,
                                                  PRIVATE_TOKEN_UNITS=UNITS))
        stack.push_async_callback(service.aclose)
        seen: list[dict[str, object]] = []
        runner, upstream_port = await serve_tcp(recording_app(seen))
        stack.push_async_callback(runner.cleanup)
        directory = stack.enter_context(open_directory())
        base = stack.enter_context(proxy(kind, directory, service, upstream_port, CREDENTIAL))
        http = await stack.enter_async_context(aiohttp.ClientSession(trust_env=False))
        yield Stack(kind, service, base, directory, http, seen)  # type: ignore[arg-type]


async def fetch(stack: Stack, unit: str, count: int) -> list[str]:
    token = await stack.issue()
    public = stack.service.public_address
    async with stack.http.get(f"http://{public}/.well-known/private-token-issuer-directory") as resp:
        document = json.loads(await resp.read())
    keys = IssuerDirectory.from_json(document).token_keys
    (key,) = [entry.token_key for entry, item in zip(keys, document["token-keys"])
              if item["anonticket-unit"] == unit]
    challenge = b64url_decode(document["anonticket-challenge"])
    pending = [create_token_request(challenge, key) for _ in range(count)]
    async with stack.http.post(f"http://{public}/api/v1/private-token",
                               data=b"".join(r.encode() for r, _ in pending),
                               headers={"Authorization": f"Bearer {token}",
                                        "Idempotency-Key": secrets.token_hex(8),
                                        "Content-Type": "application/private-token-request"}) as resp:
        assert resp.status == 200
        answer = await resp.read()
    headers = [format_authorization(finalize_token(state, TokenResponse(answer[i * 256:(i + 1) * 256])))
               for i, (_, state) in enumerate(pending)]
    stack.tokens += [h.split('"')[1] for h in headers]  # assert_never_leaked looks for them
    return headers


def reason(body: bytes) -> str:
    return json.loads(body)["error"]


PROXIES = [pytest.param("nginx", marks=needs_nginx), pytest.param("caddy", marks=needs_caddy),
           pytest.param("traefik", marks=needs_traefik)]


@pytest.mark.parametrize("stack", PROXIES, indirect=True)
async def test_request_units_through_the_proxy(stack: Stack) -> None:
    status, headers, body = await stack.request("GET", "/page")
    assert status == 401 and reason(body) == "token_missing"
    offered = parse_www_authenticate(headers["WWW-Authenticate"])
    assert len(offered) == 2 and headers["WWW-Authenticate"].startswith("Bearer")
    first, second = await fetch(stack, "call", 2)
    status, _, _ = await stack.request("GET", "/page", {"Authorization": first})
    assert status == 200
    entry = upstream_headers(stack.seen[-1])
    assert "authorization" not in entry and len(entry["x-anonticket-subject"]) == 32
    status, _, body = await stack.request("GET", "/page", {"Authorization": first})
    assert status == 401 and reason(body) in ("private_token_spent", "unauthorized")
    # a location whose allow answers nginx caches: a token still opens it once only
    status, _, _ = await stack.request("GET", "/static/a.css", {"Authorization": second})
    assert status == 200
    status, _, _ = await stack.request("GET", "/static/a.css", {"Authorization": second})
    assert status == 401
    assert_never_leaked(stack)


@pytest.mark.parametrize("stack", [pytest.param("nginx", marks=needs_nginx),
                                   pytest.param("traefik", marks=needs_traefik)], indirect=True)
async def test_a_session_unit_hands_the_client_a_credential(stack: Stack) -> None:
    """nginx passes the credential in a header and as the access cookie; Traefik the cookie
    only (ForwardAuth's addAuthCookiesToResponse). Caddy's forward_auth passes neither."""
    (hour,) = await fetch(stack, "hour", 1)
    buyer = token_subject(bytes.fromhex(stack.tokens[0]))
    status, headers, _ = await stack.request("GET", "/page", {"Authorization": hour})
    assert status == 200
    cookie = SimpleCookie(headers["Set-Cookie"])
    (name,) = cookie.keys()
    credential = cookie[name].value
    assert credential.startswith("v4.public.") and cookie[name]["httponly"]
    if stack.kind == "nginx":
        assert headers["X-Anonticket-Credential"] == credential
    subject = upstream_headers(stack.seen[-1])["x-anonticket-subject"]
    assert subject != buyer
    stack.tokens.append(credential)
    # the session: the credential as a Bearer header, or the cookie a browser sends back
    for sent in ({"Authorization": f"Bearer {credential}"}, {"Cookie": f"{name}={credential}"}):
        status, again, _ = await stack.request("GET", "/other", sent)
        assert status == 200
        assert "X-Anonticket-Credential" not in again and "Set-Cookie" not in again
        assert upstream_headers(stack.seen[-1])["x-anonticket-subject"] == subject
    assert_never_leaked(stack)
