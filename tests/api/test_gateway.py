"""The gateway check (/api/v1/check on the internal listener) over real sockets: where
the token may come from, what an allowed answer carries, every refusal and its reason,
metered checks under concurrency, the proxy's own credential, failing closed, metrics."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path

from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from anonticket.api.access_cookie import HOST_PREFIX, AccessCookie
from anonticket.api.gateway import make_check_handler, token_from
from anonticket.service.app import Service, build_internal_app, start_service
from anonticket.domain.ids import PaymentId, ServiceToken, token_subject
from anonticket.domain.errors import StorageUnavailable
from conftest import make_config, transfer, url

# the check is the ledger's, so the tests on the ``service`` fixture run on both backends
BOTH_BACKENDS = True
OPERATOR = "gateway-and-admin-secret-5d1c"
COOKIE = "anonticket_access"
# the default settings' names: __Host- over HTTPS, the plain one over HTTP
DEFAULT_COOKIE = AccessCookie(HOST_PREFIX + COOKIE, COOKIE, "auto")


async def issue(service: Service, amount: int = 5000) -> str:
    pid = PaymentId.generate()
    await service.state.ledger.credit([transfer(pid, amount)], None)
    claimed = await service.state.ledger.redeem(pid)
    return claimed.token.hex()  # type: ignore[union-attr]


async def check(http: aiohttp.ClientSession, service: Service, headers: dict[str, str] | None = None,
                method: str = "GET", path: str = "/api/v1/check") -> tuple[int, CIMultiDict[str], bytes]:
    async with http.request(method, url(service.internal_address, path), headers=headers) as resp:
        return resp.status, CIMultiDict(resp.headers), await resp.read()


def bearer(token: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **extra}


def outcome(service: Service, name: str) -> int:
    return service.state.metrics.gateway[name].value


@pytest.fixture
async def priced(tmp_path: Path) -> AsyncIterator[Service]:
    running = await start_service(make_config(tmp_path, ACCESS_PRICE_PER_DAY="10000"))
    yield running
    await running.aclose()


@pytest.fixture
async def guarded(tmp_path: Path) -> AsyncIterator[Service]:
    running = await start_service(make_config(tmp_path, API_INTERNAL_TOKEN=OPERATOR))
    yield running
    await running.aclose()


# ---------------------------------------------------------------------- allowed
async def test_an_issued_token_is_allowed_with_subject_and_balance(
        service: Service, http: aiohttp.ClientSession) -> None:
    token = await issue(service, 5000)
    for headers in (bearer(token), bearer(token.upper()), {"Authorization": f"bearer {token}"},
                    {"Cookie": f"{COOKIE}={token}"}, {"Cookie": f"a=1; {COOKIE}={token}; b=2"},
                    {"Cookie": f"x{COOKIE}=1; {COOKIE}={token}"}):
        status, answer, body = await check(http, service, headers)
        assert (status, body) == (200, b""), headers
        assert answer["X-Anonticket-Subject"] == token_subject(bytes.fromhex(token))
        assert answer["X-Anonticket-Remaining"] == "5000"
        assert "X-Anonticket-Expires-At" not in answer  # no price per day: no expiry
        assert token not in str(answer).lower()
    assert outcome(service, "allowed") == 6


async def test_the_subject_is_stable_across_restarts_and_hides_the_token(
        tmp_path: Path, http: aiohttp.ClientSession) -> None:
    config = make_config(tmp_path)
    first = await start_service(config)
    try:
        token = await issue(first)
        _, answer, _ = await check(http, first, bearer(token))
        subject = answer["X-Anonticket-Subject"]
    finally:
        await first.aclose()
    second = await start_service(config)  # a cold record cache: the lookup reads SQLite
    try:
        assert second.state.ledger.cached_token(bytes.fromhex(token)) is None
        status, answer, _ = await check(http, second, bearer(token))
        assert (status, answer["X-Anonticket-Subject"]) == (200, subject)
        other = await issue(second)
        _, answer, _ = await check(http, second, bearer(other))
        assert answer["X-Anonticket-Subject"] != subject
    finally:
        await second.aclose()
    assert len(subject) == 32 and subject not in token


async def test_an_expiring_token_says_when(priced: Service, http: aiohttp.ClientSession) -> None:
    token = await issue(priced, 5000)  # half a day
    record = priced.state.ledger.cached_token(bytes.fromhex(token))
    assert record is not None and record.expires_at is not None
    status, answer, _ = await check(http, priced, bearer(token))
    assert status == 200
    assert answer["X-Anonticket-Expires-At"].endswith("Z")


async def test_every_method_is_checked_alike(service: Service, http: aiohttp.ClientSession) -> None:
    """nginx's auth subrequest keeps the customer's method; the body never comes."""
    token = await issue(service)
    for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"):
        assert (await check(http, service, bearer(token), method))[0] == 200, method
        assert (await check(http, service, None, method))[0] == 401, method


# ---------------------------------------------------------------------- refused
async def test_no_usable_token_is_401_with_a_challenge_and_a_reason(
        service: Service, http: aiohttp.ClientSession) -> None:
    token = await issue(service)
    cases = {
        "token_missing": [None, {"Authorization": "Basic dXNlcjpwdw=="}, {"Cookie": "other=1"},
                          {"Authorization": f"Bearer{token}"}, {"Cookie": f"x{COOKIE}={token}"},
                          bearer("")],  # "Bearer " arrives as "Bearer": no token at all
        "invalid_token": [bearer("x"), bearer(token[:-1]), bearer(token + "0"),
                          bearer(token[:30] + " " + token[31:]), bearer("g" * 64),
                          bearer(token[:62] + "\u00e9a"), {"Cookie": f"{COOKIE}="},
                          {"Cookie": f"{COOKIE}={token}; {COOKIE}={token}"},
                          {"Cookie": f'{COOKIE}="{token}"'}],
        "token_not_found": [bearer("ab" * 32), bearer(token[:-1] + ("0" if token[-1] != "0" else "1")),
                            {"Cookie": f"{COOKIE}={'cd' * 32}"}],
    }
    for reason, variants in cases.items():
        for headers in variants:
            status, answer, body = await check(http, service, headers)
            assert (status, answer["X-Anonticket-Reason"]) == (401, reason), headers
            assert answer["WWW-Authenticate"].startswith('Bearer realm="anonticket"')
            assert "X-Anonticket-Subject" not in answer
            assert body.startswith(b'{"error": "' + reason.encode())
            assert token.encode() not in body
        assert outcome(service, reason) == len(variants)


async def test_the_cookie_counts_across_every_cookie_header(service: Service) -> None:
    """Two Cookie headers (HTTP/1.1 allows it; some proxies forward them apart) each
    holding the access cookie are refused like two copies in one header."""
    find = DEFAULT_COOKIE
    token = "ab" * 32
    one = CIMultiDict([("Cookie", "a=1"), ("Cookie", f"{COOKIE}={token}")])
    two = CIMultiDict([("Cookie", f"{COOKIE}={token}"), ("Cookie", f"{COOKIE}={token}")])
    assert token_from(one, find) == bytes.fromhex(token)
    assert token_from(two, find) == "invalid_token"
    # Authorization wins over the cookie; another scheme is not ours
    both = CIMultiDict([("Authorization", f"Bearer {'cd' * 32}"), ("Cookie", f"{COOKIE}={token}")])
    assert token_from(both, find) == bytes.fromhex("cd" * 32)
    basic = CIMultiDict([("Authorization", "Basic eA=="), ("Cookie", f"{COOKIE}={token}")])
    assert token_from(basic, find) == bytes.fromhex(token)


async def test_a_second_copy_is_refused_whatever_else_the_request_carries(
        service: Service, http: aiohttp.ClientSession) -> None:
    """A proxy strips one access cookie and one Authorization: a second copy of either,
    next to a Bearer token that would let the request through, would reach the upstream.
    And a second cost header (a proxy that appends instead of replacing) must not let the
    customer's own 0 win."""
    token = await issue(service, 5000)
    cookie = f"{COOKIE}={token}"
    copies = [
        [("Authorization", f"Bearer {token}"), ("Cookie", f"{cookie}; {cookie}")],
        [("Authorization", f"Bearer {token}"), ("Cookie", f"a=1; {cookie}"), ("Cookie", cookie)],
        [("Authorization", f"Bearer {token}"), ("Authorization", f"Bearer {token}")],
        [("Authorization", "Basic eA=="), ("Authorization", f"Bearer {token}")],
        [("Authorization", f"Bearer {token}"), ("Authorization", "Basic eA=="), ("Cookie", cookie)],
    ]
    for pairs in copies:
        for cost in ([], [("X-Anonticket-Cost", "700")]):
            status, answer, _ = await check(http, service, CIMultiDict(pairs + cost))  # type: ignore[arg-type]
            assert (status, answer["X-Anonticket-Reason"]) == (401, "invalid_token"), pairs
    assert outcome(service, "invalid_token") == 2 * len(copies)
    for costs in (("0", "700"), ("700", "0"), ("700", "700")):
        headers = CIMultiDict([("Authorization", f"Bearer {token}")]
                              + [("X-Anonticket-Cost", cost) for cost in costs])
        status, answer, _ = await check(http, service, headers)  # type: ignore[arg-type]
        assert status == 400 and "X-Anonticket-Subject" not in answer, costs
    assert outcome(service, "invalid_cost") == 3 and outcome(service, "allowed") == 0
    record = await service.state.ledger.find_token(ServiceToken(bytes.fromhex(token)))
    assert record is not None and record.remaining == 5000  # nothing was charged
    # one of each is fine, the Bearer token winning over a cookie
    assert (await check(http, service, bearer(token, Cookie=cookie, **{"X-Anonticket-Cost": "700"})))[0] == 200


