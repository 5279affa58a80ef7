"""A programmable stand-in for monero-wallet-rpc, for the failures the real one
cannot produce on demand (hangs, 5xx, garbage, dropped connections) and for
tests that need thousands of transfers without mining them.

It answers like wallet-rpc 0.18 does (checked on regtest, see MONERO.md):
``get_height`` is the block count; ``get_transfers`` filters confirmed entries
with ``min_height < height <= max_height``, returns pool entries whatever the
heights, computes ``confirmations`` and ``locked`` from the current height and
leaves an empty category out of the answer.

    fake = FakeWallet(height=120)
    await fake.start()
    fake.add(make_transfer("0123456789abcdef", 10**12, height=110))
    fake.fail(Failure.HTTP_500, times=2)        # next two requests fail
    ... WalletRpc(fake.url, timeout=1.0) ...
    await fake.close()
"""

from __future__ import annotations

import asyncio
import collections
import enum
import hashlib
import json
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

PRIMARY_ADDRESS = "435CNkaTRD9PHWEbixszvSfaG6UYdSwq7bEwRxJVTcea9Sz2YfppjWDFQBzniXsqhKYZo4FJQf4ZbJeSu9Pu8WxL4bpF6az"
LOCK_BLOCKS = 10  # received outputs stay locked until 10 confirmations
MAX_BLOCK_NUMBER = 500_000_000  # wallet-rpc's default max_height
NOT_OPEN = (-13, "No wallet file")  # what wallet-rpc answers when no wallet is open

_TIMESTAMP_BASE = 1_700_000_000


class Failure(enum.Enum):
    """How the next request(s) go wrong."""

    HANG = "hang"  # accept the request, never answer (until close())
    HTTP_500 = "http_500"
    UNAUTHORIZED = "unauthorized"  # a bare 401, as from a wallet with --rpc-login
    MALFORMED_JSON = "malformed_json"  # 200 with a truncated JSON body
    NOT_AN_OBJECT = "not_an_object"  # 200 with a JSON array as the body
    NON_OBJECT_RESULT = "non_object_result"  # "result": [...]
    NO_RESULT = "no_result"  # neither result nor error
    MISSING_FIELDS = "missing_fields"  # "result": {} (get_height without height)
    WRONG_TYPES = "wrong_types"  # height as a string, categories as objects
    WRONG_ID = "wrong_id"  # a well-formed answer to some other request
    RPC_ERROR = "rpc_error"  # a JSON-RPC error object, FakeWallet.rpc_error = (code, message)
    STALL_BODY = "stall_body"  # headers and half the body, then nothing (until close())
    DISCONNECT = "disconnect"  # headers and half the body, then the socket closes
    RESET = "reset"  # the socket closes before any byte of the answer


def make_txid(seed: object = None) -> str:
    """A 64-hex txid: random, or the same one every time for the same seed."""
    if seed is None:
        return os.urandom(32).hex()
    return hashlib.sha256(repr(seed).encode()).hexdigest()


def make_transfer(
    pid16: str,
    amount: int,
    height: int,
    txid: str | None = None,
    unlock_time: int = 0,
    double_spend_seen: bool = False,
    type: str = "in",  # noqa: A002 - the wallet's own field name
    *,
    subaddr_minor: int = 0,
    timestamp: int | None = None,
) -> dict[str, Any]:
    """A transfer entry with every field wallet-rpc 0.18 returns.

    ``type="pool"`` gives a pool entry: height 0 and no ``confirmations`` key,
    as the real wallet shows it (``height`` is then ignored). For ``"in"`` the
    confirmations/locked fields here are placeholders: FakeWallet recomputes
    them from its height on every answer.
    """
    if type not in ("in", "pool"):
        raise ValueError("type must be 'in' or 'pool'")
    in_pool = type == "pool"
    index = {"major": 0, "minor": subaddr_minor}
    entry: dict[str, Any] = {
        "address": PRIMARY_ADDRESS,
        "amount": amount,
        "amounts": [amount],
        "double_spend_seen": double_spend_seen,
        "fee": 2_618_400_000,
        "height": 0 if in_pool else height,
        "locked": True,
        "note": "",
        "payment_id": pid16,
        "subaddr_index": dict(index),
        "subaddr_indices": [dict(index)],
        "suggested_confirmations_threshold": 1,
        "timestamp": timestamp if timestamp is not None else _TIMESTAMP_BASE + 120 * max(height, 0),
        "txid": txid if txid is not None else make_txid(),
        "type": type,
        "unlock_time": unlock_time,
    }
    if not in_pool:
        entry["confirmations"] = 0
    return entry


