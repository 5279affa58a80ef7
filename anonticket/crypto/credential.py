"""Credentials: short-lived PASETO v4.public tokens with JSON claims, verified offline.

The verifier a Python service imports to accept anonticket's credentials without a round trip.
It needs pycryptodome and the standard library only (a test imports it with nothing else allowed):

    from anonticket.crypto.credential import CredentialError, CredentialVerifier

    # the k4.public keys anonticket publishes; rebuild the verifier when that list changes
    verifier = CredentialVerifier(["k4.public.…", "k4.public.…"], audience="files", leeway=5)
    # or from the published document itself, fetched again when its max-age has passed:
    #   KEYS = "https://tickets.example.org/.well-known/anonticket-credential-keys"
    #   verifier = CredentialVerifier.from_key_document(urlopen(KEYS).read(), audience="files")

    def subject_of(authorization: str) -> str | None:
        try:
            credential = verifier.verify(authorization.removeprefix("Bearer "))
        except CredentialError as error:  # error.code: "expired", "wrong_audience", …
            return None                   # answer 401; error.code may be logged, never the token
        return credential.subject         # the pseudonym anonticket's gateway sends upstream

A credential is a v4.public token whose footer is the JSON object `{"kid": "<k4.pid>"}` (the id
of the key that signed it, PASERK operations/ID.md) and whose message is a JSON object of claims
(paseto-spec, Implementation Guide, "Registered Claims"): `exp` is required, `nbf` and `iat` are
checked when present, all three RFC 3339 date-times ("T" and "Z" upper case, an offset always).

Decisions a reader should know:
- `exp` is exclusive (valid while now < exp + leeway), as in RFC 7519 §4.1.4; `nbf` inclusive.
- `iat` after now + leeway, or `iat`/`nbf` after `exp`, is refused: the first is a clock problem
  worth seeing, the second a credential that was never valid.
- A credential carrying `aud` is refused by a verifier that expects no audience, and one without
  `aud` by a verifier that expects one (RFC 7519 §4.1.3): a credential minted for one service
  does not open the others.
- The footer is parsed before the signature check only to choose the key: a short flat JSON
  object (no nesting, few keys, no duplicates, as the spec's footer rules recommend), whose `kid`
  must name a key the verifier already holds; an unknown `kid` fails closed.
- `leeway` (seconds) absorbs clock skew between anonticket and the service; it also lets a
  credential live that much past its `exp`. The default is 0: machines that keep time with NTP
  need none, and anonticket's promise that a credential never outlives its token holds exactly.
- Leap seconds (`:60`) are refused rather than guessed; fractional seconds are read (to the
  microsecond) but never written.

`sign_credential` is the other side, used by anonticket itself: the same rules, so whatever it
signs this verifier accepts and any standard PASETO v4 library can read.

The key document (`key_document`, `read_key_document`) is what anonticket publishes at
`KEY_DOCUMENT_PATH` on its public listener: `{"version": 1, "keys": [...]}`, one entry per key
with its PASERK `k4.public` (`paserk`), its id (`kid`, the `k4.pid` the footers name), when it
starts signing (`not_before`: a rotated-in key is published before it signs) and, for a key
being rotated out, when it stopped signing (`retired_at`) and when the last credential it signed
has expired (`expires_at`): until then it must keep verifying, after that it is gone. A reader
checks every `kid` against its key (a document cannot make a key verify under another's name).
"""

from __future__ import annotations

import functools
import hmac
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from anonticket.crypto import paseto_v4
from anonticket.crypto.paseto_v4 import PasetoError, PublicKey, SecretKey

KEY_DOCUMENT_PATH = "/.well-known/anonticket-credential-keys"
KEY_DOCUMENT_VERSION = 1
MAX_TOKEN_LENGTH = 4096  # characters; anonticket's credentials are a few hundred
MAX_FOOTER_LENGTH = 512  # bytes; {"kid":"k4.pid.…"} is 61
MAX_FOOTER_KEYS = 8
STRING_CLAIMS = ("iss", "sub", "aud", "jti")
TIME_CLAIMS = ("exp", "nbf", "iat")

