"""``anonticket client fetch|spend|count`` as real subprocesses against the service running in
the test's loop: tokens fetched with the service token read from the environment (never an
argument), stored in a 0600 file, spent one at a time as a header the gateway check takes
once; the key check against a protected location; and the Python API beside it."""

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
from anonticket.domain.ids import PaymentId
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


async def cli(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        BIN, *args, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 120)
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
