"""The regtest fixture against the real monerod / monero-wallet-rpc 0.18.

These pin what the payment monitor's tests rely on: a payment is in the merchant's
pool view when ``pay`` returns, confirmations count from the expected height,
reorgs and double spends make a transfer vanish, a watch-only merchant sees the
same, and nothing keeps running after ``stop`` or after the owner dies.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from regtest_fixtures import DIGEST_LOGIN, random_pid16

from anonticket.regtest import RegtestError, RegtestNetwork, actions, ensure_monero_installed
from anonticket.regtest.process import DirLock, pid_alive
from anonticket.regtest.rpc import RpcClient, RpcError

XMR = 10**12
NO_PAYMENT_ID = "0000000000000000"


def transfers(net: RegtestNetwork, **filters: Any) -> list[dict[str, Any]]:
    reply = net.merchant_rpc("get_transfers", {"in": True, "pool": True, **filters})
    return [t for kind in ("in", "pool") for t in reply.get(kind, [])]


def find(net: RegtestNetwork, txid: str) -> dict[str, Any] | None:
    found = [t for t in transfers(net) if t["txid"] == txid]
    assert len(found) <= 1
    return found[0] if found else None


def pool_txids(net: RegtestNetwork) -> set[str]:
    return {t["id_hash"] for t in net.daemon_rpc("/get_transaction_pool").get("transactions") or []}


def wait_until(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


@pytest.mark.regtest
def test_start_records_a_loopback_network_that_attach_reopens(monero_regtest: RegtestNetwork) -> None:
    net = monero_regtest
    state = json.loads((net.directory / "env.json").read_text())
    assert (state["daemon_url"], state["merchant_url"], state["payer_url"]) == (
        net.daemon_url, net.merchant_url, net.payer_url)
    assert all(url.startswith("http://127.0.0.1:") for url in (net.daemon_url, net.merchant_url, net.payer_url))
    assert set(state["pids"]) == {"monerod", "merchant", "payer", "watchdog"}
    assert all(pid_alive(pid) for pid in state["pids"].values())
    assert not net.view_only and net.rpc_login is None
    assert net.height() >= net.start_height >= 101
    assert net.merchant_rpc("get_address", {"account_index": 0})["address"] == net.merchant_address
    assert net.payer_rpc("get_balance", {"account_index": 0})["unlocked_balance"] > 100 * XMR

    other = RegtestNetwork.attach(net.directory)
    assert (other.daemon_url, other.merchant_url, other.payer_url) == (net.daemon_url, net.merchant_url, net.payer_url)
    assert other.height() == net.height()


@pytest.mark.regtest
def test_payment_is_in_the_pool_then_confirmed_at_the_expected_height(monero_regtest: RegtestNetwork) -> None:
    net = monero_regtest
    pid = random_pid16()
    paid = net.pay(pid, 3 * XMR // 2)
    assert paid["amount"] == 3 * XMR // 2 and paid["fee"] > 0 and len(paid["txid"]) == 64

    pooled = find(net, paid["txid"])
    assert pooled is not None
    assert (pooled["type"], pooled["height"], pooled["payment_id"], pooled["amount"]) == ("pool", 0, pid, 3 * XMR // 2)
    assert "confirmations" not in pooled

    assert net.mine(1) == paid["height"] + 1
    # min_height is exclusive: ask from the block before the one the tx landed in
    confirmed = [t for t in net.merchant_rpc("get_transfers", {"in": True, "filter_by_height": True,
                                                               "min_height": paid["height"] - 1})["in"]
                 if t["txid"] == paid["txid"]]
    assert [(t["confirmations"], t["height"], t["payment_id"], t["locked"]) for t in confirmed] == [
        (1, paid["height"], pid, True)]


@pytest.mark.regtest
def test_subaddress_payment_reports_no_payment_id(monero_regtest: RegtestNetwork) -> None:
    net = monero_regtest
    paid = net.pay_subaddress(2 * XMR, mine=1)
    seen = net.merchant_rpc("get_transfer_by_txid", {"txid": paid["txid"]})["transfer"]
    assert (seen["type"], seen["payment_id"], seen["amount"]) == ("in", NO_PAYMENT_ID, 2 * XMR)
    assert seen["subaddr_index"] == paid["subaddr_index"] and paid["subaddr_index"]["minor"] >= 1
    assert seen["address"].startswith("8")  # regtest subaddresses use the mainnet prefix


@pytest.mark.regtest
def test_reorg_drop_makes_the_merchant_forget_the_transaction(monero_regtest: RegtestNetwork) -> None:
    net = monero_regtest
    paid = net.pay(random_pid16(), XMR, mine=1)
    assert find(net, paid["txid"])["type"] == "in"

    result = net.reorg(1, drop=[paid["txid"]])
    assert [t["action"] for t in result["txs"] if t["txid"] == paid["txid"]] == ["dropped"]
    assert result["new_height"] == net.height() == paid["height"] + 1  # popped 1, mined 2
    assert net.daemon_rpc("get_last_block_header")["block_header"]["hash"] != result["old_top_hash"]
    assert find(net, paid["txid"]) is None
    assert net.daemon_rpc("/get_transactions", {"txs_hashes": [paid["txid"]]}).get("missed_tx") == [paid["txid"]]


@pytest.mark.regtest
def test_reorg_move_by_lands_the_transaction_later(monero_regtest: RegtestNetwork) -> None:
    net = monero_regtest
    paid = net.pay(random_pid16(), XMR, mine=1)
    mined_at = paid["height"] - 1
    assert find(net, paid["txid"])["height"] == mined_at

    net.reorg(1, drop=[paid["txid"]], move_by=2)
    moved = find(net, paid["txid"])
    assert moved is not None
    assert (moved["height"], moved["confirmations"]) == (mined_at + 2, net.height() - (mined_at + 2))


@pytest.mark.regtest
def test_double_spend_replace_removes_the_pool_payment(monero_regtest: RegtestNetwork) -> None:
    net = monero_regtest
    paid = net.pay(random_pid16(), XMR)
    assert find(net, paid["txid"])["type"] == "pool"

    result = net.double_spend(paid["txid"])
    assert result["double_spend_relayed"]
    assert find(net, paid["txid"]) is None
    pool = pool_txids(net)
    assert paid["txid"] not in pool and result["double_spend_txid"] in pool


@pytest.mark.regtest
def test_double_spend_attempt_is_flagged_in_the_merchant_pool_view(monero_regtest: RegtestNetwork) -> None:
    net = monero_regtest
    pid = random_pid16()
    paid = net.pay(pid, XMR, double_spend_attempt=True)
    seen = net.merchant_rpc("get_transfer_by_txid", {"txid": paid["txid"]})["transfer"]
    assert (seen["type"], seen["double_spend_seen"], seen["payment_id"]) == ("pool", True, pid)
    assert paid["double_spend_attempt_txid"] not in pool_txids(net)


@pytest.mark.regtest
def test_time_locked_payment_shows_its_unlock_time(monero_regtest: RegtestNetwork) -> None:
    net = monero_regtest
    unlock_at = net.height() + 500
    paid = net.pay(random_pid16(), XMR, unlock_time=unlock_at, mine=1)
    seen = net.merchant_rpc("get_transfer_by_txid", {"txid": paid["txid"]})["transfer"]
    assert (seen["type"], seen["unlock_time"], seen["locked"]) == ("in", unlock_at, True)


@pytest.mark.regtest
def test_pay_mines_more_blocks_when_the_payer_runs_dry(monero_regtest: RegtestNetwork,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    net = monero_regtest
    unlocked = net.payer_rpc("get_balance", {"account_index": 0})["unlocked_balance"]
    # a reserve as large as the whole unlocked balance: the payer looks dry
    monkeypatch.setattr(actions, "FEE_RESERVE", unlocked)
    pid = random_pid16()
    before = net.height()
    with caplog.at_level(logging.INFO, logger="anonticket.regtest"):
        paid = net.pay(pid, XMR)
    assert paid["height"] >= before + actions.REFILL_BLOCKS
    assert f"mining {actions.REFILL_BLOCKS} blocks" in caplog.text
    assert pid not in caplog.text and paid["txid"] not in caplog.text
    assert find(net, paid["txid"])["payment_id"] == pid


@pytest.mark.regtest
def test_two_handles_pay_concurrently_through_the_lock(monero_regtest: RegtestNetwork) -> None:
    net = monero_regtest
    other = RegtestNetwork.attach(net.directory)
    jobs = [(net, random_pid16()), (other, random_pid16())]
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda job: job[0].pay(job[1], XMR), jobs))
    seen = {t["txid"]: t["payment_id"] for t in transfers(net)}
    assert [seen.get(r["txid"]) for r in results] == [pid for _, pid in jobs]


@pytest.mark.regtest
def test_bad_payment_id_is_refused_without_echoing_it(monero_regtest: RegtestNetwork) -> None:
    with pytest.raises(RegtestError) as refused:
        monero_regtest.pay("zz-not-a-pid-zz", XMR)
    assert "not-a-pid" not in str(refused.value)


@pytest.mark.regtest
def test_view_only_digest_merchant_sees_payments_and_stop_leaves_nothing(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    directory = tmp_path_factory.mktemp("xmr-vo")
    net = RegtestNetwork.start(directory, view_only=True, merchant_rpc_login=DIGEST_LOGIN, owner_pid=os.getpid())
    try:
        pids = json.loads((directory / "env.json").read_text())["pids"]
        assert net.view_only and net.rpc_login == DIGEST_LOGIN
        with pytest.raises(RpcError):  # watch-only: there is no spend key to show
            net.merchant_rpc("query_key", {"key_type": "spend_key"})
        for login in (None, ("anon", "wrong")):
            with pytest.raises(RegtestError, match="401"):
                RpcClient("merchant", net.merchant_url, login).call("get_version")

        pid = random_pid16()
        paid = net.pay(pid, 4 * XMR + 2, mine=1)
        payments = net.merchant_rpc("get_payments", {"payment_id": pid})["payments"]
        assert [(p["tx_hash"], p["amount"], p["block_height"]) for p in payments] == [
            (paid["txid"], 4 * XMR + 2, paid["height"] - 1)]
    finally:
        net.stop()
    assert not [name for name, p in pids.items() if pid_alive(p)]
    assert json.loads((directory / "env.json").read_text())["stopped"]
    with pytest.raises(RegtestError, match="stopped"):
        RegtestNetwork.attach(directory)
    net.stop()  # idempotent


def test_watchdog_stops_the_network_when_its_owner_dies(tmp_path: Path) -> None:
    # stand-ins whose command line names the directory, as monerod's --data-dir does
    members = {name: subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", str(tmp_path)])
               for name in ("monerod", "merchant", "payer")}
    owner = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    root = str(Path(__file__).resolve().parents[2])
    watchdog = subprocess.Popen([sys.executable, "-m", "anonticket.regtest.watchdog", str(tmp_path), str(owner.pid)],
                                cwd=root, stderr=subprocess.PIPE)
    state = {"format": 1, "directory": str(tmp_path), "stopped": None,
             "pids": {**{name: p.pid for name, p in members.items()}, "watchdog": watchdog.pid}}
    (tmp_path / "env.json").write_text(json.dumps(state))
    try:
        assert all(p.poll() is None for p in members.values())
        owner.stdin.close()
        owner.wait(timeout=10)
        wait_until(lambda: all(p.poll() is not None for p in members.values()), 20, "the watchdog to stop them")
        assert watchdog.wait(timeout=10) == 0
        assert "owner" in json.loads((tmp_path / "env.json").read_text())["stopped"]
    finally:
        for p in (*members.values(), owner, watchdog):
            p.kill()
            p.wait()
        if watchdog.stderr is not None:
            watchdog.stderr.close()


def test_start_failure_raises_the_log_tail_and_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "monerod").write_text("#!/bin/sh\necho 'fake monerod: cannot open the blockchain'\nexit 3\n")
    (bindir / "monero-wallet-rpc").write_text("#!/bin/sh\nexec sleep 60\n")  # never answers
    for f in bindir.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("MONERO_BIN_DIR", str(bindir))

    with pytest.raises(RegtestError) as failed:
        RegtestNetwork.start(tmp_path / "net", timeout=20)
    assert "exited with code 3" in str(failed.value)
    assert "cannot open the blockchain" in str(failed.value)
    state = json.loads((tmp_path / "net" / "env.json").read_text())
    assert state["stopped"] and len(state["pids"]) == 3
    assert not [name for name, pid in state["pids"].items() if pid_alive(pid)]


class StemDaemon:
    """A stand-in monerod for the one moment the real one will not hold on demand: a
    transaction in the pool but left out of block templates (its Dandelion++ stem state,
    which ends on another thread a few ms later; under load, later). Here that lasts
    ``stem_polls`` template requests; a block takes what its template holds."""

    def __init__(self, txid: str, stem_polls: int) -> None:
        self.pool = {txid: stem_polls}
        self.blocks: list[list[str]] = []

    def template(self) -> list[str]:
        return [txid for txid, stem in self.pool.items() if stem <= 0]

    def call(self, method: str, params: dict[str, Any] | None = None, timeout: float = 0) -> dict[str, Any]:
        if method == "get_block_template":
            ready = self.template()
            for txid in self.pool:
                self.pool[txid] -= 1
            return {"blocktemplate_blob": "0e0e" + "".join(ready)}
        if method == "generateblocks":
            for _ in range((params or {})["amount_of_blocks"]):
                taken = self.template()
                self.blocks.append(taken)
                for txid in taken:
                    del self.pool[txid]
            return {"blocks": ["00" * 32] * (params or {})["amount_of_blocks"]}
        if method == "get_block_count":
            return {"count": 100 + len(self.blocks)}
        raise AssertionError(method)

    def path(self, path: str, body: dict[str, Any] | None = None, timeout: float = 0) -> dict[str, Any]:
        assert path == "/get_transaction_pool", path
        return {"transactions": [{"id_hash": txid, "double_spend_seen": False} for txid in self.pool]}


class Wallet:
    def call(self, method: str, params: dict[str, Any] | None = None, timeout: float = 0) -> dict[str, Any]:
        assert method == "refresh", method
        return {}


def test_mine_takes_the_pool_into_its_first_block() -> None:
    """``pay`` then ``mine 2`` (the sandbox's steps, and many tests') must give the
    payment exactly two confirmations: mine waits until the pool is in the template."""
    txid = "ab" * 32
    daemon = StemDaemon(txid, stem_polls=3)
    net = type("Net", (), {"lock": contextlib.nullcontext(), "daemon": daemon, "payer": Wallet(),
                           "merchant": Wallet(), "payer_address": "payer",
                           "height": lambda self: daemon.call("get_block_count")["count"]})()
    assert actions.mine(net, 2) == 102  # type: ignore[arg-type]
    assert daemon.blocks == [[txid], []]


# the interrupted Popen never learns that its child was stopped and reaped without it
@pytest.mark.filterwarnings("ignore:subprocess .* is still running:ResourceWarning")
def test_an_interrupt_inside_a_spawn_leaves_nothing_running(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C (or the sandbox's SIGTERM) can land inside Popen after its fork: the child
    runs, but no Popen object or recorded pid holds it. The start's cleanup must find it
    anyway, before the interrupt goes on: once start has raised, nothing names the
    directory (a single look is right here; nothing is stopping in the background)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name in ("monerod", "monero-wallet-rpc"):  # stand-ins that keep their arguments
        (bindir / name).write_text(f'#!/bin/sh\nexec {sys.executable} -c "import time; time.sleep(120)" "$@"\n')
        (bindir / name).chmod(0o755)
    monkeypatch.setenv("MONERO_BIN_DIR", str(bindir))
    real = subprocess.Popen._execute_child  # type: ignore[attr-defined]
    spawned: list[int] = []

    def interrupted_after_the_fork(self: subprocess.Popen[bytes], *args: Any, **kwargs: Any) -> None:
        real(self, *args, **kwargs)
        spawned.append(self.pid)
        if len(spawned) == 3:  # the payer's wallet-rpc: forked, never recorded
            raise KeyboardInterrupt

    monkeypatch.setattr(subprocess.Popen, "_execute_child", interrupted_after_the_fork)
    root = tmp_path / "net"
    with pytest.raises(KeyboardInterrupt):
        RegtestNetwork.start(root, timeout=20)
    monkeypatch.undo()
    assert len(spawned) == 3
    assert [pid for pid in spawned if pid_alive(pid)] == []


def test_a_binary_dir_without_monero_is_an_error_not_an_install(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MONERO_BIN_DIR", str(tmp_path))
    with pytest.raises(RegtestError, match="lacks monerod"):
        ensure_monero_installed()


def test_dir_lock_is_reentrant_and_exclusive(tmp_path: Path) -> None:
    holder = DirLock(tmp_path / ".lock")
    other = DirLock(tmp_path / ".lock", timeout=0.3)
    with holder:
        with holder:  # pay(mine=1) re-enters through mine
            pass
        with pytest.raises(RegtestError, match="timed out"), other:
            pass
    with other:  # released with the outermost exit
        pass
