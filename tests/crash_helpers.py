"""The real service as a child process, and what the crash and fault tests need around it.

The crash and fault tests must see what an operator sees: ``bin/anonticket serve`` in
its own process, killed with SIGKILL, starved of disk or of its database lock, with
its wallet misbehaving. Everything here binds 127.0.0.1 on port 0 and is found again
through the service's own start-up log line.
"""

from __future__ import annotations

import asyncio
import os
import re
import resource
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from aiohttp import web

from anonticket.service.app import start_service
from anonticket.config import SETTINGS
from anonticket.domain.ids import PaymentId, Transfer, derive_service_token
from anonticket.storage import Storage
from conftest import make_config
from fake_wallet import FakeWallet, make_transfer

REPO = Path(__file__).resolve().parent.parent
BIN = REPO / "bin" / "anonticket"
_LISTENERS = re.compile(r"public listener on (\S+), internal listener on (\S+), monitor")
_SETTING_NAMES = frozenset(setting.name for setting in SETTINGS)

T = TypeVar("T")


async def wait_until(check: Callable[[], T | Awaitable[T]], what: str, timeout: float = 10.0,
                     interval: float = 0.01) -> T:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = check()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last  # type: ignore[no-any-return]
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
        await asyncio.sleep(interval)


def service_env(database: Path | str, **settings: object) -> dict[str, str]:
    """The child's environment: ours minus every anonticket setting, then the test's. Bare
    PIDs redeem (REDEEM_PLAIN_PIDS=allow): the rounds pay random PIDs, the seeds' contract."""
    env = {k: v for k, v in os.environ.items() if k not in _SETTING_NAMES}
    env.update({
        "REDEEM_PLAIN_PIDS": "allow",
        "DATABASE_URL": str(database),
        "API_BIND_ADDRESS": "127.0.0.1:0",
        "API_INTERNAL_BIND_ADDRESS": "127.0.0.1:0",
        "API_ACCESS_LOG": "false",
        "LOG_LEVEL": "INFO",
        "MONITOR_MIN_PAYMENT_AMOUNT": "1000",
    })
    env.update({k: str(v) for k, v in settings.items()})
    return env


class ServiceProcess:
    """``bin/anonticket serve`` in a child process; its stderr is collected by a thread
    (a pipe, not a file: a file would count against a test's RLIMIT_FSIZE)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.public = ""
        self.internal = ""
        self._lines: list[str] = []
        self._reader: threading.Thread | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log(self) -> str:
        return "".join(self._lines)

    async def start(self, timeout: float = 20.0) -> ServiceProcess:
        self._lines = []
        self.proc = subprocess.Popen(
            [str(BIN), "serve"], env=self.env, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
        )
        self._reader = threading.Thread(target=self._collect, args=(self.proc,), daemon=True)
        self._reader.start()

        def listening() -> re.Match[str] | None:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"service exited with {self.proc.returncode}:\n{self.log()}")
            return _LISTENERS.search(self.log())

        match = await wait_until(listening, "the service's listeners", timeout)
        self.public, self.internal = match.group(1), match.group(2)
        return self

    def _collect(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:  # ends at EOF: the child and its copies of the pipe are gone
            self._lines.append(raw.decode(errors="replace"))

    async def _reap(self, timeout: float) -> int:
        proc = self.proc
        assert proc is not None
        # poll instead of proc.wait(): the fake wallet shares our event loop and the
        # child may be waiting for its answer while it shuts down
        await wait_until(lambda: proc.poll() is not None, "the service to exit", timeout, 0.005)
        if self._reader is not None:
            self._reader.join(timeout)
        if proc.stderr is not None:
            proc.stderr.close()
        return proc.returncode

    async def kill(self) -> None:
        """SIGKILL: no handler runs, no transaction is finished, nothing is flushed."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        assert await self._reap(10.0) == -signal.SIGKILL

    async def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM and the exit status (0 for a clean stop); SIGKILL if it hangs."""
        if self.proc is None or self.proc.returncode is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return await self._reap(timeout)
        except AssertionError:
            self.proc.kill()
            await self._reap(5.0)
            raise

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


async def call(session: aiohttp.ClientSession, method: str, address: str, path: str,
               body: Any = None, timeout: float = 30.0) -> tuple[int, dict[str, str], Any, float]:
    """One request: status, headers, parsed JSON body (None if not JSON), seconds taken."""
    started = time.perf_counter()
    async with session.request(method, f"http://{address}{path}", json=body,
                               timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
        raw = await resp.read()
        elapsed = time.perf_counter() - started
        parsed = await resp.json() if resp.content_type == "application/json" and raw else None
        return resp.status, dict(resp.headers), parsed, elapsed


async def redeem(session: aiohttp.ClientSession, address: str, pid: str,
                 timeout: float = 30.0) -> tuple[int, dict[str, str], Any, float]:
    return await call(session, "POST", address, "/api/v1/redeem", {"pid": pid}, timeout)


async def readiness(session: aiohttp.ClientSession, service: ServiceProcess) -> dict[str, Any]:
    """The internal readiness body with its status folded in as ``http``."""
    status, _, body, _ = await call(session, "GET", service.internal, "/health/ready")
    return {"http": status, **body}


def assert_unavailable(status: int, headers: dict[str, str], body: Any) -> None:
    assert status == 503, (status, body)
    assert body["error"] == "unavailable", body
    assert int(headers["Retry-After"]) >= 1


@contextmanager
def readonly_db(path: Path) -> Iterator[sqlite3.Connection]:
    """Look at the file as it is on disk (WAL included), writing nothing to it."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None, timeout=10)
    try:
        yield db
    finally:
        db.close()


