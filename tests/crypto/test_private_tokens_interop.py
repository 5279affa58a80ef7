"""Interop through the running issuer, both ways, with Cloudflare's privacypass-ts under node
(tests/interop/peer.mjs; ``bin/setup --test`` installs it):

- their client, our issuer route: it reads the gateway check's 401 challenge and the issuer
  directory, sends its TokenRequest to ``POST /api/v1/private-token`` with the service token
  and an Idempotency-Key, finalizes our blind signature (its Origin verifies the token), and
  we redeem the token it produced at the gateway check, once;
- our client (anonticket.client), our issuer: their Origin verifies the token against the key
  our directory publishes.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from anonticket.client.privacy_pass import Issuer
from anonticket.crypto.privacy_pass_http import format_authorization
from anonticket.domain.ids import PaymentId
from anonticket.service.app import Service, start_service
from conftest import make_config, transfer, url
from test_privacy_pass_interop import Peer, b64, peer  # noqa: F401 - the node peer fixture


@pytest.fixture
async def svc(tmp_path: Path) -> AsyncIterator[Service]:
    running = await start_service(make_config(tmp_path, PRIVATE_TOKEN_UNITS="hour=session:60:10,"
                                                                            "call=request:3"))
    yield running
    await running.aclose()


async def new_token(service: Service) -> str:
    pid = PaymentId.generate()
    await service.state.ledger.credit([transfer(pid, 5000)], None)
    return (await service.state.ledger.redeem(pid)).token.hex()  # type: ignore[union-attr]


async def redeem(service: Service, authorization: str) -> int:
    async with aiohttp.ClientSession(trust_env=False) as http:
        async with http.get(url(service.internal_address, "/api/v1/check"),
                            headers={"Authorization": authorization}) as resp:
            return resp.status


async def test_their_client_through_our_issuer_route_and_our_check(peer: Peer,  # noqa: F811
                                                                    svc: Service) -> None:
    token = await new_token(svc)
    private_tokens = svc.state.ledger.private_tokens
    assert private_tokens is not None
    for found in private_tokens.signing_keys():
        done = await peer.call(
            "http_fetch_token", check_url=url(svc.internal_address, "/api/v1/check"),
            directory_url=url(svc.public_address, "/.well-known/private-token-issuer-directory"),
            bearer=token, idempotency_key=secrets.token_hex(8),
            token_key=b64(found.key.issuer_key.token_key.spki))
        assert done["status"] == 401 and done["challenges"] == 2
        assert done["origin_verifies"] is True
        assert await redeem(svc, done["authorization"]) == 200
        assert await redeem(svc, done["authorization"]) == 401
    record = await svc.state.ledger.storage.get_token(bytes.fromhex(token))
    assert record is not None and record.remaining == 5000 - 13


async def test_our_client_their_origin(peer: Peer, svc: Service) -> None:  # noqa: F811
    token = await new_token(svc)
    issuer = Issuer(f"http://{svc.public_address}")
    (item,) = await asyncio.to_thread(issuer.fetch, token, "call", 1)
    key = (await asyncio.to_thread(issuer.directory)).key_for("call").token_key
    answer = await peer.call("origin_verify_key", authorization=format_authorization(item),
                             token_key=b64(key.spki))
    assert answer["verifies"] is True
