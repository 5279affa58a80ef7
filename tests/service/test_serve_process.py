"""The real ``bin/anonticket serve`` in a subprocess: public Unix socket, internal TCP port,
readiness, routes, SIGTERM (with a request in flight), and start-up refusals."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import struct
import tempfile
import termios
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from anonticket.config import SETTINGS
from anonticket.domain.ids import PaymentId, derive_service_token
from anonticket.storage import SCHEMA_VERSION, Storage
from conftest import transfer

REPO = Path(__file__).resolve().parents[2]
BIN = REPO / "bin" / "anonticket"
START_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0
READY_LINE = re.compile(r"public listener on (\S+), internal listener on (\S+?):(\d+)")


def serve_env(sockdir: Path, **extra: str) -> dict[str, str]:
    """The caller's environment minus every anonticket setting, plus ours (bare PIDs redeem,
    as the tests here pay random PIDs)."""
    names = {s.name for s in SETTINGS}
    env = {k: v for k, v in os.environ.items() if k not in names}
    env.update({
        "REDEEM_PLAIN_PIDS": "allow",
        "DATABASE_URL": str(sockdir / "anonticket.db"),
        "API_UNIX_SOCKET": str(sockdir / "public.sock"),
        "API_INTERNAL_BIND_ADDRESS": "127.0.0.1:0",
        "MONITOR_ENABLED": "false",
        "LOG_LEVEL": "INFO",
        "API_ACCESS_LOG": "true",
    })
    env.update(extra)
    return env


class ServeProcess:
    """A running ``anonticket serve`` whose stderr is read line by line as it arrives."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._changed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            self.lines.append(line.decode(errors="replace"))
            self._changed.set()
        self._changed.set()

    async def wait_line(self, pattern: re.Pattern[str], timeout: float = START_TIMEOUT) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            while seen < len(self.lines):
                if match := pattern.search(self.lines[seen]):
                    return match
                seen += 1
            if self._reader.done():
                raise AssertionError(f"stderr ended without {pattern.pattern!r}:\n{self.stderr}")
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no {pattern.pattern!r} within {timeout}s:\n{self.stderr}"
            self._changed.clear()
            await asyncio.wait_for(self._changed.wait(), remaining)

    async def finish(self, timeout: float = STOP_TIMEOUT) -> int:
        status = await asyncio.wait_for(self.proc.wait(), timeout)
        await asyncio.wait_for(self._reader, timeout)
        return status

    @property
    def stderr(self) -> str:
        return "".join(self.lines)


