"""A small keep-alive HTTP/1.1 load client for the public Unix-socket listener.

wrk speaks only TCP, and nginx/Tor in front of anonticket talk to it over the Unix
socket, so this drives that path: N connections, each sending its next request as
soon as the previous answer is complete, for a fixed time. It is an asyncio Protocol
(no StreamReader per request) so the client stays cheap; it still runs in Python, so
its CPU share is reported by the caller and a client-bound figure shows as such.
Prints one line ``BENCH_JSON {...}`` in the same shape as bench/scenarios.lua.

    python3 bench/uds_client.py --socket /run/x.sock --mode get --path /health/live --secs 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Callable


def _request_maker(args: argparse.Namespace) -> Callable[[], bytes]:
    def post(pid: str) -> bytes:
        body = b'{"pid":"' + pid.encode() + b'"}'
        return (b"POST /api/v1/redeem HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)

    def get(path: str) -> bytes:
        return b"GET " + path.encode() + b" HTTP/1.1\r\nHost: bench\r\n\r\n"

    keys = open(args.keys).read().split() if args.keys else []
    rng = random.Random(os.getpid())
    if args.mode == "get":
        constant = get(args.path)
        return lambda: constant
    if args.mode == "redeem_unknown":
        return lambda: post(rng.randbytes(8).hex())
    if args.mode == "redeem_claimed":
        return lambda: post(rng.choice(keys))
    if args.mode == "token":
        return lambda: get("/api/v1/token/" + rng.choice(keys))
    if args.mode == "token_unknown":
        return lambda: get("/api/v1/token/" + rng.randbytes(32).hex())
    raise SystemExit(f"unknown mode {args.mode}")


class Connection(asyncio.Protocol):
    def __init__(self, run: Run) -> None:
        self.run = run
        self.buffer = b""
        self.sent_at = 0.0
        self.transport: asyncio.Transport | None = None
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.send()

    def send(self) -> None:
        if self.run.stopping:
            self.transport.close()  # type: ignore[union-attr]
            return
        self.sent_at = time.perf_counter()
        self.transport.write(self.run.make())  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end]
            start = head.lower().find(b"content-length:")
            length = int(head[start + 15:].split(b"\r\n", 1)[0]) if start >= 0 else 0
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4:end + 4 + length]
            self.buffer = self.buffer[end + 4 + length:]
            self.run.record(head[9:12].decode(), body, time.perf_counter() - self.sent_at)
            self.send()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.run.stopping:
            self.run.errors["read"] += 1
        if not self.closed.done():
            self.closed.set_result(None)


class Run:
    def __init__(self, make: Callable[[], bytes]) -> None:
        self.make = make
        self.stopping = False
        self.latencies: list[float] = []
        self.outcomes: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()

    def record(self, status: str, body: bytes, latency: float) -> None:
        self.latencies.append(latency)
        self.outcomes[status] += 1
        for word in (b'"success"', b'"already_claimed"', b'"active"'):
            if word in body:
                self.outcomes[word.decode().strip('"')] += 1
                break


async def main(args: argparse.Namespace) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    run = Run(_request_maker(args))
    conns = []
    for _ in range(args.connections):
        _, protocol = await loop.create_unix_connection(lambda: Connection(run), args.socket)
        conns.append(protocol)
    started = time.perf_counter()
    await asyncio.sleep(args.secs)
    run.stopping = True
    duration = time.perf_counter() - started
    # in-flight answers still arrive (and count) until each connection closes itself
    await asyncio.wait_for(asyncio.gather(*(c.closed for c in conns)), timeout=10)
    latencies = sorted(run.latencies)

    def pct(p: float) -> int:
        return int(latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1e6) if latencies else 0

    return {
        "requests": len(latencies), "duration_us": int(duration * 1e6),
        "p50_us": pct(0.50), "p90_us": pct(0.90), "p99_us": pct(0.99),
        "max_us": int(latencies[-1] * 1e6) if latencies else 0,
        "errors": {k: v for k, v in run.errors.items() if v}, "outcomes": dict(run.outcomes),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--socket", required=True)
    parser.add_argument("--mode", required=True,
                        choices=["get", "redeem_unknown", "redeem_claimed", "token", "token_unknown"])
    parser.add_argument("--path", default="/health/live")
    parser.add_argument("--keys", help="file of keys, one a line (redeem_claimed, token)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--secs", type=float, default=5.0)
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(main(arguments))
    else:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            result = runner.run(main(arguments))
    print("BENCH_JSON " + json.dumps(result))
    sys.exit(0)
