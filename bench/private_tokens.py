"""The Privacy Pass figures (issue 24): issuance through the API and redemption at the check.

- ``private_token_issue``: ``POST /api/v1/private-token`` with a batch of ``BATCH`` token
  requests (one debit each), beside ``/health/live`` on the public listener; the figure is
  tokens/s (requests/s × BATCH), no target: it is bound by the RSA-2048 private operations
  (bench/blind_rsa.py measures them per core, the figure the issue asks for).
- ``private_token_redeem``: ``/api/v1/check`` with ``Authorization: PrivateToken`` (a
  signature verify and a spent-set insert each, every token once) vs ``/health/live`` on the
  internal listener with the same header; target ≥ 0.5.

The tokens a redemption run spends are made just before it (untimed), signed with the unit's
key read from the database (a plain RSASSA-PSS signature over the token input: what a
finalized blind signature is), on every core; each run gets its own and lasts at most
REDEEM_SECS (the tokens cost ~2 ms of CPU each to make).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import secrets
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))

import loadgen  # noqa: E402
from gateway import Together  # noqa: E402
from procs import start_service  # noqa: E402

from anonticket.crypto import privacy_pass as pp  # noqa: E402
from anonticket.crypto.privacy_pass_http import b64url_encode  # noqa: E402
from anonticket.domain.ids import PaymentId, Transfer  # noqa: E402
from anonticket.storage import open_storage  # noqa: E402

UNITS = "call=request:1"
BATCH = 32
LIVE = ["mode=get", "path=/health/live"]
ISSUER_NAME = "bench.anonticket"
# an issuance run's least duration (see private_token_phase)
ISSUE_SECS = 6.0
REDEEM_SECS = 3.0  # a redemption run's length at most: every request spends a fresh token
TOKENS_PER_SEC = 8000  # made for each second of a run (more than the check answers here)


async def _paying_token(db: Any) -> str:
    """A token with a balance no benchmark spends (written before the service starts)."""
    store = await open_storage(str(db))
    try:
        pid = PaymentId.generate()
        now = int(time.time())
        await store.credit_transfers([Transfer(os.urandom(32), pid, 10**17, 10)], 10, now)
        rows = await store.claim_payments([pid.raw], 1, now)
        return rows[pid.raw].token.hex()  # type: ignore[union-attr]
    finally:
        await store.close()


async def _issuer_key(db: Any) -> pp.IssuerKey:
    store = await open_storage(str(db))
    try:
        (row,) = [r for r in await store.list_signing_keys("private_token:call")
                  if r.retired_at is None]
        return pp.IssuerKey.from_pkcs8(row.secret)
    finally:
        await store.close()


def _sign(args: tuple[bytes, bytes, int]) -> list[str]:
    """``count`` tokens signed with OpenSSL (faster than the issuer's blinded path: these
    only feed the load, the issuer's own cost is bench/blind_rsa.py's figure)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding
    from cryptography.hazmat.primitives.serialization import load_der_private_key

    der, digest, count = args
    key = pp.IssuerKey.from_pkcs8(der)
    private = load_der_private_key(der, password=None)
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
    key_id = key.token_key.token_key_id
    out = []
    for _ in range(count):
        nonce = secrets.token_bytes(32)
        message = pp.token_input(nonce, digest, key_id)
        signature = private.sign(message, pss, hashes.SHA384())  # type: ignore[union-attr,call-arg]
        out.append(b64url_encode(pp.Token(nonce, digest, key_id, signature).encode()))
    return out


