"""``anonticket client fetch|spend|count`` as real subprocesses against the service running in
the test's loop: tokens fetched with the service token read from the environment (never an
argument), stored in a 0600 file, spent one at a time as a header the gateway check takes
once; the key check against a protected location; and the Python API beside it. Then the
receipt path: a receipt (from a file, stdin or the environment) redeemed for its service
token and the tokens fetched with it, the receipt and the token appearing nowhere; its
refusals (unknown, waiting for confirmations, malformed, provisional credit) one clear line
each."""

from __future__ import annotations

import asyncio
import json
import stat
import warnings
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from anonticket.client.privacy_pass import ClientError, Issuer, TokenStore
from anonticket.domain.ids import PaymentId, Receipt, derive_receipt_token
from anonticket.service.app import Service, start_service
from conftest import make_config, transfer, url
from test_cli import BIN, clean_env


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[tuple[Service, dict[str, str], str]]:
    service = await start_service(make_config(tmp_path,
                                              PRIVATE_TOKEN_UNITS="hour=session:3600:100, "
                                                                  "call=request:7"))
    pid = PaymentId.generate()
    await service.state.ledger.credit([transfer(pid, 5000)], None)
    token = (await service.state.ledger.redeem(pid)).token.hex()  # type: ignore[union-attr]
    env = clean_env(DATABASE_URL=str(tmp_path / "anonticket.db"),
                    API_BIND_ADDRESS=service.public_address, ANONTICKET_TOKEN=token)
    try:
        yield service, env, token
    finally:
        await service.aclose()


async def cli(env: dict[str, str], *args: str, stdin: bytes | None = None
              ) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        BIN, *args, env=env,
        stdin=asyncio.subprocess.DEVNULL if stdin is None else asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), 120)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def check(service: Service, header: str) -> int:
    name, _, value = header.partition(": ")
    async with aiohttp.ClientSession(trust_env=False) as http:
        async with http.get(url(service.internal_address, "/api/v1/check"),
                            headers={name: value}) as resp:
            return resp.status


async def test_fetch_store_and_spend_through_the_command_line(
        running: tuple[Service, dict[str, str], str], tmp_path: Path) -> None:
    service, env, token = running
    store = str(tmp_path / "tokens" / "private-tokens")
    code, out, err = await cli(env, "client", "fetch", "3", "--unit", "call", "--store", store)
    assert code == 0, err
    assert "3 token(s) of call stored" in err and token not in out + err
    assert stat.S_IMODE(Path(store).stat().st_mode) == 0o600
    code, out, _ = await cli(env, "client", "count", "--unit", "call", "--store", store)
    assert (code, out.strip()) == (0, "3")
    headers = []
    for _ in range(3):
        code, out, err = await cli(env, "client", "spend", "--unit", "call", "--store", store)
        assert code == 0, err
        assert out.startswith('Authorization: PrivateToken token="') and out.count("\n") == 1
        headers.append(out.strip())
    assert len(set(headers)) == 3
    code, _, err = await cli(env, "client", "spend", "--unit", "call", "--store", store)
    assert code == 1 and "no token left" in err
    for header in headers:
        assert await check(service, header) == 200
        assert await check(service, header) == 401
    record = await service.state.ledger.storage.get_token(bytes.fromhex(token))
    assert record is not None and record.remaining == 5000 - 21


async def test_fetch_refusals_are_one_line(running: tuple[Service, dict[str, str], str],
                                           tmp_path: Path) -> None:
    _, env, _ = running
    store = str(tmp_path / "t")
    code, _, err = await cli(env, "client", "fetch", "2", "--unit", "week", "--store", store)
    assert code == 1 and "no unit 'week'" in err and len(err.splitlines()) == 1
    code, _, err = await cli(env, "client", "fetch", "60", "--unit", "hour", "--store", store)
    assert code == 1 and "insufficient_balance" in err
    no_token = {k: v for k, v in env.items() if k != "ANONTICKET_TOKEN"}
    code, _, err = await cli(no_token, "client", "fetch", "1", "--unit", "hour", "--store", store)
    assert code == 2 and "never on the command line" in err
    assert not Path(store).exists()


async def test_the_python_api_checks_the_key_a_location_offers(
        running: tuple[Service, dict[str, str], str], tmp_path: Path) -> None:
    service, _, token = running
    issuer = Issuer(f"http://{service.public_address}")
    origin = url(service.internal_address, "/api/v1/check")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert await asyncio.to_thread(issuer.check_origin, origin, "hour")
    # a location that offers nothing (or another key) is warned about
    with pytest.warns(UserWarning, match="does not offer the key"):
        assert not await asyncio.to_thread(issuer.check_origin,
                                           url(service.public_address, "/health/live"), "hour")
    tokens = await asyncio.to_thread(issuer.fetch, token, "hour", 2)
    store = TokenStore(tmp_path / "api-tokens")
    assert store.add(tokens, "hour", issuer.base) == 2
    header = store.spend("hour")
    assert store.count() == 1
    assert await check(service, f"Authorization: {header}") == 200
    with pytest.raises(ClientError):
        store.spend("call")
    lines = (tmp_path / "api-tokens").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["unit"] == "hour"