@pytest.fixture
def sockdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="at-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def spawn(env: dict[str, str]) -> ServeProcess:
    proc = await asyncio.create_subprocess_exec(
        str(BIN), "serve", env=env, cwd=str(REPO),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    return ServeProcess(proc)


@pytest.fixture
async def started() -> AsyncIterator[list[ServeProcess]]:
    """Every process a test spawns is killed if the test did not stop it."""
    procs: list[ServeProcess] = []
    yield procs
    for p in procs:
        if p.proc.returncode is None:
            p.proc.kill()
            await p.finish(STOP_TIMEOUT)


async def wait_live(public: Path, timeout: float = START_TIMEOUT) -> None:
    """Poll /health/live over the socket until it answers (bounded by a deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            status, body = await unix_request(public, "GET", "/health/live")
            if (status, body) == (200, {"status": "ok"}):
                return
        except (aiohttp.ClientConnectionError, FileNotFoundError):
            pass
        assert time.monotonic() < deadline, "service did not become live"
        await asyncio.sleep(0.05)


async def unix_request(public: Path, method: str, path: str, body: Any = None) -> tuple[int, dict[str, Any]]:
    connector = aiohttp.UnixConnector(path=str(public))
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.request(method, f"http://localhost{path}", json=body) as resp:
            assert resp.content_type == "application/json"
            return resp.status, await resp.json()


async def test_serve_over_unix_socket_and_internal_port(sockdir: Path, started: list[ServeProcess]) -> None:
    public = sockdir / "public.sock"
    server = await spawn(serve_env(sockdir))
    started.append(server)
    match = await server.wait_line(READY_LINE)
    assert match[1] == f"unix:{public}"
    internal = f"http://{match[2]}:{match[3]}"
    await wait_live(public)
    assert oct(os.stat(public).st_mode & 0o777) == oct(0o660)

    pid = PaymentId.generate().hex()
    status, body = await unix_request(public, "POST", "/api/v1/redeem", {"pid": pid})
    assert (status, body["error"]) == (404, "payment_not_found")
    token = "ab" * 32
    status, body = await unix_request(public, "GET", f"/api/v1/token/{token}")
    assert (status, body["error"]) == (404, "token_not_found")
    # the operator's routes do not exist on the public socket
    status, body = await unix_request(public, "POST", f"/api/v1/token/{token}/revoke", {})
    assert (status, body["error"]) == (404, "not_found")
    status, body = await unix_request(public, "GET", "/metrics")
    assert (status, body["error"]) == (404, "not_found")

    async with aiohttp.ClientSession(trust_env=False) as http:
        async with http.get(f"{internal}/metrics") as resp:
            assert resp.status == 200
            metrics = await resp.text()
        async with http.get(f"{internal}/health/live") as resp:
            assert (resp.status, await resp.json()) == (200, {"status": "ok"})
    assert 'anonticket_redeem_requests_total{outcome="not_found"} 1.0' in metrics
    assert 'anonticket_token_requests_total{outcome="not_found"} 1.0' in metrics

    server.proc.send_signal(signal.SIGTERM)
    assert await server.finish() == 0
    assert not public.exists()
    assert "Traceback" not in server.stderr
    # the access log was written (flushed on exit) but never with a PID or token in it
    assert "/api/v1/token/{token}" in server.stderr
    assert pid not in server.stderr and token not in server.stderr
    # the database was closed, not abandoned: the last connection to go checkpoints and deletes the WAL
    assert (sockdir / "anonticket.db").is_file()
    assert not (sockdir / "anonticket.db-wal").exists()


def unread_bytes(writer: asyncio.StreamWriter) -> int:
    """Bytes we sent on a Unix socket that the peer has not read yet (Linux SIOCOUTQ)."""
    sock = writer.get_extra_info("socket")
    return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0])


async def test_sigterm_finishes_the_request_in_flight(sockdir: Path, started: list[ServeProcess]) -> None:
    """A redeem held up in SQLite when SIGTERM arrives is still answered, then the process exits 0.

    aiohttp drops bytes that arrive on a connection once shutdown has begun, so only a
    request the server has fully read can be finished; the test waits for exactly that
    (the kernel's unread count drops to 0) rather than for some time.
    """
    public, db = sockdir / "public.sock", sockdir / "anonticket.db"
    pid = PaymentId.generate()
    payment = transfer(pid, 5000)
    store = await Storage.open(db)
    await store.credit_transfers([payment], None, 1)
    await store.close()
    server = await spawn(serve_env(sockdir, MONITOR_MIN_PAYMENT_AMOUNT="1000"))
    started.append(server)
    await server.wait_line(READY_LINE)
    await wait_live(public)

    body = json.dumps({"pid": pid.hex()}).encode()
    with closing(sqlite3.connect(db, isolation_level=None)) as other_writer:
        other_writer.execute("BEGIN IMMEDIATE")  # the claim cannot commit until we let go
        reader, writer = await asyncio.open_unix_connection(str(public))
        try:
            writer.write(b"POST /api/v1/redeem HTTP/1.1\r\nHost: localhost\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
            deadline = time.monotonic() + START_TIMEOUT
            while unread_bytes(writer):
                assert time.monotonic() < deadline, "the server never read the request"
                await asyncio.sleep(0.01)
            server.proc.send_signal(signal.SIGTERM)
            await server.wait_line(re.compile(r"stopping"), STOP_TIMEOUT)
            assert server.proc.returncode is None
            other_writer.execute("ROLLBACK")
            response = await asyncio.wait_for(reader.read(), STOP_TIMEOUT)  # closed after it
        finally:
            writer.close()
    head, _, payload = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), response
    answer = json.loads(payload)
    assert answer == {"status": "success", "balance": 5000, "remaining": 5000, "expires_at": None,
                      "service_token": derive_service_token(pid, payment.txid.hex()).hex()}
    assert await server.finish() == 0
    assert not public.exists()
    # the claim was committed before the database closed
    store = await Storage.open(db)
    try:
        row = (await store.claim_payments([pid.raw], 1000, 2))[pid.raw]
        assert (row.status, row.claimed_now) == (1, False)
    finally:
        await store.close()


async def test_a_bad_setting_exits_2_with_one_line(sockdir: Path, started: list[ServeProcess]) -> None:
    server = await spawn(serve_env(sockdir, MONITOR_POLL_INTERVAL_SECS="abc"))
    started.append(server)
    assert await server.finish(START_TIMEOUT) == 2
    lines = server.stderr.strip().splitlines()
    assert len(lines) == 1, server.stderr
    assert "MONITOR_POLL_INTERVAL_SECS" in lines[0] and "Traceback" not in server.stderr
    assert not (sockdir / "public.sock").exists()
    assert not (sockdir / "anonticket.db").exists()  # refused before touching anything


DB_PASSWORD = "pg-s3cr3t-Pw"


def _unlistened_port() -> socket.socket:
    """A TCP port of 127.0.0.1 held (bound, not listening) for the caller's lifetime:
    connecting to it is refused, and nothing else can take it meanwhile."""
    held = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    held.bind(("127.0.0.1", 0))
    return held


def assert_one_error_line(server: ServeProcess, starts: str) -> str:
    errors = [line for line in server.stderr.splitlines() if " INFO " not in line]
    assert len(errors) == 1 and errors[0].startswith(starts), server.stderr
    assert "Traceback" not in server.stderr
    return errors[0]


async def test_an_unreachable_postgresql_stops_serve_with_one_line(
        sockdir: Path, started: list[ServeProcess]) -> None:
    """docs/cli.md's promise for start-up errors; it once was a 40-line traceback."""
    with closing(_unlistened_port()) as held:
        port = held.getsockname()[1]
        server = await spawn(serve_env(
            sockdir, DATABASE_URL=f"postgresql://anonticket:{DB_PASSWORD}@127.0.0.1:{port}/x"))
        started.append(server)
        assert await server.finish(START_TIMEOUT) == 1
    line = assert_one_error_line(
        server, "anonticket: serve failed: cannot connect to the database of DATABASE_URL ")
    assert line.rstrip().endswith("(ConnectionRefusedError)"), line
    assert DB_PASSWORD not in server.stderr
    assert not (sockdir / "public.sock").exists()


async def test_a_postgresql_that_refuses_us_stops_serve_with_one_line(
        sockdir: Path, started: list[ServeProcess], pg: Any) -> None:
    """Reached, but the database named is not there: the SQLSTATE says which refusal."""
    server = await spawn(serve_env(sockdir, DATABASE_URL=pg.dsn("no_such_database")))
    started.append(server)
    assert await server.finish(START_TIMEOUT) == 1
    line = assert_one_error_line(server, "anonticket: serve failed: cannot connect ")
    assert line.rstrip().endswith("(InvalidCatalogNameError 3D000)"), line
    assert "no_such_database" not in line


async def test_a_sqlite_database_that_cannot_be_opened_stops_serve_with_one_line(
        sockdir: Path, started: list[ServeProcess]) -> None:
    """A directory where the file should be: SQLite's refusal in one line, and no traceback
    from aiosqlite's worker thread answering into the closed loop after it."""
    where = sockdir / "a-directory.db"
    where.mkdir()
    server = await spawn(serve_env(sockdir, DATABASE_URL=str(where)))
    started.append(server)
    assert await server.finish(START_TIMEOUT) == 1
    line = assert_one_error_line(
        server, "anonticket: serve failed: cannot connect to the database of DATABASE_URL ")
    assert line.rstrip().endswith("(OperationalError: unable to open database file)"), line
    assert "Event loop is closed" not in server.stderr
    assert not (sockdir / "public.sock").exists()


async def test_a_database_from_a_newer_program_stops_serve_with_one_line(
        sockdir: Path, started: list[ServeProcess]) -> None:
    """Nothing is changed in it, and the operator reads why in one line."""
    path = sockdir / "anonticket.db"
    with closing(sqlite3.connect(path)) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    path.chmod(0o600)
    server = await spawn(serve_env(sockdir))
    started.append(server)
    assert await server.finish(START_TIMEOUT) == 1
    line = assert_one_error_line(server, "anonticket: serve failed: the database's schema ")
    assert f"version {SCHEMA_VERSION + 1} is newer than this program's ({SCHEMA_VERSION})" in line
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
        assert conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0


async def test_a_live_socket_is_refused_by_the_process(sockdir: Path, started: list[ServeProcess]) -> None:
    public = sockdir / "public.sock"
    with closing(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)) as other:
        other.bind(str(public))
        other.listen(4)
        inode = os.lstat(public).st_ino
        server = await spawn(serve_env(sockdir))
        started.append(server)
        assert await server.finish(START_TIMEOUT) == 1
        errors = [line for line in server.stderr.splitlines() if " INFO " not in line]
        assert len(errors) == 1 and "in use" in errors[0], server.stderr
        assert "Traceback" not in server.stderr
        assert os.lstat(public).st_ino == inode
        other.settimeout(5)
        with closing(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)) as client:
            client.connect(str(public))
            conn, _ = other.accept()  # still the other server's socket, still accepting
            conn.close()


