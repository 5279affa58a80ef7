"""Our address codec against the real monero-wallet-rpc, one offline wallet per network.

wallet-rpc builds and splits addresses without a daemon, so each network gets a
wallet-rpc started with ``--offline`` and a wallet restored from the fixed test
keys: no monerod, no chain, a few seconds each. The process runs with no RPC
login on a free loopback port and is always stopped. ``mainnet`` is also what
regtest uses.
"""

from __future__ import annotations

import json
import secrets
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from anonticket.domain.address import AddressError, MoneroAddress, decode_address, make_integrated_address

pytestmark = pytest.mark.regtest

SPEND_SECRET = "df948b64f84a82258987bbf379da18f2e3c71318483a23343c8ee0606ea7f109"
VIEW_SECRET = "31a38784ce6e21c6b686bf8056105c25c76e8283ea0529fa82acfc6a2f9e9406"
MAINNET = "435CNkaTRD9PHWEbixszvSfaG6UYdSwq7bEwRxJVTcea9Sz2YfppjWDFQBzniXsqhKYZo4FJQf4ZbJeSu9Pu8WxL4bpF6az"
NETWORK_FLAGS = {"mainnet": [], "testnet": ["--testnet"], "stagenet": ["--stagenet"]}
START_TIMEOUT = 60.0
RPC_TIMEOUT = 120.0  # creating a wallet writes and syncs files: slow when other tests fill the disk queue
RANDOM_PIDS = 50


class WalletRpcError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


@dataclass
class OfflineWallet:
    network: str
    url: str
    # a bare opener: an http_proxy in the environment must not catch loopback calls
    _opener: urllib.request.OpenerDirector

    def rpc(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        call = {"jsonrpc": "2.0", "id": "0", "method": method, "params": params or {}}
        body = json.dumps(call).encode()
        request = urllib.request.Request(self.url, body, {"Content-Type": "application/json"})
        with self._opener.open(request, timeout=RPC_TIMEOUT) as response:
            answer = json.load(response)
        if "error" in answer:
            raise WalletRpcError(answer["error"]["code"], answer["error"]["message"])
        result: dict[str, Any] = answer["result"]
        return result


def free_port() -> int:
    # wallet-rpc cannot bind port 0 and report it back, so ask the kernel for one
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_ready(wallet: OfflineWallet, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"monero-wallet-rpc exited with {process.returncode}:\n{tail(log)}")
        try:
            wallet.rpc("get_version")
            return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.05)  # polling interval, not synchronisation
    pytest.fail(f"monero-wallet-rpc not ready after {START_TIMEOUT:.0f} s:\n{tail(log)}")


def tail(log: Path) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-20:]) if log.exists() else "(no log)"


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)


@pytest.fixture(scope="module", params=list(NETWORK_FLAGS))
def wallet(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OfflineWallet]:
    binary = shutil.which("monero-wallet-rpc")
    if binary is None:
        pytest.skip("monero-wallet-rpc is not installed (Debian package monero)")
    network: str = request.param
    work = tmp_path_factory.mktemp(f"wallet-{network}")
    port = free_port()
    log = work / "wallet-rpc.log"
    command = [
        binary, *NETWORK_FLAGS[network], "--offline", "--non-interactive",
        "--wallet-dir", str(work / "wallets"), "--disable-rpc-login",
        "--rpc-bind-ip", "127.0.0.1", "--rpc-bind-port", str(port),
        "--log-file", str(log), "--shared-ringdb-dir", str(work / "ringdb"),
    ]  # fmt: skip  (the ring database would otherwise go to ~/.shared-ringdb)
    (work / "wallets").mkdir()
    quiet = subprocess.DEVNULL  # everything worth reading goes to the log file
    process = subprocess.Popen(command, stdin=quiet, stdout=quiet, stderr=quiet)
    try:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        offline = OfflineWallet(network, f"http://127.0.0.1:{port}/json_rpc", opener)
        wait_ready(offline, process, log)
        # the wallet insists on the address of the keys for its own network; it
        # refuses one that does not decode or does not match the keys, so this
        # already checks our encoding of the standard address
        ours = network_address(network)
        offline.rpc(
            "generate_from_keys",
            {"filename": "test", "address": ours, "spendkey": SPEND_SECRET, "viewkey": VIEW_SECRET, "password": ""},
        )
        yield offline
    finally:
        stop(process)


