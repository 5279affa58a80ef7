"""The operator's commands against the real service: token inspect/revoke, stats, db backup.

The service runs in the test's event loop, so the CLI runs as a real subprocess
(``bin/anonticket``) started with ``asyncio.create_subprocess_exec``: the loop keeps
serving while the command talks to it over internal TCP or the internal Unix socket,
with and without ``API_INTERNAL_TOKEN``.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import sqlite3
import stat
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from anonticket.service.app import Service, start_service
from anonticket.cli.parser import main
from anonticket.domain.ids import PaymentId
from conftest import make_config, transfer, url
from cli_helpers import cli, clean_env, one_error_line

ADMIN_TOKEN = "s3cret-admin-token"
# a dead proxy: if the client honoured the proxy environment, every command would fail
DEAD_PROXY = {"HTTP_PROXY": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9",
              "ALL_PROXY": "http://127.0.0.1:9", "NO_PROXY": "", "no_proxy": ""}
VARIANTS = ["tcp", "tcp-token", "unix", "unix-token"]


class Running:
    def __init__(self, service: Service, env: dict[str, str]) -> None:
        self.service = service
        self.env = env


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="at-", dir="/tmp"))  # short: sun_path is 108 bytes
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(params=VARIANTS)
async def running(request: pytest.FixtureRequest, tmp_path: Path,
                  socket_dir: Path) -> AsyncIterator[Running]:
    settings: dict[str, str] = {}
    if "unix" in request.param:
        settings["API_INTERNAL_UNIX_SOCKET"] = str(socket_dir / "internal.sock")
    if "token" in request.param:
        settings["API_INTERNAL_TOKEN"] = ADMIN_TOKEN
    service = await start_service(make_config(tmp_path, **settings))
    env = clean_env(DATABASE_URL=str(tmp_path / "anonticket.db"), **DEAD_PROXY, **settings)
    if "unix" not in request.param:
        env["API_INTERNAL_BIND_ADDRESS"] = service.internal_address
    try:
        yield Running(service, env)
    finally:
        await service.aclose()


async def paid_and_redeemed(service: Service, amount: int = 5000, height: int = 100) -> tuple[str, str]:
    """A payment credited through the ledger, redeemed over HTTP: (pid, token)."""
    pid = PaymentId.generate()
    await service.state.ledger.credit([transfer(pid, amount, height)], None)
    async with aiohttp.ClientSession(trust_env=False) as http:
        async with http.post(url(service.public_address, "/api/v1/redeem"),
                             json={"pid": pid.hex()}) as resp:
            assert resp.status == 200
            body = await resp.json()
    return pid.hex(), body["service_token"]


async def public_status(service: Service, token: str) -> str:
    async with aiohttp.ClientSession(trust_env=False) as http:
        async with http.get(url(service.public_address, f"/api/v1/token/{token}")) as resp:
            assert resp.status == 200
            status: str = (await resp.json())["status"]
            return status


# ---------------------------------------------------------------------- inspect / revoke
async def test_inspect_then_revoke_then_inspect(running: Running) -> None:
    service, env = running.service, running.env
    _, token = await paid_and_redeemed(service, 5000)

    code, out, err = await cli(env, "token", "inspect", token)
    assert (code, err) == (0, "")
    view = json.loads(out)
    assert {k: view[k] for k in ("status", "amount", "revoked_at", "abuse_score",
                                 "revoke_reason", "audit")} == {
        "status": "active", "amount": 5000, "revoked_at": None, "abuse_score": 0,
        "revoke_reason": None, "audit": []}
    assert view["issued_at"].endswith("Z")

    code, out, err = await cli(env, "token", "revoke", token, "--reason", "chargeback", "--score", "3")
    assert (code, err) == (0, "")
    revoked = json.loads(out)
    assert (revoked["status"], revoked["revoke_reason"], revoked["abuse_score"]) == (
        "revoked", "chargeback", 3)
    assert revoked["revoked_at"] is not None
    assert await public_status(service, token) == "revoked"

    # a repeat, token from stdin: the first reason and time stay, the score never drops
    code, out, err = await cli(env, "token", "revoke", "-", "--reason", "again", "--score", "1",
                               stdin=token + "\n")
    assert (code, err) == (0, "")
    again = json.loads(out)
    assert (again["revoke_reason"], again["abuse_score"], again["revoked_at"]) == (
        "chargeback", 3, revoked["revoked_at"])

    code, out, err = await cli(env, "token", "inspect", "-", stdin=token)
    assert (code, err) == (0, "")
    audit = json.loads(out)["audit"]
    assert [(a["action"], a["reason"], a["abuse_score"]) for a in audit] == [
        ("revoke", "chargeback", 3), ("revoke", "again", 1)]


async def test_unknown_token_is_not_found(running: Running) -> None:
    unknown = os.urandom(32).hex()
    for args in (["inspect", unknown], ["revoke", unknown, "--reason", "x"]):
        code, out, err = await cli(running.env, "token", *args)
        assert (code, out) == (1, "")
        assert one_error_line(err) == "anonticket: token not found"


async def test_stats(running: Running) -> None:
    service, env = running.service, running.env
    ledger = service.state.ledger
    _, active = await paid_and_redeemed(service, 5000, height=101)
    _, revoked = await paid_and_redeemed(service, 7000, height=102)
    underpaid = PaymentId.generate()  # below MONITOR_MIN_PAYMENT_AMOUNT=1000: stays unclaimed
    await ledger.credit([transfer(underpaid, 600, 103)], 130)
    ledger.set_pending({PaymentId.generate().raw: 2})
    service.state.monitor.wallet_height = 140
    code, _, err = await cli(env, "token", "revoke", revoked, "--reason", "abuse")
    assert (code, err) == (0, "")

    code, out, err = await cli(env, "stats", "--json")
    assert (code, err) == (0, "")
    assert json.loads(out) == {
        "payments_unclaimed": 1, "payments_claimed": 2, "tokens_active": 1, "tokens_revoked": 1,
        "credited_piconero": 12600, "transfers": 3, "scanned_height": 130, "wallet_height": 140,
        "pending_pids": 1, "debits": 0, "debited_piconero": 0, "rescan_from_height": None,
        "subaddresses_unpaid": 0, "subaddress_highest_index": None, "subaddress_known_to_wallet": None,
        "unallocated_subaddress_transfers": 0}

    code, out, err = await cli(env, "stats")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    rows = {line[:line.index("  ")]: line[line.index("  "):].strip() for line in lines}
    assert rows == {
        "payments unclaimed": "1", "payments claimed": "2", "payments pending": "1",
        "tokens active": "1", "tokens revoked": "1", "transfers credited": "3",
        "credited piconero": "12600 (0.0000000126 XMR)", "debits applied": "0",
        "debited piconero": "0 (0 XMR)", "scanned height": "130",
        "wallet height": "140 (cursor 10 blocks behind)"}
    columns = {len(line) - len(line[line.index("  "):].lstrip()) for line in lines}
    assert len(columns) == 1  # every value starts in the same column
    service.state.monitor.request_rescan(120)  # shown only while one waits for the monitor
    code, out, err = await cli(env, "stats")
    assert (code, err) == (0, "") and out.splitlines()[-1].split() == ["rescan", "pending", "from", "120"]


# ---------------------------------------------------------------------- auth and wrong endpoints
async def test_a_wrong_admin_token_is_refused(tmp_path: Path) -> None:
    service = await start_service(make_config(tmp_path, API_INTERNAL_TOKEN=ADMIN_TOKEN))
    try:
        _, token = await paid_and_redeemed(service)
        base = clean_env(DATABASE_URL=str(tmp_path / "anonticket.db"),
                         API_INTERNAL_BIND_ADDRESS=service.internal_address)
        for env in ({**base, "API_INTERNAL_TOKEN": "wrong-guess"}, base):
            code, out, err = await cli(env, "token", "revoke", token, "--reason", "x")
            assert (code, out) == (1, "")
            line = one_error_line(err)
            assert "API_INTERNAL_TOKEN" in line and service.internal_address in line
            assert token not in line and "wrong-guess" not in line and ADMIN_TOKEN not in line
        assert await public_status(service, token) == "active"  # nothing happened
    finally:
        await service.aclose()


async def test_pointing_at_the_public_listener_says_so(tmp_path: Path) -> None:
    service = await start_service(make_config(tmp_path))
    try:
        _, token = await paid_and_redeemed(service)
        env = clean_env(API_INTERNAL_BIND_ADDRESS=service.public_address)
        code, _, err = await cli(env, "token", "inspect", token)
        line = one_error_line(err)
        assert code == 1 and "public listener" in line and token not in line
    finally:
        await service.aclose()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_tcp_names_the_address(monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    monkeypatch.delenv("API_INTERNAL_UNIX_SOCKET", raising=False)
    monkeypatch.setenv("API_INTERNAL_BIND_ADDRESS", f"127.0.0.1:{port}")
    assert main(["stats"]) == 1
    assert one_error_line(capsys.readouterr().err) == (
        f"anonticket: cannot reach the internal listener at 127.0.0.1:{port}: Connection refused")


def test_unreachable_unix_socket_names_the_path(monkeypatch: pytest.MonkeyPatch, socket_dir: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    missing = socket_dir / "gone.sock"
    monkeypatch.setenv("API_INTERNAL_UNIX_SOCKET", str(missing))
    token = os.urandom(32).hex()
    assert main(["token", "inspect", token]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert line == (f"anonticket: cannot reach the internal listener at unix:{missing}: "
                    "No such file or directory")


def test_a_silent_listener_times_out(monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as silent:  # the kernel completes the handshake; nobody ever answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        monkeypatch.delenv("API_INTERNAL_UNIX_SOCKET", raising=False)
        monkeypatch.setenv("API_INTERNAL_BIND_ADDRESS", f"127.0.0.1:{port}")
        started = time.monotonic()
        assert main(["stats", "--timeout", "0.3"]) == 1
        elapsed = time.monotonic() - started
    assert one_error_line(capsys.readouterr().err) == (
        f"anonticket: no answer from the internal listener at 127.0.0.1:{port} within 0.3 s")
    assert 0.3 <= elapsed < 5


# ---------------------------------------------------------------------- db while serving
def snapshot_is_consistent(path: Path) -> tuple[int, int]:
    """Every payment's amount is the sum of its transfers: true in any committed state."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        mismatched = db.execute(
            """SELECT count(*) FROM payments AS p WHERE p.amount !=
               (SELECT coalesce(sum(t.amount), 0) FROM transfers AS t WHERE t.pid = p.pid)"""
        ).fetchone()[0]
        assert mismatched == 0
        payments = db.execute("SELECT count(*) FROM payments").fetchone()[0]
        transfers = db.execute("SELECT count(*) FROM transfers").fetchone()[0]
    return payments, transfers


