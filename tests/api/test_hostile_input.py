"""Input no OpenAPI generator writes, as raw bytes on real sockets, and the log it leaves.

Four classes of anonymous request once answered 500 or wrote an ERROR traceback per
request, a cheap way to flood the log: JSON nested deeper than the parser's recursion
limit, strings holding a lone surrogate (which SQLite cannot bind), header bytes that
are not UTF-8 (the bearer check encoded them), and bodies whose Content-Encoding does
not decode (aiohttp's lingering read re-raised the error after the 400). Hypothesis
generates each class; ``@example`` pins the case that was reported.

The service runs in the test process so ``caplog`` sees its records. Every request
says ``Connection: close`` and sends its whole body, so the server closes the
connection only after it has finished with it, lingering read included: reading to
EOF is the synchronisation, and the records a request left are known before the next
one is sent. The check is strict: no ERROR record, and no record at any level, DEBUG
included, with ``exc_info``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import http.client
import io
import json
import logging
import socket
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from anonticket.service.app import Service, start_service
from anonticket.domain.ids import PaymentId
from conftest import make_config, transfer
from test_fuzz_schemathesis import HOSTILE, SPEC_PATH, assert_json_error

OPERATOR = "op-bearer-" + "7c" * 12
PAID_PID = "5eed5eed5eed5eed"
EXAMPLES = 120
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ---------------------------------------------------------------------- the service
@dataclass
class Target:
    service: Service
    token: str  # issued, so a revoke reaches the UPDATE that binds the reason
    caplog: pytest.LogCaptureFixture

    def address(self, listener: str) -> str:
        return self.service.public_address if listener == "public" else self.service.internal_address

    def send(self, listener: str, request: bytes) -> tuple[int, str, bytes]:
        """One request; the answer, once the log records it caused are all written."""
        seen = len(self.caplog.records)
        answer = exchange(self.address(listener), request)
        assert_quiet(self.caplog.records[seen:], request)
        assert_json_error(request, *answer)
        return answer


@pytest.fixture
async def target(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> AsyncIterator[Target]:
    caplog.set_level(logging.DEBUG)
    service = await start_service(make_config(tmp_path, API_INTERNAL_TOKEN=OPERATOR))
    try:
        await service.state.ledger.credit([transfer(PaymentId.parse(PAID_PID), 5000)], None)
        async with aiohttp.ClientSession(trust_env=False) as http:
            async with http.post(f"http://{service.public_address}/api/v1/redeem",
                                 json={"pid": PAID_PID}) as resp:
                token = (await resp.json())["service_token"]
        yield Target(service, token, caplog)
    finally:
        await service.aclose()
    # and nothing came late: the call phase's records, then those of the shutdown
    assert_quiet(caplog.get_records("call") + caplog.records, b"(the whole test)")


def assert_quiet(records: list[logging.LogRecord], request: bytes) -> None:
    loud = [(r.levelname, r.name, r.getMessage()) for r in records
            if r.levelno >= logging.ERROR or r.exc_info or r.exc_text]
    assert loud == [], (request[:300], loud)


async def in_thread(fn: Callable[[], None]) -> None:
    """Hypothesis and the blocking sockets run in a worker; the service keeps the loop."""
    await asyncio.to_thread(fn)


# ---------------------------------------------------------------------- raw HTTP
def raw_request(method: str, path: bytes | str, headers: list[tuple[str, bytes]] | None = None,
                body: bytes = b"", *, chunked: bool = False) -> bytes:
    head = [(b"Host", b"anonticket.test"), (b"Connection", b"close")]
    head += [(name.encode(), value) for name, value in headers or []]
    if chunked:
        head.append((b"Transfer-Encoding", b"chunked"))
        body = (b"%x\r\n%s\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n"
    elif body or method == "POST":
        head.append((b"Content-Length", str(len(body)).encode()))
    target = path.encode() if isinstance(path, str) else path
    lines = [method.encode() + b" " + target + b" HTTP/1.1"] + [n + b": " + v for n, v in head]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


class _Received:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def makefile(self, mode: str) -> io.BytesIO:
        return io.BytesIO(self.data)


def exchange(address: str, request: bytes) -> tuple[int, str, bytes]:
    """Send, read to EOF (the server is done with the connection), parse the answer."""
    host, port = address.rsplit(":", 1)
    received = []
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(request)
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                received.append(chunk)
    response = http.client.HTTPResponse(_Received(b"".join(received)))  # type: ignore[arg-type]
    response.begin()
    return response.status, response.getheader("Content-Type", ""), response.read()


def bearer() -> list[tuple[str, bytes]]:
    return [("Authorization", f"Bearer {OPERATOR}".encode())]


def error_code(body: bytes) -> str:
    return str(json.loads(body)["error"])


# ---------------------------------------------------------------------- routes and fields
BODY_ROUTES = [("public", "/api/v1/redeem"), ("internal", "/api/v1/redeem"),
               ("internal", "/api/v1/token/{token}/revoke")]
GET_ROUTES = [("public", "/health/live"), ("public", "/api/v1/token/{token}"),
              ("internal", "/api/v1/token/{token}"), ("internal", "/api/v1/stats"),
              ("internal", "/metrics"), ("internal", "/health/ready")]
OPEN_PATHS = {"/health/live", "/health/ready"}


def _resolved(spec: dict, schema: dict) -> dict:
    """A schema with its ``$ref`` (to components) followed."""
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def string_fields() -> tuple[list[tuple[str, str, str]], dict[tuple[str, str], list[str]]]:
    """(listener, path, field) for every string property of every JSON request body in
    anonticket/api/openapi.yaml, so a field added to the contract is fuzzed without a test edit, and
    for each (path, field) the string fields sent with it: all of the body's, or those of
    its ``oneOf`` alternative (a redeem sends ``receipt`` or ``pid``, never both)."""
    spec = yaml.safe_load(SPEC_PATH.read_text())
    found, siblings = [], {}
    for path, item in spec["paths"].items():
        for operation in item.values():
            content = operation.get("requestBody", {}).get("content", {})
            body = _resolved(spec, content.get("application/json", {}).get("schema", {}))
            for alternative in body.get("oneOf", [{}]):
                # the body's own properties hold in every alternative (the replay's ``id``)
                properties = {**body.get("properties", {}),
                              **_resolved(spec, alternative).get("properties", {})}
                strings = [name for name, schema in properties.items()
                           if _resolved(spec, schema).get("type") == "string"]
                for name in strings:
                    found += [(listener, path, name) for listener in operation["x-listeners"]
                              if (listener, path, name) not in found]
                    siblings.setdefault((path, name), strings)
    return found, siblings


STRING_FIELDS, SENT_WITH = string_fields()
# a valid value for each field, so the one carrying the surrogate is the only thing wrong
VALID = {"pid": PAID_PID, "receipt": "5eed" * 16, "reason": "chargeback", "memo": "GET /file",
         "id": "msg_0", "aud": "files", "purpose": "credential"}


def test_the_contract_has_the_string_fields_we_expect() -> None:
    assert {(path, name) for _, path, name in STRING_FIELDS} >= {
        ("/api/v1/redeem", "pid"), ("/api/v1/redeem", "receipt"),
        ("/api/v1/token/{token}/topup", "receipt"), ("/api/v1/token/{token}/revoke", "reason")}
    assert SENT_WITH[("/api/v1/redeem", "receipt")] == ["receipt"]


# ---------------------------------------------------------------------- deep nesting
OPENERS = {"array": ("[", "]"), "object": ('{"":', "}"), "pid": ('{"pid":', "}"),
           "reason": ('{"reason":', "}"), "score": ('{"abuse_score":', "}")}
# the parser gives up near 1,000 levels; 4 KiB allows 4,096 "[" (2,048 closed ones)
depths = st.integers(1, 50) | st.integers(900, 2100) | st.integers(1, 4100)


async def test_deeply_nested_bodies_are_400(target: Target) -> None:
    @SETTINGS
    @given(route=st.sampled_from(BODY_ROUTES), kind=st.sampled_from(sorted(OPENERS)),
           depth=depths, closed=st.booleans())
    @example(route=BODY_ROUTES[0], kind="array", depth=3000, closed=False)  # the report
    @example(route=BODY_ROUTES[2], kind="object", depth=1000, closed=False)
    @example(route=BODY_ROUTES[2], kind="reason", depth=1, closed=True)
    @example(route=BODY_ROUTES[2], kind="array", depth=2000, closed=True)
    def check(route: tuple[str, str], kind: str, depth: int, closed: bool) -> None:
        opener, closer = OPENERS[kind]
        body = (opener * depth + ("0" + closer * depth if closed else "")).encode()
        listener, path = route
        request = raw_request("POST", path.format(token=target.token), bearer(), body)
        status, _, answer = target.send(listener, request)
        if not closed or kind == "array":  # never a JSON object, however deep the parser got
            assert status in (400, 413), (status, answer)
            assert status == 413 or error_code(answer) == "invalid_request", answer

    await in_thread(check)


# ---------------------------------------------------------------------- lone surrogates
surrogates = st.characters(categories=["Cs"])
unicode_text = st.builds(lambda a, s, b: a + s + b, st.text(max_size=12), surrogates, st.text(max_size=12))


def encode_json(value: object, spelling: str) -> bytes:
    """JSON lets a lone surrogate arrive escaped (\\ud800) or, since json.loads decodes
    bytes with surrogatepass, raw: the three bytes UTF-8 would give it, or one UTF-16 unit."""
    if spelling == "escaped":
        return json.dumps(value).encode()
    text = json.dumps(value, ensure_ascii=False)
    return text.encode("utf-16" if spelling == "utf-16" else "utf-8", "surrogatepass")


async def test_lone_surrogates_in_every_string_field_are_400(target: Target) -> None:
    @SETTINGS
    @given(where=st.sampled_from(STRING_FIELDS + [("internal", "/api/v1/token/{token}/revoke", "(key)"),
                                                  ("public", "/api/v1/redeem", "(key)")]),
           text=unicode_text, spelling=st.sampled_from(["escaped", "raw", "utf-16"]))
    @example(where=("internal", "/api/v1/token/{token}/revoke", "reason"), text="\ud800",
             spelling="escaped")  # the report
    def check(where: tuple[str, str, str], text: str, spelling: str) -> None:
        listener, path, field = where
        if field == "(key)":  # the route's first body, with a surrogate key added
            first = next(name for at, route, name in STRING_FIELDS if (at, route) == (listener, path))
            fields: dict[str, object] = {name: VALID[name] for name in SENT_WITH[(path, first)]}
            fields[text] = 1
        else:
            fields = {name: VALID[name] for name in SENT_WITH[(path, field)]}
            fields[field] = text
        request = raw_request("POST", path.format(token=target.token), bearer(),
                              encode_json(fields, spelling))
        status, _, answer = target.send(listener, request)
        assert (status, error_code(answer)) == (400, "invalid_request"), answer

    await in_thread(check)


async def test_a_surrogate_pair_is_an_ordinary_character(target: Target) -> None:
    """Only a lone surrogate is refused: an escaped pair is one character, stored as such."""
    request = raw_request("POST", f"/api/v1/token/{target.token}/revoke", bearer(),
                          b'{"reason": "emoji \\ud83d\\ude00"}')
    status, _, answer = await asyncio.to_thread(target.send, "internal", request)
    assert status == 200 and json.loads(answer)["revoke_reason"] == "emoji \U0001f600"


# ---------------------------------------------------------------------- header bytes
def _no_line_breaks(raw: bytes) -> bytes:
    return raw.replace(b"\r", b"").replace(b"\n", b"")


# mostly bytes a header value may hold (obs-text, visible ASCII), so most requests get
# past the parser to the handlers; now and then any byte, which the parser refuses
header_bytes = st.lists(st.integers(0x80, 0xFF) | st.integers(0x20, 0x7E) | st.integers(0, 0xFF),
                        max_size=40).map(bytes)
non_utf8 = st.builds(lambda a, high, b: _no_line_breaks(a + bytes([high]) + b),
                     header_bytes, st.integers(0x80, 0xFF), header_bytes)


async def test_header_bytes_that_are_not_utf8_never_5xx(target: Target) -> None:
    routes = [(listener, "POST", path) for listener, path in BODY_ROUTES]
    routes += [(listener, "GET", path) for listener, path in GET_ROUTES]

    @SETTINGS
    @given(route=st.sampled_from(routes), junk=non_utf8,
           header=st.sampled_from(["Authorization", "Bearer-prefixed", "Operator-prefixed",
                                   "X-Anything", "Content-Type", "Cookie", "request-target"]))
    @example(route=("internal", "GET", "/api/v1/stats"), junk=b"\xff\xfe",
             header="Bearer-prefixed")  # the report
    def check(route: tuple[str, str, str], junk: bytes, header: str) -> None:
        listener, method, path = route
        target_path: bytes = path.format(token=target.token).encode()
        body = b""
        if method == "POST":
            body = b'{"pid":"%s"}' % PAID_PID.encode() if path.endswith("redeem") else b"{}"
        headers = bearer()
        authorization = {"Authorization": junk, "Bearer-prefixed": b"Bearer " + junk,
                         "Operator-prefixed": f"Bearer {OPERATOR}".encode() + junk}.get(header)
        if authorization is not None:
            headers = [("Authorization", authorization)]
        elif header == "request-target":
            target_path = b"/api/v1/token/" + junk.replace(b" ", b"").replace(b"?", b"").replace(b"#", b"")
        else:
            headers.append((header, junk))
        status, _, answer = target.send(listener, raw_request(method, target_path, headers, body))
        if authorization is not None and listener == "internal" and path not in OPEN_PATHS:
            assert status in (400, 401), answer  # 400: the parser refused a control byte
            if status == 401:
                assert error_code(answer) == "unauthorized"

    await in_thread(check)


# ---------------------------------------------------------------------- content encodings
ENCODINGS = ["gzip", "deflate", "br", "zstd", "x-gzip", "GZIP", "gzip, gzip", "gzip, deflate",
             "identity", "compress", "bogus", ""]
json_bodies = st.sampled_from([b'{"pid":"%s"}' % PAID_PID.encode(), b'{"reason":"x"}', b"{}",
                               b"[" * 3000, b'{"reason":"\\udfff"}'])


def _compressed(data: bytes, how: str, cut: int | None) -> bytes:
    packed = {"gzip": gzip.compress, "zlib": zlib.compress,
              "raw": lambda d: zlib.compressobj(wbits=-15).compress(d)}[how](data)
    return packed if cut is None else packed[:cut]


bodies = (st.binary(max_size=600)
          | st.builds(_compressed, json_bodies, st.sampled_from(["gzip", "zlib", "raw"]),
                      st.none() | st.integers(0, 40))
          | st.just(gzip.compress(b"0" * 2_000_000)))  # 2 KB on the wire, 2 MB inflated


async def test_bodies_that_do_not_decode_never_5xx_or_traceback(target: Target) -> None:
    routes = [(listener, "POST", path) for listener, path in BODY_ROUTES]
    routes += [(listener, "GET", path) for listener, path in GET_ROUTES]  # never read: lingering

    @SETTINGS
    @given(route=st.sampled_from(routes), encoding=st.sampled_from(ENCODINGS), body=bodies,
           chunked=st.booleans())
    @example(route=("public", "POST", "/api/v1/redeem"), encoding="gzip", body=b"not gzip",
             chunked=False)  # the report
    @example(route=("public", "GET", "/health/live"), encoding="gzip", body=b"not gzip", chunked=False)
    @example(route=("internal", "POST", "/api/v1/token/{token}/revoke"), encoding="deflate",
             body=b"\x00" * 100, chunked=True)
    def check(route: tuple[str, str, str], encoding: str, body: bytes, chunked: bool) -> None:
        listener, method, path = route
        request = raw_request(method, path.format(token=target.token),
                              bearer() + [("Content-Encoding", encoding.encode())], body, chunked=chunked)
        target.send(listener, request)

    await in_thread(check)


# ---------------------------------------------------------------------- the known list
@pytest.mark.parametrize("request_bytes", HOSTILE)
async def test_hostile_requests_leave_no_traceback(target: Target, request_bytes: bytes) -> None:
    """The raw-garbage list of the schemathesis module, with its log read record by record."""
    for listener in ("public", "internal"):
        await asyncio.to_thread(target.send, listener, request_bytes)
