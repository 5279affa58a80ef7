"""JSON-RPC client for monero-wallet-rpc: one session, a deadline on every call, typed errors.

The wallet is the service's only view of the chain, so every way it can fail
(down, slow, garbage, refusing us) becomes one exception type with a fixed
``reason``. The monitor backs off on any of them and readiness reports the reason;
neither ever needs the wallet's words. Exception texts name the RPC method and the
kind of failure only: the params (payment IDs) and the response (payment IDs,
txids) never reach ``str()`` of an error, so they never reach a log line.

Requests go one at a time over one keep-alive connection. monero-wallet-rpc
keeps its digest-auth nonce and nonce count per TCP connection and insists the
count advance by exactly one per request; a pool of connections sharing one
client-side nonce (or two requests encoded in one order and sent in the other)
ends in an endless run of 401s. Serialising costs nothing real: the wallet
serialises most of its work anyway, and the monitor polls sequentially.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import aiohttp

from anonticket.config.values import check_wallet_user, json_rpc_url
from anonticket.monero.gc_pause import paused_gc

#: Every value ``WalletError.reason`` can take, for metrics that pre-register labels.
REASONS = ("unreachable", "timeout", "unauthorized", "http_error", "bad_response", "rpc_error")


class WalletError(Exception):
    """Base of every wallet failure; ``reason`` is a short fixed word from ``REASONS``."""

    reason = "bad_response"

    def __init__(self, method: str, detail: str = "failed") -> None:
        super().__init__(f"wallet RPC {method}: {detail}")
        self.method = method


class WalletUnavailable(WalletError):
    """No usable answer on the wire: refused, reset, closed mid-response. A retry may help."""

    reason = "unreachable"


class WalletTimeout(WalletUnavailable):
    reason = "timeout"


class WalletUnauthorized(WalletError):
    """HTTP 401: the RPC login is missing or wrong. A retry will not help."""

    reason = "unauthorized"


class WalletBadResponse(WalletError):
    """An answer that is not the JSON-RPC we expect (wrong shape, wrong types, not JSON)."""

    reason = "bad_response"


class WalletHttpError(WalletBadResponse):
    """An HTTP status other than 200 and 401 (404 on a wrong path, 5xx behind a proxy)."""

    reason = "http_error"

    def __init__(self, method: str, status: int) -> None:
        super().__init__(method, f"HTTP status {status}")
        self.status = status


class WalletRpcFault(WalletError):
    """A JSON-RPC ``error`` object. The wallet's own message may quote our params
    (a payment ID), so it stays on ``wallet_message`` and out of ``str()``."""

    reason = "rpc_error"

    def __init__(self, method: str, code: int, wallet_message: str = "") -> None:
        super().__init__(method, f"JSON-RPC error code {code}")
        self.code = code
        self.wallet_message = wallet_message


@dataclass(frozen=True, slots=True, repr=False)
class WalletTransfers:
    """Raw ``get_transfers`` entries; each one is checked by the monitor, so one
    odd entry is skipped there instead of failing the whole poll here."""

    incoming: list[dict[str, Any]]
    pool: list[dict[str, Any]]

    def __repr__(self) -> str:
        # the entries hold payment IDs and txids: show counts only
        return f"WalletTransfers(incoming=<{len(self.incoming)} entries>, pool=<{len(self.pool)} entries>)"


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class WalletRpc:
    """Owns one ``aiohttp.ClientSession``; use as ``async with WalletRpc(...) as w``
    or call ``start()``/``close()`` from an app's startup and cleanup."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float,
        user: str | None = None,
        password: str | None = None,
    ) -> None:
        self.url = json_rpc_url(url)  # the rule MONERO_RPC_URL was parsed with
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not (
            math.isfinite(timeout) and timeout > 0
        ):
            raise ValueError("wallet RPC timeout must be a positive number of seconds")
        if user is None and password is not None:
            raise ValueError("wallet RPC password given without a user")
        if user is not None:
            check_wallet_user(user)  # the rule MONERO_RPC_USER was parsed with
        self.timeout = float(timeout)
        self._user = user
        self._password = password or ""
        self._session: aiohttp.ClientSession | None = None
        self._lock: asyncio.Lock | None = None
        self._ids = itertools.count(1)

    async def start(self) -> None:
        if self._session is not None:
            raise RuntimeError("WalletRpc already started")
        middlewares: tuple[aiohttp.DigestAuthMiddleware, ...] = ()
        if self._user is not None:
            middlewares = (aiohttp.DigestAuthMiddleware(self._user, self._password),)
        self._lock = asyncio.Lock()
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1),
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            middlewares=middlewares,
            headers={"Content-Type": "application/json"},
            trust_env=False,  # a proxy from the environment must not see wallet traffic
            read_bufsize=2**20,  # large get_transfers answers arrive in fewer, bigger chunks
        )

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def __aenter__(self) -> WalletRpc:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Call ``method`` and return its ``result`` object, or raise a WalletError."""
        session, lock = self._session, self._lock
        if session is None or lock is None:
            raise RuntimeError("WalletRpc used before start() or after close()")
        if not isinstance(method, str) or not method:
            raise ValueError("wallet RPC method must be a non-empty string")
        request_id = next(self._ids)
        body = json.dumps(
            {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params or {}}
        ).encode()
        try:
            # one deadline for the queue wait, the request and the whole body
            async with asyncio.timeout(self.timeout):
                async with lock:
                    async with session.post(self.url, data=body, allow_redirects=False) as resp:
                        status = resp.status
                        raw = await resp.read() if status == 200 else b""
        except TimeoutError:
            # aiohttp's own timeouts subclass TimeoutError too, so this comes first
            raise WalletTimeout(method, f"no complete answer within {self.timeout:g}s") from None
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            raise WalletUnavailable(method, f"connection failed ({type(exc).__name__})") from exc
        except aiohttp.ClientError as exc:
            raise WalletBadResponse(method, f"invalid HTTP response ({type(exc).__name__})") from None
        if status == 401:
            raise WalletUnauthorized(method, "HTTP 401, RPC login missing or wrong")
        if status != 200:
            raise WalletHttpError(method, status)
        return _result(method, request_id, raw)

    async def get_height(self) -> int:
        """The wallet's block count (top height + 1); confirmations = this − tx height."""
        result = await self.call("get_height")
        height = result.get("height")
        if not _is_count(height):
            raise WalletBadResponse("get_height", "height missing or not a non-negative integer")
        return height

    async def get_transfers(self, min_height: int, max_height: int, *, pool: bool = True) -> WalletTransfers:
        """Incoming transfers with ``min_height < height <= max_height`` plus the pool.

        ``min_height`` is exclusive in wallet-rpc: pass the last height already
        scanned, not the next one. Pool entries come whatever the heights.
        """
        if not (_is_count(min_height) and _is_count(max_height)):
            raise ValueError("heights must be non-negative integers")
        params = {
            "in": True,
            "pool": bool(pool),
            "filter_by_height": True,
            "min_height": min_height,
            "max_height": max_height,
        }
        result = await self.call("get_transfers", params)
        # an empty category is left out of the answer, so absent means none
        incoming = result.get("in", [])
        pooled = result.get("pool", [])
        if not isinstance(incoming, list) or not isinstance(pooled, list):
            raise WalletBadResponse("get_transfers", "a transfer category is not a list")
        return WalletTransfers(incoming=incoming, pool=pooled)


def _result(method: str, request_id: int, raw: bytes) -> dict[str, Any]:
    """The ``result`` object of a JSON-RPC answer, every shape problem a WalletError."""
    try:
        with paused_gc():  # a get_transfers answer can be 100k entries
            doc = json.loads(raw)
    except (ValueError, RecursionError):
        # `from None`: a JSONDecodeError carries the whole body on `.doc`
        raise WalletBadResponse(method, "body is not JSON") from None
    if not isinstance(doc, dict):
        raise WalletBadResponse(method, "body is not a JSON object")
    error = doc.get("error")
    if error is not None:
        code = error.get("code") if isinstance(error, dict) else None
        if isinstance(code, bool) or not isinstance(code, int):
            raise WalletBadResponse(method, "JSON-RPC error without an integer code")
        message = error.get("message")
        raise WalletRpcFault(method, code, message if isinstance(message, str) else "")
    if doc.get("id") != request_id:
        raise WalletBadResponse(method, "JSON-RPC id does not match the request")
    result = doc.get("result")
    if not isinstance(result, dict):
        raise WalletBadResponse(method, "JSON-RPC result missing or not an object")
    return result
