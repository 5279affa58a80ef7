"""The credential verifier a Python service imports: claims, keys by kid, pyseto both ways, and
that importing it needs pycryptodome and the standard library only."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pyseto
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from anonticket.crypto import credential as credential_module
from anonticket.crypto.credential import (
    CredentialError,
    CredentialVerifier,
    format_time,
    parse_time,
    sign_credential,
)
from anonticket.crypto.paseto_v4 import (
    PasetoError,
    PublicKey,
    SecretKey,
    b64url_decode,
    b64url_encode,
    sign,
)

NOW = datetime(2030, 6, 1, 12, 0, 0, tzinfo=timezone.utc)
KEY = SecretKey(bytes(range(32)))
OTHER = SecretKey(bytes(range(1, 33)))
FIXED_MESSAGES = set(CredentialError.MESSAGES.values())
SETTINGS = settings(max_examples=200, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


def at(moment: datetime, **kwargs: Any) -> CredentialVerifier:
    return CredentialVerifier([KEY.public_key], clock=lambda: moment, **kwargs)


def claims(**extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"sub": "s-7f3a", "exp": NOW + timedelta(minutes=5), "iat": NOW,
                            "jti": "j-1", "plan": "unlimited"}
    base.update(extra)
    return {name: value for name, value in base.items() if value is not None}


def raw_credential(message: bytes, key: SecretKey = KEY, footer: bytes | None = None) -> str:
    """A token signed by a trusted key whose message we choose freely (past sign_credential)."""
    kid = json.dumps({"kid": key.public_key.pid()}).encode() if footer is None else footer
    return sign(key, message, kid)


def refused(token: object, verifier: CredentialVerifier | None = None) -> str:
    with pytest.raises(CredentialError) as caught:
        (verifier or at(NOW)).verify(token)  # type: ignore[arg-type]
    error = caught.value
    assert str(error) in FIXED_MESSAGES
    # nothing of the input reaches the error: it is exactly the error its code makes (the
    # fixed message, no other attribute), so no log line or body can echo the token through
    # it (a check for the input's text in the message flaked: "0000000000tok" is in "token")
    assert error.args == (type(error).MESSAGES[error.code],)
    assert vars(error) == {"code": error.code}
    assert repr(error) == repr(type(error)(error.code))
    return error.code


# ---------------------------------------------------------------------------- round trip
def test_a_signed_credential_verifies_with_its_claims() -> None:
    token = sign_credential(KEY, claims(aud="files", nbf=NOW))
    assert token.startswith("v4.public.")
    credential = at(NOW, audience="files").verify(token)
    assert credential.subject == "s-7f3a"
    assert credential.expires == NOW + timedelta(minutes=5)
    assert credential.issued_at == NOW and credential.not_before == NOW
    assert credential.audience == "files" and credential.token_id == "j-1"
    assert credential.key_id == KEY.public_key.pid()
    assert credential.claims["plan"] == "unlimited"
    assert credential.claims["exp"] == "2030-06-01T12:05:00Z"  # the spec's recommended form


def test_the_footer_is_the_kid_and_nothing_else() -> None:
    token = sign_credential(KEY, claims())
    footer = token.split(".")[3]
    assert json.loads(pyseto.Token.new(token).footer) == {"kid": KEY.public_key.pid()}
    assert footer == b64url_encode(json.dumps({"kid": KEY.public_key.pid()},
                                              separators=(",", ":")).encode())


def test_the_docstring_example_runs() -> None:
    # the module docstring is the documentation's example: keep it honest
    verifier = CredentialVerifier([KEY.public_key.to_paserk(), OTHER.public_key.to_paserk()],
                                  audience="files", leeway=5, clock=lambda: NOW)
    token = sign_credential(KEY, claims(aud="files"))
    assert verifier.verify(("Bearer " + token).removeprefix("Bearer ")).subject == "s-7f3a"
    assert "CredentialVerifier([\"k4.public.…\"" in (credential_module.__doc__ or "")
    assert verifier.key_ids == {KEY.public_key.pid(), OTHER.public_key.pid()}


# ---------------------------------------------------------------------------- pyseto, both ways
def test_pyseto_verifies_our_credentials_and_their_claims() -> None:
    now = datetime.now(timezone.utc)  # pyseto checks exp against the real clock
    token = sign_credential(KEY, claims(exp=now + timedelta(minutes=5), iat=now, aud="files"))
    their_key = pyseto.Key.from_paserk(KEY.public_key.to_paserk())
    decoded = pyseto.decode(their_key, token, deserializer=json, aud="files")
    assert decoded.payload["sub"] == "s-7f3a"
    assert decoded.footer == {"kid": KEY.public_key.pid()}
    assert their_key.to_paserk_id() == decoded.footer["kid"]
    expired = sign_credential(KEY, claims(exp=now - timedelta(seconds=5), iat=now - timedelta(1)))
    with pytest.raises(pyseto.VerifyError):
        pyseto.decode(their_key, expired, deserializer=json)


def test_we_verify_pyseto_credentials() -> None:
    signer = pyseto.Key.from_paserk(KEY.to_paserk())
    paseto = pyseto.Paseto.new(exp=300, include_iat=True)  # writes "…+00:00" offsets
    kid = pyseto.Key.from_paserk(KEY.public_key.to_paserk()).to_paserk_id()  # k4.pid, theirs
    token = paseto.encode(signer, {"sub": "s-from-pyseto", "aud": "files"},
                          footer={"kid": kid}, serializer=json)
    now = datetime.now(timezone.utc)
    verifier = CredentialVerifier([KEY.public_key], audience="files", leeway=2,
                                  clock=lambda: now)
    credential = verifier.verify(token.decode())
    assert credential.subject == "s-from-pyseto"
    assert timedelta(seconds=290) < credential.expires - now <= timedelta(seconds=302)
    later = CredentialVerifier([KEY.public_key], audience="files",
                               clock=lambda: now + timedelta(seconds=305))
    assert refused(token.decode(), later) == "expired"


# ---------------------------------------------------------------------------- time claims
def test_exp_is_required_and_exclusive() -> None:
    token = sign_credential(KEY, claims())
    exp = NOW + timedelta(minutes=5)
    assert at(exp - timedelta(microseconds=1)).verify(token)
    assert refused(token, at(exp)) == "expired"
    assert refused(token, at(exp + timedelta(days=400))) == "expired"
    assert refused(raw_credential(b'{"sub":"s"}')) == "invalid_claims"
    assert refused(raw_credential(b'{"exp":1924992000}')) == "invalid_claims"
    with pytest.raises(ValueError):
        sign_credential(KEY, {"sub": "s"})


def test_leeway_extends_exp_and_tolerates_skew() -> None:
    token = sign_credential(KEY, claims())
    exp = NOW + timedelta(minutes=5)
    assert at(exp + timedelta(seconds=4), leeway=5).verify(token)
    assert refused(token, at(exp + timedelta(seconds=5), leeway=5)) == "expired"
    assert at(exp + timedelta(seconds=4), leeway=timedelta(seconds=5)).verify(token)
    with pytest.raises(ValueError):
        at(NOW, leeway=-1)


def test_not_before_is_enforced() -> None:
    token = sign_credential(KEY, claims(nbf=NOW + timedelta(minutes=1)))
    assert refused(token, at(NOW)) == "not_yet_valid"
    assert refused(token, at(NOW + timedelta(seconds=59))) == "not_yet_valid"
    assert at(NOW + timedelta(minutes=1)).verify(token)
    assert at(NOW + timedelta(seconds=58), leeway=2).verify(token)


def test_issued_at_sanity() -> None:
    future = sign_credential(KEY, claims(iat=NOW + timedelta(seconds=30)))
    assert refused(future, at(NOW)) == "not_yet_valid"
    assert at(NOW, leeway=30).verify(future)
    after_exp = sign_credential(KEY, claims(iat=NOW + timedelta(hours=1)))
    assert refused(after_exp, at(NOW, leeway=7200)) == "invalid_claims"
    nbf_after_exp = sign_credential(KEY, claims(nbf=NOW + timedelta(hours=1)))
    assert refused(nbf_after_exp, at(NOW)) == "invalid_claims"


def test_a_credential_never_outlives_the_exp_it_was_given() -> None:
    # exp is floored to the second when written: 0.9 s of a token's life is never added
    exp = NOW + timedelta(seconds=60, microseconds=900_000)
    token = sign_credential(KEY, claims(exp=exp))
    assert refused(token, at(NOW + timedelta(seconds=60))) == "expired"
    assert format_time(exp) == "2030-06-01T12:01:00Z"


@pytest.mark.parametrize(("text", "expected"), [
    ("2030-06-01T12:00:00Z", NOW),
    ("2030-06-01T12:00:00+00:00", NOW),
    ("2030-06-01T12:00:00-00:00", NOW),
    ("2030-06-01T17:30:00+05:30", NOW),
    ("2030-06-01T07:00:00-05:00", NOW),
    ("2030-06-01T12:00:00.5Z", NOW + timedelta(microseconds=500_000)),
    ("2030-06-01T12:00:00.1234567891Z", NOW + timedelta(microseconds=123_456)),
])
def test_rfc3339_forms_that_parse(text: str, expected: datetime) -> None:
    assert parse_time(text) == expected
    assert parse_time(text).tzinfo == timezone.utc


@pytest.mark.parametrize("text", [
    "2030-06-01t12:00:00Z", "2030-06-01T12:00:00z", "2030-06-01 12:00:00Z",
    "2030-06-01T12:00:00", "2030-06-01", "20300601T120000Z", "2030-06-01T12:00Z",
    "2030-06-01T12:00:60Z", "2030-02-30T12:00:00Z", "0000-01-01T00:00:00Z",
    "2030-06-01T12:00:00+24:00", "2030-06-01T12:00:00+05:60", "2030-06-01T12:00:00+0500",
    "2030-06-01T12:00:00.Z", "٢٠٣٠-06-01T12:00:00Z", " 2030-06-01T12:00:00Z",
    "2030-06-01T12:00:00Z\n", "9999-12-31T23:59:59-23:59", "", 1924992000, None,
])
def test_rfc3339_forms_that_are_refused(text: object) -> None:
    with pytest.raises(CredentialError) as caught:
        parse_time(text)
    assert caught.value.code == "invalid_claims"
    exp = json.dumps(text, ensure_ascii=False)
    assert refused(raw_credential(('{"exp":%s}' % exp).encode())) == "invalid_claims"


def test_a_far_future_exp_does_not_overflow() -> None:
    token = raw_credential(b'{"exp":"9999-12-31T23:59:59Z","nbf":"9999-12-31T23:59:59Z"}')
    assert refused(token, at(NOW, leeway=10)) == "not_yet_valid"
    assert at(NOW).verify(raw_credential(b'{"exp":"9999-12-31T23:59:59Z"}'))


def test_signing_discourages_invalid_reserved_claims() -> None:
    with pytest.raises(TypeError):
        sign_credential(KEY, claims(exp="2030-06-01T12:05:00Z"))
    with pytest.raises(TypeError):
        sign_credential(KEY, claims(sub=7))
    with pytest.raises(ValueError):
        sign_credential(KEY, claims(exp=datetime(2030, 6, 1, 12, 5)))  # naive


# ---------------------------------------------------------------------------- audience
def test_audience_is_enforced() -> None:
    for_files = sign_credential(KEY, claims(aud="files"))
    for_mail = sign_credential(KEY, claims(aud="mail"))
    for_anyone = sign_credential(KEY, claims())
    files = at(NOW, audience="files")
    assert files.verify(for_files).audience == "files"
    assert refused(for_mail, files) == "wrong_audience"
    assert refused(for_anyone, files) == "wrong_audience"
    # a per-service credential does not open a verifier that expects none (RFC 7519 §4.1.3)
    assert refused(for_files, at(NOW)) == "wrong_audience"
    assert at(NOW).verify(for_anyone).audience is None
    assert refused(raw_credential(b'{"exp":"2030-06-01T12:05:00Z","aud":["files"]}'),
                   files) == "invalid_claims"


# ---------------------------------------------------------------------------- keys and kid
def test_rotation_and_removed_keys() -> None:
    old_token = sign_credential(OTHER, claims())
    new_token = sign_credential(KEY, claims())
    both = CredentialVerifier([KEY.public_key, OTHER.public_key.to_paserk()], clock=lambda: NOW)
    assert both.verify(old_token).key_id == OTHER.public_key.pid()
    assert both.verify(new_token).key_id == KEY.public_key.pid()
    assert refused(old_token, at(NOW)) == "unknown_key"  # the old key was removed


@pytest.mark.parametrize(("footer", "code"), [
    (None, "unknown_key"),  # raw_credential's own: the kid of KEY, signed by OTHER (below)
    (b"", "unknown_key"),
    (b"not json", "unknown_key"),
    (b'{"kid":"k4.pid.unknown"}', "unknown_key"),
    (b'{"kid":7}', "unknown_key"),
    (b'{"kid":{"kid":"x"}}', "unknown_key"),
    (b'["k4.pid"]', "unknown_key"),
    (b'{"kid":"a","kid":"b"}', "unknown_key"),
])
def test_footers_that_name_no_key_of_ours(footer: bytes | None, code: str) -> None:
    if footer is None:
        # the kid names KEY but OTHER signed: selecting by kid does not skip the signature check
        token = raw_credential(b'{"exp":"2030-06-01T12:05:00Z"}', OTHER,
                               json.dumps({"kid": KEY.public_key.pid()}).encode())
        assert refused(token) == "invalid_signature"
        return
    token = (sign(KEY, b'{"exp":"2030-06-01T12:05:00Z"}', footer) if footer
             else sign(KEY, b'{"exp":"2030-06-01T12:05:00Z"}'))
    assert refused(token) == code


def test_a_public_key_in_the_footer_is_not_a_key_id() -> None:
    # paseto-spec: a kid must never be the key itself; only a k4.pid we already hold selects one
    token = raw_credential(b'{"exp":"2030-06-01T12:05:00Z"}',
                           footer=json.dumps({"kid": KEY.public_key.to_paserk()}).encode())
    assert refused(token) == "unknown_key"


def test_a_nested_or_crowded_footer_is_refused_before_parsing_it_deeply() -> None:
    kid = KEY.public_key.pid()
    crowded = json.dumps({"kid": kid, **{f"k{n}": n for n in range(20)}}).encode()
    nested = json.dumps({"kid": kid, "x": {"y": 1}}).encode()
    huge = json.dumps({"kid": kid, "pad": "x" * 600}).encode()
    deep = b'{"kid":"' + kid.encode() + b'","x":' + b"[" * 200 + b"]" * 200 + b"}"
    for footer in (crowded, nested, huge, deep):
        assert refused(raw_credential(b'{"exp":"2030-06-01T12:05:00Z"}', footer=footer)) \
            == "unknown_key"


def test_verifier_construction_refuses_bad_keys() -> None:
    with pytest.raises(ValueError):
        CredentialVerifier([])
    with pytest.raises(PasetoError, match="not a valid k4 key"):
        CredentialVerifier([PublicKey(bytes(32))])  # small order: anyone could forge
    with pytest.raises(PasetoError, match="not a valid k4 key"):
        CredentialVerifier(["k4.secret." + KEY.to_paserk()[10:]])
    with pytest.raises(PasetoError, match="not a valid k4 key"):
        CredentialVerifier(["k4.public.AAAA"])


# ---------------------------------------------------------------------------- hostile claims
@pytest.mark.parametrize("message", [
    b'["exp"]', b'"2030-06-01T12:05:00Z"', b"", b"null", b"\xff\xfe",
    b'{"exp":"2030-06-01T12:05:00Z","exp":"2099-01-01T00:00:00Z"}',  # duplicate: refused
    b'{"exp":"2030-06-01T12:05:00Z","n":NaN}', b'{"exp":"2030-06-01T12:05:00Z","n":Infinity}',
    b'{"exp":"2030-06-01T12:05:00Z","sub":7}', b'{"exp":"2030-06-01T12:05:00Z","jti":null}',
    b'{"exp":"2030-06-01T12:05:00Z","x":' + b"[" * 1500 + b"]" * 1500 + b"}",  # recursion
])
def test_hostile_claims_are_invalid_claims(message: bytes) -> None:
    verifier = at(NOW, max_token_length=10_000)
    assert refused(raw_credential(message), verifier) == "invalid_claims"


# ---------------------------------------------------------------------------- hostile tokens
GOOD = sign_credential(KEY, claims())
BODY, FOOT = GOOD[len("v4.public."):].split(".")
SHORTENED = b64url_encode(b64url_decode(BODY)[:-6])  # well formed, six bytes short


@pytest.mark.parametrize(("token", "code"), [
    ("v4.local." + BODY + "." + FOOT, "unsupported_token"),
    ("v3.public." + BODY + "." + FOOT, "unsupported_token"),
    ("v4.public." + BODY + "=." + FOOT, "malformed_token"),
    ("v4.public." + BODY[:-1] + "." + FOOT, "malformed_token"),
    ("v4.public." + SHORTENED + "." + FOOT, "invalid_signature"),
    ("v4.public." + BODY.replace("-", "+").replace("_", "/") + "." + FOOT, "malformed_token"),
    ("v4.public." + BODY + "." + FOOT + "." + FOOT, "malformed_token"),
    ("v4.public." + BODY, "unknown_key"),
    ("v4.public." + "A" * 5000, "malformed_token"),  # past max_token_length
    ("Bearer " + GOOD, "unsupported_token"),
])
def test_tampered_truncated_re_encoded_or_wrong_version_is_refused(token: str, code: str) -> None:
    assert refused(token) == code


def test_every_truncation_and_every_single_character_change_is_refused() -> None:
    verifier = at(NOW)
    for cut in range(len(GOOD)):
        refused(GOOD[:cut], verifier)
    for index in range(0, len(GOOD), 7):
        for char in "A_-.":
            if GOOD[index] != char:
                refused(GOOD[:index] + char + GOOD[index + 1:], verifier)


@SETTINGS
@given(st.one_of(st.text(max_size=400), st.binary(max_size=200), st.integers(),
                 st.text(alphabet="AQgw_-.=é", max_size=200).map(lambda s: GOOD[:60] + s)))
@example(GOOD[:-1])
@example(GOOD + "A")
def test_arbitrary_input_is_a_credential_error_never_a_crash(token: object) -> None:
    refused(token)


# ---------------------------------------------------------------------------- what it imports
def test_the_crypto_package_imports_only_the_standard_library_and_pycryptodome() -> None:
    # static: every module here, including ones other engineers add
    package = Path(credential_module.__file__).resolve().parent
    wrong = []
    for path in sorted(package.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                top = name.split(".")[0]
                if not (top in sys.stdlib_module_names or top == "Crypto"
                        or name == "anonticket.crypto" or name.startswith("anonticket.crypto.")):
                    wrong.append(f"{path.name}: {name}")
    assert not wrong, wrong


def test_a_service_with_only_pycryptodome_can_import_and_use_the_verifier() -> None:
    # dynamic: any import outside the standard library, pycryptodome and anonticket.crypto
    # fails, as it would for a service that installed pycryptodome alone (pycryptodome's own
    # optional cffi backend included: it must fall back to ctypes)
    program = textwrap.dedent("""
        import sys
        from datetime import datetime, timedelta, timezone

        BEFORE = set(sys.modules)  # the interpreter's own start-up (site, the editable finder)

        ALLOWED = set(sys.stdlib_module_names) | {"Crypto"}

        class OnlyPycryptodome:
            def find_spec(self, name, path=None, target=None):
                top = name.split(".")[0]
                ours = name in ("anonticket", "anonticket.crypto") or name.startswith(
                    "anonticket.crypto.")
                if top not in ALLOWED and not ours:
                    raise ImportError("not installed in this service: " + name)
                return None

        sys.meta_path.insert(0, OnlyPycryptodome())
        from anonticket.crypto.credential import CredentialVerifier, sign_credential
        from anonticket.crypto.paseto_v4 import SecretKey

        key = SecretKey.generate()
        now = datetime.now(timezone.utc)
        token = sign_credential(key, {"sub": "s", "exp": now + timedelta(minutes=1)})
        verifier = CredentialVerifier([key.public_key.to_paserk()])
        assert verifier.verify(token).subject == "s"
        loaded = sorted({m.split(".")[0] for m in set(sys.modules) - BEFORE})
        print(" ".join(loaded))
    """)
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = set(done.stdout.split())
    assert "Crypto" in loaded and "anonticket" in loaded
    assert not loaded & {"aiohttp", "asyncpg", "aiosqlite", "prometheus_client", "segno",
                         "cffi", "cryptography", "pyseto", "yarl", "multidict"}
    assert loaded <= set(sys.stdlib_module_names) | {"Crypto", "anonticket"}