@dataclass(frozen=True)
class RawReply:
    """Return this from a ``FakeWallet.methods`` handler to send ``body`` verbatim
    (str/bytes as is, anything else as JSON) instead of a JSON-RPC envelope."""

    body: Any
    status: int = 200

    def encoded(self) -> bytes:
        if isinstance(self.body, bytes):
            return self.body
        return (self.body if isinstance(self.body, str) else json.dumps(self.body)).encode()


class FakeWallet:
    """An aiohttp JSON-RPC server on 127.0.0.1 and a free port.

    State is plain attributes, change it between calls: ``height``, ``incoming``,
    ``pool`` (lists of entries from ``make_transfer``), ``methods`` (name →
    ``fn(params) -> result`` or a ``RawReply``; add or replace methods), ``live_confirmations``
    (False serves entries exactly as stored). ``requests`` records the last
    (method, params) pairs received.
    """

    def __init__(self, height: int = 1) -> None:
        self.height = height
        self.incoming: list[dict[str, Any]] = []
        self.pool: list[dict[str, Any]] = []
        self.live_confirmations = True
        self.rpc_error = NOT_OPEN  # (code, message) sent by Failure.RPC_ERROR
        self.hang_seconds = 120.0  # upper bound on a HANG, far above any client timeout
        self.requests: collections.deque[tuple[str, dict[str, Any]]] = collections.deque(maxlen=10_000)
        self.methods: dict[str, Callable[[dict[str, Any]], Any]] = {
            "get_height": lambda params: {"height": self.height},
            "get_transfers": self._get_transfers,
            "get_version": lambda params: {"release": True, "version": 65561},
        }
        self._failures: collections.deque[tuple[Failure, str | None]] = collections.deque()
        self._sticky: tuple[Failure, str | None] | None = None
        self._released = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/json_rpc", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()

    async def close(self) -> None:
        self._released.set()  # let hanging handlers finish
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeWallet:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def url(self) -> str:
        """Base URL, as an operator would configure it."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def json_rpc_url(self) -> str:
        return self.url + "/json_rpc"

    # -- behaviour -----------------------------------------------------------

    def add(self, *entries: dict[str, Any]) -> None:
        """File entries under ``incoming`` or ``pool`` by their ``type``."""
        for entry in entries:
            (self.pool if entry.get("type") == "pool" else self.incoming).append(entry)

    def confirm(self, txid: str, height: int) -> None:
        """Move a pool entry into a block, as mining it would."""
        for entry in list(self.pool):
            if entry.get("txid") == txid:
                self.pool.remove(entry)
                entry = dict(entry, type="in", height=height, confirmations=0)
                self.incoming.append(entry)
                return
        raise KeyError("no pool entry with that txid")

    def fail(self, failure: Failure, *, times: int | None = 1, method: str | None = None) -> None:
        """Make the next ``times`` requests (all of them if None) fail this way;
        with ``method``, only requests for that method count and fail."""
        if times is None:
            self._sticky = (failure, method)
        else:
            self._failures.extend([(failure, method)] * times)

    def clear_failures(self) -> None:
        self._failures.clear()
        self._sticky = None

    @property
    def pending_failures(self) -> int:
        return len(self._failures)

    def calls(self, method: str) -> list[dict[str, Any]]:
        """Params of every recorded request for ``method``, oldest first."""
        return [params for name, params in self.requests if name == method]

    # -- server side ---------------------------------------------------------

    def _next_failure(self, method: str) -> Failure | None:
        for i, (failure, only) in enumerate(self._failures):
            if only is None or only == method:
                del self._failures[i]
                return failure
        if self._sticky is not None and self._sticky[1] in (None, method):
            return self._sticky[0]
        return None

    def _get_transfers(self, params: dict[str, Any]) -> dict[str, Any]:
        low, high = -1, MAX_BLOCK_NUMBER
        if params.get("filter_by_height"):
            low = params.get("min_height", 0)
            high = min(params.get("max_height", MAX_BLOCK_NUMBER), MAX_BLOCK_NUMBER)
        result: dict[str, Any] = {}
        if params.get("in"):
            # min_height exclusive, max_height inclusive, like wallet2::get_payments
            chosen = [e for e in self.incoming if low < e.get("height", 0) <= high]
            if chosen:
                result["in"] = [self._live(e) for e in chosen] if self.live_confirmations else chosen
        if params.get("pool") and self.pool:
            result["pool"] = list(self.pool)
        return result

    def _live(self, entry: dict[str, Any]) -> dict[str, Any]:
        # a shallow copy is enough: only top-level fields change, and the answer is
        # serialised before anyone can mutate the stored entry (fast for 100k entries)
        height = entry.get("height")
        if "confirmations" in entry and isinstance(height, int):
            entry = dict(entry)
            entry["confirmations"] = max(self.height - height, 0)
            unlock = entry.get("unlock_time", 0)
            entry["locked"] = entry["confirmations"] < LOCK_BLOCKS or (
                isinstance(unlock, int) and unlock > self.height
            )
        return entry

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        try:
            doc = json.loads(await request.read())
            method, params, request_id = doc["method"], doc.get("params") or {}, doc.get("id", 0)
        except (ValueError, KeyError, TypeError):
            return _json({"jsonrpc": "2.0", "id": 0, "error": {"code": -32700, "message": "Parse error"}})
        self.requests.append((method, params))
        failure = self._next_failure(method)
        if failure is not None:
            return await self._failed(request, failure, method, request_id)
        handler = self.methods.get(method)
        if handler is None:
            error = {"code": -32601, "message": "Method not found"}
            return _json({"jsonrpc": "2.0", "id": request_id, "error": error})
        result = handler(params)
        if isinstance(result, RawReply):
            return web.Response(status=result.status, body=result.encoded(), content_type="application/json")
        return _json({"jsonrpc": "2.0", "id": request_id, "result": result})

    async def _failed(self, request: web.Request, failure: Failure, method: str, request_id: Any) -> web.StreamResponse:
        envelope: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id}
        if failure is Failure.HANG:
            await self._hang()
            return web.Response(status=503)
        if failure is Failure.HTTP_500:
            return web.Response(status=500, text="Internal Server Error")
        if failure is Failure.UNAUTHORIZED:
            return web.Response(status=401, text="Unauthorized")
        if failure is Failure.WRONG_ID:
            other = request_id + 1000 if isinstance(request_id, int) else "other"
            return _json({"jsonrpc": "2.0", "id": other, "result": self._result(method)})
        if failure is Failure.MALFORMED_JSON:
            truncated = b'{"jsonrpc": "2.0", "id": 1, "result": {"height": '
            return web.Response(body=truncated, content_type="application/json")
        if failure is Failure.NOT_AN_OBJECT:
            return _json([envelope])
        if failure is Failure.NON_OBJECT_RESULT:
            return _json({**envelope, "result": [1, 2, 3]})
        if failure is Failure.NO_RESULT:
            return _json(envelope)
        if failure is Failure.MISSING_FIELDS:
            return _json({**envelope, "result": {}})
        if failure is Failure.WRONG_TYPES:
            bad = {"height": str(self.height), "in": {"0": "x"}, "pool": "none"}
            return _json({**envelope, "result": bad})
        if failure is Failure.RPC_ERROR:
            code, message = self.rpc_error
            return _json({**envelope, "error": {"code": code, "message": message}})
        if failure in (Failure.DISCONNECT, Failure.STALL_BODY):
            body = json.dumps({**envelope, "result": self._result(method)}).encode()
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            response.content_length = len(body)
            await response.prepare(request)
            await response.write(body[: len(body) // 2])
            if failure is Failure.STALL_BODY:
                await self._hang()
            _drop(request)
            return response
        if failure is Failure.RESET:
            _drop(request)
            return web.Response()
        raise AssertionError(failure)

    def _result(self, method: str) -> Any:
        """What a healthy wallet would answer to ``method`` without params."""
        handler = self.methods.get(method)
        return handler({}) if handler is not None else {}

    async def _hang(self) -> None:
        try:
            await asyncio.wait_for(self._released.wait(), self.hang_seconds)
        except TimeoutError:
            pass


def _json(doc: Any) -> web.Response:
    return web.Response(body=json.dumps(doc).encode(), content_type="application/json")


def _drop(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:  # None once the client or close() has dropped it already
        transport.close()
