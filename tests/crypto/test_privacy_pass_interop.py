"""Interop with an independent implementation, both ways: Cloudflare's @cloudflare/privacypass-ts
and @cloudflare/blindrsa-ts under node (tests/interop/peer.mjs; `bin/setup --test` installs them
with `npm ci`).

- their client, our issuer: it finalizes a token our BlindSign signed, its Origin verifies it,
  and we verify the token it produced (as it sends it, in an Authorization value);
- our client, their issuer: we blind against the key of its WWW-Authenticate value, it signs,
  we finalize and verify, and its Origin verifies our token;
- raw RFC 9474 both ways on a 4096-bit key (the RFC vector's), outside Privacy Pass.

No skip: without node or the packages this fails and says how to install them.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import secrets
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from Crypto.PublicKey import RSA

from anonticket.crypto import blind_rsa
from anonticket.crypto import privacy_pass as pp
from anonticket.crypto import privacy_pass_http as ppx
from anonticket.crypto.privacy_pass import IssuerKey, TokenChallenge, TokenKey, TokenRequest, TokenResponse

INTEROP = Path(__file__).resolve().parents[1] / "interop"
VECTORS = Path(__file__).resolve().parents[1] / "vectors"
ANSWER_DEADLINE = 60.0  # seconds for one answer: a 2048-bit keygen on a loaded machine included


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


class Peer:
    """The node process: one JSON request per line, one answer per line, each to a deadline."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    async def call(self, op: str, **request: Any) -> Any:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps({"op": op, **request}).encode() + b"\n")
        await self.process.stdin.drain()
        line = await asyncio.wait_for(self.process.stdout.readline(), ANSWER_DEADLINE)
        if not line:
            stderr = await self.process.stderr.read() if self.process.stderr else b""
            raise AssertionError(f"the node peer exited: {stderr.decode(errors='replace')}")
        answer = json.loads(line)
        if isinstance(answer, dict) and "error" in answer:
            raise AssertionError(f"node peer, {op}: {answer['error']}")
        return answer


@pytest.fixture
async def peer() -> AsyncIterator[Peer]:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed: `bin/setup --test` installs it (Debian: nodejs npm)")
    for package in ("privacypass-ts", "blindrsa-ts"):
        if not (INTEROP / "node_modules" / "@cloudflare" / package / "package.json").is_file():
            pytest.fail(f"@cloudflare/{package} is missing: `bin/setup --test` runs npm ci in {INTEROP}")
    process = await asyncio.create_subprocess_exec(
        node, str(INTEROP / "peer.mjs"), cwd=INTEROP, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        yield Peer(process)
    finally:
        assert process.stdin is not None
        process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), ANSWER_DEADLINE)
        except TimeoutError:
            process.kill()
            await process.wait()


@pytest.fixture(scope="module")
def issuer() -> IssuerKey:
    return IssuerKey.generate()


CHALLENGES = {
    "origin": TokenChallenge("issuer.example", b"", ("origin.example",)),
    "redemption-context": TokenChallenge("issuer.example", secrets.token_bytes(32), ()),
    "two-origins": TokenChallenge("issuer.example", b"", ("a.example", "b.example")),
}


