"""Start, find and stop a private regtest Monero network: monerod + two wallet-rpc.

``merchant`` is the receiving wallet the service watches (watch-only when asked, the
production setup); ``payer`` is a funded wallet that pays it like a customer would.
Everything binds 127.0.0.1 on free ports and makes no outbound connection
(``--offline``, no DNS, no peers). DIRECTORY/env.json records urls and pids so that
``attach``, ``stop`` and the owner-pid watchdog work from any process.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anonticket.regtest import actions
from anonticket.regtest.errors import RegtestError
from anonticket.regtest.process import DirLock, ensure_monero_installed, free_ports, require_binary, spawn, tail
from anonticket.regtest.record import ENV_FILE, ENV_FORMAT, load_state, running, stop_recorded, write_state
from anonticket.regtest.rpc import RpcClient

log = logging.getLogger("anonticket.regtest")


@dataclass(frozen=True)
class WalletKeys:
    address: str
    spend_key: str
    view_key: str


# Fixed test keys (regtest only, never on a real network): addresses stay the same
# across runs, and the chain can be mined to the payer while its wallet is created.
MERCHANT_KEYS = WalletKeys(
    "435CNkaTRD9PHWEbixszvSfaG6UYdSwq7bEwRxJVTcea9Sz2YfppjWDFQBzniXsqhKYZo4FJQf4ZbJeSu9Pu8WxL4bpF6az",
    "df948b64f84a82258987bbf379da18f2e3c71318483a23343c8ee0606ea7f109",
    "31a38784ce6e21c6b686bf8056105c25c76e8283ea0529fa82acfc6a2f9e9406",
)
PAYER_KEYS = WalletKeys(
    "4B21rCTj9H95UPrRKPZ3NxYheciRAnHHNd5gEGk318wAexU3ZU2uPnSig1gpxFzxmL3cqo42FJB7VQQCumQez9tcDmzW26p",
    "b24abb0dfa766caa2da1378cf01a093419de5c13d5cdf40e9ead70a294a57d01",
    "3955a62fb3e6d8a958cf853aa93117726554f3339dfd2f33b10a6a50c14c0009",
)
# A coinbase output unlocks 60 blocks after it is mined and a ring needs 16 spendable
# outputs: 76 blocks is the bare minimum for a first payment.
MIN_BLOCKS = 80
MERCHANT_AUTO_REFRESH_SECONDS = 1
LOG_LEVEL = "0"
HOST = "127.0.0.1"


class _PortRace(RegtestError):
    """Another process took one of our free ports between probing and binding."""


class RegtestNetwork:
    """A running network; create it with ``start`` or reopen it with ``attach``."""

    directory: Path
    daemon_url: str
    merchant_url: str
    payer_url: str
    merchant_address: str
    payer_address: str
    merchant_view_key: str
    view_only: bool
    rpc_login: tuple[str, str] | None
    start_height: int

    def __init__(self, state: dict[str, Any], procs: dict[str, subprocess.Popen[bytes]] | None = None,
                 lock: DirLock | None = None) -> None:
        """Private: use ``start`` or ``attach``."""
        self.directory = Path(state["directory"])
        self.daemon_url = state["daemon_url"]
        self.merchant_url = state["merchant_url"]
        self.payer_url = state["payer_url"]
        self.merchant_address = state["merchant_address"]
        self.payer_address = state["payer_address"]
        self.merchant_view_key = state["merchant_view_key"]
        self.view_only = bool(state["view_only"])
        login = state.get("rpc_login")
        self.rpc_login = (str(login[0]), str(login[1])) if login else None
        self.start_height = int(state.get("start_height") or 0)
        self.auto_refresh_seconds = int(state.get("auto_refresh") or 0)
        self.lock = lock or DirLock(self.directory / ".lock")
        self.daemon = RpcClient("monerod", self.daemon_url)
        self.merchant = RpcClient("merchant wallet-rpc", self.merchant_url, self.rpc_login)
        self.payer = RpcClient("payer wallet-rpc", self.payer_url)
        self._procs = dict(procs or {})

    def __repr__(self) -> str:
        return f"<RegtestNetwork {self.directory} daemon={self.daemon_url} view_only={self.view_only}>"

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def start(cls, directory: str | os.PathLike[str], *, view_only: bool = False, blocks: int = 100,
              timeout: float = 120.0, merchant_rpc_login: tuple[str, str] | None = None,
              owner_pid: int | None = None) -> RegtestNetwork:
        """Start a fresh network in DIRECTORY and fund the payer with ``blocks`` blocks.

        100 blocks leave ~40 unlocked coinbase outputs (~20 payments); ``pay`` mines
        more by itself when they run out. On failure everything started is stopped
        and RegtestError carries the tails of the process logs.
        """
        if blocks < MIN_BLOCKS:
            raise RegtestError(f"blocks must be >= {MIN_BLOCKS} (coinbase unlock 60 + ring size 16)")
        if merchant_rpc_login is not None and (not merchant_rpc_login[0] or ":" in merchant_rpc_login[0]):
            raise RegtestError("the merchant_rpc_login user must be non-empty and contain no ':'")
        root = Path(directory).resolve()
        root.mkdir(parents=True, exist_ok=True)
        # one lock object for the whole start, so cleaning up after a failure re-enters it
        lock = DirLock(root / ".lock")
        with lock:
            previous = load_state(root)
            if previous and not previous.get("stopped") and running(root, previous):
                raise RegtestError(f"a regtest network is already running in {root}: attach() or stop() it")
            ensure_monero_installed()
            for attempt in range(3):
                procs: dict[str, subprocess.Popen[bytes]] = {}
                try:
                    return cls._start_once(root, lock, procs, view_only, blocks, timeout, merchant_rpc_login,
                                           owner_pid)
                except _PortRace as exc:
                    log.warning("lost a port race (%s); retrying with new ports", exc)
                    stop_recorded(root, "port race", procs, lock)
                    if attempt == 2:
                        raise
                except BaseException:
                    # fail loudly, but leave nothing running behind
                    try:
                        stop_recorded(root, "start failed", procs, lock)
                    except Exception as cleanup_error:  # noqa: BLE001 - the original error matters more
                        log.error("cleanup after a failed start also failed: %s", cleanup_error)
                    raise
        raise AssertionError("unreachable")

    @classmethod
    def _start_once(cls, root: Path, lock: DirLock, procs: dict[str, subprocess.Popen[bytes]], view_only: bool,
                    blocks: int, timeout: float, login: tuple[str, str] | None,
                    owner_pid: int | None) -> RegtestNetwork:
        started = time.monotonic()
        deadline = started + timeout
        for sub in ("daemon", "merchant", "payer"):
            shutil.rmtree(root / sub, ignore_errors=True)
            (root / sub).mkdir()
        (root / ENV_FILE).unlink(missing_ok=True)
        d_port, d_p2p, m_port, p_port = free_ports(4)
        state: dict[str, Any] = {
            "format": ENV_FORMAT, "directory": str(root),
            "daemon_url": f"http://{HOST}:{d_port}", "merchant_url": f"http://{HOST}:{m_port}",
            "payer_url": f"http://{HOST}:{p_port}",
            "merchant_address": MERCHANT_KEYS.address, "merchant_view_key": MERCHANT_KEYS.view_key,
            "merchant_wallet_dir": str(root / "merchant"), "merchant_wallet_file": "merchant",
            "payer_address": PAYER_KEYS.address, "view_only": view_only,
            "rpc_login": list(login) if login else None, "auto_refresh": 0, "pids": {}, "stopped": None,
        }
        logs = {"monerod": root / "daemon" / "stdout.log", "merchant": root / "merchant" / "stdout.log",
                "payer": root / "payer" / "stdout.log"}
        log.info("starting monerod (regtest, offline) on %s", state["daemon_url"])
        procs["monerod"] = spawn(_daemon_argv(root, d_port, d_p2p), logs["monerod"], root / "daemon")
        # wallet-rpc connects to the daemon lazily, so all three start together
        procs["merchant"] = spawn(_wallet_argv(root, "merchant", m_port, d_port, login), logs["merchant"],
                                  root / "merchant")
        procs["payer"] = spawn(_wallet_argv(root, "payer", p_port, d_port, None), logs["payer"], root / "payer")
        state["pids"] = {name: proc.pid for name, proc in procs.items()}
        write_state(root, state)  # pids first, so a stop from anywhere can clean up
        if owner_pid:  # watch from the start: a start can take a minute and be SIGKILLed
            procs["watchdog"] = _start_watchdog(root, owner_pid)
            state["pids"]["watchdog"] = procs["watchdog"].pid
            write_state(root, state)
        net = cls(state, procs, lock)
        try:
            _wait_rpc(net.daemon, "get_info", procs["monerod"], logs["monerod"], deadline)
            _fund_and_create_wallets(net, procs, logs, view_only, blocks, deadline)
        except RegtestError as exc:
            if _lost_port_race(logs):
                raise _PortRace(str(exc).partition("\n")[0]) from None
            raise

        remaining = max(30.0, deadline - time.monotonic())
        net.payer.call("refresh", timeout=remaining)
        net.merchant.call("refresh", timeout=remaining)
        unlocked = net.payer.call("get_balance", {"account_index": 0}).get("unlocked_balance", 0)
        if not unlocked:
            raise RegtestError(f"the payer has no unlocked balance after {blocks} blocks")
        # wallet-rpc's own background refresh is every 20 s; a monitor under test should
        # see a new block within about a second, as with a busy production wallet.
        net.merchant.call("auto_refresh", {"enable": True, "period": MERCHANT_AUTO_REFRESH_SECONDS})
        net.auto_refresh_seconds = state["auto_refresh"] = MERCHANT_AUTO_REFRESH_SECONDS
        net.start_height = state["start_height"] = net.height()
        state["started_in_seconds"] = round(time.monotonic() - started, 2)
        write_state(root, state)
        log.info("regtest network up in %.1fs at height %d (payer unlocked %.1f XMR, view_only=%s) in %s",
                 state["started_in_seconds"], net.start_height, unlocked / 1e12, view_only, root)
        return net

    @classmethod
    def attach(cls, directory: str | os.PathLike[str]) -> RegtestNetwork:
        """Reopen a network another process started (its env.json), checking it answers."""
        root = Path(directory).resolve()
        state = load_state(root)
        if not state:
            raise RegtestError(f"no regtest network in {root} (no readable {ENV_FILE})")
        if state.get("stopped"):
            raise RegtestError(f"the regtest network in {root} was stopped ({state['stopped']})")
        if not running(root, state):
            raise RegtestError(f"the regtest network in {root} is not running (its processes are gone)")
        net = cls(state)
        net.daemon.call("get_info", timeout=10)
        return net

    def stop(self) -> None:
        """Stop everything recorded for this network; safe to call twice or after the watchdog."""
        stop_recorded(self.directory, "stopped", self._procs, self.lock)

    # ------------------------------------------------------------------ rpc
    def daemon_rpc(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """monerod JSON-RPC, or a path endpoint when ``method`` starts with ``/``."""
        return self.daemon.call(method, params)

    def merchant_rpc(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.merchant.call(method, params)

    def payer_rpc(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.payer.call(method, params)

    def height(self) -> int:
        """Daemon block count: top block height + 1, what wallet-rpc ``get_height`` reports."""
        return int(self.daemon.call("get_block_count")["count"])

    def sync(self) -> None:
        """Refresh both wallets now, so their views match the daemon when this returns."""
        with self.lock:
            actions.sync(self)

    # ------------------------------------------------------------------ actions
    def mine(self, n: int) -> int:
        """Mine n blocks to the payer, refresh both wallets; the new block count."""
        return actions.mine(self, n)

    def pay(self, pid16: str, amount: int, *, mine: int = 0, double_spend_attempt: bool = False,
            unlock_time: int = 0) -> dict[str, Any]:
        """Pay the merchant's integrated address for ``pid16``; see ``actions.pay``."""
        return actions.pay(self, pid16, amount, mine=mine, double_spend_attempt=double_spend_attempt,
                           unlock_time=unlock_time)

    def pay_subaddress(self, amount: int, *, mine: int = 0) -> dict[str, Any]:
        """Pay a new merchant subaddress (no payment id)."""
        return actions.pay_subaddress(self, amount, mine=mine)

    def pay_address(self, address: str, amount: int, *, mine: int = 0) -> dict[str, Any]:
        return actions.pay_address(self, address, amount, mine=mine)

    def pay_many(self, destinations: list[tuple[str, int]], *, mine: int = 0) -> dict[str, Any]:
        """One transaction paying every (address, amount); see ``actions.pay_many``."""
        return actions.pay_many(self, destinations, mine=mine)

    def reorg(self, depth: int, *, drop: list[str] | tuple[str, ...] = (),
              move_by: int | None = None) -> dict[str, Any]:
        """Replace the top ``depth`` blocks; see ``actions.reorg``."""
        return actions.reorg(self, depth, drop=drop, move_by=move_by)

    def double_spend(self, txid: str, *, mode: str = "replace") -> dict[str, Any]:
        """Double-spend a payer tx still in the pool; see ``actions.double_spend``."""
        return actions.double_spend(self, txid, mode=mode)

    def evict(self, txid: str) -> str:
        """Drop a pool tx unmined (the wallet sees it nowhere); its blob; see ``actions.evict``."""
        return actions.evict(self, txid)

    def resubmit(self, blob: str, txid: str) -> None:
        """Relay an evicted tx again; see ``actions.resubmit``."""
        actions.resubmit(self, blob, txid)