def test_the_client_needs_only_the_standard_library_and_pycryptodome() -> None:
    """What a customer's script installs: anonticket.client imports anonticket.crypto and
    nothing else of the service, and no third-party module but pycryptodome."""
    import ast
    import sys

    root = Path(__file__).resolve().parents[2] / "anonticket"
    seen = set()
    for path in [*(root / "client").glob("*.py"), *(root / "crypto").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                top = name.split(".")[0]
                seen.add(name)
                assert (top in sys.stdlib_module_names or top == "Crypto"
                        or name.startswith(("anonticket.crypto", "anonticket.client"))), \
                    f"{path.name} imports {name}"
    assert "anonticket.crypto.privacy_pass" in seen


# ---------------------------------------------------------------------- paid by a receipt
def without_secrets(env: dict[str, str], **extra: str) -> dict[str, str]:
    """``env`` with neither ANONTICKET_TOKEN nor ANONTICKET_RECEIPT, plus ``extra``."""
    kept = {k: v for k, v in env.items() if k not in ("ANONTICKET_TOKEN", "ANONTICKET_RECEIPT")}
    kept.update(extra)
    return kept


async def paid_receipt(service: Service, amount: int = 5000) -> tuple[Receipt, str]:
    """A receipt whose payment is confirmed (not yet redeemed), and the token it redeems to."""
    receipt = Receipt.generate()
    paid = transfer(receipt.pid, amount)
    await service.state.ledger.credit([paid], None)
    return receipt, derive_receipt_token(receipt.raw, paid.txid).hex()


def secrets_of(receipt: Receipt) -> list[str]:
    spellings = [receipt.hex(), receipt.hex().upper(), receipt.grouped(),
                 receipt.grouped().replace("-", " ")]
    return spellings + [part for part in receipt.grouped().split("-")[::3]]


async def test_fetch_with_a_receipt_from_a_file_stdin_or_the_environment(
        running: tuple[Service, dict[str, str], str], tmp_path: Path) -> None:
    """The receipt is redeemed for its service token (claimed the first time, the same token
    after), which pays for the tokens; they verify and spend once at the gateway; neither
    the receipt nor the token is printed or stored, and the token file holds tokens only."""
    service, env, _ = running
    receipt, token = await paid_receipt(service)
    store = tmp_path / "private-tokens"
    receipt_file = tmp_path / "receipt"
    receipt_file.write_text(receipt.grouped() + "\n")
    receipt_file.chmod(0o600)
    env = without_secrets(env)
    runs = [
        await cli(env, "client", "fetch", "2", "--unit", "call", "--store", str(store),
                  "--receipt-file", str(receipt_file)),
        await cli(env, "client", "fetch", "1", "--unit", "hour", "--store", str(store),
                  "--receipt-file", "-", stdin=receipt.hex().upper().encode() + b"\n"),
        await cli(without_secrets(env, ANONTICKET_RECEIPT=receipt.hex()), "client", "fetch",
                  "1", "--unit", "call", "--store", str(store)),
    ]
    for code, out, err in runs:
        assert code == 0, err
        assert out == "" and len(err.splitlines()) == 1 and "stored" in err
    # one token paid for all three (the redeem route answers the same token every time)
    record = await service.state.ledger.storage.get_token(bytes.fromhex(token))
    assert record is not None and record.remaining == 5000 - 3 * 7 - 100
    assert service.state.metrics.redeem["success"].value == 1
    assert service.state.metrics.redeem["already_claimed"].value == 2
    text = store.read_text()
    assert len(text.splitlines()) == 4 and stat.S_IMODE(store.stat().st_mode) == 0o600
    everything = text + "".join(out + err for _, out, err in runs)
    for secret in [*secrets_of(receipt), token, token.upper()]:
        assert secret not in everything
    for line in text.splitlines():
        assert set(json.loads(line)) == {"unit", "issuer", "token"}
    for unit in ("call", "call", "hour", "call"):
        code, out, err = await cli(env, "client", "spend", "--unit", unit, "--store", str(store))
        assert code == 0, err
        assert await check(service, out.strip()) == 200
        assert await check(service, out.strip()) == 401


async def test_receipt_refusals_are_one_clear_line(
        running: tuple[Service, dict[str, str], str], tmp_path: Path) -> None:
    """An unknown payment, one waiting for confirmations, a malformed receipt (never echoed),
    and an ambiguous or missing payer: one line each, exit 1 (2 for usage), nothing stored."""
    service, env, _ = running
    store = str(tmp_path / "private-tokens")
    fetch = ("client", "fetch", "1", "--unit", "call", "--store", store)
    unknown = Receipt.generate()
    code, out, err = await cli(without_secrets(env, ANONTICKET_RECEIPT=unknown.hex()), *fetch)
    assert code == 1 and out == "" and "Traceback" not in err and len(err.splitlines()) == 1
    assert "no payment for this receipt" in err
    pending = Receipt.generate()
    service.state.ledger.set_pending({pending.pid_raw: 2})
    code, _, err = await cli(without_secrets(env), *fetch, "--receipt-file", "-",
                             stdin=pending.grouped().encode())
    assert code == 1 and len(err.splitlines()) == 1
    assert "waiting for confirmations (2 of 10)" in err and "again" in err
    for bad in (unknown.hex()[:-1], unknown.hex() + "0", "g" * 64, ""):
        code, _, err = await cli(without_secrets(env), *fetch, "--receipt-file", "-",
                                 stdin=bad.encode() + b"\n")
        assert code == 1 and "receipt must be 64 hex characters" in err, bad
        assert len(err.splitlines()) == 1 and (not bad or bad not in err)
    code, _, err = await cli(without_secrets(env, ANONTICKET_RECEIPT=unknown.hex(),
                                             ANONTICKET_TOKEN="ab" * 32), *fetch)
    assert code == 2 and "both ANONTICKET_TOKEN and ANONTICKET_RECEIPT" in err
    code, _, err = await cli(without_secrets(env), *fetch, "--receipt-file", "-",
                             "--token-file", "-")
    assert code == 2 and "not allowed with" in err
    code, _, err = await cli(without_secrets(env), *fetch)
    assert code == 2 and "--receipt-file" in err and "never on the command line" in err
    code, _, err = await cli(without_secrets(env), *fetch, "--receipt-file",
                             str(tmp_path / "missing"))
    assert code == 1 and "cannot read" in err
    assert not Path(store).exists()
    assert all(secret not in err for secret in secrets_of(unknown) + secrets_of(pending))


async def test_a_receipt_on_provisional_credit_waits_for_the_confirmations(
        running: tuple[Service, dict[str, str], str], tmp_path: Path) -> None:
    """A payment credited from the pool redeems at once, but no private token is issued on
    it (nothing could take one back if the payment were withdrawn): a clear line, nothing
    charged; the same command succeeds once the payment is final."""
    service, env, _ = running
    ledger = service.state.ledger
    receipt = Receipt.generate()
    pooled = transfer(receipt.pid, 5000, height=0)
    await ledger.credit_provisional([pooled], max_per_pid=10**6, max_outstanding=10**6)
    env = without_secrets(env, ANONTICKET_RECEIPT=receipt.hex())
    store = str(tmp_path / "private-tokens")
    fetch = ("client", "fetch", "2", "--unit", "call", "--store", store)
    code, out, err = await cli(env, *fetch)
    assert code == 1 and out == "" and len(err.splitlines()) == 1
    assert "not final yet" in err and "nothing was charged" in err
    token = bytes.fromhex(derive_receipt_token(receipt.raw, pooled.txid).hex())
    record = await ledger.storage.get_token(token)
    assert record is not None and record.provisional and record.remaining == 5000
    await ledger.credit([transfer(receipt.pid, 5000, 100, pooled.txid)], None)
    code, _, err = await cli(env, *fetch)
    assert code == 0, err
    assert (await ledger.storage.get_token(token)).remaining == 5000 - 14  # type: ignore[union-attr]


async def test_the_python_api_fetches_with_a_receipt(
        running: tuple[Service, dict[str, str], str]) -> None:
    service, _, _ = running
    receipt, token = await paid_receipt(service)
    issuer = Issuer(f"http://{service.public_address}")
    assert await asyncio.to_thread(issuer.redeem, receipt.grouped()) == token
    tokens = await asyncio.to_thread(issuer.fetch_with_receipt, receipt.hex(), "call", 2)
    assert len(tokens) == 2
    with pytest.raises(ClientError, match="64 hex") as refused:
        await asyncio.to_thread(issuer.redeem, receipt.hex()[:40])
    assert receipt.hex()[:40] not in str(refused.value)
    with pytest.raises(ClientError, match="no payment for this receipt"):
        await asyncio.to_thread(issuer.fetch_with_receipt, Receipt.generate().hex(), "call", 1)
