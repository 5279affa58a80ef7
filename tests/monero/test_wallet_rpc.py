"""WalletRpc against FakeWallet (failures on demand) and the real monero-wallet-rpc."""

from __future__ import annotations

import ast
import asyncio
import pathlib
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterable, Iterator

import pytest
from fake_wallet import Failure, FakeWallet, RawReply, make_transfer, make_txid

from anonticket.monero import wallet_rpc
from anonticket.monero.wallet_rpc import (
    REASONS,
    WalletBadResponse,
    WalletError,
    WalletHttpError,
    WalletRpc,
    WalletRpcFault,
    WalletTimeout,
    WalletTransfers,
    WalletUnauthorized,
    WalletUnavailable,
    json_rpc_url,
)

PID = "0123456789abcdef"
OTHER_PID = "fedcba9876543210"
HANG_TIMEOUT = 0.3
# a failure that is not a timeout must not wait for the deadline: with this
# timeout, anything slower than it means the client sat waiting
FAST_TIMEOUT = 3.0


@pytest.fixture
async def fake() -> AsyncIterator[FakeWallet]:
    async with FakeWallet(height=120) as wallet:
        yield wallet


@pytest.fixture
async def rpc(fake: FakeWallet) -> AsyncIterator[WalletRpc]:
    async with WalletRpc(fake.url, timeout=FAST_TIMEOUT) as client:
        yield client


# -- URL and constructor -------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("http://127.0.0.1:18082", "http://127.0.0.1:18082/json_rpc"),
        ("http://127.0.0.1:18082/", "http://127.0.0.1:18082/json_rpc"),
        ("http://127.0.0.1:18082/json_rpc", "http://127.0.0.1:18082/json_rpc"),
        ("http://127.0.0.1:18082/json_rpc/", "http://127.0.0.1:18082/json_rpc"),
        ("https://wallet.example:443/json_rpc", "https://wallet.example:443/json_rpc"),
        ("http://[::1]:18082", "http://[::1]:18082/json_rpc"),
        ("http://localhost/monero/", "http://localhost/monero/json_rpc"),
        ("HTTP://127.0.0.1:18082", "http://127.0.0.1:18082/json_rpc"),
    ],
)
def test_url_is_normalised_to_the_json_rpc_endpoint(given: str, expected: str) -> None:
    assert json_rpc_url(given) == expected
    assert WalletRpc(given, timeout=1).url == expected


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "127.0.0.1:18082",
        "ftp://127.0.0.1:18082",
        "http://",
        "http://127.0.0.1:99999",
        "http://127.0.0.1:0",
        "http://127.0.0.1:18082/json_rpc?x=1",
        "http://127.0.0.1:18082/#frag",
        "http://anon:s3cr3t@127.0.0.1:18082",
    ],
)
def test_bad_url_is_refused_without_echoing_it(bad: str) -> None:
    with pytest.raises(ValueError) as info:
        WalletRpc(bad, timeout=1)
    assert "s3cr3t" not in str(info.value)
    assert "18082" not in str(info.value)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"timeout": 0},
        {"timeout": -1},
        {"timeout": float("nan")},
        {"timeout": float("inf")},
        {"timeout": True},
        {"timeout": 1, "password": "secret"},
        {"timeout": 1, "user": "a:b", "password": "secret"},
        {"timeout": 1, "user": "", "password": "secret"},
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError) as info:
        WalletRpc("http://127.0.0.1:18082", **kwargs)  # type: ignore[arg-type]
    assert "secret" not in str(info.value)


async def test_calls_outside_start_close_are_refused(fake: FakeWallet) -> None:
    client = WalletRpc(fake.url, timeout=1)
    with pytest.raises(RuntimeError):
        await client.get_height()
    async with client:
        assert await client.get_height() == 120
    with pytest.raises(RuntimeError):
        await client.get_height()
    await client.close()  # twice is fine


