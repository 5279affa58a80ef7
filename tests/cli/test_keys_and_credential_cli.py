"""``anonticket keys list|rotate`` and ``anonticket credential fetch`` as real subprocesses
against the service running in the test's loop: the keys through the internal listener (with
the admin token), the credential through the public one with the token read from a file,
stdin or the environment (never an argument), and no secret printed anywhere."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from anonticket.crypto.credential import CredentialVerifier
from anonticket.domain.ids import PaymentId
from anonticket.service.app import Service, start_service
from conftest import make_config, transfer, url
from test_cli import BIN, clean_env

ADMIN_TOKEN = "s3cret-admin-token"


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[tuple[Service, dict[str, str]]]:
    service = await start_service(make_config(tmp_path, API_INTERNAL_TOKEN=ADMIN_TOKEN,
                                              CREDENTIAL_AUDIENCES="files"))
    env = clean_env(DATABASE_URL=str(tmp_path / "anonticket.db"),
                    API_INTERNAL_TOKEN=ADMIN_TOKEN,
                    API_INTERNAL_BIND_ADDRESS=service.internal_address,
                    API_BIND_ADDRESS=service.public_address)
    env.pop("ANONTICKET_TOKEN", None)
    try:
        yield service, env
    finally:
        await service.aclose()


async def cli(env: dict[str, str], *args: str, stdin: str | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        BIN, *args, env=env,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(
            proc.communicate(stdin.encode() if stdin is not None else None), 60)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def secrets_of(service: Service) -> list[str]:
    rows = await service.state.ledger.storage.list_signing_keys()
    return [row.secret.hex() for row in rows] + ["k4.secret"]


async def test_keys_list_and_rotate(running: tuple[Service, dict[str, str]]) -> None:
    service, env = running
    code, out, err = await cli(env, "keys", "list")
    assert (code, err) == (0, "")
    (kid,) = [k.key_id for k in service.state.ledger.credentials.ring.keys()]  # type: ignore[union-attr]
    assert kid in out and "credential" in out and "signing" in out
    code, out, err = await cli(env, "keys", "rotate")
    assert (code, err) == (0, "")
    assert "signs from" in out and out.count("k4.pid.") == 3  # the new one, then both listed
    code, out, _ = await cli(env, "keys", "rotate", "--now", "--json")
    answer = json.loads(out)
    assert code == 0 and answer["rotated"]["status"] == "signing"
    assert [k["status"] for k in answer["keys"]] == ["retired", "signing"]
    code, out, err = await cli(env, "keys", "list", "--json")
    listed = json.loads(out)["keys"]
    assert [k["key_id"] for k in listed] == [k["key_id"] for k in answer["keys"]]
    code, out, err = await cli(env, "keys", "rotate", "--compromised")
    assert code == 0 and "every previous key is removed" in out
    assert len(await service.state.ledger.storage.list_signing_keys()) == 1
    for secret in await secrets_of(service):
        assert secret not in out + err
    # a wrong admin token: one line, exit 1, nothing rotated
    code, out, err = await cli({**env, "API_INTERNAL_TOKEN": "wrong"}, "keys", "rotate")
    assert code == 1 and "refused the admin token" in err and len(err.splitlines()) == 1
    assert len(await service.state.ledger.storage.list_signing_keys()) == 1
    code, _, err = await cli(env, "keys", "rotate", "--now", "--compromised")
    assert code == 2 and "not allowed with" in err


async def test_credential_fetch_reads_the_token_from_a_file_stdin_or_the_environment(
        running: tuple[Service, dict[str, str]], tmp_path: Path) -> None:
    service, env = running
    pid = PaymentId.generate()
    await service.state.ledger.credit([transfer(pid, 5000)], None)
    token = (await service.state.ledger.redeem(pid)).token.hex()  # type: ignore[union-attr]
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    async with aiohttp.ClientSession() as http:
        async with http.get(url(service.public_address,
                                "/.well-known/anonticket-credential-keys")) as resp:
            verifier = CredentialVerifier.from_key_document(await resp.read())
    fetched = []
    for args, extra_env, stdin in ((["--token-file", str(token_file)], {}, None),
                                   (["--token-file", "-"], {}, token + "\n"),
                                   ([], {"ANONTICKET_TOKEN": token}, None)):
        code, out, err = await cli({**env, **extra_env}, "credential", "fetch", *args, stdin=stdin)
        assert (code, err) == (0, ""), err
        credential = out.strip()
        assert verifier.verify(credential).subject and token not in out
        fetched.append(credential)
    assert len(set(fetched)) == 3
    code, out, _ = await cli(env, "credential", "fetch", "--token-file", str(token_file),
                             "--audience", "files", "--json",
                             "--url", f"http://{service.public_address}")
    answer = json.loads(out)
    assert code == 0 and answer["audience"] == "files" and answer["credential"].startswith("v4.")
    # refusals: one line, exit 1 (the service's code), exit 2 without a token
    code, _, err = await cli(env, "credential", "fetch", "--token-file", str(token_file),
                             "--audience", "other")
    assert code == 1 and "invalid_audience" in err and len(err.splitlines()) == 1
    code, _, err = await cli({**env, "ANONTICKET_TOKEN": "ab" * 32}, "credential", "fetch")
    assert code == 1 and "token_not_found" in err and "ab" * 32 not in err
    code, _, err = await cli(env, "credential", "fetch")
    assert code == 2 and "never on the command line" in err
    code, _, err = await cli(env, "credential", "fetch", "--token-file", str(tmp_path / "none"))
    assert code == 1 and "cannot read" in err