def integrity(path: Path) -> list[str]:
    with readonly_db(path) as db:
        return [row[0] for row in db.execute("PRAGMA integrity_check")]


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


class RecordingWallet(FakeWallet):
    """A FakeWallet that remembers every confirmed entry it served, and that can come
    back on the port it had (a wallet-rpc restart, as the service sees it)."""

    def __init__(self, height: int = 1, port: int = 0) -> None:
        super().__init__(height)
        self.served: dict[str, dict[str, Any]] = {}  # txid -> entry as answered
        self._pinned_port = port
        serve = self.methods["get_transfers"]

        def recording(params: dict[str, Any]) -> Any:
            result = serve(params)
            for entry in result.get("in", []):
                self.served[entry["txid"]] = entry
            return result

        self.methods["get_transfers"] = recording

    async def start(self) -> None:
        # FakeWallet.start without SO_REUSEADDR: the old listener's half-closed
        # connections would keep its port from being bound again after a "restart"
        app = web.Application()
        app.router.add_post("/json_rpc", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self._pinned_port))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()

    @classmethod
    async def restarted(cls, old: RecordingWallet) -> RecordingWallet:
        """A new wallet process on the old port with the same chain (close ``old`` first)."""
        new = cls(old.height, port=old.port)
        new.incoming, new.pool, new.served = old.incoming, old.pool, old.served
        await new.start()
        return new


def pay(wallet: FakeWallet, *pids: str, amount: int = 5000) -> dict[str, str]:
    """Mine one block paying each PID once; returns pid -> txid."""
    height = wallet.height
    txids = {}
    for pid in pids:
        entry = make_transfer(pid, amount, height)
        wallet.add(entry)
        txids[pid] = entry["txid"]
    wallet.height = height + 1
    return txids


def token_for(pid: str, txid: str) -> str:
    return derive_service_token(PaymentId.parse(pid), txid).hex()


# -- disk, lock and in-process service for the fault tests ------------------------------

@contextmanager
def small_disk(path: Path, how: str) -> Iterator[None]:
    """``tmpfs``: a 2 MiB filesystem of our own (needs CAP_SYS_ADMIN); ``fsize``: no mount."""
    path.mkdir()
    if how != "tmpfs":
        yield
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(path)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip() or 'not permitted'}); "
                    "the fsize variant covers a full disk without mounting")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