def test_a_cookie_copy_after_any_ascii_whitespace_counts() -> None:
    """nginx's and Caddy's strip patterns take ``\\s`` before the name: so does the count."""
    find = DEFAULT_COOKIE
    token = "ab" * 32
    for space in ("\x0b", "\x0c", "\r", "\n", " \t "):
        headers = CIMultiDict([("Authorization", f"Bearer {'cd' * 32}"),
                               ("Cookie", f"a=1;{space}{COOKIE}={token}; {COOKIE}={token}")])
        assert token_from(headers, find) == "invalid_token", repr(space)
    assert token_from(CIMultiDict([("Cookie", f"a=1;\x0b{COOKIE}={token}")]), find) == bytes.fromhex(token)


async def test_the_host_prefixed_cookie_is_read_first_and_the_plain_one_never_over_https(
        service: Service, http: aiohttp.ClientSession) -> None:
    """A sibling subdomain can plant a plain ``anonticket_access`` for this host, never a
    ``__Host-`` one: over HTTPS (the proxy's X-Forwarded-Proto) only the latter counts."""
    mine, planted = await issue(service), await issue(service)
    host, plain = f"__Host-{COOKIE}", COOKIE
    subject = token_subject(bytes.fromhex(mine))
    cases = [  # (Cookie, X-Forwarded-Proto) -> the subject allowed, or the reason refused
        (f"{host}={mine}", "https", subject), (f"{host}={mine}", None, subject),
        (f"{plain}={planted}; {host}={mine}", "https", subject),
        (f"{host}={mine}; {plain}={planted}", "http", subject),  # the prefixed one first
        (f"{plain}={mine}", "http", subject), (f"{plain}={mine}", None, subject),
        (f"{plain}={planted}", "https", "token_missing"), (f"{plain}={planted}", "HTTPS", "token_missing"),
        (f"{host}={mine}; {host}={mine}", "https", "invalid_token"),
        (f"{host}={mine}; {plain}={planted}; {plain}={planted}", "https", "invalid_token"),
    ]
    for cookie, proto, expected in cases:
        headers = {"Cookie": cookie, **({"X-Forwarded-Proto": proto} if proto else {})}
        status, answer, _ = await check(http, service, headers)
        got = answer.get("X-Anonticket-Subject") or answer["X-Anonticket-Reason"]
        assert got == expected, (cookie, proto)
        assert status == (200 if expected == subject else 401)


