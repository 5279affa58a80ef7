"""Credentials in the ledger, on real storage (both backends) with a clock the test moves:
the claims issued, a credential never outliving its token, the gateway's cache and the
recent revocations, and a full rotation (the old key verifies until its credentials
expire, new credentials use the new key, a removed key stops verifying)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import datetime, timezone

import pyseto
import pytest

from anonticket.crypto.credential import CredentialVerifier, encode_claims, format_time
from anonticket.crypto.paseto_v4 import SecretKey, b64url_decode, sign, verify
from anonticket.domain.ids import PaymentId, token_subject
from anonticket.ledger.credentials import Credentials, Revocations, claims_json
from anonticket.ledger.keyring import CREDENTIAL, FastSecretKey, KeyRing
from anonticket.storage import Storage, TokenRow
from conftest import transfer

BOTH_BACKENDS = True

T0 = 1_900_000_000
TTL = 300


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make(storage: Storage, clock: Clock, audiences: tuple[str, ...] = ()) -> Credentials:
    ring = KeyRing(storage, clock=clock, verify_secs=TTL, publish_ahead_secs=TTL // 2)
    return Credentials(ring, Revocations(TTL, clock), ttl=TTL, audiences=audiences, clock=clock)


@pytest.fixture
async def credentials(storage: Storage, clock: Clock) -> AsyncIterator[Credentials]:
    made = make(storage, clock, ("files",))
    await made.load(storage)
    yield made


async def issue_token(storage: Storage, expires_at: int | None = None) -> TokenRow:
    pid = PaymentId.generate()
    await storage.credit_transfers([transfer(pid, 5000)], 10, T0)
    record = (await storage.claim_payments([pid.raw], 1000, T0))[pid.raw].record
    assert record is not None
    return replace(record, expires_at=expires_at)


def claims_of(text: str) -> dict[str, object]:
    return json.loads(b64url_decode(text.split(".")[2])[:-64])


def test_the_fast_signer_makes_the_very_same_signature() -> None:
    for seed in (bytes(32), bytes(range(32)), b"\xff" * 32):
        slow, fast = SecretKey(seed), FastSecretKey(seed)
        for message in (b"", b"x" * 1000, bytes(range(256))):
            assert sign(fast, message, b"f") == sign(slow, message, b"f")
        assert repr(fast) == repr(slow) and seed.hex() not in repr(fast)


@pytest.mark.parametrize("token_expires_at", [None, T0 + 60, 253402300799])
@pytest.mark.parametrize("audience", [None, "files", 'q"uo\\te', "caf\u00e9/\u2603"])
def test_the_hot_path_writes_the_very_claims_the_encoder_writes(
        token_expires_at: int | None, audience: str | None) -> None:
    """``claims_json`` writes the claims by hand (the issuer's hot path); what it writes must
    be, byte for byte, what ``encode_claims`` (the checked, generic path) writes for them."""
    subject = token_subject(bytes(range(32)))
    expires = T0 + TTL if token_expires_at is None else min(T0 + TTL, token_expires_at)
    written = claims_json(subject, T0, expires, token_expires_at,
                          None if audience is None else json.dumps(audience, ensure_ascii=False))
    claims = json.loads(written)
    moment = lambda s: datetime.fromtimestamp(s, timezone.utc)  # noqa: E731
    expected: dict[str, object] = {
        "sub": subject, "iat": moment(T0), "nbf": moment(T0), "exp": moment(expires),
        "jti": claims["jti"], "unlimited": token_expires_at is None}
    if token_expires_at is not None:
        expected["token_expires_at"] = format_time(moment(token_expires_at))
    if audience is not None:
        expected["aud"] = audience
    assert written == encode_claims(expected)
    assert len(b64url_decode(str(claims["jti"]))) == 16


async def test_the_first_start_generates_one_key_and_the_next_reads_it(
        storage: Storage, clock: Clock) -> None:
    first, second = make(storage, clock), make(storage, clock)
    await first.load(storage)
    await second.load(storage)
    (key,) = first.ring.keys()
    assert [k.key_id for k in second.ring.keys()] == [key.key_id]
    assert first.ring.signing_key() is not None
    assert key.key_id.startswith("k4.pid.") and key.key_id == key.public_key.pid()


async def test_issued_claims_are_exactly_the_documented_ones(
        storage: Storage, credentials: Credentials) -> None:
    record = await issue_token(storage)
    issued = credentials.issue(record)
    claims = claims_of(issued.credential)
    assert set(claims) == {"sub", "iat", "nbf", "exp", "jti", "unlimited"}
    assert claims["sub"] == token_subject(record.token)
    assert claims["iat"] == claims["nbf"] == "2030-03-17T17:46:40Z"
    assert claims["exp"] == "2030-03-17T17:51:40Z" and issued.expires_at == T0 + TTL
    assert claims["unlimited"] is True and issued.audience is None
    assert len(b64url_decode(str(claims["jti"]))) == 16
    assert record.token.hex() not in issued.credential
    assert record.token.hex() not in json.dumps(claims)
    # every credential is a new one
    assert claims_of(credentials.issue(record).credential)["jti"] != claims["jti"]
    # pyseto, with the published key, reads the same (an independent implementation)
    key = credentials.ring.keys()[0].public_key.to_paserk()
    token = pyseto.Token.new(issued.credential)
    assert json.loads(token.footer)["kid"] == credentials.ring.keys()[0].key_id
    decoded = verify(credentials.ring.keys()[0].public_key, issued.credential)
    assert json.loads(decoded[0]) == claims
    assert pyseto.Key.from_paserk(key).to_paserk_id() == json.loads(token.footer)["kid"]


async def test_a_credential_never_outlives_its_token(
        storage: Storage, credentials: Credentials, clock: Clock) -> None:
    record = await issue_token(storage, expires_at=T0 + 42)
    issued = credentials.issue(record)
    claims = claims_of(issued.credential)
    assert issued.expires_at == T0 + 42 and claims["exp"] == "2030-03-17T17:47:22Z"
    assert claims["unlimited"] is False and claims["token_expires_at"] == claims["exp"]
    checked = credentials.check(issued.credential)
    assert not isinstance(checked, str) and checked.token_expires_at == T0 + 42
    clock.now = T0 + 41
    assert not isinstance(credentials.check(issued.credential), str)
    clock.now = T0 + 42  # the token's last second has passed: so has the credential's
    assert credentials.check(issued.credential) == "credential_expired"
    # a token with a long time left: the TTL bounds the credential
    far = credentials.issue(replace(record, expires_at=T0 + 10**6))
    assert far.expires_at == clock.now + TTL


async def test_audiences_are_the_configured_ones_and_the_gateway_takes_none(
        storage: Storage, credentials: Credentials) -> None:
    record = await issue_token(storage)
    issued = credentials.issue(record, "files")
    assert claims_of(issued.credential)["aud"] == "files"
    assert credentials.check(issued.credential) == "invalid_credential"
    service = CredentialVerifier([k.public_key for k in credentials.ring.keys()],
                                 audience="files", clock=credentials.verifier().clock)  # type: ignore[union-attr]
    assert service.verify(issued.credential).subject == token_subject(record.token)
    with pytest.raises(ValueError):
        credentials.issue(record, "other")


async def test_the_check_caches_a_verified_credential_until_its_exp(
        storage: Storage, credentials: Credentials, clock: Clock,
        monkeypatch: pytest.MonkeyPatch) -> None:
    record = await issue_token(storage)
    text = credentials.issue(record).credential
    verifier = credentials.verifier()
    assert verifier is not None
    calls = []
    real = verifier.verify
    monkeypatch.setattr(verifier, "verify", lambda t: calls.append(t) or real(t))
    for _ in range(5):
        checked = credentials.check(text)
        assert not isinstance(checked, str) and checked.subject == token_subject(record.token)
    assert len(calls) == 1
    clock.now = T0 + TTL
    assert credentials.check(text) == "credential_expired"
    assert len(calls) == 2  # the cached entry expired with the credential


async def test_a_revoked_tokens_credentials_are_refused_at_once_and_after_a_reload(
        storage: Storage, credentials: Credentials, clock: Clock) -> None:
    record = await issue_token(storage)
    text = credentials.issue(record).credential
    assert not isinstance(credentials.check(text), str)  # cached now
    await storage.revoke_token(record.token, "abuse", None, clock.now)
    credentials.revocations.add(record.token, clock.now)  # what Ledger.revoke does
    assert credentials.check(text) == "credential_revoked"
    # another instance (or this one restarted) loads the revocation with the views
    fresh = make(storage, clock)
    await fresh.load(storage)
    assert fresh.check(text) == "credential_revoked"
    assert len(fresh.revocations) == 1
    # once every credential issued before the revocation has expired, it is forgotten
    clock.now = T0 + TTL
    assert fresh.check(text) == "credential_expired" and len(fresh.revocations) == 0


async def test_rotation_from_start_to_removal(
        storage: Storage, credentials: Credentials, clock: Clock) -> None:
    record = await issue_token(storage)
    ring = credentials.ring
    old_key = ring.signing_key()
    assert old_key is not None
    old = credentials.issue(record).credential
    new_key = await ring.rotate(CREDENTIAL)
    assert new_key.row.not_before == T0 + TTL // 2
    # published at once (so verifiers learn it first), signing only from its not_before
    assert [k.key_id for k in ring.keys()] == [old_key.key_id, new_key.key_id]
    assert ring.signing_key().key_id == old_key.key_id  # type: ignore[union-attr]
    clock.now = T0 + TTL // 2
    assert ring.signing_key().key_id == new_key.key_id  # type: ignore[union-attr]
    new = credentials.issue(record).credential
    assert json.loads(b64url_decode(new.split(".")[3]))["kid"] == new_key.key_id
    assert json.loads(b64url_decode(old.split(".")[3]))["kid"] == old_key.key_id
    # the old key still verifies what it signed, until that has expired
    assert not isinstance(credentials.check(old), str)
    assert not isinstance(credentials.check(new), str)
    clock.now = T0 + TTL // 2 + TTL - 1
    assert await ring.remove_expired() == 0
    clock.now = T0 + TTL // 2 + TTL
    assert await ring.remove_expired() == 1
    assert [k.key_id for k in ring.keys()] == [new_key.key_id]
    # a credential of the removed key no longer verifies, even one signed to live longer
    forged_lifetime = sign(old_key.secret_key, json.dumps(
        {"sub": token_subject(record.token), "exp": "2099-01-01T00:00:00Z"}).encode(),
        json.dumps({"kid": old_key.key_id}))
    assert credentials.check(forged_lifetime) == "invalid_credential"


async def test_a_compromised_rotation_stops_the_old_key_at_once(
        storage: Storage, credentials: Credentials) -> None:
    record = await issue_token(storage)
    old = credentials.issue(record).credential
    assert not isinstance(credentials.check(old), str)  # and cached
    await credentials.ring.rotate(CREDENTIAL, compromised=True)
    assert credentials.check(old) == "invalid_credential"
    assert not isinstance(credentials.check(credentials.issue(record).credential), str)


async def test_a_rotation_whose_outcome_is_unknown_leaves_the_view_as_stored(
        storage: Storage, credentials: Credentials, monkeypatch: pytest.MonkeyPatch) -> None:
    real = storage.rotate_signing_key

    async def committed_then_lost(*args: object, **kwargs: object) -> None:
        await real(*args, **kwargs)  # type: ignore[arg-type]
        raise ConnectionError("the COMMIT's answer was lost")

    monkeypatch.setattr(storage, "rotate_signing_key", committed_then_lost)
    with pytest.raises(ConnectionError):
        await credentials.ring.rotate(CREDENTIAL, immediately=True)
    stored = [row.key_id for row in await storage.list_signing_keys()]
    assert [k.key_id for k in credentials.ring.keys()] == stored and len(stored) == 2


async def test_a_damaged_stored_key_stops_the_load(storage: Storage, clock: Clock) -> None:
    from anonticket.storage import SigningKeyRow

    good = SecretKey.generate()
    await storage.add_first_signing_key(SigningKeyRow(
        good.public_key.pid(), CREDENTIAL, bytes(32), good.public_key.raw, T0, T0))
    with pytest.raises(RuntimeError, match="does not match") as caught:
        await make(storage, clock).load(storage)
    assert bytes(32).hex() not in str(caught.value)


async def test_the_signed_subject_of_an_expired_credential(
        storage: Storage, credentials: Credentials, clock: Clock) -> None:
    record = await issue_token(storage)
    text = credentials.issue(record).credential
    clock.now = T0 + 10 * TTL
    assert credentials.signed_subject(text) == (token_subject(record.token), T0 + TTL)
    assert credentials.signed_subject(text[:-2]) is None
    other = SecretKey.generate()
    assert credentials.signed_subject(sign(other, b'{"sub":"0"}', "{}")) is None