async def test_db_backup_and_check_while_the_service_writes(tmp_path: Path) -> None:
    service = await start_service(make_config(tmp_path))
    env = clean_env(DATABASE_URL=str(tmp_path / "anonticket.db"))
    ledger = service.state.ledger
    writes_while_running = 0
    running = True

    async def write(batches: int) -> None:
        nonlocal writes_while_running
        for _ in range(batches):
            pid = PaymentId.generate()  # two transfers per PID: a torn copy would show
            await ledger.credit([transfer(pid, 3000, 100), transfer(pid, 4000, 101)], None)
            if running:
                writes_while_running += 1

    try:
        await write(50)
        writer = asyncio.create_task(write(100_000))
        backup = tmp_path / "backup.db"
        code, out, err = await cli(env, "db", "backup", str(backup))
        check_code, check_out, check_err = await cli(env, "db", "check")
        running = False
        writer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await writer
        assert (code, out, err) == (0, f"backup written to {backup}\n", "")
        assert (check_code, check_err) == (0, "")
        assert check_out.startswith("integrity_check: ok\n")
        assert writes_while_running > 0  # the service really was writing meanwhile
        assert stat.S_IMODE(backup.stat().st_mode) == 0o600

        payments, transfers = snapshot_is_consistent(backup)
        assert transfers == 2 * payments and payments >= 50
        await write(1)
        live = (await service.state.ledger.storage.get_stats())["payments_unclaimed"]
        assert live is not None and live > payments  # a snapshot, not the file as it is now

        # the service is unharmed: a redeem still works after the backup
        _, token = await paid_and_redeemed(service)
        assert await public_status(service, token) == "active"
    finally:
        await service.aclose()