def network_address(network: str) -> str:
    mainnet = decode_address(MAINNET)
    return MoneroAddress(network, "standard", mainnet.spend_key, mainnet.view_key).encode()


def random_pid() -> str:
    while True:
        pid = secrets.token_hex(8)
        if int(pid, 16):
            return pid


def test_primary_address_is_ours(wallet: OfflineWallet) -> None:
    primary = wallet.rpc("get_address", {"account_index": 0})["address"]
    assert primary == network_address(wallet.network)
    assert decode_address(primary).network == wallet.network


def test_integrated_addresses_match_the_wallet(wallet: OfflineWallet) -> None:
    primary = network_address(wallet.network)
    for _ in range(RANDOM_PIDS):
        pid = random_pid()
        theirs = wallet.rpc("make_integrated_address", {"payment_id": pid})["integrated_address"]
        assert make_integrated_address(primary, pid) == theirs

        split = wallet.rpc("split_integrated_address", {"integrated_address": theirs})
        decoded = decode_address(theirs)
        assert (decoded.network, decoded.kind, split["is_subaddress"]) == (wallet.network, "integrated", False)
        assert decoded.payment_id is not None and decoded.payment_id.hex() == split["payment_id"] == pid
        standard = MoneroAddress(decoded.network, "standard", decoded.spend_key, decoded.view_key)
        assert standard.encode() == split["standard_address"] == primary
        assert decoded.to_dict()["standard_address"] == split["standard_address"]


def test_subaddresses_decode_and_are_refused_as_a_base(wallet: OfflineWallet) -> None:
    created = wallet.rpc("create_address", {"account_index": 0, "count": 5})["addresses"]
    created.append(wallet.rpc("create_account")["address"])
    for subaddress in created:
        decoded = decode_address(subaddress)
        assert (decoded.network, decoded.kind, decoded.payment_id) == (wallet.network, "subaddress", None)
        assert decoded.encode() == subaddress
        with pytest.raises(WalletRpcError, match="Subaddress"):
            wallet.rpc("make_integrated_address", {"payment_id": random_pid(), "standard_address": subaddress})
        with pytest.raises(AddressError, match="primary address"):
            make_integrated_address(subaddress, random_pid())


def test_wallet_classifies_our_encodings_alike(wallet: OfflineWallet) -> None:
    # validate_address with any_net_type reads every network's prefixes, so each
    # wallet checks all nine (network, kind) encodings, including the checksum
    keys = decode_address(MAINNET)
    for network in NETWORK_FLAGS:
        for kind in ("standard", "integrated", "subaddress"):
            pid = bytes.fromhex(random_pid()) if kind == "integrated" else None
            ours = MoneroAddress(network, kind, keys.spend_key, keys.view_key, pid).encode()
            verdict = wallet.rpc("validate_address", {"address": ours, "any_net_type": True})
            assert verdict["valid"] is True
            assert verdict["nettype"] == network
            assert (verdict["integrated"], verdict["subaddress"]) == (kind == "integrated", kind == "subaddress")


def test_wallet_refuses_what_we_refuse(wallet: OfflineWallet) -> None:
    primary = network_address(wallet.network)
    broken = [
        primary[:-1],  # truncated
        primary[:-1] + ("2" if primary[-1] != "2" else "3"),  # checksum
        primary[:40] + "0" + primary[41:],  # not in the alphabet
        "z" * 11 + primary[11:],  # overflowing block
    ]
    for text in broken:
        with pytest.raises(AddressError):
            decode_address(text)
        verdict = wallet.rpc("validate_address", {"address": text, "any_net_type": True})
        assert verdict["valid"] is False