_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]+))?"
    r"(?:Z|([+-])([0-9]{2}):([0-9]{2}))")


class CredentialError(PasetoError):
    """A credential was refused. `code` says why (a token-level code of `PasetoError`, or one of
    the claim codes below); the message is fixed per code and never contains the credential."""

    MESSAGES = PasetoError.MESSAGES | {
        "unknown_key": "the credential's key id is not one of the verifier's keys",
        "invalid_claims": "the credential's claims are not valid",
        "expired": "the credential has expired",
        "not_yet_valid": "the credential is not valid yet",
        "wrong_audience": "the credential is not for this audience",
    }


@dataclass(frozen=True)
class Credential:
    """A verified credential: the claims, and the registered ones read out and typed."""

    claims: Mapping[str, Any]
    key_id: str  # the k4.pid of the key that verified it
    expires: datetime  # exp, in UTC
    not_before: datetime | None
    issued_at: datetime | None
    subject: str | None
    audience: str | None
    token_id: str | None  # jti


# ---------------------------------------------------------------------------- RFC 3339
def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with "Z" and no fraction: the spec's recommended form.

    Floored to the second, never rounded up: an `exp` written from a token's expiry must not
    let the credential outlive it by a fraction of a second.
    """
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("credential times must be timezone-aware")
    if moment.tzinfo is not timezone.utc:
        moment = moment.astimezone(timezone.utc)
    # an f-string, not strftime: a third of the time (four per credential issued), and the
    # year always four digits, as RFC 3339 requires (glibc's %Y writes 999 for 999)
    return (f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T"
            f"{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}Z")


def parse_time(text: object) -> datetime:
    """Parse an RFC 3339 §5.6 date-time as the PASETO claims profile writes it, into UTC."""
    if not isinstance(text, str):
        raise CredentialError("invalid_claims")
    match = _RFC3339.fullmatch(text)
    if not match:
        raise CredentialError("invalid_claims")
    year, month, day, hour, minute, second, fraction, sign_, off_h, off_m = match.groups()
    try:
        offset = timedelta(0)
        if sign_:
            if int(off_h) > 23 or int(off_m) > 59:
                raise ValueError
            offset = timedelta(hours=int(off_h), minutes=int(off_m))
            offset = -offset if sign_ == "-" else offset
        micro = int((fraction or "0")[:6].ljust(6, "0"))
        local = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second),
                         micro, tzinfo=timezone(offset))
        return local.astimezone(timezone.utc)
    except (ValueError, OverflowError):  # a :60 leap second, day 31 of April, year 0 …
        raise CredentialError("invalid_claims") from None


# ---------------------------------------------------------------------------- JSON
def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # two parsers reading one duplicated key differently is a classic way past a check
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("duplicate key")
    return obj


def _refuse_constant(name: str) -> None:
    raise ValueError("not JSON")  # NaN and ±Infinity are Python's extension, not JSON


def _json_object(data: bytes) -> dict[str, Any]:
    try:
        value = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicates,
                           parse_constant=_refuse_constant)
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise CredentialError("invalid_claims") from None
    if not isinstance(value, dict):
        raise CredentialError("invalid_claims")
    return value


def _key_id(footer: bytes) -> str:
    """The footer's `kid`; a footer that names none (or is not a small flat JSON object) names
    no key of ours, so every way of failing here is `unknown_key`."""
    if not footer or len(footer) > MAX_FOOTER_LENGTH:
        raise CredentialError("unknown_key")
    try:
        obj = _json_object(footer)
    except CredentialError:
        raise CredentialError("unknown_key") from None
    kid = obj.get("kid")
    if (len(obj) > MAX_FOOTER_KEYS or not isinstance(kid, str)
            or any(isinstance(value, (dict, list)) for value in obj.values())):
        raise CredentialError("unknown_key")
    return kid


# ---------------------------------------------------------------------------- sign
def sign_credential(secret_key: SecretKey, claims: Mapping[str, Any], *,
                    implicit: bytes = b"") -> str:
    """Sign `claims` as a credential: footer `{"kid": <k4.pid of the key>}`, JSON message.

    `exp` is required; `exp`, `nbf`, `iat` must be timezone-aware datetimes (written with
    `format_time`); `iss`, `sub`, `aud`, `jti` must be strings. Refusing anything else here is
    the spec's "discourage setting invalid data to the reserved claims".
    """
    return sign_message(secret_key, encode_claims(claims), implicit)


def encode_claims(claims: Mapping[str, Any]) -> bytes:
    """The JSON message ``sign_credential`` signs for ``claims``, after its checks."""
    body = dict(claims)
    if "exp" not in body:
        raise ValueError("a credential needs an exp claim")
    for name in TIME_CLAIMS:
        if name in body:
            if not isinstance(body[name], datetime):
                raise TypeError(f"the {name} claim must be a datetime")
            body[name] = format_time(body[name])
    for name in STRING_CLAIMS:
        if name in body and not isinstance(body[name], str):
            raise TypeError(f"the {name} claim must be a string")
    return _CLAIMS_ENCODER.encode(body).encode("utf-8")


def sign_message(secret_key: SecretKey, message: bytes, implicit: bytes = b"") -> str:
    """Sign claims already written as JSON (by a caller that wrote them faster than the
    checks of ``sign_credential`` allow, and proved the bytes the same: the issuer's hot
    path, anonticket/ledger/credentials.py). The footer names the key as always."""
    return paseto_v4.sign(secret_key, message, _footer(secret_key.public_key.pid()), implicit)


# made once: json.dumps with options builds an encoder per call (a few µs a credential)
_CLAIMS_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


@functools.lru_cache(maxsize=64)
def _footer(key_id: str) -> str:
    """The footer of every credential a key signs, written once per key."""
    return json.dumps({"kid": key_id}, separators=(",", ":"))


# ---------------------------------------------------------------------------- verify
def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


class CredentialVerifier:
    """Verifies credentials against a fixed set of public keys; build once, share freely.

    `keys`: PublicKey objects or `k4.public.…` strings (each is validated here, so a bad
    published key fails at start-up, not at a request). `audience`: the value this service
    expects in `aud`, or None for credentials without one. `leeway`: seconds (or a timedelta)
    of clock skew allowed on `exp`, `nbf` and `iat`. `clock`: returns the current aware
    datetime (tests pass their own). `implicit`: the implicit assertion both sides agreed on.
    """

    def __init__(self, keys: Iterable[PublicKey | str], *, audience: str | None = None,
                 leeway: float | timedelta = 0, clock: Callable[[], datetime] = _utc_now,
                 implicit: bytes = b"", max_token_length: int = MAX_TOKEN_LENGTH) -> None:
        loaded = [key if isinstance(key, PublicKey) else PublicKey.from_paserk(key) for key in keys]
        if not loaded:
            raise ValueError("a credential verifier needs at least one public key")
        self._keys = {key.check().pid(): key for key in loaded}
        self.leeway = leeway if isinstance(leeway, timedelta) else timedelta(seconds=leeway)
        if self.leeway < timedelta(0):
            raise ValueError("leeway cannot be negative")
        self.audience = audience
        self.clock = clock
        self.implicit = implicit
        self.max_token_length = max_token_length

    @classmethod
    def from_key_document(cls, document: bytes | str | Mapping[str, Any],
                          **options: Any) -> CredentialVerifier:
        """A verifier for every key of anonticket's published key document (its JSON text,
        or the parsed object) that still verifies now: the keys past their `expires_at`
        (by `clock`, if given) are left out. `options` are the constructor's. A document
        that is not one (or lists no usable key) is a `ValueError` saying what is wrong."""
        clock = options.get("clock", _utc_now)
        now = clock()
        keys = [entry.public_key for entry in read_key_document(document)
                if entry.expires_at is None or now < entry.expires_at]
        if not keys:
            raise ValueError("the key document lists no key that verifies now")
        return cls(keys, **options)

    @property
    def key_ids(self) -> frozenset[str]:
        return frozenset(self._keys)

    def verify(self, token: str) -> Credential:
        """The verified credential, or CredentialError (never any other exception for any str)."""
        try:
            if not isinstance(token, str) or len(token) > self.max_token_length:
                raise PasetoError("malformed_token")
            key_id = _key_id(paseto_v4.untrusted_footer(token))
            key = self._keys.get(key_id)
            if key is None:
                raise CredentialError("unknown_key")
            message, _ = paseto_v4.verify(key, token, self.implicit)
        except CredentialError:
            raise
        except PasetoError as error:
            raise CredentialError(error.code) from None
        return self._check_claims(_json_object(message), key_id)

    def _check_claims(self, claims: dict[str, Any], key_id: str) -> Credential:
        if "exp" not in claims:
            raise CredentialError("invalid_claims")
        expires = parse_time(claims["exp"])
        not_before = parse_time(claims["nbf"]) if "nbf" in claims else None
        issued_at = parse_time(claims["iat"]) if "iat" in claims else None
        for name in STRING_CLAIMS:
            if name in claims and not isinstance(claims[name], str):
                raise CredentialError("invalid_claims")
        if any(moment is not None and moment > expires for moment in (not_before, issued_at)):
            raise CredentialError("invalid_claims")
        now = self.clock()
        # arithmetic on `now`, never on a claim: a claim near datetime.max would overflow
        if now - self.leeway >= expires:
            raise CredentialError("expired")
        if any(moment is not None and now + self.leeway < moment
               for moment in (not_before, issued_at)):
            raise CredentialError("not_yet_valid")
        if claims.get("aud") != self.audience:
            raise CredentialError("wrong_audience")
        return Credential(claims=claims, key_id=key_id, expires=expires, not_before=not_before,
                          issued_at=issued_at, subject=claims.get("sub"),
                          audience=claims.get("aud"), token_id=claims.get("jti"))


# ---------------------------------------------------------------------------- key document
@dataclass(frozen=True)
class KeyEntry:
    """One key of the published document: a public key and its schedule (all UTC)."""

    public_key: PublicKey
    not_before: datetime  # starts signing then (published earlier)
    retired_at: datetime | None = None  # stopped signing then; None while in force
    expires_at: datetime | None = None  # verifies nothing after this; None while in force

    @property
    def key_id(self) -> str:
        return self.public_key.pid()


def key_document(entries: Iterable[KeyEntry]) -> dict[str, Any]:
    """The published key document (a JSON object), newest key last."""
    return {"version": KEY_DOCUMENT_VERSION, "keys": [
        {"kid": entry.key_id, "paserk": entry.public_key.to_paserk(),
         "not_before": format_time(entry.not_before),
         "retired_at": None if entry.retired_at is None else format_time(entry.retired_at),
         "expires_at": None if entry.expires_at is None else format_time(entry.expires_at)}
        for entry in entries]}


def read_key_document(document: bytes | str | Mapping[str, Any]) -> list[KeyEntry]:
    """The entries of a key document; `ValueError` (a fixed text) for anything else."""
    if isinstance(document, (bytes, str)):
        try:
            document = json.loads(document, object_pairs_hook=_no_duplicates,
                                  parse_constant=_refuse_constant)
        except (ValueError, RecursionError):
            raise ValueError("the key document is not JSON") from None
    if (not isinstance(document, Mapping) or document.get("version") != KEY_DOCUMENT_VERSION
            or not isinstance(document.get("keys"), list)):
        raise ValueError("not an anonticket key document (version 1)")
    entries = []
    for item in document["keys"]:
        if not isinstance(item, Mapping) or not isinstance(item.get("kid"), str):
            raise ValueError("a key document entry is not an object with a kid")
        try:
            key = PublicKey.from_paserk(item.get("paserk")).check()  # type: ignore[arg-type]
            entry = KeyEntry(key, parse_time(item.get("not_before")),
                             *(None if item.get(name) is None else parse_time(item[name])
                               for name in ("retired_at", "expires_at")))
        except PasetoError:
            raise ValueError("a key document entry has an invalid key or time") from None
        if not hmac.compare_digest(entry.key_id, item["kid"]):
            raise ValueError("a key document entry's kid is not its key's k4.pid")
        entries.append(entry)
    return entries