@pytest.mark.parametrize("kind", sorted(CHALLENGES))
async def test_their_client_our_issuer(peer: Peer, issuer: IssuerKey, kind: str) -> None:
    challenge = CHALLENGES[kind].encode()
    key = issuer.token_key
    # they read our WWW-Authenticate value as we meant it
    (theirs,) = await peer.call("parse_www_authenticate",
                                header=ppx.format_www_authenticate(challenge, key, max_age=60))
    assert (unb64(theirs["challenge"]), unb64(theirs["token_key"]), theirs["max_age"]) == (challenge, key.spki, 60)

    started = await peer.call("client_request", challenge=b64(challenge), token_key=b64(key.spki))
    request = TokenRequest.decode(unb64(started["token_request"]))
    assert request.truncated_token_key_id == key.truncated_token_key_id
    response = issuer.issue(request)
    done = await peer.call("client_finalize", id=started["id"], token_response=b64(response.encode()),
                           token_key=b64(key.spki))
    assert done["origin_verifies"] is True

    token = ppx.parse_authorization(done["authorization"])
    assert token is not None and token.encode() == unb64(done["token"])
    assert token.token_key_id == key.token_key_id  # they computed the same key id from our SPKI
    assert token.challenge_digest == hashlib.sha256(challenge).digest()
    pp.verify_token(token, key)
    forged = pp.Token(token.nonce[::-1], token.challenge_digest, token.token_key_id, token.authenticator)
    with pytest.raises(pp.InvalidToken):
        pp.verify_token(forged, key)


async def test_our_client_their_issuer(peer: Peer) -> None:
    made = await peer.call("issuer_new", issuer_name="issuer.example", origin_info=["origin.example"])
    (offer,) = ppx.parse_www_authenticate(made["www_authenticate"])
    assert offer.token_key == unb64(made["token_key"])
    key = TokenKey.from_spki(offer.token_key)  # their SPKI is exactly the RFC 9578 encoding
    assert key.spki == pp.encode_spki(key.public_key)
    assert key.token_key_id == unb64(made["token_key_id"])
    assert TokenChallenge.decode(offer.challenge) == TokenChallenge("issuer.example", b"", ("origin.example",))

    request, pending = pp.create_token_request(offer.challenge, key)
    signed = await peer.call("issuer_issue", token_request=b64(request.encode()))
    token = pp.finalize_token(pending, TokenResponse.decode(unb64(signed["token_response"])))
    pp.verify_token(token, key)
    assert (await peer.call("origin_verify", authorization=ppx.format_authorization(token)))["verifies"] is True

    # their Origin can say no: the same token with one authenticator bit flipped
    authenticator = bytearray(token.authenticator)
    authenticator[0] ^= 0x01
    tampered = pp.Token(token.nonce, token.challenge_digest, token.token_key_id, bytes(authenticator))
    assert (await peer.call("origin_verify", authorization=ppx.format_authorization(tampered)))["verifies"] is False


@pytest.fixture(scope="module")
def key4096() -> RSA.RsaKey:
    vector = json.loads((VECTORS / "rfc9474_rsabssa_sha384_pss_deterministic.json").read_text())["vector"]
    return RSA.construct(tuple(int(vector[name], 16) for name in ("n", "e", "d", "p", "q")))


async def test_rfc9474_both_ways_with_blindrsa_ts(peer: Peer, key4096: RSA.RsaKey) -> None:
    public = key4096.public_key()
    spki = b64(public.export_key("DER"))
    msg = secrets.token_bytes(77)

    # they blind and finalize, we sign
    blinded = await peer.call("rsabssa_blind", spki=spki, msg=b64(msg))
    blind_sig = blind_rsa.blind_sign(key4096, unb64(blinded["blinded_msg"]))
    sig = unb64((await peer.call("rsabssa_finalize", id=blinded["id"], spki=spki, msg=b64(msg),
                                 blind_sig=b64(blind_sig)))["sig"])
    blind_rsa.verify(public, msg, sig)

    # we blind and finalize, they sign
    blinded_msg, inv = blind_rsa.blind(public, msg)
    theirs = await peer.call("rsabssa_blind_sign", pkcs8=b64(key4096.export_key("DER", pkcs=8)),
                             blinded_msg=b64(blinded_msg))
    ours = blind_rsa.finalize(public, msg, unb64(theirs["blind_sig"]), inv)
    assert (await peer.call("rsabssa_verify", spki=spki, msg=b64(msg), sig=b64(ours)))["verifies"] is True
    assert (await peer.call("rsabssa_verify", spki=spki, msg=b64(msg + b"x"), sig=b64(ours)))["verifies"] is False
