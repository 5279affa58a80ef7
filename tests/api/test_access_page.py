"""The access page (/access on the public listener): the form, the cookie it sets and its
attributes, where it sends the browser (never off this site), refusals, logging out."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from http.cookies import SimpleCookie
from pathlib import Path

import aiohttp
import pytest

from anonticket.api.access import log_in_form, next_from_query, safe_next
from anonticket.service.app import Service, start_service
from anonticket.domain.ids import PaymentId
from conftest import make_config, transfer, url
from page_helpers import SECURITY_HEADERS, assert_safe_page, style_hash

# the page reads tokens through the ledger: the tests on the ``service`` fixture run on both backends
BOTH_BACKENDS = True
COOKIE = "anonticket_access"
PAGE_HEADERS = ("Content-Security-Policy", "Referrer-Policy", "Cache-Control",
                "X-Content-Type-Options", "X-Frame-Options")


async def issue(service: Service) -> str:
    pid = PaymentId.generate()
    await service.state.ledger.credit([transfer(pid, 5000)], None)
    return (await service.state.ledger.redeem(pid)).token.hex()  # type: ignore[union-attr]


async def get(http: aiohttp.ClientSession, service: Service, path: str,
              ) -> tuple[int, aiohttp.typedefs.LooseHeaders, str]:
    async with http.get(url(service.public_address, path), allow_redirects=False) as resp:
        return resp.status, resp.headers, await resp.text()


async def post(http: aiohttp.ClientSession, service: Service, path: str, form: dict[str, str] | str,
               headers: dict[str, str] | None = None) -> tuple[int, aiohttp.typedefs.LooseHeaders, str]:
    async with http.post(url(service.public_address, path), data=form, headers=headers,
                         allow_redirects=False) as resp:
        return resp.status, resp.headers, await resp.text()


def assert_page(headers: aiohttp.typedefs.LooseHeaders, body: str) -> None:
    """Every answer is a page with the shared security headers and no script."""
    assert headers["Content-Type"].startswith("text/html")  # type: ignore[index]
    for name in PAGE_HEADERS:
        assert name in headers, name  # type: ignore[operator]
    lowered = body.lower()
    for banned in ("<script", "javascript:", "http://", "https://", " style="):
        assert banned not in lowered, banned


def set_cookie(headers: aiohttp.typedefs.LooseHeaders) -> tuple[str, dict[str, str], str]:
    """(value, attributes lowercased, the raw header)."""
    raw = headers["Set-Cookie"]  # type: ignore[index]
    parts = [p.strip() for p in raw.split(";")]
    name, _, value = parts[0].partition("=")
    assert name == COOKIE
    attrs = {}
    for part in parts[1:]:
        key, _, val = part.partition("=")
        attrs[key.lower()] = val
    return value, attrs, raw


@pytest.fixture
async def priced(tmp_path: Path) -> AsyncIterator[Service]:
    running = await start_service(make_config(tmp_path, ACCESS_PRICE_PER_DAY="10000"))
    yield running
    await running.aclose()


# ---------------------------------------------------------------------- the form
async def test_the_form_carries_where_to_go_and_why(service: Service, http: aiohttp.ClientSession) -> None:
    status, headers, body = await get(http, service, "/access?reason=token_expired&next=/docs/a?b=1&c=2")
    assert status == 200
    assert_page(headers, body)
    assert '<form method="post" action="/access">' in body
    assert '<input type="hidden" name="next" value="/docs/a?b=1&amp;c=2">' in body
    assert '<a href="/docs/a?b=1&amp;c=2">continue to the page</a>' in body
    assert "has run out" in body
    assert '<form method="post" action="/access/logout">' in body
    assert 'href="/pay"' in body
    status, headers, plain = await get(http, service, "/access")
    assert status == 200 and 'name="next" value=""' in plain and "continue to the page" not in plain
    # the checkout's rules for a page: no script, nothing remote, every field labelled
    page = assert_safe_page(plain)
    assert page.h1 == "Enter your access token"
    assert f"style-src {style_hash(page.style)}" in headers["Content-Security-Policy"]  # type: ignore[index]
    for name in SECURITY_HEADERS:
        assert name in headers, name  # type: ignore[operator]
    # an unknown reason says nothing; a reason is never echoed
    _, _, other = await get(http, service, "/access?reason=%3Cb%3Ehi&next=/x")
    assert "<b>hi" not in other and "note warn" not in other


@pytest.mark.parametrize("target", [
    "//evil.example/", "/\\evil.example/", "/a\\b", "https://evil.example/", "javascript:alert(1)",
    "evil.example", "", "/a b", "/\t/evil.example", "/\n/x", "/caf\u00e9", "/" + "a" * 2048,
])
def test_only_a_path_of_this_site_is_a_next(target: str) -> None:
    assert safe_next(target) is None


@pytest.mark.parametrize(("query", "expected"), [
    ("next=/a", "/a"), ("reason=token_revoked&next=/a?b=1&c=2", "/a?b=1&c=2"),
    ("next=/a&next=/b", "/a&next=/b"), ("x=1", None), ("next=//evil", None),
    ("nextx=/a", None), ("anext=/a", None), ("next=/%2F%2Fevil", "/%2F%2Fevil"),
])
def test_next_is_the_rest_of_the_query_verbatim(query: str, expected: str | None) -> None:
    assert next_from_query(query) == expected


async def test_any_query_gives_the_form(service: Service, http: aiohttp.ClientSession) -> None:
    """A query the proxy never writes (garbage, many fields, bad escapes) is not an error."""
    for query in ("&" * 50 + "a=1", "reason=%ZZ&x=%FF", "reason", "=&=&=&next=", "next=%FF%FE",
                  "&".join(f"f{i}=v" for i in range(200)) + "&reason=token_expired"):
        status, headers, body = await get(http, service, f"/access?{query}")
        assert status == 200, query
        assert_page(headers, body)


async def test_unsafe_targets_are_dropped_from_the_form(service: Service, http: aiohttp.ClientSession) -> None:
    # (a backslash is percent-encoded by the client: "/%5C..." is a path of this site)
    for target in ("//evil.example/x", "https://evil.example", "///evil.example"):
        _, _, body = await get(http, service, f"/access?next={target}")
        assert "evil.example" not in body, target


# ---------------------------------------------------------------------- logging in
async def test_a_valid_token_sets_the_cookie_and_goes_on(service: Service, http: aiohttp.ClientSession) -> None:
    token = await issue(service)
    status, headers, body = await post(http, service, "/access",
                                       {"token": f"  \r\n{token.upper()}\n ", "next": "/docs/a?b=1"})
    assert (status, headers["Location"]) == (303, "/docs/a?b=1")  # type: ignore[index]
    value, attrs, raw = set_cookie(headers)
    assert value == token
    assert attrs == {"path": "/", "httponly": "", "samesite": "Strict"}  # session, host-only
    assert token not in headers["Location"]  # type: ignore[index]
    assert headers["Cache-Control"] == "no-store"  # type: ignore[index]
    # what the browser then sends is what the gateway check reads
    async with http.get(url(service.internal_address, "/api/v1/check"),
                        headers={"Cookie": f"{COOKIE}={value}"}) as resp:
        assert resp.status == 200
    # no next, or one that leaves the site: home
    for form in ({"token": token}, {"token": token, "next": "//evil.example"}):
        status, headers, _ = await post(http, service, "/access", form)
        assert (status, headers["Location"]) == (303, "/")  # type: ignore[index]


async def test_secure_follows_the_setting_and_the_scheme(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    """A Secure cookie is the ``__Host-`` one (no sibling subdomain can set it), and a
    plain copy is expired beside it; over plain HTTP the plain name, nothing else."""
    for secure, proto, expected in (("auto", None, False), ("auto", "https", True),
                                    ("auto", "HTTPS", True), ("auto", "http", False),
                                    ("true", None, True), ("false", "https", False)):
        service = await start_service(make_config(tmp_path, ACCESS_COOKIE_SECURE=secure,
                                                  ACCESS_COOKIE_MAX_AGE_SECS="3600",
                                                  ACCESS_COOKIE_NAME="gate"))
        try:
            token = await issue(service)
            headers = {"X-Forwarded-Proto": proto} if proto else None
            for path, form in (("/access", {"token": token}), ("/access/logout", {})):
                status, answer, _ = await post(http, service, path, form, headers)
                assert status in (200, 303)
                cookies = [SimpleCookie(raw) for raw in answer.getall("Set-Cookie")]  # type: ignore[attr-defined]
                name = "__Host-gate" if expected else "gate"
                assert [list(c) for c in cookies] == ([[name], ["gate"]] if expected else [[name]])
                main = cookies[0][name]
                assert main.value == (token if path == "/access" else "")
                assert bool(main["secure"]) is expected, (secure, proto)
                assert main["max-age"] == ("3600" if path == "/access" else "0")
                assert main["samesite"] == "Strict" and main["httponly"] and main["path"] == "/"
                assert not main["domain"]  # host-only, as __Host- requires
                if expected:  # the plain copy, from before or planted, is expired
                    plain = cookies[1]["gate"]
                    assert (plain.value, plain["max-age"], plain["path"]) == ("", "0", "/")
        finally:
            await service.aclose()


async def test_a_name_the_operator_prefixed_is_kept(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    service = await start_service(make_config(tmp_path, ACCESS_COOKIE_SECURE="true",
                                              ACCESS_COOKIE_NAME="__Host-gate"))
    try:
        token = await issue(service)
        status, answer, _ = await post(http, service, "/access", {"token": token})
        assert status == 303
        (raw,) = answer.getall("Set-Cookie")  # type: ignore[attr-defined]
        assert raw.startswith(f"__Host-gate={token}; ") and raw.endswith("; Secure")
    finally:
        await service.aclose()


async def test_refusals_set_no_cookie_and_echo_no_token(priced: Service, http: aiohttp.ClientSession) -> None:
    revoked, expired = await issue(priced), await issue(priced)
    async with http.post(url(priced.internal_address, f"/api/v1/token/{revoked}/revoke"), json={}) as resp:
        assert resp.status == 200
    cases = [({"token": "not a token"}, 400), ({"token": revoked[:-2]}, 400), ({"token": "cd" * 32}, 404),
             ({"token": revoked}, 403)]
    for form, expected in cases:
        status, headers, body = await post(http, priced, "/access", {**form, "next": "/x"})
        assert status == expected, form
        assert_page(headers, body)
        assert "Set-Cookie" not in headers
        assert form["token"] not in body
        assert 'name="next" value="/x"' in body  # the form again, still going to /x
    priced.state.ledger.clock = lambda: 2**40
    status, headers, body = await post(http, priced, "/access", {"token": expired})
    assert (status, "Set-Cookie" in headers) == (403, False)
    assert "has run out" in body


@pytest.mark.parametrize("form", [
    "token=a&token=b", "token=a&evil=1", "token=%FF", "tok%en=1", "token=\u00e9".encode(),
    "a=1&b=2&c=3&d=4",
])
async def test_forms_that_are_not_ours_are_400_pages(service: Service, http: aiohttp.ClientSession,
                                                     form: str | bytes) -> None:
    async with http.post(url(service.public_address, "/access"), data=form,
                         headers={"Content-Type": "application/x-www-form-urlencoded"}) as resp:
        assert resp.status == 400
        assert_page(resp.headers, await resp.text())
        assert "Set-Cookie" not in resp.headers


async def test_a_form_from_another_site_is_refused(service: Service, http: aiohttp.ClientSession) -> None:
    """A forged log-in would put the attacker's token in the victim's browser, and what
    the victim then did upstream would be kept under the attacker's subject."""
    token = await issue(service)
    for site in ("cross-site", "same-site"):
        for path, form in (("/access", {"token": token}), ("/access/logout", {})):
            status, headers, body = await post(http, service, path, form, {"Sec-Fetch-Site": site})
            assert (status, "Set-Cookie" in headers) == (403, False), (site, path)
            assert_page(headers, body)
    for site in ("same-origin", "none"):
        status, _, _ = await post(http, service, "/access", {"token": token}, {"Sec-Fetch-Site": site})
        assert status == 303, site


