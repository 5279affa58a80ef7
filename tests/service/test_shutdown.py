"""Stopping in order: the listeners stop accepting and drain their requests while the monitor
still runs; then the monitor stops, and a credit it was committing still reaches the views.

Real sockets, a real SQLite file and aiosqlite's real writer thread. Two things are held on
purpose instead of waited for: a redeem, by another connection's write lock (as in
test_serve_process.py), and the monitor's COMMIT, by an SQLite trace callback that blocks
aiosqlite's thread at that statement — the one moment a cancel cannot undo.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import shutil
import sqlite3
import struct
import tempfile
import termios
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, closing, suppress
from pathlib import Path

import pytest

from anonticket.service.app import open_state, start_service
from anonticket.config import Config
from anonticket.domain.ids import PaymentId, derive_service_token
from anonticket.ledger.views import ASK_STORAGE, Claimed
from anonticket.monitor.loop import Monitor
from anonticket.storage import Storage
from conftest import make_config, transfer
from fake_wallet import FakeWallet, make_transfer

DEADLINE = 10.0
N = 3


@pytest.fixture
def sockdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="at-", dir="/tmp"))  # Unix socket paths are short
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def fake() -> AsyncIterator[FakeWallet]:
    async with FakeWallet(height=100) as wallet:
        yield wallet


def config(sockdir: Path, fake: FakeWallet) -> Config:
    return make_config(
        sockdir, API_UNIX_SOCKET=str(sockdir / "public.sock"), MONITOR_ENABLED="true",
        MONERO_RPC_URL=fake.url, MONITOR_MIN_CONFIRMATIONS=N, MONITOR_POLL_INTERVAL_SECS="0.02",
        # neither the held redeem nor the monitor's credit may give up while a test holds the lock
        DATABASE_BUSY_TIMEOUT_MS="60000",
    )


def unread_bytes(writer: asyncio.StreamWriter) -> int:
    """Bytes we sent on a Unix socket that the peer has not read yet (Linux SIOCOUTQ)."""
    sock = writer.get_extra_info("socket")
    return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0])


async def until(condition: object, what: str) -> None:
    """Poll ``condition()`` (sync or async) until true, failing after DEADLINE."""
    deadline = time.monotonic() + DEADLINE
    while True:
        value = condition()  # type: ignore[operator]
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        assert time.monotonic() < deadline, f"not within {DEADLINE}s: {what}"
        await asyncio.sleep(0.01)


_SO_ACCEPTCON = 0x10000  # the Flags bit /proc/net/unix shows on a listening socket


def listening(path: Path) -> bool:
    """Whether a socket listens on ``path``, read from /proc/net/unix: a probe connection
    would itself be one more request for the draining listener to deal with."""
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) == 8 and fields[7] == str(path) and int(fields[3], 16) & _SO_ACCEPTCON:
            return True
    return False


class CommitGate:
    """An SQLite trace callback that holds the first COMMIT of a credit (a transaction that
    inserted transfers) on aiosqlite's thread until ``release``: the statement is running,
    so the transaction commits whatever the awaiting task does meanwhile. Other commits
    (housekeeping's first prune races the monitor's first poll) pass."""

    def __init__(self) -> None:
        self.reached = threading.Event()
        self.release = threading.Event()
        self._crediting = False

    def __call__(self, sql: str) -> None:
        if sql.lstrip().upper().startswith("INSERT INTO TRANSFERS"):
            self._crediting = True
        if sql.strip().upper() == "COMMIT" and self._crediting and not self.reached.is_set():
            self.reached.set()
            self.release.wait(DEADLINE)

    async def wait_reached(self) -> None:
        assert await asyncio.to_thread(self.reached.wait, DEADLINE), "no COMMIT reached the gate"


async def test_listeners_drain_before_the_monitor_stops(sockdir: Path, fake: FakeWallet) -> None:
    db, public = sockdir / "anonticket.db", sockdir / "public.sock"
    pid = PaymentId.generate()
    payment = transfer(pid, 5000)
    store = await Storage.open(db)
    await store.credit_transfers([payment], None, 1)
    await store.close()
    service = await start_service(config(sockdir, fake))
    monitor = service.monitor_task
    assert monitor is not None
    closing_task: asyncio.Task[None] | None = None
    body = json.dumps({"pid": pid.hex()}).encode()
    try:
        with closing(sqlite3.connect(db, isolation_level=None)) as other_writer:
            other_writer.execute("BEGIN IMMEDIATE")  # the redeem's claim waits for it
            reader, writer = await asyncio.open_unix_connection(str(public))
            try:
                writer.write(b"POST /api/v1/redeem HTTP/1.1\r\nHost: localhost\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
                await until(lambda: unread_bytes(writer) == 0, "the service read the request")
                closing_task = asyncio.create_task(service.aclose())
                assert listening(public)
                await until(lambda: not listening(public), "the listener stopped accepting")
                # the listener is draining the redeem: the monitor must still be running
                assert not monitor.done() and monitor.cancelling() == 0
                assert public.exists()  # our socket file goes after the drain
                other_writer.execute("ROLLBACK")
                response = await asyncio.wait_for(reader.read(), DEADLINE)
            finally:
                writer.close()
                with suppress(ConnectionError):
                    await writer.wait_closed()
    finally:
        if closing_task is None:
            closing_task = asyncio.create_task(service.aclose())
        await asyncio.wait_for(closing_task, DEADLINE)
    head, _, payload = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), response
    assert json.loads(payload)["service_token"] == derive_service_token(pid, payment.txid.hex()).hex()
    assert monitor.done()  # stopped, after the listener had finished
    assert not public.exists()


async def test_a_credit_committing_during_shutdown_reaches_the_views(sockdir: Path,
                                                                     fake: FakeWallet) -> None:
    pid = PaymentId.generate()
    fake.add(make_transfer(pid.hex(), 5000, height=90))
    gate = CommitGate()
    service = await start_service(config(sockdir, fake))
    # no await since start_service returned: the monitor has not run a step yet, and this
    # callback is queued on the writer thread ahead of anything the monitor will send
    await service.state.ledger.storage._writer.set_trace_callback(gate)
    monitor = service.monitor_task
    assert monitor is not None
    try:
        await gate.wait_reached()  # the first poll's credit is committing: now stop
        stopping = asyncio.create_task(service.aclose())
        await until(lambda: monitor.cancelling() > 0, "the shutdown cancelled the monitor")
    finally:
        gate.release.set()
    await asyncio.wait_for(stopping, DEADLINE)
    assert monitor.cancelled()
    # the commit landed, and the ledger knows the PID (not "certainly unknown", a 404)
    store = await Storage.open(sockdir / "anonticket.db")
    try:
        assert (await store.get_stats())["transfers"] == 1
    finally:
        await store.close()
    assert service.state.ledger.redeem_from_memory(pid.raw) is ASK_STORAGE


async def test_a_cancelled_monitor_leaves_its_committed_credit_redeemable(sockdir: Path,
                                                                         fake: FakeWallet) -> None:
    """The customer's view: the PID redeems at once, not 404 until the next restart."""
    pid = PaymentId.generate()
    fake.add(make_transfer(pid.hex(), 5000, height=90))
    gate = CommitGate()
    async with AsyncExitStack() as stack:
        state = await open_state(config(sockdir, fake), stack)
        await state.ledger.storage._writer.set_trace_callback(gate)
        monitor = Monitor(state)
        await monitor.start()
        stack.push_async_callback(monitor.aclose)
        task = asyncio.create_task(monitor.run())
        try:
            await gate.wait_reached()
            task.cancel()
        finally:
            gate.release.set()
        with suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, DEADLINE)
        assert task.cancelled()
        answer = await state.ledger.redeem(pid)
        assert isinstance(answer, Claimed) and (answer.status, answer.balance) == ("success", 5000)
