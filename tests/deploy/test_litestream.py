"""Litestream (issue 15): a running service's database replicated, everything killed, restored.

Real parts only: ``bin/anonticket serve`` crediting from a fake wallet-rpc (the one fake:
no chain is needed to make ledger rows), the ``litestream`` binary of the ``litestream``
extra running the shipped unit's command line on the shipped ``deploy/litestream.yml``
with its paths moved into ``tmp_path``, under the kernel's MDWE as the unit asks. After
credits (one poll of them large enough for the service's own background WAL checkpoint
to run under Litestream's read lock), redeems, a top-up, a debit and a revocation are on
the replica, both processes get SIGKILL and the database is restored the way
docs/operations.md tells the operator to; ``anonticket db check`` must pass on it, it
must hold exactly the ledger that was replicated, and a revocation made after
Litestream died must be missing from it: the recovery point. The runbook then goes on:
the restored file in place, both started again, the lost revocation re-applied with
``anonticket token revoke``, the service stopped, the replica polled until it holds that
revocation too, and the whole ledger restored from the same replica once more.

The binary comes with ``bin/setup --test`` (the test extra); without it the tests that run
it are skipped, except under ``CI``, where a missing binary is a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from anonticket.domain.ids import PaymentId
from crash_helpers import (
    BIN,
    RecordingWallet,
    ServiceProcess,
    call,
    pay,
    readiness,
    readonly_db,
    redeem,
    service_env,
    token_for,
    wait_until,
)
from test_deploy_files import env_file_values, exec_start, mdwe_prefix

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "deploy" / "litestream.yml"
UNIT = REPO / "systemd" / "anonticket-litestream.service"
ENV_EXAMPLE = REPO / "systemd" / "anonticket.env.example"
SHIPPED_DB = "/var/lib/anonticket/anonticket.db"
SHIPPED_REPLICA = "/var/backups/anonticket/litestream"
SHIPPED_CONFIG = "/etc/anonticket/litestream.yml"
UNIT_CONFIG = "%d/litestream.yml"  # LoadCredential=litestream.yml:SHIPPED_CONFIG
SHIPPED_BINARY = "/opt/anonticket/.venv/bin/litestream"

# the extra installs the binary next to this interpreter; PATH is the fallback
LITESTREAM = (shutil.which("litestream", path=str(Path(sys.executable).parent))
              or shutil.which("litestream"))
MISSING = "litestream is not installed: pip install '.[litestream]' (bin/setup --test does)"
# under CI the tests run anyway and fail on the missing binary instead of skipping
needs_litestream = pytest.mark.skipif(LITESTREAM is None and not os.environ.get("CI"),
                                      reason=MISSING)

MONITOR = {
    "MONITOR_POLL_INTERVAL_SECS": "0.05",
    "MONITOR_MIN_CONFIRMATIONS": "1",
    "MONERO_RPC_TIMEOUT_SECS": "5",
}
BULK = 1200  # one poll credits this many: past BULK_CREDIT_TRANSFERS, so the background
# checkpointer runs (anonticket/storage/payments.py) while Litestream holds its read lock
AMOUNT = 5000
# tables that are not the ledger: the cursor moves on its own, Litestream's are its own
NOT_LEDGER = ("monitor_state", "_litestream_seq", "_litestream_lock")


def litestream_config(directory: Path, database: Path, replica: Path) -> Path:
    """deploy/litestream.yml with its two paths moved; nothing else changed."""
    text = CONFIG.read_text()
    for old, new in ((SHIPPED_DB, str(database)), (SHIPPED_REPLICA, str(replica))):
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    path = directory / "litestream.yml"
    path.write_text(text)
    return path


def replicate_argv(config: Path) -> list[str]:
    """The unit's ExecStart with the binary and the config moved."""
    argv = exec_start(UNIT.read_text())
    assert argv == [SHIPPED_BINARY, "replicate", "-config", UNIT_CONFIG]
    assert LITESTREAM is not None, MISSING
    return [*mdwe_prefix(), LITESTREAM, "replicate", "-config", str(config)]