def test_the_cookies_names_follow_the_settings(tmp_path: Path) -> None:
    def names(**settings: str) -> tuple[str, str | None]:
        cookie = AccessCookie.from_config(make_config(tmp_path, **settings))
        return cookie.name(True), cookie.name(False)

    assert names() == (f"__Host-{COOKIE}", COOKIE)
    assert names(ACCESS_COOKIE_SECURE="true") == (f"__Host-{COOKIE}", COOKIE)
    assert names(ACCESS_COOKIE_SECURE="false") == (COOKIE, COOKIE)  # never Secure: no prefix
    assert names(ACCESS_COOKIE_NAME="__Host-x", ACCESS_COOKIE_SECURE="true") == ("__Host-x", "__Host-x")
    strict = AccessCookie.from_config(make_config(tmp_path, ACCESS_COOKIE_SECURE="true"))
    headers = CIMultiDict([("Cookie", f"{COOKIE}={'ab' * 32}")])
    assert token_from(headers, strict) == "token_missing"  # always Secure: the plain one never counts
    lax = AccessCookie.from_config(make_config(tmp_path, ACCESS_COOKIE_SECURE="false"))
    headers = CIMultiDict([("Cookie", f"{COOKIE}={'ab' * 32}"), ("X-Forwarded-Proto", "https")])
    assert token_from(headers, lax) == bytes.fromhex("ab" * 32)  # never Secure: the plain one is it


