"""Every documented route × both listeners, and who may reach the internal one.

The route list comes from docs/openapi.yaml (test_openapi keeps it equal to what the
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

from anonticket.app import Service, start_service
from anonticket.config import SETTINGS, Config
from anonticket.domain import PaymentId
from anonticket.errors import ConfigError
from conftest import REPO, transfer, url

SPEC = yaml.safe_load((REPO / "docs" / "openapi.yaml").read_text())
ADMIN_PATHS = {"/metrics", "/api/v1/token/{token}/revoke", "/api/v1/stats", "/docs/openapi.yaml",
               "/api/v1/webhooks", "/api/v1/webhooks/replay", "/api/v1/webhooks/test",
               "/api/v1/webhooks/enable"}
# the internal calls that need a body of their own, and what they answer with webhooks off
CALLS: dict[str, tuple[Any, int]] = {
    "/api/v1/webhooks/replay": ({"all_dead": True}, 200),
    "/api/v1/webhooks/test": (None, 409),  # webhooks_off: the route exists, no URL is set
}
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
SPEC_METHOD = dict(operations("internal"))


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
    return str(body["service_token"])


def fill(path: str, token: str) -> str:
    return path.replace("{token}", token)


@pytest.fixture
async def guarded(config_factory: Callable[..., Config]) -> AsyncIterator[Service]:
    service = await start_service(config_factory(API_INTERNAL_TOKEN=OPERATOR))
    yield service
    await service.aclose()


def test_the_admin_routes_are_the_internal_only_ones() -> None:
    """Pins the list: an admin route documented as public would fail here, not leak."""
    assert set(INTERNAL_ONLY) == ADMIN_PATHS
    for path in ADMIN_PATHS:
        for operation in SPEC["paths"][path].values():
            assert operation["x-listeners"] == ["internal"]


async def test_public_routes_answer_on_both_listeners(service: Service, http: aiohttp.ClientSession) -> None:
    token = await redeemed_token(service, http)
    expected = {
        ("/api/v1/redeem", "POST"): (200, "already_claimed"),
        ("/api/v1/token/{token}", "GET"): (200, "active"),
        ("/health/live", "GET"): (200, "ok"),
        ("/health/ready", "GET"): (200, "ready"),
    }
    assert set(operations("public")) == set(expected)
    for address in (service.public_address, service.internal_address):
        for (path, method), (want_status, want_state) in expected.items():
            body = {"pid": PID} if method == "POST" else None
            status, ctype, answer = await call(http, method, address, fill(path, token), body=body)
            assert (status, ctype, answer["status"]) == (want_status, "application/json", want_state), (
                address, path, answer)


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
    body, want = CALLS.get(path, ({} if SPEC_METHOD[path] == "POST" else None, 200))
    status, _, answer = await call(http, SPEC_METHOD[path], service.internal_address, fill(path, token),
                                   body=body)
    assert status == want, answer
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
    guarded_ops = [(p, m) for p, m in operations("internal") if p not in OPEN_PATHS]
    assert len(guarded_ops) == len(operations("internal")) - len(OPEN_PATHS)
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
    for path, method in operations("internal"):
        body = {"pid": PID} if path == "/api/v1/redeem" else ({} if method == "POST" else None)
        body, want = CALLS.get(path, (body, 200))
        status, _, answer = await call(http, method, guarded.internal_address, fill(path, token),
                                       headers=good, body=body)
        assert status == want, (path, answer)
    status, _, info = await call(http, "GET", guarded.public_address, f"/api/v1/token/{token}")
    assert info["status"] == "revoked"  # the authorised revoke did land


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
