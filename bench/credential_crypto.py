#!/usr/bin/env python3
"""Credential cryptography on one core: the shipped verifier's rate, and the signing A/B.

    python3 bench/credential_crypto.py --secs 2                       # its own key
    python3 bench/credential_crypto.py --document keys.json --credentials creds.txt

What an operator weighs when a protected service verifies credentials itself instead of
asking the gateway check: ``verifications_per_core_sec`` is
``anonticket.crypto.credential.CredentialVerifier.verify`` (pycryptodome only, no cache: each
call checks the Ed25519 signature and the claims) over a cycle of distinct credentials, per
second of this process's CPU time. With ``--document`` and ``--credentials`` the verifier is
built from the service's published key document and verifies the credentials the service
issued (bench/credentials.py passes them); without, the script makes a key and credentials
shaped like the service's.

The signing A/B/C (same run, same claims, same PASETO encoding: only the Ed25519 backend
differs: pycryptodome, OpenSSL through ``cryptography``, libsodium through PyNaCl) is why the
service signs with libsodium (anonticket.ledger.keyring's FastSecretKey) while the verifier
module stays pycryptodome-only: docs/benchmarks.md.

Prints one line ``BENCH_JSON {...}``. Run it pinned (``taskset -c 0``) on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from anonticket.crypto.credential import (  # noqa: E402
    CredentialVerifier,
    KeyEntry,
    key_document,
    sign_credential,
)
from anonticket.crypto.paseto_v4 import SecretKey, b64url_encode  # noqa: E402
from anonticket.ledger.keyring import FastSecretKey  # noqa: E402


class OpenSSLSecretKey(SecretKey):
    """The service's previous signing backend (OpenSSL through ``cryptography``), kept here
    for the A/B that chose libsodium."""

    __slots__ = ("_openssl",)

    def __init__(self, seed: bytes) -> None:
        super().__init__(seed)
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        self._openssl = Ed25519PrivateKey.from_private_bytes(seed)

    def _sign(self, m2: bytes) -> bytes:
        return self._openssl.sign(m2)  # type: ignore[no-any-return]


def _claims(now: datetime) -> dict[str, object]:
    """The service's claims (anonticket.ledger.credentials.Credentials.issue)."""
    return {"sub": secrets.token_hex(16), "iat": now, "nbf": now,
            "exp": now + timedelta(hours=1), "jti": b64url_encode(secrets.token_bytes(16)),
            "unlimited": True}


def per_core_sec(work: Callable[[int], None], secs: float) -> tuple[int, float]:
    """(calls, calls per CPU second) of ``work(i)`` run for ``secs`` of wall time."""
    calls = 0
    wall_end = time.monotonic() + secs
    cpu_start = time.process_time()
    while time.monotonic() < wall_end:
        for _ in range(100):
            work(calls)
            calls += 1
    cpu = time.process_time() - cpu_start
    return calls, calls / cpu if cpu else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--secs", type=float, default=2.0, help="wall seconds per measurement")
    parser.add_argument("--document", type=Path, help="the service's published key document")
    parser.add_argument("--credentials", type=Path, help="credentials it issued, one a line")
    args = parser.parse_args(argv)
    now = datetime.now(timezone.utc)
    if args.document and args.credentials:
        verifier = CredentialVerifier.from_key_document(args.document.read_text())
        tokens = [line for line in args.credentials.read_text().split() if line]
        source = "the service's key document and credentials"
    else:
        key = FastSecretKey(SecretKey.generate().seed)
        document = key_document([KeyEntry(key.public_key, now, None, None)])
        verifier = CredentialVerifier.from_key_document(json.dumps(document))
        tokens = [sign_credential(key, _claims(now)) for _ in range(1000)]
        source = "a key and 1,000 credentials of this script"
    if not tokens:
        raise SystemExit("no credentials to verify")
    for token in tokens:  # every one verifies, or the figure measures refusals
        verifier.verify(token)

    verified, verify_rate = per_core_sec(lambda i: verifier.verify(tokens[i % len(tokens)]),
                                         args.secs)
    claims = _claims(now)
    seed = SecretKey.generate().seed
    signing = {}
    for name, key in (("pycryptodome", SecretKey(seed)), ("openssl", OpenSSLSecretKey(seed)),
                      ("libsodium", FastSecretKey(seed))):
        signing[name] = per_core_sec(lambda i: sign_credential(key, claims), args.secs / 3)
    print("BENCH_JSON " + json.dumps({
        "source": source, "credentials": len(tokens),
        "verifications": verified, "verifications_per_core_sec": round(verify_rate),
        **{f"sign_{name}_per_core_sec": round(rate) for name, (_, rate) in signing.items()},
    }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
