"""Settings are refused when they are read, by the same rule their user applies later, and
no secret is ever printed: not by ``config --check``, the start-up log (``describe()``), the
``config`` listing, nor an error line.

The wallet URL is the case that matters: a ``user:password@`` URL used to pass
``config --check``, reach the start-up log verbatim, and only fail once ``serve`` had bound
both listeners. The process-level half (``serve`` itself) is in test_serve_process.py.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import subprocess
from pathlib import Path

import pytest

from anonticket import config as config_module
from anonticket.cli.parser import main
from anonticket.config import SETTINGS, Config, Setting
from anonticket.config.values import redact_userinfo
from anonticket.domain.errors import ConfigError
from anonticket.monero.wallet_rpc import WalletRpc

REPO = Path(__file__).resolve().parents[2]
SECRET = "s3cr3t-Pw"

BAD_WALLET_URLS = {
    "credentials": f"http://anon:{SECRET}@127.0.0.1:18082",
    "user only": f"http://{SECRET}@127.0.0.1:18082",
    "empty userinfo": "http://@127.0.0.1:18082",
    "port out of range": "http://127.0.0.1:99999",
    "port zero": "http://127.0.0.1:0",
    "port not a number": "http://127.0.0.1:port",
    "no host": "http://:18082",
    "nothing after the scheme": "http://",
    "query": "http://127.0.0.1:18082/json_rpc?x=1",
    "fragment": "http://127.0.0.1:18082/#frag",
    "space in the host": "http://wallet host:18082",
    "newline in the path": "http://127.0.0.1:18082\n/json_rpc",
    "not http": "ftp://127.0.0.1:18082",
    "no scheme": "127.0.0.1:18082",
}
GOOD_WALLET_URLS = [
    "http://127.0.0.1:18082",
    "http://127.0.0.1:18082/json_rpc",
    "HTTP://127.0.0.1:18082/",
    "https://wallet.example/monero/",
    "http://[::1]:18082",
]


@pytest.fixture
def settings_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for setting in SETTINGS:
        monkeypatch.delenv(setting.name, raising=False)
    return monkeypatch


def one_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def config_accepts(**env: str) -> bool:
    try:
        Config.from_env(env)
    except config_module.ConfigError:
        return False
    return True


def client_accepts(url: str, user: str | None = None, password: str | None = None) -> bool:
    try:
        WalletRpc(url, timeout=1, user=user, password=password)
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------------- the wallet URL
@pytest.mark.parametrize("url", BAD_WALLET_URLS.values(), ids=BAD_WALLET_URLS.keys())
def test_config_check_refuses_a_wallet_url_the_client_would_refuse(
    settings_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], url: str
) -> None:
    settings_env.setenv("MONERO_RPC_URL", url)
    assert main(["config", "--check"]) == 2
    out, err = capsys.readouterr()
    line = one_line(err)
    assert line.startswith("anonticket: configuration error: MONERO_RPC_URL: "), line
    assert SECRET not in line and "18082" not in line  # the value is never echoed
    assert "MONERO_RPC_USER and MONERO_RPC_PASSWORD" in line and "***" not in line
    assert out == ""
    assert not client_accepts(url)


def test_config_and_client_accept_exactly_the_same_wallet_urls() -> None:
    """One rule: every combination of the parts a URL can go wrong in, config ⇔ client."""
    schemes = ["http://", "https://", "HTTP://", "ftp://", ""]
    userinfo = ["", "u@", f"u:{SECRET}@", "@", ":@"]
    hosts = ["127.0.0.1", "[::1]", "wallet.example", "", "bad host", "[::1"]
    ports = ["", ":18082", ":0", ":99999", ":x", ":"]
    tails = ["", "/", "/json_rpc", "/json_rpc/", "/a/json_rpc", "?q=1", "#f", "/\tx"]
    agreed = accepted = 0
    for parts in itertools.product(schemes, userinfo, hosts, ports, tails):
        url = "".join(parts)
        by_config = config_accepts(MONERO_RPC_URL=url)
        assert by_config == client_accepts(url), url
        agreed += 1
        accepted += by_config
    assert agreed > 5000 and accepted > 100  # both sides of the rule were exercised
    for url in GOOD_WALLET_URLS:
        assert config_accepts(MONERO_RPC_URL=url) and client_accepts(url), url


def test_the_real_binary_refuses_wallet_credentials_in_one_line() -> None:
    names = {s.name for s in SETTINGS}
    env = {k: v for k, v in os.environ.items() if k not in names}
    env["MONERO_RPC_URL"] = BAD_WALLET_URLS["credentials"]
    done = subprocess.run([str(REPO / "bin" / "anonticket"), "config", "--check"],
                          capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 2
    line = one_line(done.stderr)
    assert "MONERO_RPC_URL" in line and SECRET not in line
    assert "configuration ok" not in done.stdout and SECRET not in done.stdout


# ---------------------------------------------------------------------- the wallet login
@pytest.mark.parametrize("user", ["anon:ymous", "anon\nymous", "\tanon"])
def test_config_check_refuses_a_wallet_user_the_client_would_refuse(
    settings_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], user: str
) -> None:
    settings_env.setenv("MONERO_RPC_USER", user)
    settings_env.setenv("MONERO_RPC_PASSWORD", SECRET)
    assert main(["config", "--check"]) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith("anonticket: configuration error: MONERO_RPC_USER: "), line
    assert SECRET not in line and "ymous" not in line
    assert not client_accepts("http://127.0.0.1:18082", user=user, password=SECRET)


@pytest.mark.parametrize("user", ["anon", "anon ymous", "ànön", "a@b"])
def test_a_wallet_user_config_accepts_the_client_accepts(user: str) -> None:
    assert config_accepts(MONERO_RPC_USER=user, MONERO_RPC_PASSWORD=SECRET)
    assert client_accepts("http://127.0.0.1:18082", user=user, password=SECRET)


# ---------------------------------------------------------------------- secrets never shown
DEFAULTS = Config.from_env({})
SECRET_SETTINGS = [s for s in SETTINGS if s.secret]


def test_the_known_secrets_are_declared_secret() -> None:
    assert {"MONERO_RPC_PASSWORD", "API_INTERNAL_TOKEN"} <= {s.name for s in SECRET_SETTINGS}


@pytest.mark.parametrize("setting", SECRET_SETTINGS, ids=lambda s: s.name)
def test_describe_masks_every_secret_setting(setting: Setting) -> None:
    """Whatever its type or parser: the value is put straight into the Config."""
    config = dataclasses.replace(DEFAULTS, **{setting.attr: SECRET})
    shown = config.describe()
    assert shown[setting.name] == "***"
    assert not [name for name, value in shown.items() if SECRET in value]


TEXT_SETTINGS = [s for s in SETTINGS
                 if not s.secret and isinstance(getattr(DEFAULTS, s.attr), (str, type(None)))]


def test_the_wallet_url_is_a_text_setting() -> None:
    assert "MONERO_RPC_URL" in {s.name for s in TEXT_SETTINGS}


@pytest.mark.parametrize("setting", TEXT_SETTINGS, ids=lambda s: s.name)
def test_describe_never_shows_a_urls_userinfo(setting: Setting) -> None:
    """A ``user:password@`` that slipped past every parser (or a text setting added later
    that holds a URL) is still masked in the start-up log."""
    for text in (f"http://anon:{SECRET}@127.0.0.1:18082", f"postgres://{SECRET}@db/x",
                 f"http://anon:{SECRET}/x@127.0.0.1:1"):
        config = dataclasses.replace(DEFAULTS, **{setting.attr: text})
        shown = config.describe()[setting.name]
        assert SECRET not in shown and "***@" in shown, shown


@pytest.mark.parametrize("setting", TEXT_SETTINGS, ids=lambda s: s.name)
def test_describe_never_shows_a_secret_query_parameter(setting: Setting) -> None:
    """asyncpg takes a password from ``?password=`` as well as from the userinfo (and
    decodes the name first), so the query's secrets are masked too; the rest of it stays
    readable for the operator."""
    for text in (f"postgresql://anonticket@db1,db2/x?target_session_attrs=read-write&password={SECRET}",
                 f"postgresql:///x?host=/run/postgresql&sslpassword={SECRET}#frag",
                 f"postgresql:///x?pass%77ord={SECRET}", f"postgresql:///x?PASSWORD={SECRET}&a=1"):
        config = dataclasses.replace(DEFAULTS, **{setting.attr: text})
        shown = config.describe()[setting.name]
        assert SECRET not in shown, shown
        assert "***" in shown and shown.split("?")[0] == redact_userinfo(text.split("?")[0]), shown
    if setting.name != "WEBHOOK_URL":  # its whole query is masked (a receiver's key)
        plain = "postgresql:///x?target_session_attrs=any"
        assert dataclasses.replace(DEFAULTS, **{setting.attr: plain}).describe()[setting.name] == plain


def test_config_check_masks_a_password_in_the_database_urls_query(
        settings_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"postgresql://anonticket@db1:5432,db2:5432/anonticket?target_session_attrs=read-write&password={SECRET}"
    settings_env.setenv("DATABASE_URL", url)
    assert main(["config", "--check"]) == 0
    out, err = capsys.readouterr()
    assert SECRET not in out + err
    assert ("DATABASE_URL=postgresql://***@db1:5432,db2:5432/anonticket"
            "?target_session_attrs=read-write&password=***\n") in out


def test_config_check_and_listing_show_no_secret(settings_env: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    token = "op-token-" + "7e" * 16
    settings_env.setenv("MONERO_RPC_USER", "anon")
    settings_env.setenv("MONERO_RPC_PASSWORD", SECRET)
    settings_env.setenv("API_INTERNAL_TOKEN", token)
    assert main(["config", "--check"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("configuration ok\n") and err == ""
    assert "MONERO_RPC_PASSWORD=***\n" in out and "API_INTERNAL_TOKEN=***\n" in out
    assert "MONERO_RPC_USER=anon\n" in out
    for args in (["config"], ["config", "--markdown"]):
        assert main(args) == 0
        listing = capsys.readouterr().out
        assert "MONERO_RPC_PASSWORD" in listing
        assert SECRET not in listing and token not in listing
    assert SECRET not in out and token not in out


def test_an_error_in_a_secret_setting_never_quotes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """A parser added later that echoes its input must not put a secret in the error line."""

    def echoing(text: str) -> str:
        raise ValueError(f"{text!r} is too short")

    settings = tuple(dataclasses.replace(s, parse=echoing) if s.name == "MONERO_RPC_PASSWORD" else s
                     for s in SETTINGS)
    monkeypatch.setattr(config_module, "SETTINGS", settings)
    with pytest.raises(config_module.ConfigError) as info:
        Config.from_env({"MONERO_RPC_USER": "anon", "MONERO_RPC_PASSWORD": SECRET})
    assert str(info.value).startswith("MONERO_RPC_PASSWORD: ")
    assert SECRET not in str(info.value)


NUMERIC_SETTINGS = {
    "MONITOR_POLL_INTERVAL_SECS": "5",  # positive seconds
    "API_NEGATIVE_CACHE_TTL_SECS": "0.5",  # zero or positive seconds
    "WEBHOOK_RETRY_SCHEDULE_SECS": "5,300",  # a list of seconds
    "MONITOR_MIN_CONFIRMATIONS": "10",  # a whole number
}


@pytest.mark.parametrize("name", sorted(NUMERIC_SETTINGS))
@pytest.mark.parametrize("written", ["\u0665", "5\u0660", "1_0", "inf", "nan", "1e", ".", "--1"])
def test_a_number_in_a_setting_is_ascii_as_an_operator_writes_it(name: str, written: str) -> None:
    """``float()`` and ``int()`` take other scripts' digits, ``1_0`` and ``inf``: a setting
    means none of them, so each is refused when it is read, like any bad value."""
    value = NUMERIC_SETTINGS[name].replace("5", written, 1) if "5" in NUMERIC_SETTINGS[name] \
        else written
    with pytest.raises(ConfigError, match=f"^{name}: "):
        Config.from_env({name: value})
    Config.from_env({name: NUMERIC_SETTINGS[name]})  # the plain spelling still reads


@pytest.mark.parametrize("written", ["5", "0.25", "1e1", " 2.5 ", "+3", ".5", "5."])
def test_plain_decimal_seconds_still_read(written: str) -> None:
    assert Config.from_env({"MONITOR_POLL_INTERVAL_SECS": written}).monitor_poll_interval_secs \
        == float(written)
