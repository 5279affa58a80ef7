"""RFC 9474 blind RSA (anonticket/crypto/blind_rsa.py): the RFC's own vector, step by step, the
signer's fault check, the input checks, and the pycryptodome private API it leans on."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from Crypto.Hash import SHA384
from Crypto.Math.Numbers import Integer
from Crypto.PublicKey import RSA
from Crypto.Signature import pss
from hypothesis import given, settings
from hypothesis import strategies as st

from anonticket.crypto import blind_rsa
from anonticket.crypto.blind_rsa import (
    BlindRSAError, EncodingError, InvalidInput, InvalidSignature, MessageOutOfRange,
    SigningFailure, UnexpectedInputSize,
)

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
RFC9474 = json.loads((VECTORS / "rfc9474_rsabssa_sha384_pss_deterministic.json").read_text())["vector"]
RFC9578 = json.loads((VECTORS / "rfc9578_type2_issuance.json").read_text())["vectors"]


def _hex(name: str) -> bytes:
    return bytes.fromhex(RFC9474[name])


@pytest.fixture(scope="module")
def vector_key() -> RSA.RsaKey:
    """The RFC 9474 vector's 4096-bit key."""
    n, e, d, p, q = (int(RFC9474[name], 16) for name in ("n", "e", "d", "p", "q"))
    return RSA.construct((n, e, d, p, q))


@pytest.fixture(scope="module")
def key2048() -> RSA.RsaKey:
    """A 2048-bit key, the size Privacy Pass uses (the RFC 9578 vectors' key: no keygen wait)."""
    return RSA.import_key(bytes.fromhex(RFC9578[0]["skS"]).decode())


def test_rfc9474_vector_step_by_step(vector_key: RSA.RsaKey) -> None:
    pk = vector_key.public_key()
    msg, salt, inv = _hex("msg"), _hex("salt"), int(RFC9474["inv"], 16)
    assert blind_rsa.emsa_pss_encode(msg, pk.n.bit_length() - 1, salt) == _hex("encoded_msg")
    # the vector prints inv = r^-1 mod n; Blind draws r
    blinded_msg, got_inv = blind_rsa._blind(pk, msg, salt, pow(inv, -1, pk.n))
    assert (blinded_msg, got_inv) == (_hex("blinded_msg"), inv)
    assert blind_rsa.blind_sign(vector_key, blinded_msg) == _hex("blind_sig")
    assert blind_rsa.finalize(pk, msg, _hex("blind_sig"), inv) == _hex("sig")
    blind_rsa.verify(pk, msg, _hex("sig"))


def test_round_trip_with_fresh_randomness_verifies_as_plain_rsassa_pss(key2048: RSA.RsaKey) -> None:
    pk = key2048.public_key()
    msg = secrets.token_bytes(98)
    blinded_a, inv_a = blind_rsa.blind(pk, msg)
    blinded_b, inv_b = blind_rsa.blind(pk, msg)
    assert blinded_a != blinded_b and inv_a != inv_b  # fresh salt and r each time
    sig = blind_rsa.finalize(pk, msg, blind_rsa.blind_sign(key2048, blinded_a), inv_a)
    assert len(sig) == 256
    # an RSASSA-PSS verifier that knows nothing of blinding accepts it (raises otherwise)
    pss.new(pk, salt_bytes=48).verify(SHA384.new(msg), sig)
    with pytest.raises(InvalidSignature):
        blind_rsa.verify(pk, msg + b"!", sig)