async def test_a_token_in_the_query_string_is_never_read(
        service: Service, http: aiohttp.ClientSession) -> None:
    token = await issue(service)
    for query in (f"?token={token}", f"?access_token={token}", f"?{COOKIE}={token}"):
        status, answer, _ = await check(http, service, path=f"/api/v1/check{query}")
        assert (status, answer["X-Anonticket-Reason"]) == (401, "token_missing")


async def test_revoked_and_expired_are_403_with_the_reason(
        priced: Service, http: aiohttp.ClientSession) -> None:
    revoked, expiring = await issue(priced), await issue(priced)
    async with http.post(url(priced.internal_address, f"/api/v1/token/{revoked}/revoke"),
                         json={"reason": "test"}) as resp:
        assert resp.status == 200
    priced.state.ledger.clock = lambda: 2**40  # long after the half day both bought
    for token, reason in ((revoked, "token_revoked"), (expiring, "token_expired")):
        for cost in ("0", "1"):  # check only, and metered (decided inside the debit)
            status, answer, _ = await check(http, priced, bearer(token, **{"X-Anonticket-Cost": cost}))
            assert (status, answer["X-Anonticket-Reason"]) == (403, reason), (reason, cost)
            assert "WWW-Authenticate" not in answer
    assert outcome(priced, "token_revoked") == outcome(priced, "token_expired") == 2


# ---------------------------------------------------------------------- metered
@pytest.mark.sqlite_only  # reads the database file itself
async def test_a_cost_is_debited_exactly_and_durably(
        service: Service, http: aiohttp.ClientSession) -> None:
    token = await issue(service, 5000)
    for expected in (3800, 2600, 1400, 200):
        status, answer, _ = await check(http, service, bearer(token, **{"X-Anonticket-Cost": "1200"}))
        assert (status, answer["X-Anonticket-Remaining"]) == (200, str(expected))
        with closing(sqlite3.connect(service.state.config.database_url)) as db:
            (spent,) = db.execute("SELECT spent FROM service_tokens WHERE token = ?",
                                  (bytes.fromhex(token),)).fetchone()
        assert spent == 5000 - expected  # committed before the answer
    status, answer, _ = await check(http, service, bearer(token, **{"X-Anonticket-Cost": "1200"}))
    assert (status, answer["X-Anonticket-Reason"], answer["X-Anonticket-Remaining"]) == (
        403, "insufficient_balance", "200")
    # a check-only location still opens: the token is valid, it just cannot pay
    assert (await check(http, service, bearer(token)))[0] == 200
    assert service.state.metrics.gateway_debited._value.get() == 4800


async def test_concurrent_metered_checks_never_overspend(
        service: Service, http: aiohttp.ClientSession) -> None:
    token = await issue(service, 20 * 250 + 100)
    headers = bearer(token, **{"X-Anonticket-Cost": "250"})
    answers = await asyncio.gather(*(check(http, service, headers) for _ in range(60)))
    statuses = sorted(status for status, _, _ in answers)
    assert statuses == [200] * 20 + [403] * 40
    remaining = sorted(int(a["X-Anonticket-Remaining"]) for s, a, _ in answers if s == 200)
    assert remaining == list(range(100, 100 + 20 * 250, 250))  # each allowed one a step down
    storage = service.state.ledger.storage  # what was committed, read back
    record = await storage.get_token(bytes.fromhex(token))
    assert record is not None and record.remaining == 100
    assert len(await storage.list_debits(bytes.fromhex(token), limit=100)) == 20