WALLET_SECRET = "s3cr3t-wallet-Pw"
OPERATOR_SECRET = "op-" + "c4" * 16


async def test_wallet_credentials_in_the_url_stop_serve_before_it_binds(
    sockdir: Path, started: list[ServeProcess]
) -> None:
    """Refused like any bad setting (exit 2, one line, the secret not in it), not by the
    wallet client after both listeners were bound and the URL was logged."""
    server = await spawn(serve_env(sockdir, MONITOR_ENABLED="true",
                                   MONERO_RPC_URL=f"http://anon:{WALLET_SECRET}@127.0.0.1:18082"))
    started.append(server)
    assert await server.finish(START_TIMEOUT) == 2
    lines = server.stderr.strip().splitlines()
    assert len(lines) == 1, server.stderr
    assert "MONERO_RPC_URL" in lines[0] and "Traceback" not in server.stderr
    assert WALLET_SECRET not in server.stderr
    assert not (sockdir / "public.sock").exists()
    assert not (sockdir / "anonticket.db").exists()


async def test_the_start_up_log_shows_no_secret(sockdir: Path, started: list[ServeProcess]) -> None:
    server = await spawn(serve_env(sockdir, MONERO_RPC_USER="anon", MONERO_RPC_PASSWORD=WALLET_SECRET,
                                   API_INTERNAL_TOKEN=OPERATOR_SECRET))
    started.append(server)
    await server.wait_line(READY_LINE)
    server.proc.send_signal(signal.SIGTERM)
    assert await server.finish() == 0
    settings = [line for line in server.lines if "starting with " in line]
    assert len(settings) == 1, server.stderr
    assert " MONERO_RPC_PASSWORD=*** " in settings[0] and " API_INTERNAL_TOKEN=*** " in settings[0]
    assert " MONERO_RPC_USER=anon " in settings[0]
    assert WALLET_SECRET not in server.stderr and OPERATOR_SECRET not in server.stderr
