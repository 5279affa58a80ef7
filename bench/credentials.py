"""The credential figures (issue 23): issuing one, the gateway check with one, and the
shipped verifier's rate on one core beside the check's.

- ``credential_issue``: ``POST /api/v1/credential`` with an issued token (its record in the
  service's cache, as a long-running service's tokens in use are) vs ``/health/live`` on the
  public listener; target ≥ 0.5.
- ``gateway_check_credential``: ``/api/v1/check`` with ``Authorization: Bearer v4.public.…``
  vs ``/health/live`` on the internal listener, the same header on both; every credential
  was checked once before (the cache of verified credentials holds them, as it holds a
  customer's credential after its first request); target ≥ 0.85.
- ``credential_verifier``: bench/credential_crypto.py on a server CPU, the verifier built from
  the service's published key document, verifying the credentials the service issued (no
  cache: every call checks the signature), and the Ed25519 signing A/B/C (pycryptodome,
  OpenSSL, libsodium) that justifies the service's signing backend.

The service runs with ``CREDENTIAL_TTL_SECS=3600`` so no credential expires during a run.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp

import dataset
import loadgen
from gateway import Together
from procs import start_service

BENCH = Path(__file__).resolve().parent
LIVE = ["mode=get", "path=/health/live"]
MAX_CREDENTIALS = 4096  # customers active within a credential's lifetime; the cache holds 16,384
CONCURRENCY = 32


async def _issue_and_warm(public: str, internal: str, tokens: list[str]) -> tuple[list[str], str]:
    """A credential for each token (through the route the scenario measures), each checked
    once, and the key document: what a customer and a protected service would hold."""
    credentials: list[str] = []
    limit = asyncio.Semaphore(CONCURRENCY)
    async with aiohttp.ClientSession() as session:
        async def issue(token: str) -> None:
            async with limit, session.post(f"http://{public}/api/v1/credential",
                                           headers={"Authorization": f"Bearer {token}"}) as answer:
                if answer.status == 200:
                    credentials.append((await answer.json())["credential"])

        async def check(credential: str) -> None:
            async with limit, session.get(f"http://{internal}/api/v1/check",
                                          headers={"Authorization": f"Bearer {credential}"}) as answer:
                if answer.status != 200:
                    raise RuntimeError(f"the check refused an issued credential: {answer.status}")

        await asyncio.gather(*(issue(token) for token in tokens))
        await asyncio.gather(*(check(credential) for credential in credentials))
        async with session.get(f"http://{public}/.well-known/anonticket-credential-keys") as answer:
            document = await answer.text()
    return credentials, document


def credential_phase(bench: Any) -> None:
    """Called by bench/run.py (``--phases credential``); ``bench`` is its Bench."""
    args, workdir = bench.args, bench.workdir
    service = start_service(bench.db, workdir, "serve-credential", cpus=args.server_cpus,
                            extra_env={"CREDENTIAL_TTL_SECS": "3600"})
    try:
        pids = dataset.write_keys(workdir / "credential-pids.txt", bench.gateway_pids)
        # redeemed here unless the gateway phase did (then these answer already_claimed):
        # either way the service's record cache holds the tokens afterwards
        bench.wrk(service, ["mode=redeem_new", f"keys={pids}"], len(bench.gateway_pids) / 1000 + 5)
        tokens = dataset.tokens_of(bench.db, bench.gateway_pids)
        if len(tokens) < 0.9 * len(bench.gateway_pids):
            raise RuntimeError(f"only {len(tokens)} of {len(bench.gateway_pids)} PIDs redeemed")
        token_file = dataset.write_keys(workdir / "credential-tokens.txt", tokens)
        live = lambda secs=None: bench.wrk(service, LIVE, secs)  # noqa: E731
        live(min(1.0, args.secs))
        bench.pairs("credential_issue", live,
                    lambda secs=None: bench.wrk(service, ["mode=credential", f"keys={token_file}"],
                                                secs),
                    {"200": "all", "credential": "all"})

        credentials, document = asyncio.run(_issue_and_warm(
            service.address, service.internal_address, tokens[:MAX_CREDENTIALS]))
        if len(credentials) < 0.9 * min(len(tokens), MAX_CREDENTIALS):
            raise RuntimeError(f"only {len(credentials)} credentials issued")
        credential_file = dataset.write_keys(workdir / "credentials.txt", credentials)
        document_file = workdir / "credential-keys.json"
        document_file.write_text(document)
        bench.result["credentials_checked"] = len(credentials)

        internal = Together(service.internal_address, service)

        def bearer(path: str):  # type: ignore[no-untyped-def]
            def run(secs: float | None = None) -> loadgen.Load:
                return loadgen.wrk(internal.address, ["mode=bearer", f"keys={credential_file}",
                                                      f"path={path}"],
                                   secs or args.secs, server=internal, cpus=args.client_cpus)
            return run

        check = bench.pairs("gateway_check_credential", bearer("/health/live"),
                            bearer("/api/v1/check"), {"200": "all"})
    finally:
        rc = service.stop()
    if rc != 0:
        raise RuntimeError(f"anonticket serve (credential) exited with {rc} on SIGTERM")
    verifier = _verifier_rate(args, document_file, credential_file)
    cpu_us = check["server_cpu_us_per_req"]
    verifier["check_rps"] = check["rps"]
    verifier["check_per_core_sec"] = round(1e6 / cpu_us) if cpu_us else None
    bench.result["credential_verifier"] = verifier
    print(f"  shipped verifier: {verifier['verifications_per_core_sec']:,} verifications/s per "
          f"core; the check with a credential: {verifier['check_per_core_sec']} /s per core; "
          f"signing {verifier['sign_libsodium_per_core_sec']:,}/s (libsodium) vs "
          f"{verifier['sign_openssl_per_core_sec']:,}/s (OpenSSL) vs "
          f"{verifier['sign_pycryptodome_per_core_sec']:,}/s (pycryptodome)", flush=True)


def _verifier_rate(args: Any, document: Path, credentials: Path) -> dict[str, Any]:
    secs = max(1.0, 2 * args.secs)
    command = [sys.executable, str(BENCH / "credential_crypto.py"), "--secs", str(secs),
               "--document", str(document), "--credentials", str(credentials)]
    if args.server_cpus:
        command = ["taskset", "-c", args.server_cpus, *command]
    run = subprocess.run(command, capture_output=True, text=True, timeout=secs * 3 + 60)
    if run.returncode != 0:
        raise RuntimeError(f"credential_crypto.py failed: {run.stderr[-2000:]}")
    line = next(line for line in run.stdout.splitlines() if line.startswith("BENCH_JSON "))
    return json.loads(line.split(" ", 1)[1])
