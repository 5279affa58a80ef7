"""Blocking JSON-RPC to monerod and monero-wallet-rpc over loopback, stdlib only.

The fixture must not depend on the service's own async client: a bug there would
otherwise hide itself in the tests that are meant to catch it.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import re
import secrets
import urllib.parse
from typing import Any

from anonticket.regtest.errors import RegtestError

# wallet-rpc answers `refresh`, `transfer`, `rescan_spent` only once the work is done,
# which takes minutes on a long chain; a stuck process still fails the call.
DEFAULT_TIMEOUT = 300.0
_DIGEST_PARAM = re.compile(r'(\w+)=(?:"([^"]*)"|([^,\s]*))')


class RpcError(RegtestError):
    """A JSON-RPC error object, or a non-OK status from a daemon path endpoint."""

    def __init__(self, method: str, code: object, message: str) -> None:
        super().__init__(f"{method}: RPC error {code}: {message}")
        self.method = method
        self.code = code
        self.message = message


class RpcClient:
    """One monerod or monero-wallet-rpc endpoint (base URL ``http://127.0.0.1:PORT``).

    Each call opens its own connection (thread-safe, and nothing goes through an HTTP
    proxy from the environment). With a login it answers the digest challenge on that
    same connection: wallet-rpc 0.18 ties its nonce to the TCP connection, so
    urllib's HTTPDigestAuthHandler, which retries on a new one, always gets 401.
    """

    def __init__(self, name: str, base_url: str, login: tuple[str, str] | None = None) -> None:
        self.name = name
        self.base_url = base_url
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname or not parts.port:
            raise RegtestError(f"{name}: expected a base URL http://HOST:PORT")
        self._host, self._port = parts.hostname, parts.port
        self._login = login

    def _post(self, path: str, body: dict[str, Any], timeout: float) -> Any:
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        conn = http.client.HTTPConnection(self._host, self._port, timeout=timeout)
        try:
            conn.request("POST", path, data, headers)
            response = conn.getresponse()
            payload = response.read()
            if response.status == 401 and self._login is not None:
                challenge = response.headers.get_all("WWW-Authenticate") or []
                headers["Authorization"] = _digest_authorization(self._login, "POST", path, challenge)
                conn.request("POST", path, data, headers)
                response = conn.getresponse()
                payload = response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise RegtestError(f"{self.name} {path}: {type(exc).__name__}: {exc}") from None
        finally:
            conn.close()
        if response.status != 200:
            raise RegtestError(f"{self.name} {path}: HTTP {response.status} {response.reason}")
        try:
            return json.loads(payload.decode() or "null")
        except ValueError:
            raise RegtestError(f"{self.name} {path}: the reply is not JSON") from None

    def call(self, method: str, params: dict[str, Any] | None = None,
             timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
        """JSON-RPC ``method``; a method starting with ``/`` is a daemon path endpoint
        (``/pop_blocks``, ``/get_transactions``, ``/send_raw_transaction``...)."""
        if method.startswith("/"):
            return self.path(method, params, timeout)
        body: dict[str, Any] = {"jsonrpc": "2.0", "id": "0", "method": method}
        if params is not None:
            body["params"] = params
        reply = self._post("/json_rpc", body, timeout)
        if not isinstance(reply, dict):
            raise RpcError(method, -1, f"unexpected reply of type {type(reply).__name__}")
        if "error" in reply:
            error = reply["error"] or {}
            raise RpcError(method, error.get("code"), str(error.get("message")))
        result = reply.get("result", {})
        return result if isinstance(result, dict) else {"result": result}

    def path(self, path: str, body: dict[str, Any] | None = None,
             timeout: float = DEFAULT_TIMEOUT, *, check: bool = True) -> dict[str, Any]:
        """A daemon endpoint outside JSON-RPC; ``check=False`` returns a refusal instead
        of raising (``/send_raw_transaction`` reports a rejected double spend that way)."""
        reply = self._post(path, body or {}, timeout)
        if not isinstance(reply, dict):
            raise RpcError(path, -1, f"unexpected reply of type {type(reply).__name__}")
        if check and reply.get("status") not in (None, "OK"):
            raise RpcError(path, reply.get("status"), str(reply.get("reason") or reply.get("status")))
        return reply


def _digest_authorization(login: tuple[str, str], method: str, uri: str, challenges: list[str]) -> str:
    """RFC 2617 digest, MD5 with qop=auth, the first of the challenges wallet-rpc offers."""
    for challenge in challenges:
        scheme, _, rest = challenge.partition(" ")
        fields = {key: quoted or bare for key, quoted, bare in _DIGEST_PARAM.findall(rest)}
        if scheme.lower() == "digest" and fields.get("algorithm", "MD5").upper() == "MD5":
            break
    else:
        raise RegtestError("the wallet-rpc asked for authentication but offered no MD5 digest challenge")
    realm, nonce = fields.get("realm", ""), fields.get("nonce", "")
    cnonce, nc = secrets.token_hex(8), "00000001"

    def md5(text: str) -> str:
        return hashlib.md5(text.encode()).hexdigest()  # noqa: S324 - the protocol mandates MD5

    ha1 = md5(f"{login[0]}:{realm}:{login[1]}")
    ha2 = md5(f"{method}:{uri}")
    response = md5(f"{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}")
    return (f'Digest username="{login[0]}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
            f'response="{response}", algorithm=MD5, qop=auth, nc={nc}, cnonce="{cnonce}"')
