"""Every documented route × both listeners, and who may reach the internal one.

The route list comes from anonticket/api/openapi.yaml (test_openapi keeps it equal to what the
apps register), so a route added later is covered here without editing this file.
The admin routes must not exist at all on the public listener — whatever the method —
because that listener is what Tor exposes; and when the operator sets
API_INTERNAL_TOKEN, a caller without it must learn nothing, not even whether a token
exists, so the bearer is checked before any lookup.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from anonticket.service.app import Service, start_service
from anonticket.config import SETTINGS, Config
from anonticket.domain.ids import PaymentId
from anonticket.domain.errors import ConfigError
from conftest import REPO, transfer, url

SPEC = yaml.safe_load((REPO / "anonticket" / "api" / "openapi.yaml").read_text())
ADMIN_PATHS = {"/metrics", "/api/v1/token/{token}/revoke", "/api/v1/token/{token}/debit",
               "/api/v1/monitor/rescan", "/api/v1/stats", "/docs/openapi.yaml",
               "/api/v1/webhooks", "/api/v1/webhooks/replay", "/api/v1/webhooks/test",
               "/api/v1/webhooks/enable", "/api/v1/keys", "/api/v1/keys/rotate"}
# what the route answers the valid call with when it is not 200: these test services run
# without a monitor, so a rescan request is refused (and reached the handler: not 401/404)
NOT_200 = {"/api/v1/monitor/rescan": 409, "/api/v1/webhooks/test": 409}  # nor webhooks
# internal only, with a credential of its own for the proxy (tests/api/test_gateway.py): the
# Authorization header there is the customer's, so the admin bearer neither opens nor closes it
GATEWAY_PATHS = {"/api/v1/check"}
TOPUP_PID = "00000000000000a1"  # paid, never redeemed: what a top-up adds to the token


def valid_call(path: str, method: str) -> tuple[Any, dict[str, str]]:
    """The body and headers that make ``method path`` succeed (200) for a redeemed token."""
    if path == "/api/v1/redeem":
        return {"pid": PID}, {}
    if path.endswith("/debit"):
        return {"amount": 1}, {"Idempotency-Key": "matrix-1"}
    if path.endswith("/topup"):
        return {"pid": TOPUP_PID}, {}
    if path in GATEWAY_PATHS:
        return None, {"Authorization": "Bearer {token}"}
    if path.endswith("/rescan"):
        return {"from_height": 1}, {}
    if path.endswith("/webhooks/replay"):
        return {"all_dead": True}, {}
    return ({} if method == "POST" else None), {}
# what an HTTP client can put on the request line; aiohttp's parser refuses the rest itself
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE")
OPEN_PATHS = {"/health/live", "/health/ready"}
PID = "0123456789abcdef"
OPERATOR = "operator-bearer-7f3a"


def operations(listener: str) -> list[tuple[str, str]]:
    return sorted(
        (path, method.upper())
        for path, item in SPEC["paths"].items()
        for method, operation in item.items()
        if listener in operation["x-listeners"]
    )


INTERNAL_ONLY = sorted(
    {path for path, _ in operations("internal")} - {path for path, _ in operations("public")}
)
# JSON routes on the public listener only: a credential is issued where customers are, and
# the keys that verify it are published there (tests/api/test_credential_routes.py)
PUBLIC_ONLY_API = {"/api/v1/credential", "/.well-known/anonticket-credential-keys"}
# the checkout's HTML pages: for customers' browsers, on the public listener only
PAGES = sorted(op for op in set(operations("public")) - set(operations("internal"))
               if op[0] not in PUBLIC_ONLY_API)
# one method per path (GET, where a path documents several: the gateway check takes any)
SPEC_METHOD = dict(sorted(operations("internal"), key=lambda op: op[1] == "GET"))


async def call(http: aiohttp.ClientSession, method: str, address: str, path: str,
               headers: dict[str, str] | None = None, body: Any = None) -> tuple[int, str, Any]:
    """Status, content type and the JSON body (None when there is none, e.g. for HEAD)."""
    async with http.request(method, url(address, path), headers=headers, json=body) as resp:
        raw = await resp.read()
        parsed = await resp.json() if raw and resp.content_type == "application/json" else None
        return resp.status, resp.content_type, parsed


async def redeemed_token(service: Service, http: aiohttp.ClientSession, pid: str = PID) -> str:
    await service.state.ledger.credit([transfer(PaymentId.parse(pid), 5000)], None)
    status, _, body = await call(http, "POST", service.public_address, "/api/v1/redeem", body={"pid": pid})
    assert status == 200, body
    token = str(body["service_token"])
    # a second paid PID, so a top-up of the token can succeed too
    await service.state.ledger.credit([transfer(PaymentId.parse(TOPUP_PID), 5000)], None)
    return token


def fill(path: str, token: str) -> str:
    return path.replace("{token}", token)


@pytest.fixture
async def guarded(config_factory: Callable[..., Config]) -> AsyncIterator[Service]:
    service = await start_service(config_factory(API_INTERNAL_TOKEN=OPERATOR))
    yield service
    await service.aclose()


def test_the_admin_routes_are_the_internal_only_ones() -> None:
    """Pins the list: an admin route documented as public would fail here, not leak."""
    assert set(INTERNAL_ONLY) == ADMIN_PATHS | GATEWAY_PATHS
    for path in ADMIN_PATHS | GATEWAY_PATHS:
        for operation in SPEC["paths"][path].values():
            assert operation["x-listeners"] == ["internal"]


async def test_public_routes_answer_on_both_listeners(service: Service, http: aiohttp.ClientSession) -> None:
    token = await redeemed_token(service, http)
    expected = {
        ("/api/v1/redeem", "POST"): (200, "already_claimed"),
        ("/api/v1/token/{token}", "GET"): (200, "active"),
        ("/api/v1/token/{token}/topup", "POST"): (200, "topped_up"),
        ("/health/live", "GET"): (200, "ok"),
        ("/health/ready", "GET"): (200, "ready"),
    }
    assert {op for op in operations("public") if op[0] not in PUBLIC_ONLY_API} - set(PAGES) == set(
        expected)
    for address in (service.public_address, service.internal_address):
        for (path, method), (want_status, want_state) in expected.items():
            body, headers = valid_call(path, method)
            status, ctype, answer = await call(http, method, address, fill(path, token),
                                               body=body, headers=headers)
            assert (status, ctype, answer["status"]) == (want_status, "application/json", want_state), (
                address, path, answer)


async def test_the_pages_are_public_only(service: Service, http: aiohttp.ClientSession) -> None:
    """The checkout's pages and the gateway's access page."""
    assert {path for path, _ in PAGES} == {"/pay", "/pay/status", "/pay/redeem", "/access",
                                           "/access/logout"}
    forms = {"/pay": {"offer": "1000"}, "/access": {"token": "ab" * 32}, "/access/logout": {}}
    for path, method in PAGES:
        form = forms.get(path, {"pid": PID}) if method == "POST" else None
        async with http.request(method, url(service.public_address, path), allow_redirects=False,
                                data=form) as resp:
            # 503 for POST /pay: this service has no MERCHANT_ADDRESS; 303 for a GET on a POST
            # page; 404 for an unknown token given to /access
            assert resp.status in (200, 303, 503, 404 if path == "/access" else 200), (
                path, method, resp.status)
            assert resp.headers["Cache-Control"] == "no-store", (path, method)
            assert resp.status == 303 or resp.content_type == "text/html", (path, method)
        status, ctype, answer = await call(http, method, service.internal_address, path)
        assert (status, ctype, answer["error"]) == (404, "application/json", "not_found"), (path, method)


async def test_the_credential_routes_are_public_only(service: Service,
                                                    http: aiohttp.ClientSession) -> None:
    assert {path for path, _ in set(operations("public")) - set(operations("internal"))} - {
        path for path, _ in PAGES} == PUBLIC_ONLY_API
    token = await redeemed_token(service, http)
    bearer = {"Authorization": f"Bearer {token}"}
    status, _, answer = await call(http, "POST", service.public_address, "/api/v1/credential",
                                   headers=bearer)
    assert status == 200 and answer["credential"].startswith("v4.public."), answer
    status, _, answer = await call(http, "GET", service.public_address,
                                   "/.well-known/anonticket-credential-keys")
    assert status == 200 and answer["version"] == 1 and answer["keys"], answer
    for path in sorted(PUBLIC_ONLY_API):
        for method in ("GET", "POST"):
            status, ctype, answer = await call(http, method, service.internal_address, path,
                                               headers=bearer)
            assert (status, ctype, answer["error"]) == (404, "application/json", "not_found"), (
                path, method)


@pytest.mark.parametrize("path", INTERNAL_ONLY)
async def test_admin_routes_are_not_found_publicly_for_every_method(
        service: Service, http: aiohttp.ClientSession, path: str) -> None:
    token = await redeemed_token(service, http)
    for method in METHODS:
        body = {"reason": "public attempt", "abuse_score": 9} if method == "POST" else None
        status, ctype, answer = await call(http, method, service.public_address, fill(path, token), body=body)
        assert (status, ctype) == (404, "application/json"), (method, path)
        if method != "HEAD":
            assert answer == {"error": "not_found", "message": "no such route"}, (method, path)
    # and the route does exist, on the internal listener
    body, headers = valid_call(path, SPEC_METHOD[path])
    headers = {k: fill(v, token) for k, v in headers.items()}
    status, _, answer = await call(http, SPEC_METHOD[path], service.internal_address, fill(path, token),
                                   body=body, headers=headers)
    assert status == NOT_200.get(path, 200), answer
    # the public revoke attempt above changed nothing: only the internal call revoked
    _, _, info = await call(http, "GET", service.internal_address, f"/api/v1/token/{token}")
    assert len(info["audit"]) == (1 if path.endswith("/revoke") else 0)


BAD_AUTHORIZATION: list[dict[str, str] | None] = [
    None,
    {"Authorization": ""},
    {"Authorization": "Bearer"},
    {"Authorization": "Bearer "},
    {"Authorization": "Bearer wrong"},
    {"Authorization": OPERATOR},  # the secret without the scheme
    {"Authorization": f"bearer {OPERATOR}"},  # the scheme is matched exactly
    {"Authorization": f"Bearer {OPERATOR}x"},
    {"Authorization": f"Bearer {OPERATOR[:-1]}"},
    {"Authorization": f"Bearer  {OPERATOR}"},
    {"Authorization": f"Basic {OPERATOR}"},
    {"X-Authorization": f"Bearer {OPERATOR}"},
]


async def test_internal_routes_need_the_bearer_before_any_lookup(
        guarded: Service, http: aiohttp.ClientSession) -> None:
    token = await redeemed_token(guarded, http)
    guarded_ops = [(p, m) for p, m in operations("internal")
                   if p not in OPEN_PATHS and p not in GATEWAY_PATHS]
    assert {p for p, _ in guarded_ops} == {p for p, _ in operations("internal")} - OPEN_PATHS - GATEWAY_PATHS
    unknown_token = "cd" * 32
    for path, method in guarded_ops:
        for target in {fill(path, token), fill(path, unknown_token), fill(path, "not-a-token")}:
            for headers in BAD_AUTHORIZATION:
                body = {"reason": "x", "abuse_score": 5} if method == "POST" else None
                if path == "/api/v1/redeem":
                    body = {"pid": "not hex"}
                status, ctype, answer = await call(http, method, guarded.internal_address, target,
                                                   headers=headers, body=body)
                # the same 401 for a real token, an unknown one and garbage: nothing is looked up
                assert (status, ctype) == (401, "application/json"), (path, headers)
                assert answer == {"error": "unauthorized", "message": "a valid bearer token is required"}
    # nothing above revoked the real token or counted a revocation
    status, _, info = await call(http, "GET", guarded.public_address, f"/api/v1/token/{token}")
    assert (status, info["status"]) == (200, "active")
    good = {"Authorization": f"Bearer {OPERATOR}"}
    async with http.get(url(guarded.internal_address, "/metrics"), headers=good) as resp:
        assert resp.status == 200
        assert "anonticket_revocations_total 0.0" in await resp.text()
    _, _, detail = await call(http, "GET", guarded.internal_address, f"/api/v1/token/{token}", headers=good)
    assert detail["audit"] == []


async def test_unknown_internal_paths_are_401_too(guarded: Service, http: aiohttp.ClientSession) -> None:
    """Without the bearer a caller cannot even map which admin routes exist."""
    for path in ("/nope", "/api/v1/token", "/api/v1/stats/x", "/metrics/"):
        status, _, answer = await call(http, "GET", guarded.internal_address, path)
        assert (status, answer["error"]) == (401, "unauthorized"), path


async def test_the_right_bearer_opens_every_internal_route(guarded: Service, http: aiohttp.ClientSession) -> None:
    token = await redeemed_token(guarded, http)
    good = {"Authorization": f"Bearer {OPERATOR}"}
    # the revocation last: a revoked token refuses top-ups and debits
    admin_ops = [op for op in operations("internal") if op[0] not in GATEWAY_PATHS]
    for path, method in sorted(admin_ops, key=lambda op: op[0].endswith("/revoke")):
        body, headers = valid_call(path, method)
        status, _, answer = await call(http, method, guarded.internal_address, fill(path, token),
                                       headers={**good, **headers}, body=body)
        assert status == NOT_200.get(path, 200), (path, answer)
    status, _, info = await call(http, "GET", guarded.public_address, f"/api/v1/token/{token}")
    assert info["status"] == "revoked"  # the authorised revoke did land
    # the admin bearer is not the proxy's credential: the gateway check stays closed
    for path in GATEWAY_PATHS:
        status, _, answer = await call(http, "GET", guarded.internal_address, path, headers=good)
        assert (status, answer["error"]) == (407, "gateway_unauthorized")


async def test_health_stays_open_and_public_listener_ignores_the_bearer(
        guarded: Service, http: aiohttp.ClientSession) -> None:
    """Probes (systemd, a load balancer) have no secret; the public side never asks for one."""
    for path in sorted(OPEN_PATHS):
        for headers in (None, {"Authorization": "Bearer wrong"}):
            status, _, answer = await call(http, "GET", guarded.internal_address, path, headers=headers)
            assert status == 200, (path, answer)
    token = await redeemed_token(guarded, http)
    status, _, answer = await call(http, "GET", guarded.public_address, f"/api/v1/token/{token}",
                                   headers={"Authorization": "Bearer wrong"})
    assert (status, answer["status"]) == (200, "active")


# ---------------------------------------------------------------------- binding rules
def _env(**settings: str) -> dict[str, str]:
    return {"DATABASE_URL": "/nonexistent/never-opened.db", **settings}


@pytest.mark.parametrize("address", [
    "0.0.0.0:9090", "[::]:9090", "192.0.2.1:9090", "10.0.0.5:9090", "[2001:db8::1]:9090",
    "example.com:9090", "localhost.example.com:9090",
])
def test_config_refuses_a_non_loopback_internal_address_without_token(address: str) -> None:
    with pytest.raises(ConfigError) as refused:
        Config.from_env(_env(API_INTERNAL_BIND_ADDRESS=address))
    assert str(refused.value).startswith("API_INTERNAL_BIND_ADDRESS:")
    assert "9090" not in str(refused.value)  # names the variable, does not quote values
    config = Config.from_env(_env(API_INTERNAL_BIND_ADDRESS=address, API_INTERNAL_TOKEN=OPERATOR))
    assert config.api_internal_token == OPERATOR


@pytest.mark.parametrize("address", ["127.0.0.1:9090", "127.8.9.10:0", "[::1]:9090", "localhost:9090"])
def test_config_accepts_loopback_internal_addresses_without_token(address: str) -> None:
    assert Config.from_env(_env(API_INTERNAL_BIND_ADDRESS=address)).api_internal_token is None


def test_an_internal_unix_socket_needs_no_token(tmp_path: Path) -> None:
    """The TCP address is unused then, so its value cannot expose anything."""
    config = Config.from_env(_env(API_INTERNAL_BIND_ADDRESS="0.0.0.0:9090",
                                  API_INTERNAL_UNIX_SOCKET=str(tmp_path / "i.sock")))
    assert config.api_internal_unix_socket == str(tmp_path / "i.sock")


def _serve(tmp_path: Path, **settings: str) -> subprocess.CompletedProcess[str]:
    names = {setting.name for setting in SETTINGS}
    env = {k: v for k, v in os.environ.items() if k not in names}
    env.update(DATABASE_URL=str(tmp_path / "db.sqlite"), API_BIND_ADDRESS="127.0.0.1:0",
               MONITOR_ENABLED="false", **settings)
    return subprocess.run([str(REPO / "bin" / "anonticket"), "serve"], env=env, capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)


def test_serve_refuses_a_public_internal_address_without_token(tmp_path: Path) -> None:
    # 192.0.2.1 (TEST-NET-1) is on no interface here: a regression would fail to bind
    # instead of opening an admin port to the network during the test
    done = _serve(tmp_path, API_INTERNAL_BIND_ADDRESS="192.0.2.1:0")
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert "API_INTERNAL_BIND_ADDRESS" in lines[0] and "API_INTERNAL_TOKEN" in lines[0]
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert not (tmp_path / "db.sqlite").exists()  # refused before anything was opened
