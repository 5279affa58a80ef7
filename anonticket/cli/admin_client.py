"""A small HTTP client for the internal listener: token introspection, revocation, stats,
the monitor's rescan, the webhook outbox, the signing keys.

It finds the listener from the same settings ``serve`` binds, so whoever can start
the service can administer it without extra flags. The proxy environment is ignored
on purpose: a proxy would see the admin bearer token, and the service token travels in
the request path. Error messages are fixed texts plus the listener's address (never
a token), so the command line can print them as they are.
"""

from __future__ import annotations

import json
import os
from typing import Any

import aiohttp

from anonticket.config import Config, HostPort
from anonticket.domain.ids import ServiceToken

DEFAULT_TIMEOUT_SECS = 10.0
# Admin answers are a few hundred bytes; an audit trail of thousands of revocations
# still fits. Anything bigger is not the internal listener.
_MAX_ANSWER_BYTES = 4 * 1024 * 1024
_MAX_SHOWN_MESSAGE = 200
# a wildcard bind accepts on loopback too; connecting to the wildcard itself is not portable
_PUBLIC_LISTENER = ("{where} has no admin routes; is it the public listener? "
                    "(set API_INTERNAL_BIND_ADDRESS or API_INTERNAL_UNIX_SOCKET)")
_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


class AdminError(Exception):
    """The request did not give an answer; the message is one line, safe to print."""


class TokenNotFoundError(AdminError):
    def __init__(self) -> None:
        super().__init__("token not found")


def internal_endpoint(config: Config) -> tuple[str, str | None, str]:
    """(base URL, Unix socket path or None, where for messages): the socket wins, as in ``serve``."""
    if config.api_internal_unix_socket:
        path = config.api_internal_unix_socket
        return "http://localhost", path, f"unix:{path}"
    bound = config.api_internal_bind_address
    address = HostPort(_WILDCARDS.get(bound.host, bound.host), bound.port)
    return f"http://{address}", None, str(address)


class AdminClient:
    """Use as ``async with AdminClient(config) as client: await client.stats()``."""

    def __init__(self, config: Config, timeout: float = DEFAULT_TIMEOUT_SECS) -> None:
        self._base, self._socket_path, self.where = internal_endpoint(config)
        self._timeout = timeout
        self._headers = {"Accept": "application/json"}
        if config.api_internal_token:
            self._headers["Authorization"] = f"Bearer {config.api_internal_token}"
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> AdminClient:
        connector = (aiohttp.UnixConnector(path=self._socket_path) if self._socket_path
                     else aiohttp.TCPConnector())
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self._timeout),
            headers=self._headers,
            trust_env=False,
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def inspect_token(self, token: ServiceToken) -> dict[str, Any]:
        answer = await self._request("GET", f"/api/v1/token/{token.hex()}", token_route=True)
        if "audit" not in answer:
            # the public listener serves this route too, without the operator's fields
            raise AdminError(_PUBLIC_LISTENER.format(where=self.where))
        return answer

    async def revoke_token(self, token: ServiceToken, reason: str | None,
                           abuse_score: int | None) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if reason is not None:
            body["reason"] = reason
        if abuse_score is not None:
            body["abuse_score"] = abuse_score
        return await self._request("POST", f"/api/v1/token/{token.hex()}/revoke", body=body,
                                   token_route=True)

    async def stats(self) -> dict[str, Any]:
        return await self._request("GET", "/api/v1/stats")

    async def rescan(self, from_height: int) -> dict[str, Any]:
        """Scheduled, not done: the service answers 202 and its monitor re-reads at its next poll."""
        return await self._request("POST", "/api/v1/monitor/rescan",
                                   body={"from_height": from_height}, accepted=(202,))

    async def signing_keys(self) -> dict[str, Any]:
        return await self._request("GET", "/api/v1/keys")

    async def rotate_keys(self, *, immediately: bool, compromised: bool) -> dict[str, Any]:
        return await self._request("POST", "/api/v1/keys/rotate",
                                   body={"immediately": immediately, "compromised": compromised})

    async def webhook_events(self, *, dead: bool, limit: int) -> dict[str, Any]:
        query = f"?dead={'true' if dead else 'false'}&limit={limit}"
        return await self._request("GET", "/api/v1/webhooks" + query)

    async def webhook_replay(self, event_id: str | None) -> dict[str, Any]:
        body: dict[str, Any] = {"all_dead": True} if event_id is None else {"id": event_id}
        return await self._request("POST", "/api/v1/webhooks/replay", body=body)

    async def webhook_test(self) -> dict[str, Any]:
        return await self._request("POST", "/api/v1/webhooks/test")

    async def webhook_enable(self) -> dict[str, Any]:
        return await self._request("POST", "/api/v1/webhooks/enable")

    async def _request(self, method: str, path: str, *, body: dict[str, Any] | None = None,
                       token_route: bool = False,
                       accepted: tuple[int, ...] = (200,)) -> dict[str, Any]:
        if self._session is None:
            raise RuntimeError("AdminClient used outside 'async with'")
        where = self.where
        try:
            async with self._session.request(method, self._base + path, json=body) as resp:
                status = resp.status
                raw = await resp.content.read(_MAX_ANSWER_BYTES + 1)
        # TimeoutError first: aiohttp's connect timeout is also a ClientConnectorError
        except TimeoutError:
            raise AdminError(
                f"no answer from the internal listener at {where} within {self._timeout:g} s"
            ) from None
        except aiohttp.ClientConnectorError as exc:
            # asyncio puts "Connect call failed (addr)" in strerror; the errno says it better
            errno_ = exc.os_error.errno
            reason = os.strerror(errno_) if errno_ else type(exc.os_error).__name__
            raise AdminError(f"cannot reach the internal listener at {where}: {reason}") from None
        except aiohttp.ServerDisconnectedError:
            raise AdminError(f"the internal listener at {where} closed the connection") from None
        except aiohttp.ClientError as exc:
            # str(exc) of some aiohttp errors holds the URL, and the URL holds the token
            raise AdminError(
                f"request to the internal listener at {where} failed ({type(exc).__name__})"
            ) from None
        answer = _json_object(raw)
        if answer is None:
            raise AdminError(f"{where} answered HTTP {status} without a JSON object; "
                             "is it anonticket's internal listener?")
        if status in accepted:
            return answer
        code = answer.get("error")
        if status == 404 and token_route and code == "token_not_found":
            raise TokenNotFoundError()
        if status == 404 and code == "not_found":
            raise AdminError(_PUBLIC_LISTENER.format(where=where))
        if status == 401:
            raise AdminError(f"the internal listener at {where} refused the admin token; "
                             "set API_INTERNAL_TOKEN to the service's value")
        message = _one_line(answer.get("message"))
        raise AdminError(f"the internal listener at {where} answered HTTP {status} "
                         f"{_one_line(code)}: {message}")


def _json_object(raw: bytes) -> dict[str, Any] | None:
    if len(raw) > _MAX_ANSWER_BYTES:
        return None
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _one_line(value: object) -> str:
    """The service's own texts are fixed; this only keeps a stranger's answer to one line."""
    text = value if isinstance(value, str) else ""
    text = "".join(c if c.isprintable() else " " for c in text)
    return text[:_MAX_SHOWN_MESSAGE] or "(no message)"
