"""PASETO v4.public and PASERK k4: the official vectors, pyseto both ways, and strict refusals.

The vectors are paseto-standard/test-vectors, vendored unmodified in tests/vectors/paseto/
(source commit and ISC licence there). `pyseto` (test extra only) is the independent
implementation: built on `cryptography`/OpenSSL, it shares no code with ours.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import pyseto
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from anonticket.crypto.paseto_v4 import (
    PasetoError,
    PublicKey,
    SecretKey,
    b64url_decode,
    b64url_encode,
    pae,
    sign,
    untrusted_footer,
    verify,
)

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "paseto"
FIXED_MESSAGES = set(PasetoError.MESSAGES.values())
SETTINGS = settings(max_examples=200, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])
ED25519_ORDER = 2**252 + 27742317777372353535851937790883648493


def _vectors(name: str) -> list[dict[str, Any]]:
    return json.loads((VECTORS / name).read_text())["tests"]


V4 = {test["name"]: test for test in _vectors("v4.json")}
SIGNING = [test for name, test in V4.items() if name.startswith("4-S-")]
FAILING = [test for name, test in V4.items() if name.startswith("4-F-")]
VECTOR_KEY = PublicKey(bytes.fromhex(V4["4-S-1"]["public-key"]))


def refused(token: object, keys: Any = None, implicit: bytes | str = b"",
            footer: bytes | None = None) -> PasetoError:
    """Verify must refuse: with a PasetoError, and a fixed message that does not echo the input."""
    with pytest.raises(PasetoError) as caught:
        verify(VECTOR_KEY if keys is None else keys, token,  # type: ignore[arg-type]
               implicit, footer)
    error = caught.value
    assert str(error) in FIXED_MESSAGES
    # nothing of the input reaches the error: it is exactly the error its code makes (the
    # fixed message, no other attribute), so no log line or body can echo the token through
    # it (a check for the input's text in the message flaked: "0000000000tok" is in "token")
    assert error.args == (type(error).MESSAGES[error.code],)
    assert vars(error) == {"code": error.code}
    assert repr(error) == repr(type(error)(error.code))
    return error


# ---------------------------------------------------------------------------- the official vectors
def test_the_vendored_vectors_are_the_ones_the_tests_expect() -> None:
    assert [t["name"] for t in SIGNING] == ["4-S-1", "4-S-2", "4-S-3"]
    assert len(FAILING) >= 5 and all(t["expect-fail"] for t in FAILING)
    assert not any(t["expect-fail"] for t in SIGNING)


@pytest.mark.parametrize("vector", SIGNING, ids=lambda t: t["name"])
def test_signing_vectors_sign_byte_for_byte(vector: dict[str, Any]) -> None:
    # Ed25519 is deterministic, so our signer must reproduce the very token
    secret = SecretKey(bytes.fromhex(vector["secret-key-seed"]))
    assert secret.public_key.raw.hex() == vector["public-key"]
    assert (secret.to_paserk() ==
            "k4.secret." + b64url_encode(bytes.fromhex(vector["secret-key"])))
    token = sign(secret, vector["payload"].encode(), vector["footer"], vector["implicit-assertion"])
    assert token == vector["token"]


@pytest.mark.parametrize("vector", SIGNING, ids=lambda t: t["name"])
def test_signing_vectors_verify(vector: dict[str, Any]) -> None:
    public = PublicKey(bytes.fromhex(vector["public-key"])).check()
    message, footer = verify(public, vector["token"], vector["implicit-assertion"])
    assert message == vector["payload"].encode()
    assert footer == vector["footer"].encode()
    assert untrusted_footer(vector["token"]) == footer
    if vector["footer"]:  # the optional expected-footer check of Verify step 1
        assert verify(public, vector["token"], vector["implicit-assertion"], vector["footer"])
        refused(vector["token"], public, vector["implicit-assertion"], footer=b'{"kid":"other"}')
    refused(vector["token"], public, implicit=b'{"test-vector":"another"}')


@pytest.mark.parametrize("vector", FAILING, ids=lambda t: t["name"])
def test_failing_vectors_are_refused(vector: dict[str, Any]) -> None:
    # with the vectors' own key pair, and with the symmetric key they were made for when given
    # (which is not an Ed25519 point: key confusion must fail too, never verify)
    refused(vector["token"], VECTOR_KEY, vector["implicit-assertion"])
    if "key" in vector:
        refused(vector["token"], PublicKey(bytes.fromhex(vector["key"])),
                vector["implicit-assertion"])


def test_pae_matches_the_spec_examples() -> None:
    # Common.md, "PAE Definition"
    assert pae([]) == b"\x00" * 8
    assert pae([b""]) == b"\x01" + b"\x00" * 15
    assert pae([b"test"]) == b"\x01" + b"\x00" * 7 + b"\x04" + b"\x00" * 7 + b"test"


# ---------------------------------------------------------------------------- PASERK k4
@pytest.mark.parametrize("vector", _vectors("k4.public.json"), ids=lambda t: t["name"])
def test_k4_public_vectors(vector: dict[str, Any]) -> None:
    raw = bytes.fromhex(vector["key"])
    if vector["expect-fail"]:
        with pytest.raises(PasetoError, match="not a valid k4 key"):
            PublicKey(raw)
        return
    assert PublicKey(raw).to_paserk() == vector["paserk"]
    assert PublicKey.from_paserk(vector["paserk"]).raw == raw


@pytest.mark.parametrize("vector", _vectors("k4.pid.json"), ids=lambda t: t["name"])
def test_k4_pid_vectors(vector: dict[str, Any]) -> None:
    raw = bytes.fromhex(vector["key"])
    if vector["expect-fail"]:
        with pytest.raises(PasetoError, match="not a valid k4 key"):
            PublicKey(raw).pid()
        return
    assert PublicKey(raw).pid() == vector["paserk"]


@pytest.mark.parametrize("vector", _vectors("k4.secret.json"), ids=lambda t: t["name"])
def test_k4_secret_vectors(vector: dict[str, Any]) -> None:
    raw = bytes.fromhex(vector["key"])
    if vector["expect-fail"]:
        with pytest.raises(PasetoError, match="not a valid k4 key"):
            SecretKey(raw[:32] if len(raw) == 64 else raw)
        with pytest.raises(PasetoError, match="not a valid k4 key"):
            SecretKey.from_paserk("k4.secret." + b64url_encode(raw))
        return
    secret = SecretKey(bytes.fromhex(vector["secret-key-seed"]))
    assert secret.public_key.raw.hex() == vector["public-key"]
    assert secret.to_paserk() == vector["paserk"]
    again = SecretKey.from_paserk(vector["paserk"])
    assert again.public_key == secret.public_key


def test_a_k4_secret_whose_public_half_is_not_its_own_is_refused() -> None:
    one, two = SecretKey.generate(), SecretKey.generate()
    spliced = "k4.secret." + b64url_encode(b64url_decode(one.to_paserk()[10:])[:32]
                                           + two.public_key.raw)
    with pytest.raises(PasetoError, match="not a valid k4 key"):
        SecretKey.from_paserk(spliced)


@pytest.mark.parametrize("paserk", [
    "k4.public.AAAA", "k3.public.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    "k4.secret.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    "k4.public.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
    "k4.public.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB",  # trailing bits set: a second spelling
    "k4.public.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA+", "K4.PUBLIC.x", "", None, 42,
])
def test_malformed_k4_public_is_refused_without_echo(paserk: object) -> None:
    with pytest.raises(PasetoError) as caught:
        PublicKey.from_paserk(paserk)  # type: ignore[arg-type]
    assert str(caught.value) == "not a valid k4 key"


def test_a_small_order_key_is_refused_by_check() -> None:
    zero = PublicKey(bytes(32))  # a valid PASERK (vector k4.public-1), a point of order 4
    with pytest.raises(PasetoError, match="not a valid k4 key"):
        zero.check()
    with pytest.raises(PasetoError, match="not a valid k4 key"):
        verify(zero, V4["4-S-1"]["token"])
    assert SecretKey.generate().public_key.check()


# ---------------------------------------------------------------------------- keys are typed
def test_keys_are_not_interchangeable() -> None:
    secret = SecretKey.generate()
    with pytest.raises(TypeError):
        sign(secret.public_key, b"{}")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        sign(secret.to_paserk(), b"{}")  # type: ignore[arg-type]
    token = sign(secret, b"{}")
    with pytest.raises(TypeError):
        verify(secret.public_key.raw, token)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        verify([secret], token)  # type: ignore[list-item]


def test_a_secret_key_never_shows_its_secret() -> None:
    secret = SecretKey.generate()
    seed_b64 = secret.to_paserk()[len("k4.secret."):][:42]
    for shown in (repr(secret), str(secret), f"{secret}", repr([secret])):
        assert seed_b64 not in shown and secret.public_key.pid() in shown
    with pytest.raises(TypeError):
        pickle.dumps(secret)


# ---------------------------------------------------------------------------- pyseto, both ways
def _pyseto_public(raw: bytes) -> Any:
    pem = Ed25519PublicKey.from_public_bytes(raw).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return pyseto.Key.new(version=4, purpose="public", key=pem)


def test_pyseto_verifies_our_tokens() -> None:
    secret = SecretKey.generate()
    message = b'{"sub":"s-1","data":"\xc3\xa9t\xc3\xa9"}'
    footer = json.dumps({"kid": secret.public_key.pid()})
    for implicit in (b"", b"bound-to-this"):
        token = sign(secret, message, footer, implicit)
        # the key reaches pyseto as PEM through `cryptography`, not through our PASERK code
        decoded = pyseto.decode(_pyseto_public(secret.public_key.raw), token,
                                implicit_assertion=implicit)
        assert decoded.payload == message
        assert decoded.footer == footer.encode()
        assert decoded.header == b"v4.public."
    bare = sign(secret, b"{}")
    assert pyseto.decode(_pyseto_public(secret.public_key.raw), bare).payload == b"{}"


def test_we_verify_pyseto_tokens() -> None:
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    signer = pyseto.Key.new(version=4, purpose="public", key=pem)
    raw_public = private.public_key().public_bytes(serialization.Encoding.Raw,
                                                   serialization.PublicFormat.Raw)
    ours = PublicKey(raw_public).check()
    for footer, implicit in ((b"", b""), (b'{"kid":"k"}', b""), (b'{"kid":"k"}', b"bound")):
        token = pyseto.encode(signer, b'{"a":[1,2],"b":"\xe2\x82\xac"}', footer, implicit)
        assert verify(ours, token, implicit) == (b'{"a":[1,2],"b":"\xe2\x82\xac"}', footer)
        refused(token.decode(), ours, implicit + b"x")
        refused(token.decode(), SecretKey.generate().public_key, implicit)


def test_paserk_agrees_with_pyseto() -> None:
    secret = SecretKey.generate()
    theirs_public = _pyseto_public(secret.public_key.raw)
    assert theirs_public.to_paserk() == secret.public_key.to_paserk()
    assert theirs_public.to_paserk_id() == secret.public_key.pid()
    theirs_secret = pyseto.Key.from_paserk(secret.to_paserk())
    assert theirs_secret.to_paserk() == secret.to_paserk()
    token = pyseto.encode(theirs_secret, b"{}")
    assert verify(PublicKey.from_paserk(theirs_public.to_paserk()), token) == (b"{}", b"")


# ---------------------------------------------------------------------------- strict refusals
SECRET = SecretKey(bytes(range(32)))
GOOD = sign(SECRET, b'{"sub":"s","exp":"2099-01-01T00:00:00Z"}', b'{"kid":"k"}')
BODY, FOOT = GOOD[len("v4.public."):].split(".")


def _malleated() -> str:
    # the same signature with S + L: RFC 8032 makes verifiers refuse S >= L
    raw = b64url_decode(BODY)
    s = int.from_bytes(raw[-32:], "little") + ED25519_ORDER  # < 2**254: still 32 bytes
    return "v4.public." + b64url_encode(raw[:-32] + s.to_bytes(32, "little")) + "." + FOOT


@pytest.mark.parametrize(("name", "token", "code"), [
    ("v4.local", "v4.local." + BODY + "." + FOOT, "unsupported_token"),
    ("v3.public", "v3.public." + BODY + "." + FOOT, "unsupported_token"),
    ("v2.public", "v2.public." + BODY + "." + FOOT, "unsupported_token"),
    ("upper-case header", "V4.PUBLIC." + BODY + "." + FOOT, "unsupported_token"),
    ("no header", BODY, "unsupported_token"),
    ("padded", "v4.public." + BODY + "==." + FOOT, "malformed_token"),
    ("padded footer", GOOD + "=", "malformed_token"),
    ("standard alphabet", "v4.public." + BODY.replace("-", "+").replace("_", "/") + "." + FOOT,
     "malformed_token"),
    ("empty footer after a dot", "v4.public." + BODY + ".", "malformed_token"),
    ("three parts", GOOD + "." + FOOT, "malformed_token"),
    ("space", "v4.public. " + BODY + "." + FOOT, "malformed_token"),
    ("newline", GOOD + "\n", "malformed_token"),
    ("too short for a signature", "v4.public." + b64url_encode(b"x" * 63), "malformed_token"),
    ("empty", "v4.public.", "malformed_token"),
    ("footer dropped", "v4.public." + BODY, "invalid_signature"),
    ("footer swapped", "v4.public." + BODY + "." + b64url_encode(b'{"kid":"j"}'),
     "invalid_signature"),
    ("non-ascii", "v4.public." + BODY[:-1] + "é." + FOOT, "malformed_token"),
])
def test_hostile_forms_are_refused_with_a_clear_error(name: str, token: str, code: str) -> None:
    assert refused(token, SECRET.public_key).code == code


def test_the_hostile_forms_differ_from_the_good_token() -> None:
    # a replace() that found nothing to replace would test the good token
    assert "-" in BODY or "_" in BODY


def test_non_canonical_base64_is_refused() -> None:
    # flip the unused low bits of the last character: decodes to the same bytes, yet refused
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    assert len(BODY) % 4 in (2, 3)
    last = alphabet.index(BODY[-1])
    spare = 0b1111 if len(BODY) % 4 == 2 else 0b11
    twin = BODY[:-1] + alphabet[last ^ 1]
    assert last & spare == 0
    assert refused("v4.public." + twin + "." + FOOT, SECRET.public_key).code == "malformed_token"


def test_a_malleated_signature_is_refused() -> None:
    assert refused(_malleated(), SECRET.public_key).code == "invalid_signature"


def test_every_truncation_is_refused() -> None:
    for cut in range(len(GOOD)):
        refused(GOOD[:cut], SECRET.public_key)


def test_bytes_and_other_types() -> None:
    assert verify(SECRET.public_key, GOOD.encode())[1] == b'{"kid":"k"}'
    for hostile in (None, 7, b"\xff" * 90, ["v4.public."], GOOD.encode("utf-16")):
        refused(hostile, SECRET.public_key)


def test_key_rotation_tries_each_key() -> None:
    old, new = SecretKey.generate(), SecretKey.generate()
    keys = [new.public_key, old.public_key]
    assert verify(keys, sign(old, b"{}")) == (b"{}", b"")
    assert verify(keys, sign(new, b"{}")) == (b"{}", b"")
    assert refused(sign(old, b"{}"), [new.public_key]).code == "invalid_signature"
    assert refused(sign(old, b"{}"), []).code == "invalid_signature"


@SETTINGS
@given(st.one_of(st.text(max_size=300), st.binary(max_size=300),
                 st.text(alphabet="v4.publicABCxyz019_-=+/ ", max_size=200).map(
                     lambda s: "v4.public." + s)))
@example("v4.public." + "A" * 86)
@example("v4.public." + "A" * 85)
def test_arbitrary_input_is_a_paseto_error_never_a_crash(token: str | bytes) -> None:
    refused(token, SECRET.public_key)
    try:
        untrusted_footer(token)  # may be well formed (it is not signed): bytes or PasetoError
    except PasetoError as error:
        assert str(error) in FIXED_MESSAGES
    with pytest.raises(PasetoError):
        PublicKey.from_paserk(token)  # type: ignore[arg-type]
    with pytest.raises(PasetoError):
        SecretKey.from_paserk(token)  # type: ignore[arg-type]


@SETTINGS
@given(st.data())
def test_any_change_to_a_valid_token_is_refused(data: st.DataObject) -> None:
    chars = list(GOOD)
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(chars)))
        action = data.draw(st.sampled_from(["replace", "insert", "delete"]))
        char = data.draw(st.sampled_from("AaZz09_-.=+/é"))
        if action == "insert":
            chars.insert(at, char)
        elif at < len(chars):
            if action == "replace":
                chars[at] = char
            else:
                del chars[at]
    mutated = "".join(chars)
    if mutated != GOOD:
        refused(mutated, SECRET.public_key)