class Filler:
    """Takes the disk's last free byte away, and gives it back.

    A full disk still lets SQLite overwrite space it already holds: once a checkpoint has
    copied the whole WAL back (the service's runs a tenth of a second after each commit),
    the next commit restarts the WAL at its start and needs no new block. Which commit
    that is would be a race, so while full a reader of ours holds a snapshot, as a backup
    tool or Litestream would: the WAL cannot restart, and every commit must grow it.
    """

    def __init__(self, how: str, directory: Path, service: ServiceProcess) -> None:
        self.how, self.directory, self.service = how, directory, service
        self._reader: sqlite3.Connection | None = None

    def fill(self) -> None:
        self._reader = sqlite3.connect(self.directory / "anonticket.db", isolation_level=None)
        self._reader.execute("BEGIN")
        self._reader.execute("SELECT count(*) FROM sqlite_schema").fetchall()  # the snapshot
        if self.how == "tmpfs":
            # unbuffered: a buffered file keeps the bytes a short write left over and its
            # close() writes them again, raising ENOSPC out of the with statement once the
            # disk is full (it did, when the schema's size moved where the 64 KiB chunks end)
            with open(self.directory / "filler", "wb", buffering=0) as out:
                chunk = b"\0" * 65536
                for _ in range(1000):  # 64 MiB at most, far beyond the 2 MiB filesystem
                    try:
                        out.write(chunk)
                        out.flush()
                    except OSError as exc:
                        assert exc.errno == 28  # ENOSPC
                        break
                else:
                    raise AssertionError("the small disk never filled up")
        else:
            # the WAL may not grow any more (commits append to it; the main file is only
            # written by checkpoints). Python ignores SIGXFSZ, so the write fails with
            # EFBIG instead of killing the process.
            wal = (self.directory / "anonticket.db-wal").stat().st_size
            resource.prlimit(self.service.pid, resource.RLIMIT_FSIZE, (wal, resource.RLIM_INFINITY))

    def free(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self.how == "tmpfs":
            (self.directory / "filler").unlink()
        else:
            resource.prlimit(self.service.pid, resource.RLIMIT_FSIZE,
                             (resource.RLIM_INFINITY, resource.RLIM_INFINITY))


async def seed(database: Path, pids: list[str], claim: Sequence[str] = ()) -> dict[str, str]:
    """Confirmed payments written through the storage layer, as the monitor would; returns
    the tokens of the PIDs claimed here (a previous life of the service)."""
    store = await Storage.open(database)
    try:
        transfers = [Transfer(os.urandom(32), PaymentId.parse(pid), 5000, 10) for pid in pids]
        await store.credit_transfers(transfers, 10, int(time.time()))
        rows = await store.claim_payments([PaymentId.parse(p).raw for p in claim], 1000,
                                          int(time.time()))
    finally:
        await store.close()
    return {pid: rows[PaymentId.parse(pid).raw].token.hex() for pid in claim}


@contextmanager
def database_locked(database: Path) -> Iterator[None]:
    """Another process (this one) holds the write lock, as a stuck ``sqlite3`` shell would."""
    holder = sqlite3.connect(database, isolation_level=None, timeout=0)
    try:
        holder.execute("BEGIN IMMEDIATE")
        holder.execute("UPDATE monitor_state SET scanned_height = scanned_height")
        yield
        holder.execute("ROLLBACK")
    finally:
        holder.close()


@asynccontextmanager
async def in_process(tmp_path: Path, **settings: object) -> AsyncIterator[tuple[str, int]]:
    """The service in this process, for tests that read its sockets byte by byte."""
    service = await start_service(make_config(tmp_path, **settings))
    try:
        host, port = service.public_address.rsplit(":", 1)
        yield host, int(port)
    finally:
        await service.aclose()


async def closed_after(reader: asyncio.StreamReader, limit: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and when it closed."""
    started, received = time.monotonic(), b""
    async with asyncio.timeout(limit):
        for _ in range(1000):  # an answer here is a few hundred bytes at most
            chunk = await reader.read(65536)
            if not chunk:
                return received, time.monotonic() - started
            received += chunk
    raise AssertionError("the server kept sending")
