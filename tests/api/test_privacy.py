"""No receipt, PID, token or txid ever leaves the service except to the customer who owns it.

A full customer and operator run (pay a receipt's PID, pending, redeem with the receipt,
introspect, revoke, and the usual mistakes, the bare PID among them) against the real
``bin/anonticket serve`` at its default settings (REDEEM_PLAIN_PIDS=refuse), with debug logging and the
access log on, its stdout and stderr in one file. Afterwards every log line, the
metrics text and every response body are searched for each secret in every spelling
a careless line could use: hex in either case, the wallet's 64-hex PID form, bytes
reprs, and 16-character slices (a "shortened" token in a log is still a leak).

The same scenario runs against the real wallet on a private regtest chain and against
FakeWallet, so the check also runs where monero is not installed.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import pytest

from anonticket.config import SETTINGS
from anonticket.domain.ids import Receipt, derive_receipt_token, token_subject
from conftest import REPO
from fake_wallet import FakeWallet, make_transfer
from secret_search import Secrets

_LISTENERS = re.compile(r"public listener on (\S+), internal listener on (\S+), monitor")
_SETTING_NAMES = frozenset(setting.name for setting in SETTINGS)
OPERATOR = "op-bearer-" + "5a" * 12
MIN_PAYMENT = 10**9


# ---------------------------------------------------------------------- the real process
class Served:
    """``bin/anonticket serve`` as a child process, stdout and stderr in ``log_path``.

    Environment: ours minus every anonticket setting, then free loopback ports, a
    database in ``directory``, and the caller's settings.
    """

    def __init__(self, directory: Path, **settings: object) -> None:
        self.log_path = directory / "service.log"
        self.env = {k: v for k, v in os.environ.items() if k not in _SETTING_NAMES}
        self.env.update({
            "DATABASE_URL": str(directory / "anonticket.db"),
            "API_BIND_ADDRESS": "127.0.0.1:0",
            "API_INTERNAL_BIND_ADDRESS": "127.0.0.1:0",
            "MONITOR_ENABLED": "false",
            "API_ACCESS_LOG": "false",
        })
        self.env.update({k: str(v) for k, v in settings.items()})
        self.proc: subprocess.Popen[bytes] | None = None
        self.public = self.internal = ""

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def start(self, timeout: float = 30.0) -> Served:
        with self.log_path.open("ab") as sink:
            self.proc = subprocess.Popen(
                [str(REPO / "bin" / "anonticket"), "serve"], env=self.env, stdin=subprocess.DEVNULL,
                stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while (match := _LISTENERS.search(self.log())) is None:
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                await self.stop()
                raise AssertionError(f"serve did not report its listeners in {timeout}s:\n{self.log()}")
            await asyncio.sleep(0.02)
        self.public, self.internal = match.group(1), match.group(2)
        return self

    async def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, then the exit status; SIGKILL (and a failure) if it does not stop in time."""
        proc = self.proc
        if proc is None:
            return 0
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while proc.poll() is None:
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait(5)
                raise AssertionError(f"serve ignored SIGTERM for {timeout}s")
            await asyncio.sleep(0.02)
        return proc.returncode

    async def __aenter__(self) -> Served:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


@dataclass
class Exchange:
    method: str
    listener: str
    path: str
    sent: str  # the request body as text ("" when none)
    status: int
    content_type: str
    body: str


