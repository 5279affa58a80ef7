"""Protected services keep answering for a credential's lifetime while anonticket is stopped:
the real ``bin/anonticket serve`` issues a credential and publishes its keys, a separate
service (tests/service/credential_service.py: the shipped verifier, importing nothing of
anonticket but ``anonticket.crypto``) loads the key document once, anonticket is SIGTERMed,
and the service keeps accepting the credential, until its ``exp``, and no longer."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from anonticket.domain.ids import PaymentId
from anonticket.storage import Storage
from conftest import transfer
from test_serve_process import READY_LINE, ServeProcess, serve_env, sockdir, spawn, started  # noqa: F401

SERVICE = Path(__file__).resolve().parent / "credential_service.py"
TTL = 30  # the shortest CREDENTIAL_TTL_SECS: the test waits it out at the end
T0 = 1_700_000_000


async def ask(http: aiohttp.ClientSession, port: int, credential: str) -> tuple[int, dict]:
    async with http.get(f"http://127.0.0.1:{port}/files/a",
                        headers={"Authorization": f"Bearer {credential}"}) as resp:
        return resp.status, await resp.json()


@pytest.mark.slow  # waits out a credential's lifetime (about 30 s): the full suite's
async def test_a_protected_service_answers_while_anonticket_is_stopped(
        sockdir: Path, started: list[ServeProcess]) -> None:
    store = await Storage.open(sockdir / "anonticket.db")
    try:
        pid = PaymentId.generate()
        await store.credit_transfers([transfer(pid, 5000)], 10, T0)
        token = (await store.claim_payments([pid.raw], 1000, T0))[pid.raw].token
    finally:
        await store.close()
    assert token is not None
    env = serve_env(sockdir, API_UNIX_SOCKET="", API_BIND_ADDRESS="127.0.0.1:0",
                    MONITOR_MIN_PAYMENT_AMOUNT="1000", CREDENTIAL_TTL_SECS=str(TTL))
    anonticket = await spawn(env)
    started.append(anonticket)
    match = await anonticket.wait_line(READY_LINE)
    public = match[1]
    verifier_service = await asyncio.create_subprocess_exec(
        sys.executable, str(SERVICE), f"http://{public}/.well-known/anonticket-credential-keys",
        stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL)
    try:
        assert verifier_service.stdout is not None
        port = int(await asyncio.wait_for(verifier_service.stdout.readline(), 30))
        async with aiohttp.ClientSession() as http:
            async with http.post(f"http://{public}/api/v1/credential",
                                 headers={"Authorization": f"Bearer {token.hex()}"}) as resp:
                assert resp.status == 200
                credential = (await resp.json())["credential"]
            issued = time.time()
            status, body = await ask(http, port, credential)
            assert status == 200 and len(body["subject"]) == 32

            anonticket.proc.send_signal(signal.SIGTERM)
            assert await anonticket.finish(10) == 0
            try:
                async with http.get(f"http://{public}/health/live") as resp:
                    raise AssertionError(f"anonticket still answers: {resp.status}")
            except aiohttp.ClientConnectionError:
                pass  # stopped, as intended

            # every request is answered by the service alone, until the credential's exp
            answered = 0
            while time.time() < issued + TTL - 2:
                assert await ask(http, port, credential) == (200, body)
                assert (await ask(http, port, credential[:-3]))[0] == 401
                answered += 1
                await asyncio.sleep(0.5)
            assert answered >= 10
            deadline = time.time() + 10
            while (answer := await ask(http, port, credential))[0] == 200:
                assert time.time() < deadline, "the credential outlived its exp"
                await asyncio.sleep(0.2)
            assert answer == (401, {"error": "expired"})
            assert time.time() >= issued + TTL - 1
    finally:
        verifier_service.kill()
        await verifier_service.wait()
    assert token.hex() not in anonticket.stderr and credential not in anonticket.stderr