async def test_a_form_whose_origin_is_another_site_is_refused(
        service: Service, http: aiohttp.ClientSession) -> None:
    """Plain-HTTP sites and older browsers send no Sec-Fetch-Site, but every browser
    sends Origin with a form POST: ``null`` or another host is refused; so is another
    scheme than the one the proxy names. The port is not compared (nginx's $host drops it)."""
    token = await issue(service)
    host, port = service.public_address.rsplit(":", 1)
    foreign = [{"Origin": "null"}, {"Origin": "https://evil.example"},
               {"Origin": f"http://{host}.evil.example:{port}"}, {"Origin": f"http://sub.{host}:{port}"},
               {"Origin": f"http://{host}:{port}/"}, {"Origin": "http://[::1"}, {"Origin": f"ftp://{host}"},
               {"Origin": f"http://{host}:{port}", "X-Forwarded-Proto": "https"},
               {"Origin": f"https://{host}", "X-Forwarded-Proto": "http"},
               {"Origin": f"http://{host}:{port}", "Sec-Fetch-Site": "cross-site"}]
    for headers in foreign:
        for path, form in (("/access", {"token": token}), ("/access/logout", {})):
            status, answer, body = await post(http, service, path, form, headers)
            assert (status, "Set-Cookie" in answer) == (403, False), (headers, path)
            assert_page(answer, body)
    ours = [{"Origin": f"http://{host}:{port}"}, {"Origin": f"HTTP://{host.upper()}:{port}"},
            {"Origin": f"http://{host}:1"}, {"Origin": f"https://{host}", "X-Forwarded-Proto": "https"},
            {"Origin": f"http://{host}:{port}", "Sec-Fetch-Site": "same-origin"}, {}]
    for headers in ours:
        status, _, _ = await post(http, service, "/access", {"token": token}, headers)
        assert status == 303, headers
        status, _, _ = await post(http, service, "/access/logout", {}, headers)
        assert status == 200, headers