def test_module_imports_only_the_allowed_layers() -> None:
    tree = ast.parse(pathlib.Path(wallet_rpc.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
            imported.update(f"{node.module}.{alias.name}" for alias in node.names)
    assert not [name for name in imported if name.startswith("aiohttp.web")]
    project = {name.split(".")[1] for name in imported if name.startswith("anonticket.")}
    # config: the URL and login rules are the ones MONERO_RPC_URL and _USER are parsed with;
    # monero: its own package (gc_pause); never storage, the ledger or anything above
    assert project <= {"config", "domain", "monero"}


# -- happy paths -----------------------------------------------------------------


async def test_get_height_and_generic_call(fake: FakeWallet, rpc: WalletRpc) -> None:
    assert await rpc.get_height() == 120
    fake.height = 121
    assert await rpc.get_height() == 121
    assert await rpc.call("get_version") == {"release": True, "version": 65561}
    assert fake.calls("get_height") == [{}, {}]


async def test_get_transfers_sends_the_documented_params(fake: FakeWallet, rpc: WalletRpc) -> None:
    await rpc.get_transfers(100, 120)
    await rpc.get_transfers(0, 5, pool=False)
    assert fake.calls("get_transfers") == [
        {"in": True, "pool": True, "filter_by_height": True, "min_height": 100, "max_height": 120},
        {"in": True, "pool": False, "filter_by_height": True, "min_height": 0, "max_height": 5},
    ]


async def test_get_transfers_window_is_min_exclusive_max_inclusive(fake: FakeWallet, rpc: WalletRpc) -> None:
    at = {h: make_transfer(PID, 10**12, h) for h in (99, 100, 101, 110, 111)}
    pooled = make_transfer(OTHER_PID, 5, 0, type="pool")
    fake.add(*at.values(), pooled)

    got = await rpc.get_transfers(100, 110)
    assert sorted(e["height"] for e in got.incoming) == [101, 110]
    assert [e["txid"] for e in got.pool] == [pooled["txid"]]  # pool ignores the window
    assert {e["confirmations"] for e in got.incoming} == {120 - 101, 120 - 110}

    only_in = await rpc.get_transfers(100, 110, pool=False)
    assert len(only_in.incoming) == 2 and only_in.pool == []


async def test_empty_categories_are_absent_and_read_as_empty(fake: FakeWallet, rpc: WalletRpc) -> None:
    fake.add(make_transfer(PID, 1, 50))
    got = await rpc.get_transfers(50, 120)  # 50 is excluded
    assert got.incoming == [] and got.pool == []
    assert fake.methods["get_transfers"](fake.calls("get_transfers")[-1]) == {}


async def test_confirmations_follow_the_height(fake: FakeWallet, rpc: WalletRpc) -> None:
    entry = make_transfer(PID, 10**12, 115)
    fake.add(entry)
    first = (await rpc.get_transfers(0, 200)).incoming[0]
    assert (first["confirmations"], first["locked"]) == (5, True)
    fake.height = 125
    later = (await rpc.get_transfers(0, 200)).incoming[0]
    assert (later["confirmations"], later["locked"]) == (10, False)
    assert entry["confirmations"] == 0  # the stored entry is not mutated


async def test_pool_entry_moves_into_a_block(fake: FakeWallet, rpc: WalletRpc) -> None:
    entry = make_transfer(PID, 7, 0, type="pool")
    fake.add(entry)
    fake.confirm(entry["txid"], 121)
    fake.height = 122
    got = await rpc.get_transfers(120, 122)
    assert got.pool == [] and [(e["type"], e["confirmations"]) for e in got.incoming] == [("in", 1)]


def test_make_transfer_has_the_fields_the_real_wallet_returns() -> None:
    # field sets copied from monero-wallet-rpc 0.18 get_transfers on regtest
    real_in = {
        "address", "amount", "amounts", "confirmations", "double_spend_seen", "fee", "height",
        "locked", "note", "payment_id", "subaddr_index", "subaddr_indices",
        "suggested_confirmations_threshold", "timestamp", "txid", "type", "unlock_time",
    }  # fmt: skip
    confirmed = make_transfer(PID, 10**12, 101, unlock_time=0)
    pooled = make_transfer(PID, 10**12, 101, type="pool", double_spend_seen=True)
    assert set(confirmed) == real_in
    assert set(pooled) == real_in - {"confirmations"}
    assert (pooled["height"], pooled["type"], pooled["double_spend_seen"]) == (0, "pool", True)
    assert len(confirmed["txid"]) == 64 and confirmed["txid"] != pooled["txid"]
    assert make_txid("a") == make_txid("a") != make_txid("b")
    with pytest.raises(ValueError):
        make_transfer(PID, 1, 1, type="out")


async def test_transfers_repr_hides_pids_and_txids(fake: FakeWallet, rpc: WalletRpc) -> None:
    entry = make_transfer(PID, 1, 110)
    fake.add(entry)
    got = await rpc.get_transfers(0, 120)
    assert repr(got) == "WalletTransfers(incoming=<1 entries>, pool=<0 entries>)"
    assert PID not in repr(got) and entry["txid"] not in str(got)


async def test_proxy_environment_is_ignored(fake: FakeWallet, monkeypatch: pytest.MonkeyPatch) -> None:
    with closed_port() as dead:
        for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
            monkeypatch.setenv(name, f"http://127.0.0.1:{dead}")
        monkeypatch.delenv("no_proxy", raising=False)
        monkeypatch.delenv("NO_PROXY", raising=False)
        async with WalletRpc(fake.url, timeout=FAST_TIMEOUT) as client:
            assert await client.get_height() == 120


async def test_a_large_batch_in_one_answer(fake: FakeWallet) -> None:
    fake.incoming = [make_transfer(PID, 10**12 + i, 1 + i % 100) for i in range(30_000)]
    async with WalletRpc(fake.url, timeout=30) as client:
        started = time.monotonic()
        got = await client.get_transfers(0, 120)
        elapsed = time.monotonic() - started
    assert len(got.incoming) == 30_000
    assert {e["amount"] for e in got.incoming} == {10**12 + i for i in range(30_000)}
    assert elapsed < 10, elapsed


# -- failures --------------------------------------------------------------------

FAILURES = [
    (Failure.HTTP_500, WalletHttpError, "http_error"),
    (Failure.UNAUTHORIZED, WalletUnauthorized, "unauthorized"),
    (Failure.MALFORMED_JSON, WalletBadResponse, "bad_response"),
    (Failure.NOT_AN_OBJECT, WalletBadResponse, "bad_response"),
    (Failure.NON_OBJECT_RESULT, WalletBadResponse, "bad_response"),
    (Failure.NO_RESULT, WalletBadResponse, "bad_response"),
    (Failure.WRONG_ID, WalletBadResponse, "bad_response"),
    (Failure.RPC_ERROR, WalletRpcFault, "rpc_error"),
    (Failure.DISCONNECT, WalletUnavailable, "unreachable"),
    (Failure.RESET, WalletUnavailable, "unreachable"),
]


@pytest.mark.parametrize(("failure", "error", "reason"), FAILURES, ids=[f.value for f, _, _ in FAILURES])
@pytest.mark.parametrize("method", ["get_height", "get_transfers"])
async def test_failure_is_typed_and_immediate(
    fake: FakeWallet, rpc: WalletRpc, failure: Failure, error: type[WalletError], reason: str, method: str
) -> None:
    fake.fail(failure)
    started = time.monotonic()
    with pytest.raises(error) as info:
        await (rpc.get_height() if method == "get_height" else rpc.get_transfers(0, 10))
    assert time.monotonic() - started < FAST_TIMEOUT / 2
    assert type(info.value) is error and info.value.reason == reason and reason in REASONS
    assert info.value.method == method and str(info.value).startswith(f"wallet RPC {method}: ")
    # the next call is healthy again: no poisoned connection or session
    assert await rpc.get_height() == 120


async def test_missing_and_ill_typed_fields(fake: FakeWallet, rpc: WalletRpc) -> None:
    fake.fail(Failure.WRONG_TYPES, times=2)
    with pytest.raises(WalletBadResponse):
        await rpc.get_height()
    with pytest.raises(WalletBadResponse):
        await rpc.get_transfers(0, 10)
    fake.fail(Failure.MISSING_FIELDS, times=2)
    with pytest.raises(WalletBadResponse):
        await rpc.get_height()
    # for get_transfers, an empty object is the wallet's honest "nothing new"
    assert await rpc.get_transfers(0, 10) == WalletTransfers([], [])
    assert fake.pending_failures == 0


async def test_failures_can_target_one_method_and_stick(fake: FakeWallet, rpc: WalletRpc) -> None:
    fake.fail(Failure.HTTP_500, times=None, method="get_transfers")
    for _ in range(3):
        assert await rpc.get_height() == 120
        with pytest.raises(WalletHttpError):
            await rpc.get_transfers(0, 10)
    fake.clear_failures()
    assert await rpc.get_transfers(0, 10) == WalletTransfers([], [])


@pytest.mark.parametrize("failure", [Failure.HANG, Failure.STALL_BODY])
async def test_slow_wallet_times_out_at_the_deadline(fake: FakeWallet, failure: Failure) -> None:
    async with WalletRpc(fake.url, timeout=HANG_TIMEOUT) as client:
        fake.fail(failure)
        started = time.monotonic()
        with pytest.raises(WalletTimeout) as info:
            await client.get_transfers(0, 10)
        elapsed = time.monotonic() - started
        assert HANG_TIMEOUT * 0.9 <= elapsed < HANG_TIMEOUT + 1.0
        assert isinstance(info.value, WalletUnavailable) and info.value.reason == "timeout"
        assert await client.get_height() == 120


async def test_queued_calls_share_no_deadline_beyond_their_own(fake: FakeWallet) -> None:
    # calls go one at a time; one waiting behind a hung call still ends at its deadline
    fake.fail(Failure.HANG, times=None)
    async with WalletRpc(fake.url, timeout=HANG_TIMEOUT) as client:
        started = time.monotonic()
        results = await asyncio.gather(*(client.get_height() for _ in range(3)), return_exceptions=True)
        elapsed = time.monotonic() - started
    assert all(isinstance(r, WalletTimeout) for r in results), results
    assert elapsed < HANG_TIMEOUT + 1.0


async def test_connection_refused_is_unavailable() -> None:
    with closed_port() as dead:
        async with WalletRpc(f"http://127.0.0.1:{dead}", timeout=FAST_TIMEOUT) as client:
            started = time.monotonic()
            with pytest.raises(WalletUnavailable) as info:
                await client.get_height()
    assert time.monotonic() - started < FAST_TIMEOUT / 2
    assert type(info.value) is WalletUnavailable and info.value.reason == "unreachable"


async def test_wrong_path_is_an_http_error(fake: FakeWallet) -> None:
    async with WalletRpc(fake.url + "/wallet", timeout=FAST_TIMEOUT) as client:
        with pytest.raises(WalletHttpError) as info:
            await client.get_height()
    assert info.value.status == 404


@pytest.mark.parametrize(
    "result",
    [
        {"in": {"0": "x"}},
        {"pool": "none"},
        {"in": None},
        {"in": [], "pool": {}},
    ],
)
async def test_transfer_categories_must_be_lists(fake: FakeWallet, rpc: WalletRpc, result: object) -> None:
    fake.methods["get_transfers"] = lambda params: result
    with pytest.raises(WalletBadResponse):
        await rpc.get_transfers(0, 10)


async def test_entries_are_not_validated_here(fake: FakeWallet, rpc: WalletRpc) -> None:
    # one odd entry must reach the monitor, which skips it, instead of failing the poll
    fake.methods["get_transfers"] = lambda params: {"in": [{"amount": "lots"}, 7], "out": "ignored"}
    got = await rpc.get_transfers(0, 10)
    assert got.incoming == [{"amount": "lots"}, 7] and got.pool == []


@pytest.mark.parametrize("height", [-1, True, 1.5, "12", None, -(2**70)])
async def test_height_must_be_a_non_negative_int(fake: FakeWallet, rpc: WalletRpc, height: object) -> None:
    fake.methods["get_height"] = lambda params: {"height": height}
    with pytest.raises(WalletBadResponse):
        await rpc.get_height()


async def test_huge_height_is_still_an_int(fake: FakeWallet, rpc: WalletRpc) -> None:
    fake.height = 2**64
    assert await rpc.get_height() == 2**64


@pytest.mark.parametrize("error", ["boom", {"message": "no code"}, {"code": True}, {"code": "1"}, [1]])
async def test_malformed_rpc_error_is_a_bad_response(fake: FakeWallet, rpc: WalletRpc, error: object) -> None:
    fake.methods["get_height"] = lambda params: RawReply({"jsonrpc": "2.0", "id": 1, "error": error})
    with pytest.raises(WalletBadResponse):
        await rpc.get_height()


@pytest.mark.parametrize("args", [(-1, 10), (0, -1), (True, 10), (0, 1.0), ("0", 10)])
async def test_bad_heights_are_refused_before_sending(fake: FakeWallet, rpc: WalletRpc, args: tuple) -> None:
    with pytest.raises(ValueError):
        await rpc.get_transfers(*args)
    assert fake.calls("get_transfers") == []


async def test_error_texts_never_carry_params_or_wallet_data(fake: FakeWallet, rpc: WalletRpc) -> None:
    fake.rpc_error = (-5, f"payment id {PID} has invalid format")  # as if the wallet quoted it
    fake.fail(Failure.RPC_ERROR)
    with pytest.raises(WalletRpcFault) as info:
        await rpc.call("get_payments", {"payment_id": PID})
    fault = info.value
    assert (fault.code, fault.wallet_message) == (-5, f"payment id {PID} has invalid format")
    assert PID not in str(fault) and PID not in repr(fault)

    # a body that is not JSON: the decoder's exception (which holds the body) is dropped
    fake.methods["get_height"] = lambda params: RawReply(f'{{"txid": "{PID}"')
    with pytest.raises(WalletBadResponse) as bad:
        await rpc.get_height()
    assert PID not in str(bad.value) and bad.value.__cause__ is None and bad.value.__suppress_context__

    # a wrong shape: same
    fake.methods["get_height"] = lambda params: {"height": PID}
    with pytest.raises(WalletBadResponse) as shape:
        await rpc.get_height()
    assert PID not in str(shape.value)


# -- helpers ---------------------------------------------------------------------


class closed_port:
    """A loopback port that refuses connections: bound but not listening, held while in use."""

    def __enter__(self) -> int:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        return self._sock.getsockname()[1]

    def __exit__(self, *exc: object) -> None:
        self._sock.close()


# -- the real monero-wallet-rpc (offline, no daemon) -------------------------------

LOGIN = ("anon", "secret")
TEST_KEYS = {  # fixed regtest test keys, never used for real money
    "address": "435CNkaTRD9PHWEbixszvSfaG6UYdSwq7bEwRxJVTcea9Sz2YfppjWDFQBzniXsqhKYZo4FJQf4ZbJeSu9Pu8WxL4bpF6az",
    "spendkey": "df948b64f84a82258987bbf379da18f2e3c71318483a23343c8ee0606ea7f109",
    "viewkey": "31a38784ce6e21c6b686bf8056105c25c76e8283ea0529fa82acfc6a2f9e9406",
}


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class OfflineWallet:
    """One ``monero-wallet-rpc --offline`` on a free loopback port. Offline it
    needs no daemon: it answers get_height and get_transfers for the blocks it
    has (none), which is all the transport and auth checks need."""

    def __init__(self, directory: pathlib.Path, login: tuple[str, str] | None = None) -> None:
        self.dir, self.login = directory, login
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self, deadline: float) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        for _attempt in range(3):  # another process may take the free port before we bind it
            with closed_port() as port:
                pass
            self.url = f"http://127.0.0.1:{port}"
            argv = [
                "monero-wallet-rpc", "--offline", "--no-dns", "--non-interactive",
                "--rpc-bind-ip", "127.0.0.1", "--rpc-bind-port", str(port), "--rpc-ssl", "disabled",
                "--disable-rpc-ban", "--wallet-dir", str(self.dir),
                "--shared-ringdb-dir", str(self.dir / "ringdb"),
                "--log-file", str(self.dir / "wallet-rpc.log"), "--max-log-files", "1",
                *(["--rpc-login", ":".join(self.login)] if self.login else ["--disable-rpc-login"]),
            ]  # fmt: skip
            with open(self.dir / "stdout.log", "ab") as out:
                self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=self.dir)
            if self._answers(deadline):
                return
            self.stop()
        raise RuntimeError(f"monero-wallet-rpc did not start, see {self.dir}")

    def _answers(self, deadline: float) -> bool:
        """Poll until the RPC port answers anything (401 counts) or the process exits."""
        assert self.proc is not None
        while time.monotonic() < deadline and self.proc.poll() is None:
            request = urllib.request.Request(self.url + "/json_rpc", data=b'{"method":"get_version"}')
            try:
                _NO_PROXY.open(request, timeout=2).close()
                return True
            except urllib.error.HTTPError as exc:
                exc.close()
                return True
            except OSError:
                time.sleep(0.1)  # polling interval, the deadline bounds the loop
        return False

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)