def test_backup_restores_to_a_working_service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A backup is only worth what a restore gives back: serve from it and redeem."""

    async def scenario() -> dict[str, Any]:
        service = await start_service(make_config(tmp_path / "live"))
        try:
            pid, token = await paid_and_redeemed(service, 5000)
        finally:
            await service.aclose()
        return {"pid": pid, "token": token}

    (tmp_path / "live").mkdir()
    first = asyncio.run(scenario())
    monkeypatch.setenv("DATABASE_URL", str(tmp_path / "live" / "anonticket.db"))
    assert main(["db", "backup", str(tmp_path / "restored.db")]) == 0

    async def restored() -> tuple[int, dict[str, Any]]:
        (tmp_path / "r").mkdir()
        shutil.copyfile(tmp_path / "restored.db", tmp_path / "r" / "anonticket.db")
        service = await start_service(make_config(tmp_path / "r"))
        try:
            async with aiohttp.ClientSession(trust_env=False) as http:
                async with http.post(url(service.public_address, "/api/v1/redeem"),
                                     json={"pid": first["pid"]}) as resp:
                    return resp.status, await resp.json()
        finally:
            await service.aclose()

    status, body = asyncio.run(restored())
    assert (status, body["status"], body["service_token"]) == (200, "already_claimed", first["token"])