# ---------------------------------------------------------------------- helpers
def _daemon_argv(root: Path, port: int, p2p_port: int) -> list[str]:
    """Offline, no peers, no DNS, no UPnP, no ZMQ: nothing leaves 127.0.0.1."""
    return [
        require_binary("monerod"), "--regtest", "--offline", "--fixed-difficulty", "1",
        "--data-dir", str(root / "daemon"),
        "--rpc-bind-ip", HOST, "--rpc-bind-port", str(port), "--rpc-ssl", "disabled",
        "--p2p-bind-ip", HOST, "--p2p-bind-port", str(p2p_port),
        "--no-igd", "--no-zmq", "--disable-dns-checkpoints", "--check-updates", "disabled",
        "--out-peers", "0", "--in-peers", "0", "--hide-my-port", "--disable-rpc-ban",
        "--non-interactive", "--log-level", LOG_LEVEL,
        "--log-file", str(root / "daemon" / "monerod.log"), "--max-log-files", "2",
    ]


def _wallet_argv(root: Path, name: str, port: int, daemon_port: int, login: tuple[str, str] | None) -> list[str]:
    # --rpc-login puts the password on the command line: acceptable for a test login only
    auth = ["--rpc-login", f"{login[0]}:{login[1]}"] if login else ["--disable-rpc-login"]
    return [
        require_binary("monero-wallet-rpc"), "--daemon-address", f"{HOST}:{daemon_port}", "--trusted-daemon",
        "--daemon-ssl", "disabled", "--rpc-bind-ip", HOST, "--rpc-bind-port", str(port), "--rpc-ssl", "disabled",
        *auth, "--disable-rpc-ban", "--wallet-dir", str(root / name),
        "--shared-ringdb-dir", str(root / name / "ringdb"), "--no-dns", "--non-interactive",
        "--log-level", LOG_LEVEL, "--log-file", str(root / name / "wallet-rpc.log"), "--max-log-files", "2",
    ]