@pytest.fixture(scope="module")
def real_wallets(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, OfflineWallet]]:
    """An open and a digest-login wallet-rpc, each holding the test wallet restored
    from keys through WalletRpc itself (so the login one exercises digest too)."""
    if shutil.which("monero-wallet-rpc") is None:
        pytest.skip("monero-wallet-rpc is not installed (Debian package monero)")
    base = tmp_path_factory.mktemp("wallet-rpc")
    wallets = {"open": OfflineWallet(base / "open"), "login": OfflineWallet(base / "login", login=LOGIN)}
    try:
        for wallet in wallets.values():
            wallet.start(deadline=time.monotonic() + 60)
        asyncio.run(_restore(wallets.values()))
        yield wallets
    finally:
        for wallet in wallets.values():
            wallet.stop()


async def _restore(wallets: Iterable[OfflineWallet]) -> None:
    async def one(wallet: OfflineWallet) -> None:
        user, password = wallet.login or (None, None)
        async with WalletRpc(wallet.url, timeout=120, user=user, password=password) as client:
            params = {"filename": "merchant", "password": "", "restore_height": 0, **TEST_KEYS}
            result = await client.call("generate_from_keys", params)
            assert result["address"] == TEST_KEYS["address"]

    await asyncio.gather(*(one(w) for w in wallets))