async def test_a_cost_that_is_not_a_number_fails_closed(
        service: Service, http: aiohttp.ClientSession) -> None:
    token = await issue(service)
    for cost in ("-1", "1.5", "1e3", "0x10", "5 5", "١", str(2**62 + 1), "9" * 30):
        status, answer, body = await check(http, service, bearer(token, **{"X-Anonticket-Cost": cost}))
        assert status == 400, cost  # nginx turns it into a 500: closed, and visible
        assert "X-Anonticket-Subject" not in answer
    assert outcome(service, "invalid_cost") == 8
    assert outcome(service, "allowed") == 0


# ---------------------------------------------------------------------- credentials
async def test_with_an_internal_token_the_proxy_must_send_its_own_header(
        guarded: Service, http: aiohttp.ClientSession) -> None:
    token = await issue(guarded)
    proxy = {"X-Anonticket-Gateway-Token": OPERATOR}
    assert (await check(http, guarded, {**bearer(token), **proxy}))[0] == 200
    for headers in (bearer(token), {**bearer(token), "X-Anonticket-Gateway-Token": OPERATOR + "x"},
                    {**bearer(token), "X-Anonticket-Gateway-Token": ""},
                    # the admin credential where the admin routes take it is not the proxy's
                    {"Authorization": f"Bearer {OPERATOR}"}):
        status, answer, body = await check(http, guarded, headers)
        assert (status, b"gateway_unauthorized" in body) == (407, True), headers
        assert "X-Anonticket-Subject" not in answer
    # with the proxy's header right, Authorization is the customer's: the admin secret is
    # just a malformed customer token there
    status, answer, _ = await check(http, guarded, {"Authorization": f"Bearer {OPERATOR}", **proxy})
    assert (status, answer["X-Anonticket-Reason"]) == (401, "invalid_token")
    assert outcome(guarded, "gateway_unauthorized") == 4


async def test_customer_and_admin_secrets_never_stand_in_for_each_other(
        tmp_path: Path, http: aiohttp.ClientSession) -> None:
    """Even an operator who set API_INTERNAL_TOKEN to a customer's very token (64 hex)
    gets two separate secrets: the customer's bearer opens neither the proxy's door nor
    the admin routes, and the proxy's header opens no admin route."""
    service = await start_service(make_config(tmp_path))
    token = await issue(service)
    await service.aclose()
    guarded = await start_service(make_config(tmp_path, API_INTERNAL_TOKEN=token))
    try:
        status, _, _ = await check(http, guarded, bearer(token))  # no proxy header
        assert status == 407
        status, answer, _ = await check(http, guarded, {**bearer(token),
                                                        "X-Anonticket-Gateway-Token": token})
        assert (status, answer["X-Anonticket-Subject"]) == (200, token_subject(bytes.fromhex(token)))
        for headers in ({"X-Anonticket-Gateway-Token": token}, {"Cookie": f"{COOKIE}={token}"}):
            async with http.get(url(guarded.internal_address, "/metrics"), headers=headers) as resp:
                assert resp.status == 401
        async with http.get(url(guarded.internal_address, "/metrics"), headers=bearer(token)) as resp:
            assert resp.status == 200  # the admin route's own header, as before
    finally:
        await guarded.aclose()


# ---------------------------------------------------------------------- failing closed
async def test_storage_trouble_fails_closed_and_is_counted(
        tmp_path: Path, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch) -> None:
    config = make_config(tmp_path, DATABASE_BUSY_TIMEOUT_MS="100")
    service = await start_service(config)
    token = await issue(service)
    await service.aclose()
    service = await start_service(config)  # nothing cached: a check must read SQLite
    try:
        async def broken(token: bytes) -> None:
            raise StorageUnavailable()

        monkeypatch.setattr(service.state.ledger.storage, "get_token", broken)
        status, answer, body = await check(http, service, bearer(token))
        assert (status, answer["Retry-After"]) == (503, "1")
        assert "X-Anonticket-Subject" not in answer
        monkeypatch.undo()
        # a metered check while another process holds the write lock
        holder = sqlite3.connect(config.database_url, isolation_level=None, timeout=0)
        try:
            holder.execute("BEGIN IMMEDIATE")
            holder.execute("UPDATE monitor_state SET scanned_height = scanned_height")
            status, answer, body = await check(http, service, bearer(token, **{"X-Anonticket-Cost": "1"}))
            # 500, not 503: a charge's failure is never one a proxy retries elsewhere
            assert (status, b"charge_unconfirmed" in body) == (500, True)
            assert "X-Anonticket-Subject" not in answer
            holder.execute("ROLLBACK")
        finally:
            holder.close()
        assert outcome(service, "unavailable") == 2
        assert (await check(http, service, bearer(token, **{"X-Anonticket-Cost": "1"})))[0] == 200
    finally:
        await service.aclose()