def _fund_and_create_wallets(net: RegtestNetwork, procs: dict[str, subprocess.Popen[bytes]],
                             logs: dict[str, Path], view_only: bool, blocks: int, deadline: float) -> None:
    """Mine to the payer while both wallets are created: the fixed keys make the
    payer's address known before its wallet exists, and this halves the start time."""
    errors: list[str] = []

    def fund() -> None:
        t = time.monotonic()
        net.daemon.call("generateblocks", {"amount_of_blocks": blocks, "wallet_address": PAYER_KEYS.address},
                        timeout=max(60.0, deadline - time.monotonic()))
        log.info("mined %d blocks to the payer in %.1fs", blocks, time.monotonic() - t)

    def create(name: str, client: RpcClient, keys: WalletKeys, spendable: bool) -> None:
        _wait_rpc(client, "get_version", procs[name], logs[name], deadline)
        params = {"restore_height": 0, "filename": name, "password": "", "address": keys.address,
                  "viewkey": keys.view_key, "autosave_current": True}
        if spendable:
            params["spendkey"] = keys.spend_key
        client.call("generate_from_keys", params, timeout=max(30.0, deadline - time.monotonic()))

    def guarded(what: str, work: Callable[[], None]) -> threading.Thread:
        def run() -> None:
            try:
                work()
            except Exception as exc:  # noqa: BLE001 - collected and raised below
                errors.append(f"{what}: {exc}")
        thread = threading.Thread(target=run, name=f"regtest-{what}", daemon=True)
        thread.start()
        return thread

    threads = [
        guarded("generateblocks", fund),
        guarded("merchant wallet", lambda: create("merchant", net.merchant, MERCHANT_KEYS, not view_only)),
        guarded("payer wallet", lambda: create("payer", net.payer, PAYER_KEYS, True)),
    ]
    for thread in threads:
        thread.join(max(0.1, deadline - time.monotonic()))
    if any(thread.is_alive() for thread in threads):
        errors.append("setup did not finish before the start timeout")
    if errors:
        raise RegtestError("regtest setup failed:\n  " + "\n  ".join(errors) + _log_tails(logs))


