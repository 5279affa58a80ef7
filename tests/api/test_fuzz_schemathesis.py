"""Schemathesis against the running ``bin/anonticket serve``, both listeners, real sockets.

anonticket/api/openapi.yaml is the contract: every generated request must get a documented
status, content type and body, and never a 5xx. The database is seeded through the
real path (FakeWallet → monitor → SQLite) with paid, underpaid, pending, claimed and
revoked payments, and a quarter of the positive cases use those PIDs and tokens, so
the fuzzer meets every redeem outcome instead of 404 after 404.

Each case goes to every listener its operation is documented on; an internal-only
case also goes to the public listener, where it must be 404 ``not_found``.
``ANONTICKET_FUZZ_EXAMPLES`` is the number of examples per operation and generation
mode (positive, negative); the default makes about 10,000 requests in total.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import http.client
import json
import os
import re
import secrets
import socket
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import requests
import schemathesis
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from anonticket.service.app import PUBLIC_MAX_LINE_BYTES
from anonticket.domain.ids import PaymentId, derive_service_token
from conftest import REPO
from fake_wallet import FakeWallet, make_transfer
from test_privacy import Secrets, Served

SPEC_PATH = REPO / "anonticket" / "api" / "openapi.yaml"
# about 10,000 generated requests in all, shared by the operations that take input (each
# sent to every listener it is on, in two modes): the run stays minutes long, not ten, as
# the API grows
_TOTAL_REQUESTS = 10_000


def _operations_with_input() -> int:
    import yaml
    spec = yaml.safe_load(SPEC_PATH.read_text())
    return sum(len(op["x-listeners"]) for item in spec["paths"].values() for op in item.values()
               if op.get("parameters") or op.get("requestBody")) or 1


DEFAULT_EXAMPLES = max(50, _TOTAL_REQUESTS // (2 * _operations_with_input()))
EXAMPLES = int(os.environ.get("ANONTICKET_FUZZ_EXAMPLES", str(DEFAULT_EXAMPLES)))
WALLET_HEIGHT = 1000
CONFIG = {
    # U+0000 in any JSON string, an object's key included, is refused with 400 on both
    # backends (tests/api/test_nul_in_text.py proves it field by field); JSON Schema cannot say
    # that of the free keys a body may carry, so positive cases would meet a 400 the
    # contract does not list: the generator leaves NUL out
    "generation": {"allow-x00": False},
    "checks": {
        # positive data may meet an underpaid or unknown payment, a revoked or expired token,
        # a PID already added to a token or a reused Idempotency-Key: documented answers;
        # a GET on a POST-only checkout page is sent back to /pay, the access form on to next
        # (303); a gateway check meeting an unknown token (401)
        "positive_data_acceptance": {"expected-statuses": ["2xx", 303, 401, 402, 403, 404, 409,
                                                            422]},
        # a generated token may hold "/" (another route: 404, or one with other methods: 405)
        # (the gateway check refuses a malformed token with 401: nginx passes only 401/403)
        "negative_data_rejection": {"expected-statuses": [400, 401, 404, 405, 413]},
    },
    # the gateway check answers any method, as nginx's auth subrequest keeps the customer's
    # (a WebDAV PROPFIND, a QUERY): no method is "undeclared" there
    "operations": [{"include-path": "/api/v1/check",
                    "checks": {"unsupported_method": {"enabled": False}}}],
}


@dataclass
class Seeds:
    """Payments the monitor credited before the run, and the tokens they became."""

    pids: list[str]
    tokens: list[str]


@dataclass
class Tally:
    requests: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    by_listener: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0


PAID = [f"{n:x}".rjust(16, "a") for n in range(1, 6)]
UNDERPAID, PENDING = "b0b0b0b0b0b0b0b1", "c0c0c0c0c0c0c0c1"


def fill_wallet(wallet: FakeWallet) -> dict[str, str]:
    """Before the service starts: its first poll moves the cursor past these heights."""
    txids = {}
    for pid, amount in {**{pid: 5_000 for pid in PAID}, UNDERPAID: 10}.items():
        entry = make_transfer(pid, amount, height=WALLET_HEIGHT - 20)
        txids[pid] = entry["txid"]
        wallet.add(entry)
    wallet.add(make_transfer(PENDING, 5_000, height=0, type="pool"))
    return txids


async def seed(txids: dict[str, str], http: aiohttp.ClientSession, served: Served) -> Seeds:
    deadline = time.monotonic() + 30
    while True:
        async with http.get(f"http://{served.internal}/api/v1/stats") as resp:
            stats = await resp.json()
        if stats["transfers"] == len(txids) and stats["pending_pids"] == 1:
            break
        assert time.monotonic() < deadline, f"the monitor did not credit the seeds: {stats}"
        await asyncio.sleep(0.05)
    tokens = []
    for pid in PAID[:2]:  # two claimed, one of them revoked; the rest left to the fuzzer
        async with http.post(f"http://{served.public}/api/v1/redeem", json={"pid": pid}) as resp:
            body = await resp.json()
        assert body["service_token"] == derive_service_token(PaymentId.parse(pid), txids[pid]).hex()
        tokens.append(body["service_token"])
    async with http.post(f"http://{served.internal}/api/v1/token/{tokens[1]}/revoke",
                         json={"reason": "seed"}) as resp:
        assert resp.status == 200
    return Seeds(pids=PAID + [UNDERPAID, PENDING], tokens=tokens)


def fuzz(public: str, internal: str, seeds: Seeds, examples: int) -> Tally:
    """Runs in a worker thread: schemathesis' transport is synchronous (requests)."""
    schema = schemathesis.openapi.from_path(str(SPEC_PATH), config=schemathesis.Config.from_dict(CONFIG))
    base = {"public": f"http://{public}", "internal": f"http://{internal}"}
    session = requests.Session()
    tally = Tally()
    started = time.monotonic()

    def send(case: schemathesis.Case, listeners: list[str]) -> None:
        for listener in listeners:
            if listener == "public" and line_too_long(case):
                # the public listener's parser refuses a request line past its limit before
                # any route is looked up (the same 400 on every path, documented once for
                # the listener): it says nothing about this operation's contract
                response = case.call(base_url=base[listener], session=session)
                record(listener, response.status_code)
                assert response.status_code == 400, case.as_curl_command()
                continue
            response = case.call_and_validate(base_url=base[listener], session=session)
            record(listener, response.status_code)
            assert response.status_code < 500, case.as_curl_command()
        if "public" not in listeners:  # an admin route: absent, whatever was generated
            response = case.call(base_url=base["public"], session=session)
            record("public", response.status_code)
            if line_too_long(case):
                # aiohttp's parser refuses the line before any route is looked up: the same
                # 400 whatever the path, so it tells nothing about the admin routes either
                assert response.status_code == 400, case.as_curl_command()
            else:
                assert response.status_code == 404, case.as_curl_command()
                if case.method.upper() != "HEAD":  # (the gateway check documents HEAD too)
                    assert response.json() == {"error": "not_found", "message": "no such route"}

    def line_too_long(case: schemathesis.Case) -> bool:
        wanted = ("method", "url", "params", "headers", "cookies")
        kwargs = case.as_transport_kwargs(base_url=base["public"])
        prepared = session.prepare_request(
            requests.Request(**{k: v for k, v in kwargs.items() if k in wanted}))
        request_line = f"{case.method.upper()} {prepared.path_url} HTTP/1.1"
        return len(request_line.encode()) > PUBLIC_MAX_LINE_BYTES

    def record(listener: str, status: int) -> None:
        tally.requests += 1
        tally.statuses[status] += 1
        tally.by_listener[listener] += 1

    for result in schema.get_all_operations():
        operation = result.ok()
        listeners = list(operation.definition.raw["x-listeners"])
        coverage = schema.config.generation_for(operation=operation, phase="coverage")
        for case in schema.iter_coverage_cases(operation, generation_modes=list(GenerationMode),
                                               generation_config=coverage):
            send(case, listeners)
        for value in known_values(operation, seeds):  # every seed once, whatever is drawn below
            case = operation.Case(**value)
            send(case, listeners)
        has_inputs = any(True for _ in operation.iter_parameters()) or bool(operation.body)
        if not has_inputs:
            continue  # one possible request, already sent by the coverage cases
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            known = st.sampled_from(seeds.tokens if "{token}" in operation.path else seeds.pids)

            @settings(max_examples=examples, database=None, deadline=None,
                      phases=[Phase.explicit, Phase.generate],  # no shrinking: the curl line says enough
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                             HealthCheck.data_too_large])
            @given(case=operation.as_strategy(generation_mode=mode),
                   substitute=st.one_of(st.none(), st.none(), st.none(), known))
            def run(case: schemathesis.Case, substitute: str | None) -> None:
                if substitute is not None and mode is GenerationMode.POSITIVE:
                    use_known(case, substitute)
                send(case, listeners)

            run()
    tally.seconds = time.monotonic() - started
    return tally


