"""RSA blind signatures, RFC 9474, variant RSABSSA-SHA384-PSS-Deterministic.

The variant Privacy Pass token type 0x0002 uses (RFC 9578 §6): SHA-384, MGF1 with SHA-384, a
48-byte salt, and Prepare = PrepareIdentity (the message is signed as it is; the token input
already carries a random nonce). This is the one place anonticket writes cryptographic code, so
it follows the RFC's steps one by one, under the RFC's names:

- client: ``blind`` (§4.2) then ``finalize`` (§4.4), which ends with a full RSASSA-PSS verify;
- signer: ``blind_sign`` (§4.3), with the fault check of §4.3 step 4 (s^e mod n must give m
  back, so a faulty CRT computation never leaves the process: it would reveal a factor of n)
  and the private operation done with RSA blinding (§7.1), as pycryptodome does it;
- anyone: ``verify`` (§4.5), which is plain RSASSA-PSS-VERIFY (RFC 8017 §8.1.2).

Every output is exactly modulus_len bytes. Errors are ``BlindRSAError`` subclasses with fixed
messages: no key, message or signature material ever reaches an exception or a log.
"""

from __future__ import annotations

import math
import secrets

from Crypto.Hash import SHA384
from Crypto.PublicKey.RSA import RsaKey
from Crypto.Signature import pss

HASH = SHA384
H_LEN = SHA384.digest_size  # 48
SALT_LEN = 48  # sLen = hLen, RFC 9474 §5 for the SHA384-PSS variants


class BlindRSAError(ValueError):
    """Base of the errors RFC 9474 names; the message is fixed and carries no data."""

    message = "blind RSA error"

    def __init__(self) -> None:
        super().__init__(self.message)


class MessageTooLong(BlindRSAError):
    message = "message too long"


class EncodingError(BlindRSAError):
    message = "encoding error"


class InvalidInput(BlindRSAError):
    message = "invalid input"


class BlindingError(BlindRSAError):
    message = "blinding error"


class MessageOutOfRange(BlindRSAError):
    message = "message representative out of range"


class SignatureOutOfRange(BlindRSAError):
    message = "signature representative out of range"


class SigningFailure(BlindRSAError):
    message = "signing failure"


class UnexpectedInputSize(BlindRSAError):
    message = "unexpected input size"


class InvalidSignature(BlindRSAError):
    message = "invalid signature"


def modulus_len(key: RsaKey) -> int:
    """The size of n in bytes (the RFC's modulus_len, RFC 8017's k)."""
    return key.size_in_bytes()


def int_to_bytes(x: int, length: int) -> bytes:
    """I2OSP: big-endian, always exactly ``length`` bytes."""
    return x.to_bytes(length, "big")


def bytes_to_int(data: bytes) -> int:
    """OS2IP."""
    return int.from_bytes(data, "big")


def rsavp1(pk: RsaKey, s: int) -> int:
    """RSAVP1, RFC 8017 §5.2.2: s^e mod n, for 0 <= s < n."""
    if not 0 <= s < pk.n:
        raise SignatureOutOfRange()
    return pow(s, pk.e, pk.n)


def rsasp1(sk: RsaKey, m: int) -> int:
    """RSASP1, RFC 8017 §5.2.1: m^d mod n, computed with CRT and RSA blinding.

    ``RsaKey._decrypt_to_bytes`` is pycryptodome's blinded CRT private operation (a fresh or
    squared secret r per call: m' = (m * r^e)^d * r^-1 mod n), so the time it takes does not
    depend on m; RFC 9474 §7.1 asks for exactly this. It is a private API: setup.cfg pins the
    pycryptodome versions it was checked on, and tests/crypto/test_blind_rsa.py checks that it still
    computes m^d mod n and still answers with modulus_len bytes.
    """
    if not 0 <= m < sk.n:
        raise MessageOutOfRange()
    if not sk.has_private():
        raise TypeError("a private key is needed to sign")
    return bytes_to_int(sk._decrypt_to_bytes(m))


def mgf1(seed: bytes, mask_len: int) -> bytes:
    """MGF1 with SHA-384 (RFC 8017 §B.2.1), pycryptodome's implementation."""
    return pss.MGF1(seed, mask_len, HASH)


