"""``bin/anonticket sandbox``: the real binary, the real chain, the commands it prints.

The flow test starts the sandbox as a developer would, reads what it prints, and runs
exactly the printed commands (curl, ``sandbox pay``, ``sandbox mine``, ``token revoke``
after sourcing sandbox.env) in a shell; then Ctrl-C must leave nothing running.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from anonticket.config import SETTINGS
from anonticket.domain.ids import PaymentId, Receipt, derive_receipt_token, derive_service_token
from anonticket.domain.address import make_integrated_address
from anonticket.regtest import MERCHANT_KEYS, PAYER_KEYS, RegtestError, RegtestNetwork, RpcError
from anonticket.regtest.process import pid_alive
from anonticket.regtest.record import ENV_FORMAT, write_state
from anonticket.cli.sandbox import (
    ENV_FILE,
    READY,
    TUNABLE_DEFAULTS,
    Ready,
    banner,
    owned_settings,
    program_name,
    until_stopped,
    sandbox_settings,
    write_env_file,
)
from conftest import REPO
from page_helpers import Page, parse_page

BIN = str(REPO / "bin" / "anonticket")
XMR = 10**12
CONFIRMATIONS = 2  # the flow is the same at 10; 2 keeps the test short
START_DEADLINE = 240.0  # mining 100 blocks takes 15-45 s, more on a loaded machine
_PROXIES = {"http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"}


def clean_env(**extra: str) -> dict[str, str]:
    """No anonticket setting and no proxy from the caller: whatever the commands need
    must come from the sandbox itself (its flags, sandbox.env)."""
    names = {s.name for s in SETTINGS} | _PROXIES
    env = {k: v for k, v in os.environ.items() if k not in names}
    env.update(extra)
    return env


def one_error_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def sandbox_dir() -> Iterator[Path]:
    """Short and outside the checkout, like a developer's --dir."""
    path = Path(tempfile.mkdtemp(prefix="sbx-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def processes_naming(directory: Path) -> list[int]:
    """Every process whose command line names DIRECTORY (monerod, wallets, watchdog, the sandbox)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if any(str(directory) in arg for arg in argv) and pid_alive(int(proc.name)):
            found.append(int(proc.name))
    return found


def assert_nothing_names(directory: Path, timeout: float = 15.0) -> None:
    """Poll to a deadline until no process names DIRECTORY. The sandbox stops and reaps
    its children before it exits (since issue 20 also one whose spawn the SIGTERM cut
    short: a watchdog forked but never recorded used to stop itself only a moment after
    the sandbox had exited, and one look caught it). A process the kernel is still
    tearing down can show for a moment too; one that stays is still caught."""
    deadline = time.monotonic() + timeout
    while (left := processes_naming(directory)):
        assert time.monotonic() < deadline, f"still running after {timeout}s: {left}"
        time.sleep(0.05)


def listening_addresses(pid: int) -> set[str]:
    """host:port of every TCP socket PID listens on, from /proc (no ss/netstat needed)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with_target = os.readlink(fd) if fd.is_symlink() else ""
        if with_target.startswith("socket:["):
            inodes.add(with_target[8:-1])
    found = set()
    for table, width in (("tcp", 8), ("tcp6", 32)):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] == "0A" and cols[9] in inodes:  # 0A: LISTEN
                host_hex, port_hex = cols[1].split(":")
                assert len(host_hex) == width
                host = ".".join(str(int(host_hex[i:i + 2], 16)) for i in (6, 4, 2, 0)) if width == 8 else host_hex
                found.add(f"{host}:{int(port_hex, 16)}")
    return found


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is not a listener
        try:
            s.bind(("127.0.0.1", port))
            s.listen()
        except OSError:
            return False
    return True


@dataclass
class Banner:
    rows: dict[str, str] = field(default_factory=dict)
    steps: list[list[str]] = field(default_factory=list)  # each step's commands, in order
    lines: list[str] = field(default_factory=list)


def parse_banner(lines: list[str]) -> Banner:
    banner = Banner(lines=lines)
    for line in lines:
        if re.match(r"  \d+\. ", line):
            banner.steps.append([])
        elif line.startswith("     $ "):
            banner.steps[-1].append(line[len("     $ "):])
        elif (row := re.match(r"  (\S.*?)  +(\S.*)$", line)) and not banner.steps:
            banner.rows[row.group(1)] = row.group(2)
    return banner


class Sandbox:
    """The real ``bin/anonticket sandbox`` as a subprocess, stdout read by a thread so
    waiting for "ready" has a deadline."""

    def __init__(self, directory: Path, **env: str) -> None:
        self.directory = directory
        self.stderr_path = directory / "test-stderr.log"  # removed with the directory
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen([BIN, "sandbox", "--dir", str(directory)], cwd=REPO, text=True,
                                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
                                         env=clean_env(**env))
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait_ready(self, timeout: float) -> Banner:
        deadline = time.monotonic() + timeout
        seen: list[str] = []
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no '{READY}' within {timeout}s; stderr:\n{self.stderr()[-3000:]}") from None
            if line is None:
                raise AssertionError(f"the sandbox exited ({self.proc.wait()}) before it was ready; "
                                     f"stdout:\n" + "\n".join(seen) + f"\nstderr:\n{self.stderr()[-3000:]}")
            seen.append(line)
            if line.startswith(READY):
                return parse_banner(seen)

    def close(self) -> None:
        """Teardown of a failed test: stop it, and the chain if it outlived it."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        try:
            RegtestNetwork.attach(self.directory / "chain").stop()
        except RegtestError:
            pass


def checkout_page(url: str, form: dict[str, str]) -> Page:
    """POST a form as a browser would (no proxy from the environment)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(urllib.request.Request(url, urllib.parse.urlencode(form).encode()), timeout=30) as resp:
        return parse_page(resp.read().decode())


def shell(commands: list[str], token: str = "") -> subprocess.CompletedProcess[str]:
    """One step's printed commands, in one shell, as a developer pastes them."""
    script = "set -e\n" + "\n".join(c.replace("TOKEN", token) for c in commands) + "\n"
    return subprocess.run(["sh", "-c", script], cwd=REPO, env=clean_env(), capture_output=True, text=True,
                          timeout=120)


def answers(output: str) -> list[dict[str, Any]]:
    """The JSON documents in a step's output, one after the other."""
    decoder, found, text = json.JSONDecoder(), [], output.strip()
    while text:
        value, end = decoder.raw_decode(text)
        found.append(value)
        text = text[end:].strip()
    return found


def poll(commands: list[str], want: str, allowed: set[str], timeout: float = 60.0) -> dict[str, Any]:
    """Run a redeem until it answers status ``want``; ``allowed`` are the answers on the way."""
    deadline = time.monotonic() + timeout
    seen = []
    while True:
        done = shell(commands)
        assert done.returncode == 0, done.stderr
        (answer,) = answers(done.stdout)
        outcome = answer.get("status") or answer.get("error")
        if outcome == want:
            return answer
        assert outcome in allowed, answer
        seen.append(outcome)
        if time.monotonic() > deadline:
            raise AssertionError(f"redeem never answered {want}; answers: {seen[-5:]}")
        time.sleep(0.1)


@pytest.mark.regtest
def test_the_printed_flow_works_and_ctrl_c_leaves_nothing(sandbox_dir: Path) -> None:
    sandbox = Sandbox(sandbox_dir, MONITOR_MIN_CONFIRMATIONS=str(CONFIRMATIONS), MONITOR_POLL_INTERVAL_SECS="0.2")
    try:
        banner = sandbox.wait_ready(START_DEADLINE)
        rows, steps = banner.rows, banner.steps
        receipt, pid = Receipt.parse(rows["example receipt"]), rows["its payment id"]
        assert PaymentId.parse(pid) == receipt.pid  # the printed flow pays the receipt's PID
        assert rows["merchant address"] == MERCHANT_KEYS.address
        assert rows["confirmations"].startswith(f"{CONFIRMATIONS} ")
        assert len(steps) == 7 and all(steps)

        state = json.loads((sandbox_dir / "chain" / "env.json").read_text())
        pids = state["pids"]
        assert set(pids) == {"monerod", "merchant", "payer", "watchdog"}
        net = RegtestNetwork.attach(sandbox_dir / "chain")
        # the integrated address shown is the wallet's own, and the wallet cannot spend
        assert net.merchant_rpc("make_integrated_address", {"payment_id": pid})["integrated_address"] \
            == rows["integrated address"]
        with pytest.raises(RpcError):
            net.merchant_rpc("query_key", {"key_type": "spend_key"})
        assert rows["merchant wallet"].startswith(net.merchant_url + " ")
        # the service's database is the sandbox's own
        assert (sandbox_dir / "sandbox.db").is_file()
        # loopback only: every listener of the sandbox and of each chain process
        listeners = {name: listening_addresses(pid_) for name, pid_ in
                     [("sandbox", sandbox.proc.pid)] + [(n, pids[n]) for n in ("monerod", "merchant", "payer")]}
        public = rows["public listener"].removeprefix("http://")
        internal = rows["internal listener"].split()[0].removeprefix("http://")
        assert {public, internal} == listeners["sandbox"] and all(listeners.values()), listeners
        assert all(addr.startswith("127.0.0.1:") for addrs in listeners.values() for addr in addrs), listeners

        # the checkout it prints sells against the merchant wallet's own address (read from it)
        checkout = rows["checkout"].split()[0]
        assert checkout == rows["public listener"] + "/pay"
        page = checkout_page(checkout, {"offer": TUNABLE_DEFAULTS["MONITOR_MIN_PAYMENT_AMOUNT"]})
        sold = Receipt.parse(page.field("receipt")).pid.hex()
        assert net.merchant_rpc("make_integrated_address", {"payment_id": sold})["integrated_address"] \
            == page.field("address")
        assert page.field("amount") == "0.001"
        # what the banner tells a browser customer: `sandbox pay <its address> <its amount>`
        bought = subprocess.run([BIN, "sandbox", "pay", page.field("address"), "0.001", "--dir",
                                 str(sandbox_dir)], cwd=REPO, env=clean_env(), capture_output=True,
                                text=True, timeout=120)
        assert bought.returncode == 0, bought.stderr
        assert json.loads(bought.stdout)["amount"] == XMR // 1000
        someone_else = make_integrated_address(PAYER_KEYS.address, pid)
        foreign = subprocess.run([BIN, "sandbox", "pay", someone_else, "0.001", "--dir",
                                  str(sandbox_dir)], cwd=REPO, env=clean_env(), capture_output=True,
                                 text=True, timeout=60)
        assert foreign.returncode == 1 and foreign.stdout == ""
        assert "not an integrated address of this sandbox's merchant" in one_error_line(foreign.stderr)

        # a second sandbox in the same directory is refused at once, touching nothing
        second = subprocess.run([BIN, "sandbox", "--dir", str(sandbox_dir)], cwd=REPO, env=clean_env(),
                                capture_output=True, text=True, timeout=60)
        assert second.returncode == 1
        assert "already running" in one_error_line(second.stderr)

        # 1. pay
        paid_run = shell(steps[0])
        assert paid_run.returncode == 0, paid_run.stderr
        assert len(paid_run.stdout.splitlines()) == 1
        paid = json.loads(paid_run.stdout)
        assert paid["amount"] == XMR // 2 and paid["fee"] > 0 and len(paid["txid"]) == 64
        # 2. pending, 0 confirmations
        pending = poll(steps[1], "pending", {"payment_not_found"})
        assert pending == {"status": "pending", "confirmations": 0, "required": CONFIRMATIONS}
        # 3. mine exactly the printed number of blocks
        mined_run = shell(steps[2])
        assert mined_run.returncode == 0, mined_run.stderr
        assert json.loads(mined_run.stdout) == {"mined": CONFIRMATIONS, "height": paid["height"] + CONFIRMATIONS}
        # 4. success, with the token the receipt and the payment derive
        token = derive_receipt_token(receipt.raw, bytes.fromhex(paid["txid"])).hex()
        assert token != derive_service_token(PaymentId.parse(pid), paid["txid"]).hex()
        success = poll(steps[3], "success", {"pending"})
        assert success == {"status": "success", "service_token": token, "balance": XMR // 2,
                           "remaining": XMR // 2, "expires_at": None}
        assert answers(shell(steps[3]).stdout)[0]["status"] == "already_claimed"
        # 5. the bare payment id: 404, the very answer an unknown PID gets
        (bare,) = answers(shell(steps[4]).stdout)
        (unknown,) = answers(shell([steps[4][0].replace(pid, PaymentId.generate().hex())]).stdout)
        assert bare == unknown and bare["error"] == "payment_not_found"
        # 6. introspect
        (active,) = answers(shell(steps[5], token).stdout)
        assert active["status"] == "active" and active["amount"] == XMR // 2
        # 7. revoke through the CLI with sandbox.env, then introspect again
        revoked_run = shell(steps[6], token)
        assert revoked_run.returncode == 0, revoked_run.stderr
        revoked, introspected = answers(revoked_run.stdout)
        assert revoked["status"] == "revoked" and revoked["revoke_reason"] == "test"
        assert introspected["status"] == "revoked"
        # sandbox.env is enough for stats too
        stats = shell([steps[6][0], "bin/anonticket stats --json"])
        assert stats.returncode == 0, stats.stderr
        assert json.loads(stats.stdout)["tokens_revoked"] == 1

        # Ctrl-C: exit 0, nothing left running, every port released
        chain_ports = [int(state[key].rsplit(":", 1)[1]) for key in ("daemon_url", "merchant_url", "payer_url")]
        sandbox.proc.send_signal(signal.SIGINT)
        assert sandbox.proc.wait(timeout=120) == 0, sandbox.stderr()[-3000:]
        assert not [name for name, pid_ in pids.items() if pid_alive(pid_)]
        assert_nothing_names(sandbox_dir)
        ports = [int(public.rsplit(":", 1)[1]), int(internal.rsplit(":", 1)[1]), *chain_ports]
        assert all(port_is_free(port) for port in ports)
        assert not (sandbox_dir / ENV_FILE).exists()
        assert json.loads((sandbox_dir / "chain" / "env.json").read_text())["stopped"]
        assert "Traceback" not in sandbox.stderr()
        logged = sandbox.stderr()  # logs stay secret-free
        assert pid not in logged and token not in logged and receipt.hex() not in logged

        # and once stopped, pay says so in one line
        late = subprocess.run([BIN, "sandbox", "pay", pid, "0.1", "--dir", str(sandbox_dir)], cwd=REPO,
                              env=clean_env(), capture_output=True, text=True, timeout=60)
        assert late.returncode == 1 and "no sandbox is running" in one_error_line(late.stderr)
    finally:
        sandbox.close()


@pytest.mark.regtest
def test_sigterm_while_the_chain_starts_stops_what_was_started(sandbox_dir: Path) -> None:
    sandbox = Sandbox(sandbox_dir)
    try:
        env_json = sandbox_dir / "chain" / "env.json"
        deadline = time.monotonic() + 60
        while not (env_json.exists() and json.loads(env_json.read_text()).get("pids")):
            assert time.monotonic() < deadline, sandbox.stderr()
            assert sandbox.proc.poll() is None, sandbox.stderr()
            time.sleep(0.05)
        pids = json.loads(env_json.read_text())["pids"]
        sandbox.proc.send_signal(signal.SIGTERM)
        assert sandbox.proc.wait(timeout=120) == 1
        line = [ln for ln in sandbox.stderr().splitlines() if ln.startswith("anonticket: ")]
        assert line == ["anonticket: interrupted while starting the chain; nothing was left running"]
        assert "Traceback" not in sandbox.stderr()
        assert not [name for name, pid_ in pids.items() if pid_alive(pid_)]
        assert_nothing_names(sandbox_dir)
    finally:
        sandbox.close()


@pytest.mark.parametrize("action", [["pay", "0123456789abcdef", "0.5"], ["mine", "3"]])
def test_pay_and_mine_without_a_sandbox_fail_in_one_line(sandbox_dir: Path, action: list[str]) -> None:
    done = subprocess.run([BIN, "sandbox", *action, "--dir", str(sandbox_dir)], cwd=REPO, env=clean_env(),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and done.stdout == ""
    line = one_error_line(done.stderr)
    assert line.startswith(f"anonticket: no sandbox is running in {sandbox_dir} ")
    assert f"sandbox --dir {sandbox_dir}" in line
    assert "0123456789abcdef" not in line


@pytest.mark.parametrize("args", [["pay", "not-a-pid", "0.5"], ["pay", "0123456789abcdef", "lots"],
                                  ["mine", "0"], ["mine", "many"], ["--public-port", "70000"]])
def test_bad_arguments_are_usage_errors(sandbox_dir: Path, args: list[str]) -> None:
    done = subprocess.run([BIN, "sandbox", "--dir", str(sandbox_dir), *args], cwd=REPO, env=clean_env(),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "not-a-pid" not in one_error_line(done.stderr)
    assert list(sandbox_dir.iterdir()) == []


def test_a_bad_setting_stops_before_any_chain_starts(sandbox_dir: Path) -> None:
    done = subprocess.run([BIN, "sandbox", "--dir", str(sandbox_dir)], cwd=REPO, timeout=60,
                          env=clean_env(MONITOR_MIN_CONFIRMATIONS="0"), capture_output=True, text=True)
    assert done.returncode == 2
    assert "MONITOR_MIN_CONFIRMATIONS" in one_error_line(done.stderr)
    assert list(sandbox_dir.iterdir()) == []


def test_the_environment_tunes_but_never_rewires(tmp_path: Path) -> None:
    owned = owned_settings(tmp_path, "http://127.0.0.1:5555", 123, "127.0.0.1:0", "127.0.0.1:0")
    production = {"DATABASE_URL": "/var/lib/anonticket/anonticket.db", "MONERO_RPC_URL": "http://127.0.0.1:18082",
                  "MONERO_RPC_USER": "anonticket", "MONERO_RPC_PASSWORD": "pw", "API_INTERNAL_TOKEN": "secret",
                  "API_UNIX_SOCKET": "/run/anonticket/public.sock", "MONITOR_START_HEIGHT": "3000000",
                  "MONITOR_MIN_CONFIRMATIONS": "3", "LOG_LEVEL": "WARNING"}
    settings = sandbox_settings(production, owned)
    assert list(settings) == [s.name for s in SETTINGS]
    assert settings["DATABASE_URL"] == str(tmp_path / "sandbox.db")
    assert settings["MONERO_RPC_URL"] == "http://127.0.0.1:5555" and settings["MONITOR_START_HEIGHT"] == "123"
    assert settings["MONERO_RPC_USER"] == settings["MONERO_RPC_PASSWORD"] == settings["API_INTERNAL_TOKEN"] == ""
    assert settings["API_UNIX_SOCKET"] == ""
    assert settings["MONITOR_MIN_CONFIRMATIONS"] == "3" and settings["LOG_LEVEL"] == "WARNING"
    defaults = sandbox_settings({}, owned)
    assert defaults["MONITOR_MIN_CONFIRMATIONS"] == "10" and defaults["MONITOR_POLL_INTERVAL_SECS"] == "1"
    assert defaults["MONITOR_MIN_PAYMENT_AMOUNT"] == TUNABLE_DEFAULTS["MONITOR_MIN_PAYMENT_AMOUNT"]


def test_sandbox_env_sourced_by_sh_overrides_a_stale_shell(tmp_path: Path) -> None:
    directory = tmp_path / "dir with space"
    directory.mkdir()
    values = sandbox_settings({}, owned_settings(directory, "http://127.0.0.1:5555", 7, "127.0.0.1:1", "127.0.0.1:2"))
    path = directory / ENV_FILE
    write_env_file(path, values)
    stale = clean_env(API_INTERNAL_TOKEN="production-token", API_INTERNAL_UNIX_SOCKET="/run/x.sock")
    done = subprocess.run(["sh", "-c", 'set -a; . "$1"; set +a; env -0', "sh", str(path)], env=stale,
                          capture_output=True, text=True, timeout=30, check=True)
    seen = dict(item.split("=", 1) for item in done.stdout.split("\0") if "=" in item)
    assert {name: seen.get(name) for name in values} == values


def test_missing_monero_binaries_fail_in_one_line(sandbox_dir: Path, tmp_path: Path) -> None:
    done = subprocess.run([BIN, "sandbox", "--dir", str(sandbox_dir)], cwd=REPO, timeout=60,
                          env=clean_env(MONERO_BIN_DIR=str(tmp_path)), capture_output=True, text=True)
    assert done.returncode == 1 and done.stdout == ""
    line = one_error_line(done.stderr)
    assert line.startswith("anonticket: the regtest chain did not start: ") and "monerod" in line


async def test_the_sandbox_notices_a_chain_that_died(tmp_path: Path) -> None:
    """The wait loop reports a chain whose processes are gone, and only then."""
    net: Any = SimpleNamespace(directory=tmp_path)
    alive = [subprocess.Popen(["sh", "-c", "sleep 60", str(tmp_path)]) for _ in range(3)]
    try:
        state = {"format": ENV_FORMAT, "directory": str(tmp_path), "stopped": None,
                 "pids": dict(zip(("monerod", "merchant", "payer"), (p.pid for p in alive)))}
        write_state(tmp_path, state)
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(2.5, stop.set)  # two chain checks pass first
        assert await asyncio.wait_for(until_stopped(stop, net), 10) is False
        alive[1].kill()
        alive[1].wait()
        started = time.monotonic()
        assert await asyncio.wait_for(until_stopped(asyncio.Event(), net), 10) is True
        assert time.monotonic() - started < 3
    finally:
        for proc in alive:
            proc.kill()
            proc.wait()


def test_the_readme_shows_what_the_sandbox_prints() -> None:
    ready = Ready(Path("/home/you/anonticket/var/sandbox"), "bin/anonticket", "", "http://127.0.0.1:PORT",
                  "http://127.0.0.1:PORT2", "http://127.0.0.1:PORT3", MERCHANT_KEYS.address, 101, 10,
                  "RECEIPT", "PID", "INTEGRATED")
    printed = banner(ready) + "\n"
    for page in (REPO / "README.md", REPO / "docs" / "operations.md"):
        text = page.read_text()
        (shown,) = [block.split("```", 1)[0] for block in text.split("```\n  1. ")[1:]]
        assert "  1. " + shown in printed, page
        assert re.search(r"bin/setup && bin/anonticket sandbox\b", text), page


def test_the_printed_program_is_this_checkouts_bin_anonticket(tmp_path: Path) -> None:
    """What the banner tells a developer to run: relative from the checkout's root, absolute
    elsewhere (the regtest test above runs it; this one needs no chain)."""
    assert program_name(REPO) == "bin/anonticket"
    assert program_name(tmp_path) == str(REPO / "bin" / "anonticket")
