#!/usr/bin/env python3
"""RSA-2048 blind signatures per second on one core: the issuer's cost per Privacy Pass token.

    .venv/bin/python bench/blind_rsa.py                 # 5 rounds of 2 s per operation, CPU 0
    .venv/bin/python bench/blind_rsa.py --quick --json  # a smoke run (tests/crypto/test_blind_rsa.py)

Run it on a quiet machine (nothing else on the pinned core). One fresh 2048-bit key; each
operation is timed in rounds (a warm-up first) and the median rate is printed:

- ``blind_sign``: RFC 9474 BlindSign as the issuer runs it, the blinded CRT private operation
  plus the s^e = m fault check (what ``IssuerKey.issue`` costs per token);
- ``private_op``: pycryptodome's blinded CRT operation alone, so the fault check's share shows;
- ``issue``: ``IssuerKey.issue`` on a decoded TokenRequest (the check of the key id included);
- ``verify``: an origin's offline check of one token (RSASSA-PSS verify, e = 65537);
- ``client_request`` and ``client_finalize``: a client's two steps (blind; unblind + verify).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from anonticket.crypto import blind_rsa  # noqa: E402
from anonticket.crypto import privacy_pass as pp  # noqa: E402


def rate(operation: Callable[[], object], seconds: float, rounds: int) -> float:
    """Median operations per second over ``rounds`` rounds of about ``seconds`` each."""
    operation()  # warm-up: the first private op also builds pycryptodome's blinding factor
    rates = []
    for _ in range(rounds):
        count, started = 0, time.perf_counter()
        deadline = started + seconds
        while True:
            operation()
            count += 1
            now = time.perf_counter()
            if now >= deadline:
                break
        rates.append(count / (now - started))
    return statistics.median(rates)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cpu", type=int, default=0, help="core to pin to (-1: no pinning)")
    parser.add_argument("--quick", action="store_true", help="one short round each: a smoke run")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.rounds = 0.05, 1
    if args.cpu >= 0 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})

    issuer = pp.IssuerKey.generate()
    private_key = issuer._private_key
    challenge = pp.TokenChallenge("issuer.example", b"", ("origin.example",)).encode()
    request, pending = pp.create_token_request(challenge, issuer.token_key)
    response = issuer.issue(request)
    token = pp.finalize_token(pending, response)
    blinded_int = int.from_bytes(request.blinded_msg, "big")

    figures = {
        "blind_sign": rate(lambda: blind_rsa.blind_sign(private_key, request.blinded_msg),
                           args.seconds, args.rounds),
        "private_op": rate(lambda: private_key._decrypt_to_bytes(blinded_int), args.seconds, args.rounds),
        "issue": rate(lambda: issuer.issue(pp.TokenRequest.decode(request.encode())), args.seconds,
                      args.rounds),
        "verify": rate(lambda: pp.verify_token(token, issuer.token_key), args.seconds, args.rounds),
        "client_request": rate(lambda: pp.create_token_request(challenge, issuer.token_key),
                               args.seconds, args.rounds),
        "client_finalize": rate(lambda: pp.finalize_token(pending, response), args.seconds, args.rounds),
    }
    result = {"ops_per_second": {name: round(value, 1) for name, value in figures.items()},
              "seconds_per_round": args.seconds, "rounds": args.rounds,
              "cpu": args.cpu if args.cpu >= 0 else None}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"RSA-2048, one core ({'cpu ' + str(args.cpu) if args.cpu >= 0 else 'unpinned'}), "
              f"median of {args.rounds} x {args.seconds} s")
        for name, value in figures.items():
            print(f"  {name:<16} {value:10.1f} /s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
