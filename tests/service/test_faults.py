"""Faults around the real service process: its wallet, its disk, its database lock, its load.

Each test runs ``bin/anonticket serve`` as a child process (real sockets, a real SQLite
file) and breaks one thing it depends on, then checks the three promises: customers
keep getting fast answers (a 503 with Retry-After where a write cannot happen, never a
hang), nothing half-written lands in the file, and the service recovers by itself.
The slow-client tests run the service in this process instead, because the timeouts
they shorten are constants, not settings.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from anonticket.domain.ids import PaymentId
from crash_helpers import (
    Filler,
    RecordingWallet,
    ServiceProcess,
    assert_unavailable,
    call,
    closed_after,
    database_locked,
    in_process,
    integrity,
    pay,
    percentile,
    readiness,
    readonly_db,
    redeem,
    seed,
    service_env,
    small_disk,
    token_for,
    wait_until,
)
from fake_wallet import Failure

RPC_TIMEOUT = 2.0  # the wallet timeout the API must never come near
BUSY_TIMEOUT_MS = 1000  # DATABASE_BUSY_TIMEOUT_MS for the lock tests: how long a write waits
BUSY_TIMEOUT = BUSY_TIMEOUT_MS / 1000
MONITOR = {
    "MONITOR_POLL_INTERVAL_SECS": "0.02",
    "MONITOR_MIN_CONFIRMATIONS": "1",
    "MONITOR_READY_MAX_AGE_SECS": "0.5",
    "MONERO_RPC_TIMEOUT_SECS": str(RPC_TIMEOUT),
}


def new_pid() -> str:
    return PaymentId.generate().hex()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(trust_env=False) as http:
        yield http


@asynccontextmanager
async def running(env: dict[str, str]) -> AsyncIterator[ServiceProcess]:
    """The service for one test; it must stop cleanly and never print a traceback."""
    service = await ServiceProcess(env).start()
    try:
        yield service
    except BaseException:
        if service.alive():
            await service.stop()
        raise
    assert await service.stop() == 0, service.log()
    assert "Traceback" not in service.log(), service.log()


async def caught_up(session: aiohttp.ClientSession, service: ServiceProcess,
                    wallet: RecordingWallet) -> dict[str, Any]:
    """Wait until the monitor is ready and has scanned everything one block deep."""
    target = wallet.height - 1

    async def check() -> dict[str, Any] | None:
        body = await readiness(session, service)
        scanned = body["monitor"]["scanned_height"]
        return body if body["http"] == 200 and scanned is not None and scanned >= target else None

    return await wait_until(check, "the monitor to be ready and caught up", timeout=20)


async def redeem_latencies(session: aiohttp.ClientSession, service: ServiceProcess,
                           claimed: tuple[str, str], rounds: int = 20) -> list[float]:
    """Customer traffic that needs no wallet: a claimed PID again, and an unknown PID."""
    pid, token = claimed
    seconds = []
    for _ in range(rounds):
        status, _, body, elapsed = await redeem(session, service.public, pid)
        assert (status, body["service_token"]) == (200, token)
        seconds.append(elapsed)
        status, _, body, elapsed = await redeem(session, service.public, new_pid())
        assert (status, body["error"]) == (404, "payment_not_found")
        seconds.append(elapsed)
    return seconds


# -- the wallet --------------------------------------------------------------------------

WALLET_FAULTS = {  # how the wallet breaks -> the reason readiness must give
    "killed": "unreachable",
    "hanging": "timeout",
    "http_500": "http_error",
    "garbage": "bad_response",
}


@pytest.mark.parametrize("fault", list(WALLET_FAULTS))
async def test_wallet_fault_keeps_the_api_fast_and_misses_no_transfer(
        tmp_path: Path, session: aiohttp.ClientSession, fault: str) -> None:
    wallet = RecordingWallet(height=10)
    await wallet.start()
    try:
        first, later = new_pid(), new_pid()
        txids = pay(wallet, first, later)
        async with running(service_env(tmp_path / "a.db", MONERO_RPC_URL=wallet.url,
                                       **MONITOR)) as service:
            await caught_up(session, service, wallet)
            status, _, body, _ = await redeem(session, service.public, first)
            assert (status, body["status"]) == (200, "success")
            claimed = (first, body["service_token"])
            healthy = await redeem_latencies(session, service, claimed)

            if fault == "killed":
                await wallet.close()
            else:
                failure = {"hanging": Failure.HANG, "http_500": Failure.HTTP_500,
                           "garbage": Failure.MALFORMED_JSON}[fault]
                wallet.fail(failure, times=None)
            # payments keep arriving while the service cannot see them
            unseen = pay(wallet, new_pid(), new_pid())
            unseen |= pay(wallet, new_pid(), later)  # a second payment to a known PID too

            reason = WALLET_FAULTS[fault]
            body = await wait_until(
                lambda: _not_ready_because(session, service, reason),
                f"readiness to report {reason}", timeout=3 * RPC_TIMEOUT + 5)
            assert reason in body["reason"] and body["monitor"]["last_error"] == reason
            status, _, public, _ = await call(session, "GET", service.public, "/health/ready")
            assert (status, public) == (503, {"status": "not_ready"})
            broken = await redeem_latencies(session, service, claimed)
            # a PID credited before the fault still redeems while the wallet is down
            status, _, body, elapsed = await redeem(session, service.public, later)
            assert (status, body["status"]) == (200, "success")
            assert body["service_token"] == token_for(later, txids[later])
            broken.append(elapsed)

            if fault == "killed":
                wallet = await RecordingWallet.restarted(wallet)
            else:
                wallet.clear_failures()
            await caught_up(session, service, wallet)
            for pid, txid in unseen.items():
                if pid == later:
                    continue
                status, _, body, _ = await redeem(session, service.public, pid)
                assert (status, body["status"], body["service_token"]) == \
                    (200, "success", token_for(pid, txid))
            status, _, body, _ = await redeem(session, service.public, later)
            assert body["balance"] == 10_000  # the top-up paid during the outage counted too
        # one log line when the wallet broke, not one per retry
        warnings = [line for line in service.log().splitlines()
                    if " WARNING anonticket.monitor " in line]
        assert 1 <= len(warnings) <= 2, warnings
    finally:
        await wallet.close()
    # far below the wallet timeout: no customer request ever waits for the wallet
    assert max(broken) < RPC_TIMEOUT / 4, (fault, max(broken))
    assert percentile(broken, 0.5) < 0.05, (fault, percentile(broken, 0.5))
    print(f"\nwallet {fault}: redeem latency healthy p50={percentile(healthy, 0.5) * 1000:.1f}ms "
          f"max={max(healthy) * 1000:.1f}ms; wallet {fault} p50={percentile(broken, 0.5) * 1000:.1f}ms"
          f" max={max(broken) * 1000:.1f}ms (wallet timeout {RPC_TIMEOUT * 1000:.0f}ms)")


async def _not_ready_because(session: aiohttp.ClientSession, service: ServiceProcess,
                             reason: str) -> dict[str, Any] | None:
    body = await readiness(session, service)
    ok = body["http"] == 503 and body["status"] == "not_ready" and reason in (body["reason"] or "")
    return body if ok else None


# -- the disk ----------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["tmpfs", "fsize"])
async def test_disk_full_answers_503_writes_nothing_and_recovers(
        tmp_path: Path, session: aiohttp.ClientSession, how: str) -> None:
    data = tmp_path / "data"
    database = data / "anonticket.db"
    with small_disk(data, how):
        async with RecordingWallet(height=10) as wallet:
            waiting, served = new_pid(), new_pid()
            txids = pay(wallet, waiting, served)
            env = service_env(database, MONERO_RPC_URL=wallet.url, **MONITOR)
            async with running(env) as service:
                await caught_up(session, service, wallet)
                status, _, body, _ = await redeem(session, service.public, served)
                assert (status, body["status"]) == (200, "success")
                token = body["service_token"]
                filler = Filler(how, data, service)
                filler.fill()
                late = new_pid()
                txids |= pay(wallet, late)  # the monitor must credit this; it cannot write now

                status, headers, body, refused_in = await redeem(session, service.public, waiting)
                assert_unavailable(status, headers, body)
                assert set(body) == {"error", "message"}
                with readonly_db(database) as db:
                    assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
                    raw = PaymentId.parse(waiting).raw
                    assert db.execute("SELECT status FROM payments WHERE pid = ?",
                                      (raw,)).fetchall() == [(0,)]
                    assert db.execute("SELECT count(*) FROM service_tokens WHERE pid = ?",
                                      (raw,)).fetchall() == [(0,)]
                # what needs no write still works
                status, _, body, _ = await call(session, "GET", service.public,
                                                f"/api/v1/token/{token}")
                assert (status, body["status"]) == (200, "active")
                status, _, body, _ = await redeem(session, service.public, new_pid())
                assert status == 404
                body = await wait_until(
                    lambda: _not_ready_because(session, service, "storage_error"),
                    "readiness to report the monitor's storage error")

                filler.free()
                freed = time.monotonic()
                # the very same request now succeeds: no restart, no operator
                status, _, body, _ = await redeem(session, service.public, waiting)
                assert (status, body["status"], body["service_token"]) == \
                    (200, "success", token_for(waiting, txids[waiting]))
                await caught_up(session, service, wallet)
                caught_up_in = time.monotonic() - freed
                status, _, body, _ = await redeem(session, service.public, late)
                assert (status, body["service_token"]) == (200, token_for(late, txids[late]))
                assert service.alive()
            assert integrity(database) == ["ok"]
    print(f"\ndisk full ({how}): redeem refused in {refused_in * 1000:.1f}ms; monitor caught up "
          f"{caught_up_in:.2f}s after space returned")


# -- the database lock ---------------------------------------------------------------------

async def test_locked_database_answers_503_keeps_reading_and_recovers(
        tmp_path: Path, session: aiohttp.ClientSession) -> None:
    database = tmp_path / "a.db"
    blocked, fresh, old = new_pid(), new_pid(), new_pid()
    old_token = (await seed(database, [blocked, fresh, old], claim=[old]))[old]
    async with running(service_env(database, MONITOR_ENABLED="false",
                                   DATABASE_BUSY_TIMEOUT_MS=str(BUSY_TIMEOUT_MS))) as service:
        status, _, body, _ = await redeem(session, service.public, fresh)
        assert (status, body["status"]) == (200, "success")
        fresh_token = body["service_token"]
        with database_locked(database):
            task = asyncio.create_task(redeem(session, service.public, blocked))
            reads = []  # one token from the cache, one from the database (a previous life)
            for path in (f"/api/v1/token/{fresh_token}", f"/api/v1/token/{old_token}"):
                status, _, body, elapsed = await call(session, "GET", service.public, path)
                assert (status, body["status"]) == (200, "active")
                reads.append(elapsed)
            status, _, body, elapsed = await redeem(session, service.public, fresh)
            assert (status, body["status"]) == (200, "already_claimed")
            reads.append(elapsed)
            status, _, body, elapsed = await redeem(session, service.public, new_pid())
            assert status == 404
            reads.append(elapsed)
            assert not task.done()
            status, headers, body, elapsed = await task
            assert_unavailable(status, headers, body)
            assert BUSY_TIMEOUT - 0.5 <= elapsed < BUSY_TIMEOUT + 3
            with readonly_db(database) as db:
                raw = PaymentId.parse(blocked).raw
                assert db.execute("SELECT p.status, t.token FROM payments p LEFT JOIN "
                                  "service_tokens t USING (pid) WHERE p.pid = ?",
                                  (raw,)).fetchall() == [(0, None)]
        assert max(reads) < 0.5, reads
        status, _, body, _ = await redeem(session, service.public, blocked)
        assert (status, body["status"]) == (200, "success")
    print(f"\nlocked database: reads max={max(reads) * 1000:.1f}ms, "
          f"blocked write answered 503 after {elapsed:.2f}s")


# -- load and slow clients -------------------------------------------------------------------

async def test_overload_is_refused_fast_with_retry_after(
        tmp_path: Path, session: aiohttp.ClientSession) -> None:
    database = tmp_path / "a.db"
    slow_pids, other = [new_pid() for _ in range(4)], new_pid()
    token = (await seed(database, slow_pids + [other], claim=[other]))[other]
    env = service_env(database, MONITOR_ENABLED="false", API_MAX_IN_FLIGHT=len(slow_pids))
    async with running(env) as service:
        with database_locked(database):
            # writes stuck behind the lock fill every slot of the public listener
            slow = [asyncio.create_task(redeem(session, service.public, pid)) for pid in slow_pids]

            async def saturated() -> bool:
                status, _, _, _ = await call(session, "GET", service.public, "/health/live")
                return status == 503

            await wait_until(saturated, "the public listener to be saturated")
            burst = await asyncio.gather(*(
                call(session, "GET", service.public, f"/api/v1/token/{token}") if i % 3 == 0 else
                redeem(session, service.public, other if i % 3 == 1 else new_pid())
                for i in range(30)
            ))
            for status, headers, body, _ in burst:
                assert_unavailable(status, headers, body)
            # the internal listener has its own bound: the operator can still look
            status, _, body, _ = await call(session, "GET", service.internal, "/health/live")
            assert (status, body) == (200, {"status": "ok"})
            status, _, _, _ = await call(session, "GET", service.internal, "/metrics")
            assert status == 200
            assert not any(task.done() for task in slow)
        # the lock is gone: the queued writes complete instead of being dropped
        for status, _, body, _ in await asyncio.gather(*slow):
            assert (status, body["status"]) == (200, "success")
        status, _, body, _ = await call(session, "GET", service.public, "/health/live")
        assert status == 200
        async with session.get(f"http://{service.internal}/metrics") as resp:
            metrics = await resp.text()
    rejected = [line for line in metrics.splitlines()
                if line.startswith("anonticket_overload_rejections_total ")]
    assert rejected and float(rejected[0].split()[1]) >= 31
    fastest, slowest = min(b[3] for b in burst), max(b[3] for b in burst)
    assert slowest < 0.5, slowest
    print(f"\noverload: 30 concurrent requests over API_MAX_IN_FLIGHT=4 refused in "
          f"{fastest * 1000:.1f}-{slowest * 1000:.1f}ms")


async def test_idle_silent_and_slowloris_connections_are_closed(
        tmp_path: Path) -> None:
    # aiohttp closes a connection that has not delivered a complete request within the
    # keep-alive timeout of its start or of its last answer, however it trickles bytes.
    # The bound is far from both sides: a closing server takes about `keepalive`, well under
    # `bound` even when a loaded machine stalls this loop; a server that kept any of them
    # open would still hold it at `limit` (the trickle outlasts it), which fails the test.
    keepalive, bound, limit = 1.0, 10.0, 30.0
    async with in_process(tmp_path, API_KEEPALIVE_TIMEOUT_SECS=keepalive) as (host, port):
        idle_r, idle_w = await asyncio.open_connection(host, port)
        idle_w.write(b"GET /health/live HTTP/1.1\r\nHost: t\r\n\r\n")
        answer = await asyncio.wait_for(idle_r.readuntil(b'{"status":"ok"}'), 5)
        assert answer.startswith(b"HTTP/1.1 200")
        silent_r, silent_w = await asyncio.open_connection(host, port)
        slow_r, slow_w = await asyncio.open_connection(host, port)
        slow_w.write(b"GET /health/live HTTP/1.1\r\nHost: t\r\n")

        async def trickle() -> None:
            # one header line every 20 ms, never a complete request, for longer than `limit`
            for i in range(int(2 * limit / 0.02)):
                if slow_r.at_eof() or slow_w.is_closing():
                    return
                slow_w.write(b"X-Slow-%d: 1\r\n" % i)
                await asyncio.sleep(0.02)

        trickling = asyncio.create_task(trickle())
        try:
            results = await asyncio.gather(*(closed_after(r, limit) for r in
                                              (idle_r, silent_r, slow_r)))
        finally:
            trickling.cancel()
            for writer in (idle_w, silent_w, slow_w):
                writer.close()
    for what, (received, after) in zip(("idle", "silent", "slowloris"), results):
        assert received == b"", what
        assert after < bound, (what, after)


async def test_a_stalled_body_gives_its_slot_back(tmp_path: Path) -> None:
    async with in_process(tmp_path, API_MAX_IN_FLIGHT=2, API_BODY_TIMEOUT_SECS=0.3) as (host, port):
        stalled = [await asyncio.open_connection(host, port) for _ in range(2)]
        try:
            for _, writer in stalled:
                writer.write(b"POST /api/v1/redeem HTTP/1.1\r\nHost: t\r\n"
                             b"Content-Length: 40\r\n\r\n{\"pid\":")
            async with aiohttp.ClientSession(trust_env=False) as http:
                async def live() -> int:
                    async with http.get(f"http://{host}:{port}/health/live") as resp:
                        return resp.status
                # while both bodies stall, both slots are taken and every other customer gets 503
                await wait_until(lambda: _is(live(), 503), "the slots to be taken")
                # then the stalled requests are answered 408 and their slots come back
                await wait_until(lambda: _is(live(), 200), "the slots to come back", timeout=3)
            for reader, writer in stalled:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n"), 1)
                assert head.startswith(b"HTTP/1.1 408")
                # the rest of the body: aiohttp otherwise lingers 10 s for it, even at shutdown
                writer.write(b" " * (40 - len(b'{"pid":')))
        finally:
            for _, writer in stalled:
                writer.close()


async def _is(status: Awaitable[int], expected: int) -> bool:
    return await status == expected
