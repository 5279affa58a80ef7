"""The command line's offline tools: pid, address, token derive, db, usage errors, --help.

Most tests call ``main([...])`` in-process; a few run the real ``bin/anonticket``,
which is what users type, to pin exit statuses and the absence of tracebacks.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import sqlite3
from contextlib import closing
import stat
import subprocess
from pathlib import Path

import pytest
import segno
from hypothesis import given
from hypothesis import strategies as st

from anonticket.domain.address import decode_address
from anonticket.cli.parser import build_parser, main
from anonticket.config import SETTINGS
from anonticket.domain.ids import PaymentId
from anonticket.domain.payment_uri import MAX_PICONERO, format_xmr, parse_xmr, payment_uri
from anonticket.storage import SCHEMA_VERSION, Storage
from cli_helpers import BIN, clean_env, command_paths, one_error_line
from conftest import transfer

# the MONERO.md vector, checked against wallet-rpc's make_integrated_address
PRIMARY = ("435CNkaTRD9PHWEbixszvSfaG6UYdSwq7bEwRxJVTcea9Sz2YfppjWDFQBzniXsqhKYZo4FJQf4ZbJeSu9Pu8Wx"
           "L4bpF6az")
VECTOR_PID = "0123456789abcdef"
VECTOR_INTEGRATED = ("4CmsPZPx2UfPHWEbixszvSfaG6UYdSwq7bEwRxJVTcea9Sz2YfppjWDFQBzniXsqhKYZo4FJQf4Z"
                     "bJeSu9Pu8WxL6BnMUc71Dr4Tyd8GuK")
TOKEN = "ab" * 32


@pytest.fixture
def settings_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for setting in SETTINGS:
        monkeypatch.delenv(setting.name, raising=False)
    return monkeypatch


def run_bin(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BIN, *args], capture_output=True, text=True, timeout=60,
                          env=env if env is not None else clean_env())


def pid_new_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, str | None]:
    assert main(["pid", "new", "--json", *args]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    result: dict[str, str | None] = json.loads(out)
    return result


# ---------------------------------------------------------------------- help and usage
COMMANDS = command_paths(build_parser())


def test_the_parser_walk_finds_every_command() -> None:
    expected = {("pid", "new"), ("address", "integrated"), ("address", "decode"),
                ("token", "derive"), ("token", "inspect"), ("token", "revoke"), ("stats",),
                ("db", "backup"), ("db", "check"), ("serve",), ("config",)}
    assert expected <= set(COMMANDS)


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "anonticket")
def test_help_of_every_command_exits_0(path: tuple[str, ...]) -> None:
    done = run_bin(*path, "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: anonticket {' '.join(path)}".rstrip())
    assert done.stderr == ""


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "required" in one_error_line(capsys.readouterr().err)


def test_usage_errors_never_echo_the_argument(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([TOKEN]) == 2  # a token typed where the command goes
    line = one_error_line(capsys.readouterr().err)
    assert TOKEN not in line and "invalid choice" in line and "'token'" in line
    assert main(["token", "inspect", TOKEN, "cd" * 32]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "cd" * 32 not in line and TOKEN not in line and "unrecognized arguments" in line


def test_a_bad_setting_is_exit_2_naming_the_variable(settings_env: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    settings_env.setenv("MONITOR_POLL_INTERVAL_SECS", "soon")
    assert main(["config", "--check"]) == 2
    assert "MONITOR_POLL_INTERVAL_SECS" in one_error_line(capsys.readouterr().err)


def test_real_binary_exit_statuses_and_no_traceback() -> None:
    ok = run_bin("pid", "new", "--json")
    assert ok.returncode == 0 and PaymentId.parse(json.loads(ok.stdout)["pid"]).is_short
    failed = run_bin("address", "decode", "not-an-address")  # length is checked first
    assert failed.returncode == 1
    assert one_error_line(failed.stderr) == (
        "anonticket: address has the wrong length")
    usage = run_bin("pid", "new", "--address", PRIMARY, "--amount", "lots")
    assert usage.returncode == 2 and "--amount" in one_error_line(usage.stderr)
    config = run_bin("stats", env=clean_env(API_INTERNAL_BIND_ADDRESS="nowhere"))
    assert config.returncode == 2 and "API_INTERNAL_BIND_ADDRESS" in one_error_line(config.stderr)


# ---------------------------------------------------------------------- pid new
def test_pid_new_alone_is_a_fresh_short_pid(capsys: pytest.CaptureFixture[str]) -> None:
    first = pid_new_json(capsys)
    second = pid_new_json(capsys)
    assert first["integrated_address"] is None and first["uri"] is None
    assert isinstance(first["pid"], str) and isinstance(second["pid"], str)
    assert PaymentId.parse(first["pid"]).hex() == first["pid"]  # valid, canonical, short
    assert first["pid"] != second["pid"]


def test_pid_new_with_address_embeds_the_same_pid(capsys: pytest.CaptureFixture[str]) -> None:
    result = pid_new_json(capsys, "--address", PRIMARY, "--amount", "0.05")
    integrated = result["integrated_address"]
    assert isinstance(integrated, str) and isinstance(result["pid"], str)
    decoded, primary = decode_address(integrated), decode_address(PRIMARY)
    assert decoded.kind == "integrated" and decoded.network == primary.network
    assert (decoded.spend_key, decoded.view_key) == (primary.spend_key, primary.view_key)
    assert decoded.payment_id is not None and decoded.payment_id.hex() == result["pid"]
    assert result["uri"] == f"monero:{integrated}?tx_amount=0.05"


def test_pid_new_without_amount_has_a_bare_uri(capsys: pytest.CaptureFixture[str]) -> None:
    result = pid_new_json(capsys, "--address", PRIMARY)
    assert result["uri"] == f"monero:{result['integrated_address']}"


def test_pid_new_human_output(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pid", "new", "--address", PRIMARY, "--amount", "1.50"]) == 0
    out = capsys.readouterr().out.splitlines()
    fields = {line[:18].strip(): line[20:] for line in out[:4]}
    assert list(fields) == ["payment id", "integrated address", "payment uri", "amount"]
    pid = PaymentId.parse(fields["payment id"])
    assert decode_address(fields["integrated address"]).payment_id == pid.raw[:8]
    assert fields["payment uri"] == f"monero:{fields['integrated address']}?tx_amount=1.5"
    assert fields["amount"] == "1.5 XMR"
    assert "secret" in out[-1]


@pytest.mark.parametrize("amount, shown", [
    ("0.000000000001", "0.000000000001"), ("1.50", "1.5"), ("2", "2"), ("007.0100", "7.01"),
    ("18446744.073709551615", "18446744.073709551615"),
])
def test_amounts_are_exact_decimals(capsys: pytest.CaptureFixture[str], amount: str, shown: str) -> None:
    result = pid_new_json(capsys, "--address", PRIMARY, "--amount", amount)
    assert isinstance(result["uri"], str) and result["uri"].endswith(f"?tx_amount={shown}")


# Decided: a malformed amount is a usage error (exit 2), like any argument argparse
# checks; a well-formed but refused address or PID is a failed operation (exit 1).
@pytest.mark.parametrize("amount", [
    "0", "0.000", "-1", "+1", "1e-3", "1E3", "abc", "nan", "inf", " 1", "1 ", "1.", ".5", "1,5",
    "0.0000000000001", "18446744.073709551616", "",
])
def test_bad_amounts_are_usage_errors(capsys: pytest.CaptureFixture[str], amount: str) -> None:
    assert main(["pid", "new", "--address", PRIMARY, "--amount", amount]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "argument --amount:" in one_error_line(captured.err)


def test_amount_needs_an_address(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pid", "new", "--amount", "1"]) == 2
    assert "--address" in one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("address, message", [
    (PRIMARY[:-1] + ("a" if PRIMARY[-1] != "a" else "b"), "checksum"),
    (VECTOR_INTEGRATED, "primary address"),
    (PRIMARY[:50], "wrong length"),
])
def test_pid_new_refuses_a_bad_address(capsys: pytest.CaptureFixture[str], address: str,
                                       message: str) -> None:
    assert main(["pid", "new", "--address", address]) == 1
    captured = capsys.readouterr()
    line = one_error_line(captured.err)
    assert message in line and address not in line and captured.out == ""


def test_pid_new_terminal_qr_is_segnos_qr_of_the_pid(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pid", "new", "--qr"]) == 0
    out = capsys.readouterr().out
    pid = out.splitlines()[0].split()[-1]
    expected = io.StringIO()
    segno.make(pid, error="m").terminal(out=expected, compact=True)
    assert expected.getvalue() in out and "█" in expected.getvalue()


def test_pid_new_terminal_qr_holds_the_uri(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pid", "new", "--qr", "--address", PRIMARY, "--amount", "0.1"]) == 0
    out = capsys.readouterr().out
    uri = next(line for line in out.splitlines() if line.startswith("payment uri")).split()[-1]
    expected = io.StringIO()
    segno.make(uri, error="m").terminal(out=expected, compact=True)
    assert expected.getvalue() in out


@pytest.mark.parametrize("name, magic", [("pay.png", b"\x89PNG\r\n\x1a\n"), ("pay.SVG", b"<?xml")])
def test_pid_new_writes_the_qr_file(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                    name: str, magic: bytes) -> None:
    target = tmp_path / name
    result = pid_new_json(capsys, "--address", PRIMARY, "--amount", "0.05", "--qr-out", str(target))
    data = target.read_bytes()
    assert data.startswith(magic) and len(data) > 100
    assert stat.S_IMODE(target.stat().st_mode) == 0o600  # the address inside reveals the PID
    expected = io.BytesIO()
    segno.make(str(result["uri"]), error="m").save(expected, kind=name[-3:].lower(), scale=8)
    assert data == expected.getvalue()


def test_pid_new_qr_out_needs_png_or_svg(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "pay.jpg"
    assert main(["pid", "new", "--qr-out", str(target)]) == 2
    assert ".png or .svg" in one_error_line(capsys.readouterr().err)
    assert not target.exists()


def test_pid_new_qr_out_into_a_missing_directory_fails(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pid", "new", "--qr-out", str(tmp_path / "nope" / "pay.png")]) == 1
    captured = capsys.readouterr()
    assert "cannot write" in one_error_line(captured.err) and captured.out == ""


def test_json_and_terminal_qr_do_not_mix(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pid", "new", "--json", "--qr"]) == 2
    assert "not allowed with" in one_error_line(capsys.readouterr().err)


@given(st.integers(min_value=1, max_value=MAX_PICONERO))
def test_xmr_text_round_trips(piconero: int) -> None:
    text = format_xmr(piconero)
    assert parse_xmr(text) == piconero
    assert "e" not in text.lower() and not text.endswith(".")


def test_payment_uri() -> None:
    assert payment_uri(VECTOR_INTEGRATED) == f"monero:{VECTOR_INTEGRATED}"
    assert payment_uri(VECTOR_INTEGRATED, 10**11) == f"monero:{VECTOR_INTEGRATED}?tx_amount=0.1"


# ---------------------------------------------------------------------- address, token derive
def test_address_integrated_matches_the_wallet_vector(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["address", "integrated", PRIMARY, VECTOR_PID]) == 0
    assert capsys.readouterr().out == VECTOR_INTEGRATED + "\n"


@pytest.mark.parametrize("pid", ["0000000000000000", "0123", "zz23456789abcdef", "01" * 32])
def test_address_integrated_refuses_a_bad_pid(capsys: pytest.CaptureFixture[str], pid: str) -> None:
    assert main(["address", "integrated", PRIMARY, pid]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "payment id" in line and pid not in line


def test_address_decode(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["address", "decode", VECTOR_INTEGRATED]) == 0
    decoded = json.loads(capsys.readouterr().out)
    primary = decode_address(PRIMARY)
    assert decoded == {"network": "mainnet", "kind": "integrated",
                       "public_spend_key": primary.spend_key.hex(),
                       "public_view_key": primary.view_key.hex(), "payment_id": VECTOR_PID,
                       "standard_address": PRIMARY}


def test_address_decode_refuses_a_bad_checksum(capsys: pytest.CaptureFixture[str]) -> None:
    broken = PRIMARY[:10] + ("A" if PRIMARY[10] != "A" else "B") + PRIMARY[11:]
    assert main(["address", "decode", broken]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    line = one_error_line(captured.err)
    assert line.startswith("anonticket: ") and broken not in line


def test_token_derive_vector_still_works(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "derive", VECTOR_PID, "tx1"]) == 0
    assert capsys.readouterr().out.strip() == (
        "369e0f7c09124783e45fa6a6b7588733e362e2917f36fb7036f49284c1952fa9")


@pytest.mark.parametrize("command", ["inspect", "revoke"])
def test_a_malformed_token_fails_before_any_request(settings_env: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str],
                                                    command: str) -> None:
    settings_env.setenv("API_INTERNAL_BIND_ADDRESS", "127.0.0.1:1")  # nothing listens there
    secretish = "ab" * 31  # 62 hex: one byte short
    extra = ["--reason", "x"] if command == "revoke" else []
    assert main(["token", command, secretish, *extra]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert line == "anonticket: token must be 64 hex characters"


@pytest.mark.parametrize("args, word", [
    (["--reason", "x" * 257], "--reason"), (["--reason", "x", "--score", "-1"], "--score"),
    (["--reason", "x", "--score", "1.5"], "--score"), ([], "--reason"),
    (["--reason", "x", "--timeout", "0"], "--timeout"),
])
def test_revoke_argument_errors_are_usage_errors(capsys: pytest.CaptureFixture[str],
                                                 args: list[str], word: str) -> None:
    assert main(["token", "revoke", TOKEN, *args]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert word in line and TOKEN not in line


# ---------------------------------------------------------------------- db check / backup offline
def make_database(path: Path, payments: int = 200) -> None:
    async def fill() -> None:
        store = await Storage.open(path)
        try:
            for start in range(0, payments, 50):
                batch = [transfer(PaymentId.generate(), 5000 + i, 100 + i)
                         for i in range(start, min(start + 50, payments))]
                await store.credit_transfers(batch, 100 + start, 1_700_000_000)
        finally:
            await store.close()

    asyncio.run(fill())


def count_payments(path: Path) -> int:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        (count,) = db.execute("SELECT count(*) FROM payments").fetchone()
    return int(count)


def test_db_check_on_a_good_database(tmp_path: Path, settings_env: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "good.db"
    make_database(db)
    settings_env.setenv("DATABASE_URL", f"sqlite://{db}")
    assert main(["db", "check"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "integrity_check: ok", "ledger (payments = sum of their transfers): ok",
        f"schema version: {SCHEMA_VERSION} (this program: {SCHEMA_VERSION})"]


@pytest.mark.parametrize(("damage", "reported"), [
    # a transfer whose payment row is gone, and a payment that no longer adds up
    ("DELETE FROM payments WHERE pid = (SELECT pid FROM payments LIMIT 1)",
     "1 PIDs have transfers but no payment row"),
    ("UPDATE payments SET amount = amount + 1 WHERE pid = (SELECT pid FROM payments LIMIT 1)",
     "1 payments differ from the sum of their transfers"),
])
def test_db_check_finds_money_that_does_not_add_up(
        tmp_path: Path, settings_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        damage: str, reported: str) -> None:
    db = tmp_path / "damaged.db"
    make_database(db, payments=50)
    with closing(sqlite3.connect(db)) as conn:
        conn.execute(damage)  # what a bug (or a hand edit) could do: no constraint stops it
        conn.commit()
    settings_env.setenv("DATABASE_URL", str(db))
    assert main(["db", "check"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[:3] == ["integrity_check: ok", "ledger (payments = sum of their transfers): WRONG",
                       f"  {reported}"]


def test_db_check_on_a_corrupted_copy_fails(tmp_path: Path, settings_env: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    good, bad = tmp_path / "good.db", tmp_path / "bad.db"
    make_database(good, payments=2000)
    shutil.copyfile(good, bad)
    size = bad.stat().st_size
    assert size > 16 * 4096  # many pages, so the middle is table data, not the header
    with bad.open("r+b") as f:
        f.seek(size // 2)
        f.write(os.urandom(3000))
    settings_env.setenv("DATABASE_URL", str(bad))
    assert main(["db", "check"]) == 1
    captured = capsys.readouterr()
    assert "database" in one_error_line(captured.err)
    settings_env.setenv("DATABASE_URL", str(good))  # the original is untouched and fine
    assert main(["db", "check"]) == 0


def test_db_check_on_a_file_that_is_not_a_database(tmp_path: Path, settings_env: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(os.urandom(8192))
    settings_env.setenv("DATABASE_URL", str(junk))
    assert main(["db", "check"]) == 1
    assert "not a database" in one_error_line(capsys.readouterr().err)


def test_db_check_leaves_another_sqlite_file_as_it_is(tmp_path: Path, settings_env: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    other = tmp_path / "other.db"
    with closing(sqlite3.connect(other)) as db:
        db.execute("CREATE TABLE notes (body TEXT)")
        db.commit()
    settings_env.setenv("DATABASE_URL", str(other))
    assert main(["db", "check"]) == 1  # schema version 0, not ours: reported, not migrated
    assert "schema version: 0" in capsys.readouterr().out
    with closing(sqlite3.connect(other)) as db:
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert tables == {"notes"}


@pytest.mark.parametrize("command", [["db", "check"], ["db", "backup", "out.db"]])
def test_db_commands_never_create_a_database(tmp_path: Path, settings_env: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str],
                                             command: list[str]) -> None:
    missing = tmp_path / "var" / "missing.db"
    settings_env.setenv("DATABASE_URL", str(missing))
    settings_env.chdir(tmp_path)
    assert main(command) == 1
    assert one_error_line(capsys.readouterr().err) == f"anonticket: database not found: {missing}"
    assert not missing.parent.exists() and not (tmp_path / "out.db").exists()


def test_db_backup_copies_and_refuses_to_overwrite(tmp_path: Path, settings_env: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    db, out = tmp_path / "live.db", tmp_path / "backup.db"
    make_database(db, payments=120)
    settings_env.setenv("DATABASE_URL", str(db))
    assert main(["db", "backup", str(out)]) == 0
    assert capsys.readouterr().out == f"backup written to {out}\n"
    assert count_payments(out) == 120
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    make_database(db, payments=30)  # the live database moves on

    assert main(["db", "backup", str(out)]) == 1
    assert "--force" in one_error_line(capsys.readouterr().err)
    assert count_payments(out) == 120  # untouched
    assert main(["db", "backup", "--force", str(out)]) == 0
    assert capsys.readouterr().out == f"backup written to {out}\n"
    assert count_payments(out) == 150
    settings_env.setenv("DATABASE_URL", str(out))  # the copy passes the check too
    assert main(["db", "check"]) == 0
    assert capsys.readouterr().out.startswith("integrity_check: ok\n")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_db_backup_refuses_the_live_database_and_directories(
        tmp_path: Path, settings_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "live.db"
    make_database(db, payments=10)
    settings_env.setenv("DATABASE_URL", str(db))
    for target in (str(db), str(tmp_path / "." / "live.db"), f"{db}-wal"):
        assert main(["db", "backup", "--force", target]) == 1
        assert "live database" in one_error_line(capsys.readouterr().err)
    assert main(["db", "backup", str(tmp_path)]) == 1
    assert "directory" in one_error_line(capsys.readouterr().err)
    assert main(["db", "backup", str(tmp_path / "nope" / "b.db")]) == 1
    assert "cannot write" in one_error_line(capsys.readouterr().err)
    assert count_payments(db) == 10


def test_serve_start_up_failures_are_one_line_not_a_traceback(tmp_path: Path) -> None:
    taken = tmp_path / "public.sock"
    taken.write_text("not a socket")
    env = clean_env(DATABASE_URL=str(tmp_path / "a.db"), API_UNIX_SOCKET=str(taken),
                    API_INTERNAL_BIND_ADDRESS="127.0.0.1:0", MONITOR_ENABLED="false")
    done = run_bin("serve", env=env)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.splitlines()[-1] == (
        f"anonticket: {taken} exists and is not a socket; refusing to replace it")
    assert taken.read_text() == "not a socket"