def known_values(operation: Any, seeds: Seeds) -> list[dict[str, Any]]:
    if "{token}" in operation.path:
        body = {"body": {}, "media_type": "application/json"} if operation.method.upper() == "POST" else {}
        return [{"path_parameters": {"token": token}, **body} for token in seeds.tokens]
    if operation.path == "/api/v1/redeem":
        return [{"body": {"pid": pid}, "media_type": "application/json"} for pid in seeds.pids]
    if operation.path == "/api/v1/check":  # an issued and a revoked token: 200 and 403
        return [{"headers": {"Authorization": f"Bearer {token}"}} for token in seeds.tokens]
    if operation.path == "/access" and operation.method.upper() == "POST":
        return [{"body": {"token": token, "next": "/x"},
                 "media_type": "application/x-www-form-urlencoded"} for token in seeds.tokens]
    return []


@schemathesis.serializer("application/private-token-request")
def _token_requests(ctx: object, value: object) -> bytes:
    """A Privacy Pass issuance body is raw bytes (N TokenRequests of 259 bytes): whatever the
    generator made for the binary schema, sent as it is."""
    return value if isinstance(value, bytes) else str(value).encode("utf-8", "surrogatepass")


def use_known(case: schemathesis.Case, value: str) -> None:
    """Point a valid generated case at a seeded payment or token."""
    if "token" in (case.path_parameters or {}):
        case.path_parameters["token"] = value
    elif isinstance(case.body, dict) and "pid" in case.body:
        case.body["pid"] = value