def _wait_rpc(client: RpcClient, method: str, proc: subprocess.Popen[bytes], logfile: Path,
              deadline: float) -> None:
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RegtestError(f"{client.name} exited with code {proc.returncode} while starting; "
                               f"last log lines:\n{tail(logfile)}")
        try:
            client.call(method, timeout=2.0)
            return
        except RegtestError as exc:
            last = exc
        time.sleep(0.05)
    raise RegtestError(f"{client.name} did not answer {method} in time (last error: {last}); "
                       f"last log lines:\n{tail(logfile)}")


def _lost_port_race(logs: dict[str, Path]) -> bool:
    logged = "".join(tail(path, 200) for path in logs.values())
    return "Failed to bind" in logged or "Address already in use" in logged


def _log_tails(logs: dict[str, Path]) -> str:
    return "".join(f"\n{name} log ({path}):\n{tail(path)}" for name, path in logs.items())


def _start_watchdog(root: Path, owner_pid: int) -> subprocess.Popen[bytes]:
    """``python -m anonticket.regtest.watchdog`` with this very package on its path, so it
    works from a checkout that is not installed."""
    package_root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    return spawn([sys.executable, "-m", "anonticket.regtest.watchdog", str(root), str(owner_pid)],
                 root / "watchdog.log", root, env)