def ledger(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every ledger table's rows, sorted, read without writing to the file."""
    with readonly_db(path) as db:
        names = [row[0] for row in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
        return {name: sorted(db.execute(f'SELECT * FROM "{name}"'))  # noqa: S608 - own names
                for name in names if name not in NOT_LEDGER}


def restore(config: Path, database: Path, output: Path) -> subprocess.CompletedProcess[str]:
    """The runbook's restore: by the database path the config names, to a new file."""
    assert LITESTREAM is not None, MISSING
    for stale in (output, Path(f"{output}-wal"), Path(f"{output}-shm")):
        stale.unlink(missing_ok=True)
    return subprocess.run([LITESTREAM, "restore", "-config", str(config), "-o", str(output),
                           str(database)], capture_output=True, text=True, timeout=60, check=False)


class Litestream:
    """``litestream replicate`` in a child process, its output kept in a file."""

    def __init__(self, argv: list[str], log: Path) -> None:
        self.log_path = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.wait(10) == -signal.SIGKILL

    def terminate(self) -> int:
        """SIGTERM, as systemctl stop sends it: Litestream syncs the replica, then exits."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(trust_env=False) as http:
        yield http


async def caught_up(session: aiohttp.ClientSession, service: ServiceProcess,
                    wallet: RecordingWallet) -> None:
    target = wallet.height - 1

    async def check() -> bool:
        body = await readiness(session, service)
        scanned = body["monitor"]["scanned_height"]
        return body["http"] == 200 and scanned is not None and scanned >= target

    await wait_until(check, "the monitor to credit everything the wallet has", timeout=60,
                     interval=0.05)


async def on_the_replica(config: Path, database: Path, probe: Path,
                         expected: dict[str, list[tuple[Any, ...]]], what: str) -> None:
    """Poll restores from the replica until one gives exactly ``expected``."""
    def restored_matches() -> bool:
        done = restore(config, database, probe)
        return done.returncode == 0 and ledger(probe) == expected

    await wait_until(restored_matches, what, timeout=30, interval=0.2)


def db_check(path: Path) -> None:
    checked = subprocess.run([str(BIN), "db", "check"], capture_output=True, text=True,
                             timeout=60, check=False,
                             env={"PATH": os.environ["PATH"], "DATABASE_URL": str(path)})
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "integrity_check: ok" in checked.stdout
    assert "ledger (payments = sum of their transfers): ok" in checked.stdout


def lose_the_disk_and_restore(config: Path, database: Path, output: Path) -> None:
    """The database, its WAL and Litestream's local state beside it are gone; only the
    replica is left."""
    shutil.rmtree(database.parent)
    done = restore(config, database, output)
    assert done.returncode == 0, done.stdout + done.stderr
    db_check(output)


def revoked_tokens(path: Path) -> set[str]:
    with readonly_db(path) as db:
        return {bytes(row[0]).hex() for row in db.execute(
            "SELECT token FROM service_tokens WHERE revoked_at IS NOT NULL")}


@needs_litestream
async def test_replica_restores_the_ledger_up_to_the_recovery_point(
        tmp_path: Path, session: aiohttp.ClientSession) -> None:
    database, replica = tmp_path / "data" / "anonticket.db", tmp_path / "replica"
    probe, restored = tmp_path / "probe.db", tmp_path / "restored.db"
    database.parent.mkdir()
    config = litestream_config(tmp_path, database, replica)
    wallet = RecordingWallet(height=10)
    await wallet.start()
    litestream: Litestream | None = None
    service = ServiceProcess(service_env(database, MONERO_RPC_URL=wallet.url, **MONITOR))
    try:
        # The unit's order: Litestream first (it waits for the file), then the service.
        litestream = Litestream(replicate_argv(config), tmp_path / "litestream.log")
        await service.start()
        await caught_up(session, service, wallet)
        # Litestream's first snapshot (of the empty ledger) first: the bulk credit then
        # commits, and the service checkpoints it, while Litestream holds its read lock
        await on_the_replica(config, database, probe, ledger(database),
                             "Litestream's first snapshot")
        bulk = [PaymentId.generate().hex() for _ in range(BULK)]
        txids = pay(wallet, *bulk, amount=AMOUNT)
        await caught_up(session, service, wallet)
        credited = ledger(database)
        assert len(credited["payments"]) == len(credited["transfers"]) == BULK
        await on_the_replica(config, database, probe, credited,
                             "the bulk credit to reach the replica")

        tokens = []
        for pid in bulk[:4]:
            status, _, body, _ = await redeem(session, service.public, pid)
            assert (status, body["status"]) == (200, "success"), body
            assert body["service_token"] == token_for(pid, txids[pid])
            tokens.append(body["service_token"])
        topped, debited, revoked, revoked_later = tokens
        status, _, body, _ = await call(session, "POST", service.public,
                                        f"/api/v1/token/{topped}/topup", {"pid": bulk[4]})
        assert (status, body["balance"]) == (200, 2 * AMOUNT), body
        status, body = await debit(session, service, debited, 1234)
        assert (status, body["amount"]) == (200, 1234), body
        status, _, body, _ = await call(session, "POST", service.internal,
                                        f"/api/v1/token/{revoked}/revoke", {"reason": "shared"})
        assert (status, body["status"]) == (200, "revoked"), body
        answered = time.monotonic()
        replicated = ledger(database)
        assert len(replicated["debits"]) == len(replicated["audit_log"]) == 1
        await on_the_replica(config, database, probe, replicated,
                             "the replica to hold the last write")
        lag = time.monotonic() - answered  # an upper bound: polled by whole restores
        assert "background WAL checkpoint failed" not in service.log()

        # Litestream dies first: what the service writes from now on is past the recovery point.
        litestream.kill()
        status, _, body, _ = await call(session, "POST", service.internal,
                                        f"/api/v1/token/{revoked_later}/revoke",
                                        {"reason": "after the last frame"})
        assert (status, body["status"]) == (200, "revoked"), body
        await service.kill()
        assert revoked_tokens(database) == {revoked, revoked_later}
    finally:
        if litestream is not None:
            litestream.stop()
        if service.alive():
            await service.kill()
        await wallet.close()
    assert "Traceback" not in service.log(), service.log()
    assert "level=ERROR" not in litestream.log(), litestream.log()

    print(f"\nlitestream: the last write was restorable from the replica {lag:.2f}s after "
          "its answer")
    lose_the_disk_and_restore(config, database, restored)
    back = ledger(restored)
    assert back == replicated  # every credit, redeem, top-up, debit and the first revocation
    assert revoked_tokens(restored) == {revoked}  # the later one a restore cannot bring back
    assert bytes.fromhex(revoked_later) not in {bytes(row[3]) for row in back["audit_log"]}
    with readonly_db(restored) as db:
        assert db.execute("SELECT scanned_height FROM monitor_state").fetchone()[0] >= 10

    # The runbook goes on: the checked file takes the database's place, both start again,
    # the operator re-applies the lost revocation, and replication carries on from there.
    database.parent.mkdir()
    restored.rename(database)
    litestream = Litestream(replicate_argv(config), tmp_path / "litestream-again.log")
    service = ServiceProcess(service_env(database, MONITOR_ENABLED="false"))
    try:
        await service.start()
        again = subprocess.run(
            [str(BIN), "token", "revoke", "-", "--reason", "re-applied after a restore"],
            input=revoked_later + "\n", capture_output=True, text=True, timeout=60, check=False,
            env={"PATH": os.environ["PATH"], "DATABASE_URL": str(database),
                 "API_INTERNAL_BIND_ADDRESS": service.internal})
        assert again.returncode == 0, again.stdout + again.stderr
        # The unit's stop order (Before=anonticket.service): the service stops first, then
        # Litestream. Its shutdown sync is not what is tested: a Litestream stopped within
        # a second of its start may not have opened the database yet (seen under load),
        # so the replica is polled for the re-applied revocation instead.
        assert await service.stop() == 0, service.log()
        reapplied = ledger(database)
        assert revoked_tokens(database) == {revoked, revoked_later}
        await on_the_replica(config, database, probe, reapplied,
                             "the re-applied revocation to reach the replica")
        assert litestream.terminate() == 0, litestream.log()
    finally:
        litestream.stop()
        if service.alive():
            await service.kill()
    assert "level=ERROR" not in litestream.log(), litestream.log()
    lose_the_disk_and_restore(config, database, restored)
    assert ledger(restored) == reapplied


async def debit(session: aiohttp.ClientSession, service: ServiceProcess, token: str,
                amount: int) -> tuple[int, Any]:
    async with session.post(f"http://{service.internal}/api/v1/token/{token}/debit",
                            json={"amount": amount, "memo": "replicated"},
                            headers={"Idempotency-Key": "litestream-test-1"}) as resp:
        return resp.status, await resp.json()


# ---------------------------------------------------------------- the shipped files

# Every key Litestream 0.5 reads (cmd/litestream/main.go's yaml tags) that these files use
# or may: Litestream ignores an unknown key, so a misspelt one would silently do nothing.
KNOWN_KEYS = {
    "": {"snapshot", "dbs", "addr", "logging", "levels", "retention", "validation",
         "l0-retention", "l0-retention-check-interval", "shutdown-sync-timeout",
         "shutdown-sync-interval"},
    "snapshot": {"interval", "retention"},
    "db": {"path", "replica", "meta-path", "monitor-interval", "checkpoint-interval",
           "busy-timeout", "min-checkpoint-page-count", "truncate-page-n", "snapshot"},
    "replica": {"type", "path", "url", "sync-interval", "validation-interval", "bucket",
                "endpoint", "region", "force-path-style", "access-key-id",
                "secret-access-key", "storage-class", "sign-payload", "skip-verify"},
}


def _s3_variant(text: str) -> str:
    """The file with its commented S3 replica in place of the directory one."""
    text, removed = re.subn(r"^    replica:\n      type: file\n(?:      .*\n|      #.*\n)*", "",
                            text, flags=re.M)
    assert removed == 1
    text, uncommented = re.subn(r"^    # (replica:|  \S.*)$", r"    \1", text, flags=re.M)
    assert uncommented >= 5
    return text


def _check_keys(doc: dict[str, Any]) -> dict[str, Any]:
    assert set(doc) <= KNOWN_KEYS[""], set(doc) - KNOWN_KEYS[""]
    assert set(doc.get("snapshot", {})) <= KNOWN_KEYS["snapshot"]
    [db] = doc["dbs"]
    assert set(db) <= KNOWN_KEYS["db"], set(db) - KNOWN_KEYS["db"]
    assert set(db["replica"]) <= KNOWN_KEYS["replica"], set(db["replica"]) - KNOWN_KEYS["replica"]
    return db


def test_config_matches_the_service_and_keeps_a_one_second_recovery_point():
    doc = yaml.safe_load(CONFIG.read_text())
    db = _check_keys(doc)
    assert db["path"] == env_file_values(ENV_EXAMPLE.read_text())["DATABASE_URL"] == SHIPPED_DB
    assert db["replica"] == {"type": "file", "path": SHIPPED_REPLICA, "sync-interval": "1s"}
    s3 = _check_keys(yaml.safe_load(_s3_variant(CONFIG.read_text())))["replica"]
    assert s3["type"] == "s3" and s3["sync-interval"] == "1s"
    assert not {"access-key-id", "secret-access-key"} & set(s3)  # from the environment only
    assert "LITESTREAM_SECRET_ACCESS_KEY" in CONFIG.read_text()


@needs_litestream
@pytest.mark.parametrize("variant", ["file", "s3"])
def test_litestream_accepts_the_config(tmp_path, variant):
    config = litestream_config(tmp_path, tmp_path / "anonticket.db", tmp_path / "replica")
    if variant == "s3":
        config.write_text(_s3_variant(config.read_text()))
    assert LITESTREAM is not None, MISSING
    listed = subprocess.run([LITESTREAM, "databases", "-config", str(config)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert listed.returncode == 0, listed.stderr
    assert re.search(rf"^{re.escape(str(tmp_path / 'anonticket.db'))}\s+{variant}$",
                     listed.stdout, re.M), listed.stdout
    version = subprocess.run([LITESTREAM, "version"], capture_output=True, text=True,
                             timeout=60, check=True)
    assert version.stdout.startswith("0.5."), version.stdout  # the config format of 0.5


def test_unit_runs_as_the_service_user_and_stops_after_it():
    text = UNIT.read_text()
    for line in ("User=anonticket", "Group=anonticket", "UMask=0077", "Type=exec",
                 "Restart=on-failure", "Wants=anonticket.service", "Before=anonticket.service",
                 "ReadWritePaths=/var/backups/anonticket", "StateDirectory=anonticket",
                 f"LoadCredential=litestream.yml:{SHIPPED_CONFIG}",
                 "MemoryDenyWriteExecute=yes", "ProtectSystem=strict", "IPAddressDeny=any"):
        assert re.search(rf"^{re.escape(line)}$", text, re.M), line
    assert not re.search(r"^After=.*anonticket\.service", text, re.M)
    assert SHIPPED_REPLICA.startswith("/var/backups/anonticket/")
    assert exec_start(text) == [SHIPPED_BINARY, "replicate", "-config", UNIT_CONFIG]


def test_ledger_dump_sees_a_difference(tmp_path):
    """``ledger`` is what the main test compares: it must notice one changed row."""
    path = tmp_path / "t.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE audit_log (id INTEGER PRIMARY KEY, reason TEXT)")
    db.execute("CREATE TABLE monitor_state (id INTEGER PRIMARY KEY, scanned_height INTEGER)")
    db.execute("INSERT INTO audit_log (reason) VALUES ('a')")
    db.commit()
    before = ledger(path)
    db.execute("UPDATE monitor_state SET scanned_height = 1")
    db.commit()
    assert ledger(path) == before  # the cursor is not the ledger
    db.execute("UPDATE audit_log SET reason = 'b'")
    db.commit()
    db.close()
    assert ledger(path) != before