def test_blind_sign_refuses_a_faulty_private_operation(key2048: RSA.RsaKey,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """RFC 9474 §4.3 step 4: a wrong s (a CRT fault would leak a factor of n) is never sent.
    A fault is the one thing the real key cannot be made to produce, so it is injected."""
    blinded, _ = blind_rsa.blind(key2048.public_key(), b"token input")
    faulty = RSA.construct((key2048.n, key2048.e, key2048.d, key2048.p, key2048.q))
    real = faulty._decrypt_to_bytes

    def flip_a_bit(ciphertext: int) -> bytes:
        good = bytearray(real(ciphertext))
        good[-1] ^= 1
        return bytes(good)

    monkeypatch.setattr(faulty, "_decrypt_to_bytes", flip_a_bit)
    with pytest.raises(SigningFailure):
        blind_rsa.blind_sign(faulty, blinded)
    assert blind_rsa.blind_sign(key2048, blinded)  # the same input signs with a sound key


def test_pycryptodome_private_operation_is_what_we_rely_on(key2048: RSA.RsaKey,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """RsaKey._decrypt_to_bytes is private API (setup.cfg pins the versions): it must compute
    m^d mod n, answer exactly modulus_len bytes (leading zeros kept), and blind with a secret
    random r drawn through Integer.random_range (per call in 3.x, every 32 calls in 4.x)."""
    k = key2048.size_in_bytes()
    for m in (0, 1, 2, key2048.n - 1, secrets.randbelow(key2048.n)):
        out = key2048._decrypt_to_bytes(m)
        assert len(out) == k
        assert int.from_bytes(out, "big") == pow(m, key2048.d, key2048.n)
    draws = []
    original = Integer.random_range

    def spy(*args: object, **kwargs: object) -> Integer:
        draws.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(Integer, "random_range", staticmethod(spy))
    fresh = RSA.construct((key2048.n, key2048.e, key2048.d, key2048.p, key2048.q))
    draws.clear()  # construct's own consistency check draws too
    for _ in range(40):
        fresh._decrypt_to_bytes(12345)
    assert draws and all(kw.get("max_exclusive") == fresh.n for kw in draws)


def test_outputs_are_modulus_len_bytes_even_when_small(key2048: RSA.RsaKey) -> None:
    one = (1).to_bytes(256, "big")
    assert blind_rsa.blind_sign(key2048, one) == one  # 1^d = 1, still 256 bytes


def test_input_checks(key2048: RSA.RsaKey) -> None:
    pk = key2048.public_key()
    blinded, inv = blind_rsa.blind(pk, b"m")
    with pytest.raises(UnexpectedInputSize):
        blind_rsa.blind_sign(key2048, blinded[1:])
    with pytest.raises(UnexpectedInputSize):
        blind_rsa.blind_sign(key2048, blinded + b"\x00")
    with pytest.raises(MessageOutOfRange):
        blind_rsa.blind_sign(key2048, key2048.n.to_bytes(256, "big"))
    with pytest.raises(MessageOutOfRange):
        blind_rsa.blind_sign(key2048, b"\xff" * 256)
    with pytest.raises(TypeError):
        blind_rsa.blind_sign(pk, blinded)
    blind_sig = blind_rsa.blind_sign(key2048, blinded)
    with pytest.raises(UnexpectedInputSize):
        blind_rsa.finalize(pk, b"m", blind_sig[:-1], inv)
    with pytest.raises(InvalidSignature):
        blind_rsa.finalize(pk, b"m", b"\xff" * 256, inv)  # not below n
    with pytest.raises(InvalidInput):
        blind_rsa.finalize(pk, b"m", blind_sig, 0)
    with pytest.raises(InvalidSignature):
        blind_rsa.finalize(pk, b"other message", blind_sig, inv)
    tampered = bytearray(blind_sig)
    tampered[100] ^= 0x40
    with pytest.raises(InvalidSignature):
        blind_rsa.finalize(pk, b"m", bytes(tampered), inv)
    with pytest.raises(InvalidSignature):
        blind_rsa.verify(pk, b"m", b"\x00" * 255)


def test_blind_refuses_a_message_not_coprime_to_n() -> None:
    """Blind step 4-5 (is_coprime). The encoded message always ends in 0xbc, so it is even: a
    (broken) even modulus of the same size shares the factor 2 with it."""
    n = (1 << 2047) | secrets.randbits(2040) << 1
    with pytest.raises(InvalidInput):
        blind_rsa.blind(RSA.construct((n, 65537), consistency_check=False), b"m")


def test_a_modulus_too_small_for_the_encoding_is_refused() -> None:
    small = RSA.construct((0xC5DB5AF4F4F6A20CF7C1D23BBA1DB6D8A3A7C5F3D5DD1B5B0D9A6B9C1E6B2B3D, 65537),
                          consistency_check=False)
    with pytest.raises(EncodingError):
        blind_rsa.blind(small, b"m")


def test_errors_have_fixed_messages() -> None:
    for cls in (EncodingError, InvalidInput, InvalidSignature, MessageOutOfRange, SigningFailure,
                UnexpectedInputSize):
        error = cls()
        assert isinstance(error, BlindRSAError) and isinstance(error, ValueError)
        assert str(error) == cls.message and error.args == (cls.message,)


@settings(deadline=None, database=None, max_examples=60)
@given(data=st.binary(max_size=300), inv=st.integers(min_value=-5, max_value=1 << 2050))
def test_hostile_bytes_only_raise_blind_rsa_errors(key2048: RSA.RsaKey, data: bytes, inv: int) -> None:
    pk = key2048.public_key()
    for call in (lambda: blind_rsa.blind_sign(key2048, data),
                 lambda: blind_rsa.finalize(pk, b"msg", data, inv),
                 lambda: blind_rsa.verify(pk, b"msg", data)):
        try:
            call()
        except BlindRSAError:
            pass


def test_benchmark_helper_smoke() -> None:
    """bench/blind_rsa.py keeps running (its figures are measured on a quiet machine, not here)."""
    script = Path(__file__).resolve().parents[2] / "bench" / "blind_rsa.py"
    done = subprocess.run([sys.executable, str(script), "--quick", "--json", "--cpu", "-1"],
                          capture_output=True, text=True, timeout=300, check=True)
    figures = json.loads(done.stdout)["ops_per_second"]
    assert set(figures) == {"blind_sign", "private_op", "issue", "verify", "client_request",
                            "client_finalize"}
    assert all(value > 0 for value in figures.values())