async def test_logging_out_clears_the_cookie(service: Service, http: aiohttp.ClientSession) -> None:
    status, headers, body = await post(http, service, "/access/logout", {})
    assert status == 200
    assert_page(headers, body)
    value, attrs, _ = set_cookie(headers)
    assert value == "" and attrs["max-age"] == "0" and attrs["samesite"] == "Strict"
    status, headers, _ = await get(http, service, "/access/logout")
    assert (status, headers["Location"]) == (303, "/access")  # type: ignore[index]


async def test_errors_under_access_are_pages(service: Service, http: aiohttp.ClientSession) -> None:
    for method in ("PUT", "DELETE", "PATCH"):
        async with http.request(method, url(service.public_address, "/access")) as resp:
            assert resp.status == 405
            assert_page(resp.headers, await resp.text())
    async with http.get(url(service.public_address, "/access/nope")) as resp:
        assert resp.status == 404
        assert_page(resp.headers, await resp.text())
    async with http.post(url(service.public_address, "/access"), data=b"token=" + b"a" * 5000) as resp:
        assert resp.status == 413
        assert_page(resp.headers, await resp.text())


async def test_the_page_has_no_external_reference(service: Service, http: aiohttp.ClientSession) -> None:
    _, _, body = await get(http, service, "/access?next=/x")
    targets = re.findall(r'(?:href|src|action)="([^"]*)"', body)
    assert set(targets) <= {"/access", "/access/logout", "/pay", "/x", "data:,"}, targets


async def test_the_checkout_button_logs_in_through_the_form(
        service: Service, http: aiohttp.ClientSession) -> None:
    """The markup the checkout's token page shows (issue 13's ``access_login_form``)."""
    token = await issue(service)
    button = log_in_form(token, next_path="//evil.example")
    fields = dict(re.findall(r'name="(\w+)" value="([^"]*)"', button))
    assert '<form method="post" action="/access">' in button
    assert fields == {"token": token, "next": "/"}
    status, headers, _ = await post(http, service, "/access", fields)
    assert (status, headers["Location"]) == (303, "/")  # type: ignore[index]
    assert set_cookie(headers)[0] == token