# ---------------------------------------------------------------------- metrics, logs
async def test_metrics_count_outcomes_without_tokens(
        tmp_path: Path, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture,
        capsys: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.DEBUG, logger="anonticket")
    service = await start_service(make_config(tmp_path, API_ACCESS_LOG="true"))
    try:
        token = await issue(service, 1000)
        await check(http, service, bearer(token, **{"X-Anonticket-Cost": "400"}))
        await check(http, service, bearer(token))
        await check(http, service, {"Cookie": f"{COOKIE}={'ef' * 32}"})
        await check(http, service, bearer(token, **{"X-Anonticket-Cost": "700"}))
        async with http.get(url(service.internal_address, "/metrics")) as resp:
            text = await resp.text()
    finally:
        await service.aclose()
    assert 'anonticket_gateway_checks_total{outcome="allowed"} 2.0' in text
    assert 'anonticket_gateway_checks_total{outcome="token_not_found"} 1.0' in text
    assert 'anonticket_gateway_checks_total{outcome="insufficient_balance"} 1.0' in text
    assert "anonticket_gateway_debited_piconero_total 400.0" in text
    assert 'anonticket_request_duration_seconds_count{route="/api/v1/check"} 4.0' in text
    access = capsys.readouterr().err  # the access log, flushed at shutdown
    assert access.count("anonticket.access internal GET /api/v1/check ") == 4
    for secret in (token, token_subject(bytes.fromhex(token)), "ef" * 32):
        assert secret not in text
        assert secret not in caplog.text
        assert secret not in access


def test_metric_outcomes_are_the_reasons() -> None:
    from anonticket.api.gateway import DENIALS
    from anonticket.runtime.metrics import GATEWAY_OUTCOMES

    assert set(DENIALS) < set(GATEWAY_OUTCOMES)
    assert set(GATEWAY_OUTCOMES) - set(DENIALS) == {"allowed", "allowed_credential", "invalid_cost",
                                                     "gateway_unauthorized", "unavailable"}



# ---------------------------------------------------------------------- fast path = slow path
def _drive(coroutine: Any) -> Any:
    """Run a handler that answers without awaiting (every answer below does)."""
    try:
        coroutine.send(None)
    except StopIteration as stop:
        return stop.value
    coroutine.close()
    raise AssertionError("the handler awaited")


async def test_the_bearer_fast_path_answers_like_token_from(service: Service) -> None:
    """The handler reads "Bearer <64 hex>" inline; for any Authorization value its answer
    is the one ``token_from`` (the general path) leads to."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    token = await issue(service)
    app = build_internal_app(service.state)
    handler = make_check_handler(app)
    find = DEFAULT_COOKIE
    hexchars = "0123456789abcdefABCDEF"
    near = st.text(alphabet=hexchars + " \t\u00e9g", min_size=60, max_size=68)
    values = st.one_of(
        st.builds(lambda s: "Bearer " + s, near),
        st.builds(lambda p, s: p + s, st.sampled_from(["Bearer ", "bearer ", "BEARER ", "Bearer  ",
                                                       "Bearer\t", "Basic ", ""]),
                  st.sampled_from([token, token.upper(), "ab" * 32, token[:-1], token + "0"])),
        st.text(max_size=80))

    @settings(max_examples=400, deadline=None, database=None)
    @given(value=values)
    def agree(value: str) -> None:
        request = make_mocked_request("GET", "/api/v1/check", headers={"Authorization": value},
                                      app=app)
        answer = _drive(handler(request))
        general = token_from(CIMultiDict({"Authorization": value}), find)
        if isinstance(general, str):
            expected = (401, general)
        elif general == bytes.fromhex(token):
            expected = (200, None)
        else:
            expected = (401, "token_not_found")
        assert (answer.status, answer.headers.get("X-Anonticket-Reason")) == expected, value

    agree()
