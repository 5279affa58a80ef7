"""The access cookie's name: ``__Host-`` over HTTPS, the plain name over plain HTTP.

A cookie without a prefix can be set for this host by a sibling: a page of
``blog.example.org`` may set ``anonticket_access`` with ``Domain=example.org``, and the
browser then sends it to ``protected.example.org`` too. That plants the sibling's token
in the customer's browser (a login CSRF that no form check can see) or locks the
customer out. A ``__Host-`` cookie is one browsers accept only from this very host,
``Secure``, ``Path=/`` and without ``Domain``; they refuse it over plain HTTP, so a
plain-HTTP onion service (where a sibling cannot exist: an onion name has no parent)
keeps the plain name.

So with ``ACCESS_COOKIE_NAME=anonticket_access`` (the default):

- ``/access`` sets ``__Host-anonticket_access`` when the cookie is ``Secure`` (HTTPS by
  ``X-Forwarded-Proto``, or ``ACCESS_COOKIE_SECURE=true``), else ``anonticket_access``;
  over HTTPS it also expires a plain copy left from before;
- the gateway check reads the ``__Host-`` copy when there is one (only this host over
  HTTPS can have set it); the plain copy only when the request is not known to be HTTPS;
  more than one copy of either name is refused.

A name the operator already prefixed (``__Host-…``, ``__Secure-…``) is used as it is.

With ``ACCESS_COOKIE_CREDENTIAL=true`` the access cookie holds a credential, and a second
cookie, the *refresh* cookie, holds the token for ``/access`` alone (``Path=/access``) to
renew it: ``<name>_refresh``, over HTTPS ``__Secure-<name>_refresh`` (a ``__Host-`` name
must have ``Path=/``). A sibling could plant a ``__Secure-`` cookie, so the page renews
only for a refresh token whose subject is the one of the (``__Host-``) credential the
browser already holds (api/access.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from anonticket.config import Config

HOST_PREFIX = "__Host-"
SECURE_PREFIX = "__Secure-"
_PREFIXES = (HOST_PREFIX, SECURE_PREFIX)
REFRESH_SUFFIX = "_refresh"


class AccessCookie:
    """The names the access cookie goes by, and the rule that picks one per request."""

    __slots__ = ("secure_name", "plain_name", "secure_setting", "_find")

    def __init__(self, secure_name: str, plain_name: str | None, secure_setting: str) -> None:
        self.secure_name = secure_name    # set, and read first, when the cookie is Secure
        self.plain_name = plain_name      # over plain HTTP; None: the configured name is prefixed
        self.secure_setting = secure_setting  # ACCESS_COOKIE_SECURE: auto, true or false
        # Any ASCII whitespace may precede a name: the proxies' strip patterns use \s, so
        # whatever copy they would take for the cookie is counted here too.
        if plain_name is None or plain_name == secure_name:
            pattern = "()" + re.escape(plain_name or secure_name)
        else:
            prefix = secure_name.removesuffix(plain_name)  # __Host- (or __Secure-)
            pattern = f"({re.escape(prefix)})?" + re.escape(plain_name)
        self._find = re.compile(r"(?:^|;)\s*" + pattern + r"=([^;]*)", re.ASCII).findall

    @classmethod
    def from_config(cls, config: Config) -> AccessCookie:
        name = config.access_cookie_name
        if name.startswith(_PREFIXES):
            return cls(name, None, config.access_cookie_secure)
        if config.access_cookie_secure == "false":
            return cls(name, name, "false")  # never Secure: browsers would refuse the prefix
        return cls(HOST_PREFIX + name, name, config.access_cookie_secure)

    @classmethod
    def refresh_from_config(cls, config: Config) -> AccessCookie:
        """The refresh cookie's names (see the module docstring)."""
        base = config.access_cookie_name
        for prefix in _PREFIXES:
            base = base.removeprefix(prefix)
        plain = base + REFRESH_SUFFIX
        if config.access_cookie_name.startswith(_PREFIXES):
            return cls(SECURE_PREFIX + plain, None, config.access_cookie_secure)
        if config.access_cookie_secure == "false":
            return cls(plain, plain, "false")
        return cls(SECURE_PREFIX + plain, plain, config.access_cookie_secure)

    def is_secure(self, forwarded_proto: str | None) -> bool:
        """Whether the cookie is Secure for a request the proxy says came over
        ``forwarded_proto`` (``X-Forwarded-Proto``; None when it says nothing)."""
        if self.secure_setting != "auto":
            return self.secure_setting == "true"
        return forwarded_proto is not None and forwarded_proto.lower() == "https"

    def name(self, secure: bool) -> str:
        """The name ``/access`` sets."""
        return self.secure_name if secure or self.plain_name is None else self.plain_name

    def copies(self, cookie_headers: Iterable[str]) -> tuple[list[str], list[str]]:
        """The values of every copy of the secure name and of the plain name, across
        every Cookie header."""
        secure: list[str] = []
        plain: list[str] = []
        every_match_is_plain = self.plain_name is not None
        for header in cookie_headers:
            for prefix, value in self._find(header):
                (secure if prefix or not every_match_is_plain else plain).append(value)
        return secure, plain