class Client:
    """Sends requests and keeps every exchange for the checks at the end."""

    def __init__(self, http: aiohttp.ClientSession, served: Served) -> None:
        self.http = http
        self.served = served
        self.log: list[Exchange] = []

    async def request(self, method: str, listener: str, path: str, *, body: Any = None,
                      data: bytes | None = None, bearer: str | None = None,
                      headers: dict[str, str] | None = None) -> tuple[int, Any]:
        address = self.served.public if listener == "public" else self.served.internal
        headers = dict(headers or {})
        if bearer is not None:
            headers["Authorization"] = f"Bearer {bearer}"
        payload = data if data is not None else (json.dumps(body).encode() if body is not None else None)
        if payload is not None:
            headers.setdefault("Content-Type", "application/json")
        async with self.http.request(method, f"http://{address}{path}", data=payload,
                                     headers=headers, allow_redirects=False) as resp:
            raw = await resp.read()
        text = raw.decode(errors="replace")
        self.log.append(Exchange(method, listener, path, (payload or b"").decode(errors="replace"),
                                 resp.status, resp.content_type, text))
        parsed = json.loads(text) if resp.content_type == "application/json" else text
        return resp.status, parsed

    async def redeem(self, pid: str) -> tuple[int, Any]:
        return await self.request("POST", "public", "/api/v1/redeem", body={"pid": pid})

    async def redeem_receipt(self, receipt: str) -> tuple[int, Any]:
        return await self.request("POST", "public", "/api/v1/redeem", body={"receipt": receipt})