def make_tokens(key: pp.IssuerKey, count: int, path: Path) -> Path:
    digest = pp.challenge_digest(pp.TokenChallenge(ISSUER_NAME).encode())
    workers = os.cpu_count() or 1
    share = [count // workers + (1 if i < count % workers else 0) for i in range(workers)]
    with multiprocessing.Pool(workers) as pool:
        parts = pool.map(_sign, [(key.to_pkcs8(), digest, n) for n in share if n])
    path.write_text("".join(f"{token}\n" for part in parts for token in part))
    return path


def private_token_phase(bench: Any) -> None:
    """Called by bench/run.py (``--phases private_token``); ``bench`` is its Bench."""
    args, workdir = bench.args, bench.workdir
    token = asyncio.run(_paying_token(bench.db))
    service = start_service(bench.db, workdir, "serve-private-token", cpus=args.server_cpus,
                            extra_env={"PRIVATE_TOKEN_UNITS": UNITS,
                                       "PRIVATE_TOKEN_ISSUER_NAME": ISSUER_NAME,
                                       "PRIVATE_TOKEN_MAX_BATCH": str(BATCH)})
    try:
        key = asyncio.run(_issuer_key(bench.db))
        challenge = pp.TokenChallenge(ISSUER_NAME).encode()
        body = b"".join(pp.create_token_request(challenge, key.token_key)[0].encode()
                        for _ in range(BATCH))
        body_file = workdir / "private-token-batch.bin"
        body_file.write_bytes(body)
        # redemption first: an issuance run leaves signatures queued in the service's
        # threads after wrk stops, which would weigh on the next baseline
        internal = Together(service.internal_address, service)
        # each run spends its own tokens, made just before it (not timed): enough for a
        # generous rate over a run of at most REDEEM_SECS, so a run seldom spends its share
        # (if it does, it stops early and its rate stands, flagged by the checks)
        secs = min(args.secs, REDEEM_SECS)
        per_run = max(200, int(secs * TOKENS_PER_SEC))
        made = [0]

        def redeem(path: str):  # type: ignore[no-untyped-def]
            def run(run_secs: float | None = None) -> loadgen.Load:
                run_secs = min(run_secs or secs, REDEEM_SECS * 2)
                if path == "/health/live":
                    script = ["mode=bearer", f"keys={bearer_file}", "path=/health/live"]
                else:
                    made[0] += 1
                    chunk = make_tokens(key, int(per_run * run_secs / secs),
                                        workdir / f"private-tokens-{made[0]}.txt")
                    script = ["mode=private_token_redeem", f"keys={chunk}"]
                return loadgen.wrk(internal.address, script, run_secs, server=internal,
                                   cpus=args.client_cpus)
            return run

        # the baseline sends a header of the same size (a token, as a Bearer value nobody reads)
        bearer_file = make_tokens(key, 1000, workdir / "private-token-bearer.txt")
        redeemed = bench.pairs("private_token_redeem", redeem("/health/live"),
                               redeem("/api/v1/check"), {"200": "all"})
        bench.result["private_token_redeem_tokens"] = per_run
        # a batch is BATCH private operations (~55 ms of a core here) and 32 connections send
        # one each: a run shorter than the queue they make ends before the first answer (the
        # 1-s runs of the quiet run of 2026-12-08 answered none), so issuance runs last at
        # least ISSUE_SECS, its baseline as long
        issue_secs = lambda secs=None: max(secs or args.secs, ISSUE_SECS)  # noqa: E731
        public = lambda secs=None: bench.wrk(service, LIVE, issue_secs(secs))  # noqa: E731
        issue = bench.pairs(
            "private_token_issue", public,
            lambda secs=None: bench.wrk(service, ["mode=private_token_issue", f"body={body_file}",
                                                  f"token={token}",
                                                  f"nonce={secrets.token_hex(4)}"],
                                        issue_secs(secs)),
            {"200": "all"})
        issue["tokens_per_sec"] = round(issue["rps"] * BATCH, 1)
        print(f"  private_token_issue: {issue['tokens_per_sec']:,} tokens/s through the API "
              f"(batches of {BATCH})", flush=True)
    finally:
        rc = service.stop()
    if rc != 0:
        raise RuntimeError(f"anonticket serve (private_token) exited with {rc} on SIGTERM")
    spent = _spent(bench.db)
    if spent is not None:
        bench.result["private_tokens_spent"] = spent
    print(f"  private_token_redeem: ratio {redeemed['ratio']:.2f}", flush=True)


def _spent(db: Any) -> int | None:
    if str(db).startswith(("postgres://", "postgresql://")):
        return None
    with sqlite3.connect(str(db)) as conn:
        return conn.execute("SELECT count(*) FROM private_token_spent").fetchone()[0]