async def requests_seen_by_server(http: aiohttp.ClientSession, internal: str) -> int:
    async with http.get(f"http://{internal}/metrics") as resp:
        text = await resp.text()
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("anonticket_request_duration_seconds_count")))


@pytest.mark.slow  # about 10,000 requests: the full suite's, not the quick tier's
async def test_schemathesis_fuzz_both_listeners(tmp_path: Path) -> None:
    async with FakeWallet(height=WALLET_HEIGHT) as wallet, aiohttp.ClientSession(trust_env=False) as http:
        txids = fill_wallet(wallet)
        served = Served(tmp_path, MONITOR_ENABLED="true", MONERO_RPC_URL=wallet.url,
                        MONITOR_POLL_INTERVAL_SECS="0.1", MONITOR_START_HEIGHT="1",
                        MONITOR_MIN_CONFIRMATIONS="10", MONITOR_MIN_PAYMENT_AMOUNT="1000",
                        REDEEM_PLAIN_PIDS="allow",  # the seeds are bare PIDs
                        PRIVATE_TOKEN_UNITS="hour=session:3600:100, call=request:7")
        async with served:
            seeds = await seed(txids, http, served)
            before = await requests_seen_by_server(http, served.internal)
            tally = await asyncio.to_thread(fuzz, served.public, served.internal, seeds, EXAMPLES)
            after = await requests_seen_by_server(http, served.internal)
        assert served.proc is not None and served.proc.returncode == 0
    log = served.log()
    # a request that is not HTTP (a generated line past the listener's limit, say) is refused
    # by aiohttp's parser with a JSON 400 before any middleware counts it; the service logs it
    refused = log.count("refused a request that is not valid HTTP")
    print(f"\nschemathesis: {tally.requests} requests in {tally.seconds:.1f}s "
          f"({dict(tally.by_listener)}), statuses {dict(sorted(tally.statuses.items()))}, "
          f"{refused} refused by the HTTP parser")
    assert tally.requests >= 12 * EXAMPLES, tally
    # every request the client counted reached the service: its own middleware counted it,
    # or its HTTP parser refused it (400, in the statuses above)
    assert after - before + refused >= tally.requests, (after - before, refused, tally.requests)
    assert refused <= tally.statuses[400], (refused, tally.statuses)
    # the seeds did their job: the fuzzer saw every redeem outcome, not only 400 and 404
    assert {200, 202, 400, 402, 404, 405}.issubset(tally.statuses), tally.statuses
    assert not [code for code in tally.statuses if code >= 500]
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]


# ---------------------------------------------------------------------- raw garbage
# Requests no OpenAPI generator writes: bytes on a socket. Whatever arrives, the answer
# is below 500, in the JSON error shape, and repeats nothing of what was sent.
TOKEN = "ab" * 32
ERROR_CODES = set(yaml.safe_load(SPEC_PATH.read_text())["components"]["schemas"]["Error"]
                  ["properties"]["error"]["enum"])