@pytest.mark.regtest
async def test_real_wallet_answers_height_and_transfers(real_wallets: dict[str, OfflineWallet]) -> None:
    async with WalletRpc(real_wallets["open"].url + "/json_rpc/", timeout=10) as client:
        # restored at 0 and never synced: the block count is the genesis block alone
        assert await client.get_height() == 1
        got = await client.get_transfers(0, 100, pool=False)
        assert isinstance(got, WalletTransfers) and got.incoming == [] and got.pool == []
        # the pool lives in the daemon: without one, wallet-rpc answers an error object
        with pytest.raises(WalletRpcFault) as info:
            await client.get_transfers(0, 100, pool=True)
        assert info.value.reason == "rpc_error"
        with pytest.raises(WalletRpcFault) as unknown:
            await client.call("no_such_method")
        assert unknown.value.code == -32601


@pytest.mark.regtest
async def test_real_wallet_digest_login_works(real_wallets: dict[str, OfflineWallet]) -> None:
    user, password = LOGIN
    async with WalletRpc(real_wallets["login"].url, timeout=10, user=user, password=password) as client:
        assert await client.get_height() == 1
        assert [await client.get_height() for _ in range(5)] == [1] * 5
        # concurrent callers: the client serialises them over one connection, whose
        # nonce count the wallet checks; a pool of connections ends in 401s (and past
        # 25 connections from one address, in resets)
        assert await asyncio.gather(*(client.get_height() for _ in range(10))) == [1] * 10
        assert [await client.get_height() for _ in range(3)] == [1] * 3
        assert await asyncio.gather(*(client.get_height() for _ in range(30))) == [1] * 30
        got = await client.get_transfers(0, 100, pool=False)
        assert got.incoming == [] and got.pool == []


@pytest.mark.regtest
@pytest.mark.parametrize(
    "credentials",
    [(None, None), ("anon", "wrong"), ("someone", "secret"), ("anon", "")],
    ids=["none", "wrong-password", "wrong-user", "empty-password"],
)
async def test_real_wallet_refuses_bad_credentials(
    real_wallets: dict[str, OfflineWallet], credentials: tuple[str | None, str | None]
) -> None:
    user, password = credentials
    async with WalletRpc(real_wallets["login"].url, timeout=10, user=user, password=password) as client:
        for _ in range(2):  # and keeps refusing, without hanging
            started = time.monotonic()
            with pytest.raises(WalletUnauthorized) as info:
                await client.get_height()
            assert time.monotonic() - started < 5
            assert info.value.reason == "unauthorized" and "secret" not in str(info.value)
