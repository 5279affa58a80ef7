"""The published key document: what anonticket writes, a verifier built from it (keys past
their expiry left out), and every malformed or lying document refused with a plain error."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from anonticket.crypto.credential import (
    CredentialError,
    CredentialVerifier,
    KeyEntry,
    key_document,
    read_key_document,
    sign_credential,
)
from anonticket.crypto.paseto_v4 import SecretKey

NOW = datetime(2030, 6, 1, 12, 0, 0, tzinfo=timezone.utc)
OLD, NEW = SecretKey(bytes(range(32))), SecretKey(bytes(range(1, 33)))
TTL = timedelta(minutes=5)


def document() -> dict[str, Any]:
    """OLD retired a minute ago (verifies four more minutes), NEW in force."""
    return key_document([
        KeyEntry(OLD.public_key, NOW - timedelta(days=1), NOW - timedelta(minutes=1),
                 NOW - timedelta(minutes=1) + TTL),
        KeyEntry(NEW.public_key, NOW - timedelta(minutes=1))])


def credential(key: SecretKey, exp: datetime) -> str:
    return sign_credential(key, {"sub": "s", "exp": exp, "iat": exp - TTL})


def test_the_document_round_trips_through_json() -> None:
    text = json.dumps(document())
    entries = read_key_document(text)
    assert [e.key_id for e in entries] == [OLD.public_key.pid(), NEW.public_key.pid()]
    assert entries[0].expires_at == NOW + timedelta(minutes=4)
    assert entries[1].retired_at is None and entries[1].expires_at is None
    assert json.loads(text)["keys"][1] == {
        "kid": NEW.public_key.pid(), "paserk": NEW.public_key.to_paserk(),
        "not_before": "2030-06-01T11:59:00Z", "retired_at": None, "expires_at": None}
    assert "k4.secret" not in text


def test_a_verifier_from_the_document_takes_every_key_that_still_verifies() -> None:
    verifier = CredentialVerifier.from_key_document(json.dumps(document()), clock=lambda: NOW)
    assert verifier.key_ids == {OLD.public_key.pid(), NEW.public_key.pid()}
    assert verifier.verify(credential(OLD, NOW + timedelta(minutes=3))).subject == "s"
    assert verifier.verify(credential(NEW, NOW + TTL)).subject == "s"
    # once the old key's last credential has expired, the document no longer gives it
    later = NOW + timedelta(minutes=4)
    verifier = CredentialVerifier.from_key_document(document(), clock=lambda: later)
    assert verifier.key_ids == {NEW.public_key.pid()}
    with pytest.raises(CredentialError) as caught:
        verifier.verify(credential(OLD, later + timedelta(seconds=30)))
    assert caught.value.code == "unknown_key"


def _with(**change: Any) -> dict[str, Any]:
    doc = document()
    doc["keys"][1].update(change)
    return doc


@pytest.mark.parametrize("doc, message", [
    (b"{", "not JSON"),
    ("[]", "not an anonticket key document"),
    ({"version": 2, "keys": []}, "not an anonticket key document"),
    ({"version": 1}, "not an anonticket key document"),
    ({"version": 1, "keys": ["k4.public.x"]}, "not an object with a kid"),
    (_with(kid=OLD.public_key.pid()), "kid is not its key's k4.pid"),
    (_with(paserk=OLD.to_paserk()), "invalid key or time"),  # a secret key is not published
    (_with(paserk="k4.public." + "A" * 43), "invalid key or time"),  # the all-zero point
    (_with(not_before="yesterday"), "invalid key or time"),
    (_with(expires_at=5), "invalid key or time"),
])
def test_a_malformed_or_lying_document_is_refused(doc: Any, message: str) -> None:
    text = doc if isinstance(doc, (str, bytes)) else json.dumps(doc)
    with pytest.raises(ValueError, match=message) as caught:
        read_key_document(text)
    assert OLD.to_paserk() not in str(caught.value)


def test_a_document_with_no_key_left_is_refused() -> None:
    doc = key_document([KeyEntry(OLD.public_key, NOW - timedelta(days=1),
                                 NOW - timedelta(hours=1), NOW - timedelta(minutes=55))])
    with pytest.raises(ValueError, match="no key that verifies now"):
        CredentialVerifier.from_key_document(doc, clock=lambda: NOW)