def http_request(method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b"",
                 version: str = "HTTP/1.1") -> bytes:
    head = {"Host": "anonticket.test", "Connection": "close", **(headers or {})}
    if body and "Transfer-Encoding" not in head:
        head.setdefault("Content-Length", str(len(body)))
    lines = [f"{method} {path} {version}"] + [f"{k}: {v}" for k, v in head.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def exchange(address: str, request: bytes) -> tuple[int, str, bytes]:
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(request)  # the server may answer and close before reading it all
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, response.getheader("Content-Type", ""), response.read()


def assert_json_error(request: bytes, status: int, content_type: str, body: bytes) -> None:
    """Below 500; an error is the JSON shape with a documented code and repeats no input."""
    assert status < 500, (status, body)
    if status >= 400:
        assert content_type.startswith("application/json"), (status, content_type, body[:200])
        answer = json.loads(body)
        assert answer["error"] in ERROR_CODES and isinstance(answer["message"], str), answer
        echoed = [piece for piece in set(re.findall(rb"[0-9A-Za-z]{8,}", request))
                  if piece.lower() in body.lower() and piece not in (b"anonticket",)]
        assert echoed == [], (echoed, body)


@pytest.fixture(scope="module")
def raw_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    served = Served(tmp_path_factory.mktemp("raw"))
    asyncio.run(served.start())
    yield served
    assert asyncio.run(served.stop()) == 0
    # the real binary's own log, after every garbage request of the module: no traceback
    # (tests/api/test_hostile_input.py finds the request that wrote one, record by record)
    log = served.log()
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]


BOMB = gzip.compress(b"0" * 2_000_000)  # 2 KB on the wire, 2 MB if inflated