def emsa_pss_encode(msg: bytes, em_bits: int, salt: bytes) -> bytes:
    """EMSA-PSS-ENCODE, RFC 8017 §9.1.1, with SHA-384, MGF1-SHA-384 and the given salt.

    The salt is a parameter so the RFC 9474 and RFC 9578 vectors can fix it; ``blind`` draws
    a fresh random one for every message.
    """
    em_len = -(-em_bits // 8)
    # 1.-2. SHA-384 takes inputs far longer than any message we could hold
    m_hash = HASH.new(msg).digest()
    # 3.
    if em_len < H_LEN + len(salt) + 2:
        raise EncodingError()
    # 4.-6. M' = (0x)00 00 00 00 00 00 00 00 || mHash || salt; H = Hash(M')
    h = HASH.new(b"\x00" * 8 + m_hash + salt).digest()
    # 7.-8. DB = PS || 0x01 || salt
    db = b"\x00" * (em_len - len(salt) - H_LEN - 2) + b"\x01" + salt
    # 9.-10.
    db_mask = mgf1(h, em_len - H_LEN - 1)
    masked_db = bytes(a ^ b for a, b in zip(db, db_mask))
    # 11. zero the leftmost 8*emLen - emBits bits
    masked_db = bytes([masked_db[0] & (0xFF >> (8 * em_len - em_bits))]) + masked_db[1:]
    # 12.
    return masked_db + h + b"\xbc"


def blind(pk: RsaKey, msg: bytes) -> tuple[bytes, int]:
    """Blind, RFC 9474 §4.2: (blinded_msg, inv), with a fresh salt and blinding factor.

    ``inv`` is r^-1 mod n, the client's secret until ``finalize``: whoever holds it and the
    blinded message can link the finished signature to this request.
    """
    salt = secrets.token_bytes(SALT_LEN)
    r = secrets.randbelow(pk.n - 1) + 1  # random_integer_uniform(1, n)
    return _blind(pk, msg, salt, r)


def _blind(pk: RsaKey, msg: bytes, salt: bytes, r: int) -> tuple[bytes, int]:
    """Blind's steps with the salt and r given: only tests fix them (the RFC vectors)."""
    n = pk.n
    # 1.-2. EMSA-PSS-ENCODE(msg, modBits - 1), as RSASSA-PSS-SIGN calls it (RFC 8017 §8.1.1)
    encoded_msg = emsa_pss_encode(msg, n.bit_length() - 1, salt)
    # 3.
    m = bytes_to_int(encoded_msg)
    # 4.-5.
    if math.gcd(m, n) != 1:
        raise InvalidInput()
    # 6. r = random_integer_uniform(1, n), drawn by the caller
    if not 1 <= r < n:
        raise BlindingError()
    # 7.-8.
    try:
        inv = pow(r, -1, n)
    except ValueError:
        raise BlindingError() from None
    # 9.-10.
    x = rsavp1(pk, r)
    z = m * x % n
    # 11.-12.
    return int_to_bytes(z, modulus_len(pk)), inv


def blind_sign(sk: RsaKey, blinded_msg: bytes) -> bytes:
    """BlindSign, RFC 9474 §4.3: the blind signature, modulus_len bytes."""
    k = modulus_len(sk)
    if len(blinded_msg) != k:
        raise UnexpectedInputSize()
    # 1.
    m = bytes_to_int(blinded_msg)
    # 2. (raises MessageOutOfRange unless m < n)
    s = rsasp1(sk, m)
    # 3.-4. the fault check: a signature that does not verify is never sent
    if rsavp1(sk, s) != m:
        raise SigningFailure()
    # 5.-6.
    return int_to_bytes(s, k)


def finalize(pk: RsaKey, msg: bytes, blind_sig: bytes, inv: int) -> bytes:
    """Finalize, RFC 9474 §4.4: unblind and verify; the RSASSA-PSS signature over msg."""
    k = modulus_len(pk)
    n = pk.n
    # 1.
    if len(blind_sig) != k:
        raise UnexpectedInputSize()
    if not 1 <= inv < n:
        raise InvalidInput()
    # 2.
    z = bytes_to_int(blind_sig)
    if z >= n:
        raise InvalidSignature()
    # 3.-4.
    sig = int_to_bytes(z * inv % n, k)
    # 5.-6.
    verify(pk, msg, sig)
    return sig


def verify(pk: RsaKey, msg: bytes, sig: bytes) -> None:
    """Verify, RFC 9474 §4.5: RSASSA-PSS-VERIFY (RFC 8017 §8.1.2); raises InvalidSignature.

    pycryptodome's PSS verifier does it (SHA-384, MGF1-SHA-384, sLen 48): it is independent of
    ``emsa_pss_encode`` above, so ``finalize`` also cross-checks our encoding.
    """
    if len(sig) != modulus_len(pk):
        raise InvalidSignature()
    try:
        pss.new(pk, salt_bytes=SALT_LEN).verify(HASH.new(msg), sig)
    except (ValueError, TypeError):
        raise InvalidSignature() from None