async def poll(what: str, attempt: Callable[[], Awaitable[tuple[int, Any]]],
               done: Callable[[int, Any], bool], timeout: float) -> tuple[int, Any]:
    """Repeat a request until its answer satisfies ``done``; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        status, body = await attempt()
        if done(status, body):
            return status, body
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout}s; last answer {status} {body}")
        await asyncio.sleep(0.05)


# ---------------------------------------------------------------------- the chains
class Chain(Protocol):
    timeout: float

    async def pay(self, pid16: str, amount: int) -> str: ...  # the txid

    async def mine(self, blocks: int) -> None: ...


class FakeChain:
    timeout = 20.0

    def __init__(self, wallet: FakeWallet) -> None:
        self.wallet = wallet
        self.in_pool: list[str] = []

    async def pay(self, pid16: str, amount: int) -> str:
        entry = make_transfer(pid16, amount, height=0, type="pool")
        self.wallet.add(entry)
        self.in_pool.append(entry["txid"])
        return str(entry["txid"])

    async def mine(self, blocks: int) -> None:
        # the first block takes the pool: a tx mined at h has (block count − h) confirmations
        for txid in self.in_pool:
            self.wallet.confirm(txid, self.wallet.height)
        self.in_pool.clear()
        self.wallet.height += blocks


class RegtestChain:
    timeout = 120.0

    def __init__(self, net: Any) -> None:
        self.net = net

    async def pay(self, pid16: str, amount: int) -> str:
        return str((await asyncio.to_thread(self.net.pay, pid16, amount))["txid"])

    async def mine(self, blocks: int) -> None:
        await asyncio.to_thread(self.net.mine, blocks)


def service_settings(wallet_url: str, start_height: int) -> dict[str, object]:
    return {
        "LOG_LEVEL": "DEBUG",
        "API_ACCESS_LOG": "true",
        "API_INTERNAL_TOKEN": OPERATOR,
        "MONITOR_ENABLED": "true",
        "MONERO_RPC_URL": wallet_url,
        "MONITOR_POLL_INTERVAL_SECS": "0.1",
        "MONITOR_MIN_CONFIRMATIONS": "2",
        "MONITOR_START_HEIGHT": str(start_height),
        "MONITOR_MIN_PAYMENT_AMOUNT": str(MIN_PAYMENT),
    }


# ---------------------------------------------------------------------- the scenario
async def customer_and_operator_run(client: Client, chain: Chain, secret: Secrets) -> None:
    paid, small = Receipt.generate(), Receipt.generate()
    receipt, small_receipt = paid.hex(), small.hex()
    pid, small_pid = paid.pid.hex(), small.pid.hex()
    stranger = secrets.token_hex(8)
    secret.add_receipt("receipt", paid)
    secret.add_receipt("underpaid receipt", small)
    secret.add_pid("unknown pid", stranger)
    secret.items["operator bearer"] = {OPERATOR.lower()}

    status, body = await client.redeem_receipt(receipt)
    assert (status, body["error"]) == (404, "payment_not_found")

    txid = await chain.pay(pid, 2 * MIN_PAYMENT)
    secret.add("txid", txid)
    status, body = await poll("pending answer", lambda: client.redeem_receipt(receipt),
                              lambda s, b: s == 202, chain.timeout)
    assert body == {"status": "pending", "confirmations": 0, "required": 2}
    status, body = await client.redeem(pid)  # what the payer's wallet saw: nothing pending
    assert (status, body["error"]) == (404, "payment_not_found")
    await chain.mine(1)
    await poll("one confirmation", lambda: client.redeem_receipt(receipt),
               lambda s, b: s == 202 and b["confirmations"] == 1, chain.timeout)
    # paid only now: a regtest payer may mine blocks to unlock coins before it can pay,
    # which would have confirmed the first payment before its pending answers were seen
    small_txid = await chain.pay(small_pid, MIN_PAYMENT // 2)
    secret.add("underpaid txid", small_txid)
    await chain.mine(2)
    status, body = await poll("the confirmed redeem", lambda: client.redeem_receipt(receipt),
                              lambda s, b: s == 200, chain.timeout)
    token = derive_receipt_token(paid.raw, bytes.fromhex(txid)).hex()
    secret.add("token", token)
    assert body == {"status": "success", "service_token": token, "balance": 2 * MIN_PAYMENT,
                    "remaining": 2 * MIN_PAYMENT, "expires_at": None}
    status, again = await client.redeem_receipt(paid.grouped().upper())
    assert (status, again["status"], again["service_token"]) == (200, "already_claimed", token)
    status, body = await client.redeem(pid)
    assert (status, body["error"]) == (404, "payment_not_found")

    status, body = await poll("the underpaid answer", lambda: client.redeem_receipt(small_receipt),
                              lambda s, b: s == 402, chain.timeout)
    assert (body["error"], body["balance"], body["minimum"]) == ("underpaid", MIN_PAYMENT // 2, MIN_PAYMENT)

    status, info = await client.request("GET", "public", f"/api/v1/token/{token}")
    assert (status, info["status"], info["amount"]) == (200, "active", 2 * MIN_PAYMENT)
    status, detail = await client.request("GET", "internal", f"/api/v1/token/{token.upper()}", bearer=OPERATOR)
    assert (status, detail["audit"]) == (200, [])

    # the gateway: the proxy's credential in a header of its own, the customer's token as
    # the bearer or in the access cookie; then the browser's way in, /access
    proxy = {"X-Anonticket-Gateway-Token": OPERATOR}
    subject = token_subject(bytes.fromhex(token))
    secret.items["subject"] = {subject}  # for the upstream only: never in the log
    status, _ = await client.request("GET", "internal", "/api/v1/check", bearer=token, headers=proxy)
    assert status == 200
    status, _ = await client.request("POST", "internal", "/api/v1/check", headers={
        **proxy, "Cookie": f"anonticket_access={token}", "X-Anonticket-Cost": "1"})
    assert status == 200
    status, body = await client.request("GET", "internal", "/api/v1/check", bearer=token)
    assert (status, body["error"]) == (407, "gateway_unauthorized")
    status, body = await client.request("GET", "internal", "/api/v1/check", bearer=OPERATOR, headers=proxy)
    assert (status, body["error"]) == (401, "invalid_token")
    status, _ = await client.request("GET", "public", f"/access?next=/{token}")  # a query the
    assert status == 200  # page repeats in its form, but that no log line may repeat
    status, _ = await client.request("POST", "public", "/access", data=f"token={token}&next=/x".encode(),
                                     headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 303

    # the operator's mistakes and a revocation
    status, body = await client.request("POST", "internal", f"/api/v1/token/{token}/revoke",
                                        body={"reason": "refund"}, bearer=token)
    assert (status, body["error"]) == (401, "unauthorized")
    status, body = await client.request("POST", "internal", f"/api/v1/token/{token}/revoke",
                                        body={"reason": "x" * 300}, bearer=OPERATOR)
    assert (status, body["error"]) == (400, "invalid_request")
    status, body = await client.request("POST", "internal", f"/api/v1/token/{token}/revoke",
                                        body={"reason": "abuse report", "abuse_score": 7}, bearer=OPERATOR)
    assert (status, body["status"], body["abuse_score"]) == (200, "revoked", 7)
    status, again = await client.redeem_receipt(receipt)
    assert (status, again["status"]) == (200, "already_claimed")
    status, info = await client.request("GET", "public", f"/api/v1/token/{token}")
    assert (status, info["status"]) == (200, "revoked")
    status, body = await client.request("GET", "internal", "/api/v1/check", bearer=token, headers=proxy)
    assert (status, body["error"]) == (403, "token_revoked")
    status, _ = await client.request("POST", "public", "/access", data=f"token={token}".encode())
    assert status == 403

    # the customer's mistakes, each carrying a secret the answer must not repeat
    for bad in (pid + "zz", pid[:-1] + "g", " " + pid, pid + "1" * 48, txid, token):
        status, body = await client.redeem(bad)
        assert (status, body["error"]) == (400, "invalid_pid"), bad
    for bad in (receipt + "0", receipt[:-1] + "g", " " + receipt, receipt[:-2], paid.grouped() + "-",
                paid.grouped().replace("-", "_"), pid, txid + "00"):
        status, body = await client.redeem_receipt(bad)
        assert (status, body["error"]) == (400, "invalid_receipt"), bad
    status, body = await client.request("POST", "public", "/api/v1/redeem", body={"pid": [pid]})
    assert (status, body["error"]) == (400, "invalid_pid")
    status, body = await client.request("POST", "public", "/api/v1/redeem",
                                        body={"receipt": receipt, "pid": pid})
    assert (status, body["error"]) == (400, "invalid_request")
    for raw in (b'{"pid": "' + pid.encode() + b'"', b'["' + pid.encode() + b'"]',
                b'{"pid": "' + pid.encode() + b'", "x": \xff}'):
        status, body = await client.request("POST", "public", "/api/v1/redeem", data=raw)
        assert (status, body["error"]) == (400, "invalid_request"), raw
    big = b'{"pid": "' + pid.encode() + b'", "txid": "' + txid.encode() + b'", "pad": "' + b"x" * 8000 + b'"}'
    status, body = await client.request("POST", "public", "/api/v1/redeem", data=big)
    assert (status, body["error"]) == (413, "body_too_large")
    status, body = await client.redeem(stranger)
    assert (status, body["error"]) == (404, "payment_not_found")
    unknown_token = secrets.token_hex(32)
    secret.add("unknown token", unknown_token)
    for listener in ("public", "internal"):
        status, body = await client.request("GET", listener, f"/api/v1/token/{unknown_token}", bearer=OPERATOR)
        assert (status, body["error"]) == (404, "token_not_found")
        status, body = await client.request("GET", listener, f"/api/v1/token/{token}0", bearer=OPERATOR)
        assert (status, body["error"]) == (400, "invalid_token")
    status, body = await client.request("POST", "public", f"/api/v1/token/{token}/revoke", body={})
    assert (status, body["error"]) == (404, "not_found")
    status, body = await client.request("PUT", "public", f"/api/v1/token/{token}")
    assert (status, body["error"]) == (405, "method_not_allowed")
    status, body = await client.request("GET", "public", f"/{pid}/{txid}")
    assert (status, body["error"]) == (404, "not_found")

    status, metrics = await client.request("GET", "internal", "/metrics", bearer=OPERATOR)
    assert status == 200
    assert 'anonticket_redeem_requests_total{outcome="pending"}' in metrics
    assert secret.found_in(metrics) == [], "a secret in the metrics text"
    assert 'outcome="success"} 1.0' in metrics  # the scrape is of this very run


def check_exchanges(exchanges: list[Exchange], secret: Secrets) -> None:
    """Error bodies are the fixed shape and repeat nothing; only a redeem answer holds the token."""
    assert len(exchanges) >= 30
    for ex in exchanges:
        where = f"{ex.method} {ex.listener} {ex.path[:40]} -> {ex.status}"
        if ex.path.startswith("/access"):  # the access page: HTML, its form holds no secret
            assert ex.content_type in ("text/html", "application/octet-stream"), where
            for piece in re.findall(r"[0-9A-Za-z]{8,}", ex.sent):
                assert piece.lower() not in ex.body.lower(), (where, piece)
            continue
        if ex.status == 200 and ex.path == "/api/v1/check":  # allowed: headers, no body
            assert ex.body == "", where
            continue
        assert ex.content_type in ("application/json", "text/plain"), where
        if ex.status >= 400:
            body = json.loads(ex.body)
            assert set(body) in ({"error", "message"}, {"error", "message", "balance", "minimum"}), where
            assert secret.found_in(ex.body) == [], where
            for piece in re.findall(r"[0-9A-Za-z]{8,}", ex.sent + " " + ex.path):
                assert piece.lower() not in ex.body.lower(), (where, piece)
        else:
            leaked = set(secret.found_in(ex.body))
            if ex.path == "/api/v1/redeem" and ex.status == 200:
                leaked.discard("token")  # the customer's own answer
            assert leaked == set(), where


def check_log(log: str, secret: Secrets) -> None:
    lines = log.splitlines()
    assert any("LOG_LEVEL=DEBUG" in line for line in lines), "the run was not at debug level"
    for expected in ("anonticket.access public POST /api/v1/redeem 202",
                     "anonticket.access public POST /api/v1/redeem 200",
                     "anonticket.access public POST /api/v1/redeem 402",
                     "anonticket.access internal POST /api/v1/token/{token}/revoke 200",
                     "anonticket.access public GET /api/v1/token/{token} 200",
                     "anonticket.access internal GET /api/v1/check 200",
                     "anonticket.access internal POST /api/v1/check 200",
                     "anonticket.access public POST /access 303",
                     "wallet monitor running"):
        assert expected in log, f"the log misses {expected!r}: the check would be vacuous"
    leaks: dict[str, list[tuple[int, list[str]]]] = {}
    for number, (logger, line) in enumerate(records(lines), 1):
        if found := secret.found_in(line):
            leaks.setdefault(logger, []).append((number, found))
    assert leaks == {}, f"secrets in the log (logger: [(line, which)]): {leaks}"


_RECORD_START = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ [A-Z]+ (\S+) ")


def records(lines: list[str]) -> list[tuple[str, str]]:
    """(logger, line) for every line; a traceback's lines belong to the record above them."""
    out, logger = [], "(before the first record)"
    for line in lines:
        if match := _RECORD_START.match(line):
            logger = match.group(1)
        out.append((logger, line))
    return out


async def run_and_check(tmp_path: Path, chain: Chain, wallet_url: str, start_height: int) -> None:
    secret = Secrets()
    served = Served(tmp_path, **service_settings(wallet_url, start_height))
    async with aiohttp.ClientSession(trust_env=False) as http:
        await served.start()
        try:
            client = Client(http, served)
            await customer_and_operator_run(client, chain, secret)
        finally:
            status = await served.stop()
    assert status == 0, served.log()[-2000:]
    check_exchanges(client.log, secret)
    check_log(served.log(), secret)


async def test_no_secret_leaves_the_service_fake_wallet(tmp_path: Path) -> None:
    async with FakeWallet(height=500) as wallet:
        await run_and_check(tmp_path, FakeChain(wallet), wallet.url, start_height=500)


async def test_no_secret_leaves_the_service_regtest(tmp_path: Path, monero_regtest: Any) -> None:
    await run_and_check(tmp_path, RegtestChain(monero_regtest), monero_regtest.merchant_url,
                        start_height=monero_regtest.height())