HOSTILE = [
    pytest.param(http_request("POST", "/api/v1/redeem", body=os.urandom(3000)), id="random-body"),
    pytest.param(http_request("POST", "/api/v1/redeem", {"Content-Type": "application/json; charset=utf-16"},
                              b'\xff\xfe{\x00"\x00'), id="utf16-body"),
    pytest.param(http_request("POST", "/api/v1/redeem", {"Transfer-Encoding": "chunked"},
                              b'5\r\n{"pid\r\n0\r\n\r\n'), id="chunked-garbage"),
    pytest.param(http_request("POST", "/api/v1/redeem", {"Transfer-Encoding": "chunked"},
                              (b"1000\r\n" + b"x" * 4096 + b"\r\n") * 2 + b"0\r\n\r\n"), id="chunked-too-large"),
    pytest.param(http_request("POST", "/api/v1/redeem", {"Content-Length": "999999999"}, b"{}"),
                 id="content-length-huge"),
    pytest.param(http_request("POST", "/api/v1/redeem", {"Content-Encoding": "gzip"}, BOMB), id="gzip-bomb"),
    pytest.param(http_request("POST", "/api/v1/redeem", {"Content-Encoding": "gzip"}, b"not gzip"),
                 id="gzip-garbage"),
    pytest.param(http_request("POST", "/api/v1/redeem", {"Expect": "100-continue"}, b"pid=" + TOKEN.encode()),
                 id="expect-continue"),
    pytest.param(http_request("POST", "/api/v1/redeem", {"X-Big": "v" * 4000}, b"{}"), id="big-header"),
    pytest.param(http_request("GET", "/api/v1/token/" + "%61%62" * 32), id="percent-encoded-token"),
    pytest.param(http_request("GET", "/api/v1/token/" + TOKEN + "%2Frevoke"), id="percent-encoded-slash"),
    pytest.param(http_request("GET", "/api/v1/token/%00%ff%fe"), id="percent-encoded-binary"),
    pytest.param(http_request("GET", "/api/v1/token/" + "a" * 3900), id="long-token"),
    pytest.param(http_request("GET", "/" + "x" * 4000), id="long-path"),
    pytest.param(http_request("GET", "/../../../etc/passwd"), id="traversal"),
    pytest.param(http_request("GET", "/api/v1/token/..%2f..%2f..%2fetc%2fpasswd"), id="traversal-encoded"),
    pytest.param(http_request("GET", "/%2e%2e/%2e%2e/docs/openapi.yaml"), id="traversal-dots"),
    pytest.param(http_request("GET", "/api\\v1\\stats"), id="backslashes"),
    pytest.param(http_request("GET", "//api/v1//stats"), id="double-slashes"),
    pytest.param(http_request("GET", "http://evil.test/api/v1/stats"), id="absolute-uri"),
    pytest.param(http_request("GET", "/metrics?x=" + "%" * 100), id="bad-query"),
    pytest.param(http_request("DELETE", f"/api/v1/token/{TOKEN}"), id="delete"),
    pytest.param(http_request("CONNECT", "/api/v1/redeem"), id="connect"),
    pytest.param(http_request("POST", "/api/v1/redeem", body=b"{}", version="HTTP/1.0"), id="http-1.0"),
    pytest.param(http_request("BREW", "/api/v1/redeem"), id="unknown-method"),
    pytest.param(http_request("GE T", f"/api/v1/token/{TOKEN}"), id="split-method"),
    pytest.param(http_request("POST", "/api/v1/redeem", {"Content-Length": "-1"}), id="negative-length"),
    pytest.param(http_request("POST", "/api/v1/redeem", {"Content-Length": "1, 2"}), id="list-length"),
    pytest.param(b"POST /api/v1/redeem HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
                 id="duplicate-length"),
    pytest.param(http_request("GET", "/health/live", {"X-Huge": "h" * 9000}), id="huge-header"),
    pytest.param(http_request("GET", "/" + "p" * 9000), id="very-long-path"),
    pytest.param(http_request("GET", "/health/live", {f"X-{n}": "y" for n in range(200)}), id="many-headers"),
    pytest.param(http_request("GET", "/health/live", {"X-Token": "\x01" + TOKEN}), id="control-in-header"),
    pytest.param(http_request("GET", "/api/v1/token/\xe9"), id="raw-latin1-path"),
    pytest.param(http_request("GET", "/", version="HTTP/9.9"), id="bad-version"),
    pytest.param(http_request("POST", "/api/v1/redeem", {"Transfer-Encoding": "chunked"}, b"zz\r\n{}\r\n"),
                 id="bad-chunk-size"),
    pytest.param(http_request("POST", "/api/v1/redeem", {"Content-Encoding": "br"}, b"abc"),
                 id="unsupported-encoding"),
    pytest.param(http_request("GET", "*"), id="asterisk-form"),
    pytest.param(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", id="http2-preface"),
    pytest.param(b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + os.urandom(64) + b"\r\n\r\n", id="tls-hello"),
]


@pytest.mark.parametrize("listener", ["public", "internal"])
@pytest.mark.parametrize("request_bytes", HOSTILE)
def test_hostile_requests_get_json_errors(raw_service: Served, request_bytes: bytes, listener: str) -> None:
    address = raw_service.public if listener == "public" else raw_service.internal
    assert_json_error(request_bytes, *exchange(address, request_bytes))
    assert exchange(address, http_request("GET", "/health/live"))[0] == 200  # and it is still up


@settings(max_examples=300, deadline=None, database=None)
@given(body=st.binary(max_size=5000),
       content_type=st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded",
                                     "multipart/form-data; boundary=x", "application/json; charset=latin-1"]),
       path=st.sampled_from(["/api/v1/redeem", f"/api/v1/token/{TOKEN}/revoke"]))
def test_random_bodies(raw_service: Served, body: bytes, content_type: str, path: str) -> None:
    request = http_request("POST", path, {"Content-Type": content_type}, body)
    assert_json_error(request, *exchange(raw_service.internal, request))


@settings(max_examples=300, deadline=None, database=None)
@given(segment=st.text(max_size=200), prefix=st.sampled_from(["/api/v1/token/", "/", "/api/v1/"]))
def test_random_percent_encoded_paths(raw_service: Served, segment: str, prefix: str) -> None:
    request = http_request("GET", prefix + urllib.parse.quote(segment, safe="/"))
    for address in (raw_service.public, raw_service.internal):
        assert_json_error(request, *exchange(address, request))


async def test_unparsable_requests_leave_no_secret_in_the_log(tmp_path: Path) -> None:
    """aiohttp logs a refused request with a traceback quoting its raw line: a token path."""
    token = secrets.token_hex(32)
    secret = Secrets()
    secret.add("token", token)
    path = f"/api/v1/token/{token}"
    async with Served(tmp_path, LOG_LEVEL="DEBUG", API_ACCESS_LOG="true") as served:
        for request in (http_request("GE T", path), http_request("GET", path, version="HTTP/1.1 junk"),
                        http_request("GET", path, {"X-Token": "\x01" + token}),
                        http_request("GET", path + "/" + "a" * 5000)):
            assert_json_error(request, *await asyncio.to_thread(exchange, served.public, request))
    assert secret.found_in(served.log()) == [], "the raw request line reached the log"
