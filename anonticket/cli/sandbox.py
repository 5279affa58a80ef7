"""``anonticket sandbox``: the whole payment flow on one machine, in one command.

A developer integrating anonticket needs a chain that confirms on demand, a wallet
that pays like a customer's, and the service watching a watch-only wallet as in
production. The chain is ``anonticket.regtest``, the very network the test suite
runs against, so the sandbox and the tests cannot drift apart. The service runs in
this process (``start_service``): Ctrl-C then has one order to follow, the service
first, then the wallets and monerod. The chain's watchdog stops it should this
process be killed without a chance to clean up.

DIR holds ``chain/`` (regtest's env.json, wallets, monerod's data), ``sandbox.db``
and ``sandbox.env``. ``sandbox pay`` and ``sandbox mine`` find the running chain
through ``chain/env.json``, from any process. The receipt, payment id, token and txid
this prints belong to a throw-away chain: showing them is the point here.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import shlex
import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from anonticket.domain.address import AddressError, decode_address, make_integrated_address
from anonticket.config import SETTINGS, Config
from anonticket.domain.ids import Receipt
from anonticket.regtest import RegtestError, RegtestNetwork, ensure_monero_installed
from anonticket.regtest.actions import wait_until_minable
from anonticket.regtest.record import load_state, running

log = logging.getLogger("anonticket.sandbox")

DEFAULT_DIR = "var/sandbox"
CHAIN_DIR = "chain"
DB_FILE = "sandbox.db"
ENV_FILE = "sandbox.env"
READY = "sandbox ready"
HOST = "127.0.0.1"
EXAMPLE_XMR = "0.5"
# Settings the environment may override (MONITOR_MIN_CONFIRMATIONS=2 walks the flow
# faster); every setting not named here or in owned_settings() keeps the service's default.
TUNABLE_DEFAULTS = {
    "MONITOR_POLL_INTERVAL_SECS": "1",  # a payment shows as pending about a second after `pay`
    "MONITOR_MIN_CONFIRMATIONS": "10",  # as in production, so the walk shows the real wait
    "MONITOR_MIN_PAYMENT_AMOUNT": "1000000000",  # 0.001 XMR
}
_CHAIN_CHECK_SECS = 1.0
_MAX_MINE = 10_000
_PID16 = re.compile(r"[0-9a-fA-F]{16}")


class SandboxError(Exception):
    """An expected failure, printed as one line with exit status 1."""


# ---------------------------------------------------------------------- settings
def owned_settings(directory: Path, merchant_url: str, start_height: int, public: str,
                   internal: str) -> dict[str, str]:
    """Wiring the environment never overrides: a production env file sourced in the same
    shell must not point the sandbox at the real database, wallet or admin token."""
    return {
        "DATABASE_URL": str(directory / DB_FILE),
        "API_BIND_ADDRESS": public, "API_UNIX_SOCKET": "",
        "API_INTERNAL_BIND_ADDRESS": internal, "API_INTERNAL_UNIX_SOCKET": "", "API_INTERNAL_TOKEN": "",
        "MONERO_RPC_URL": merchant_url, "MONERO_RPC_USER": "", "MONERO_RPC_PASSWORD": "",
        "MONITOR_ENABLED": "true", "MONITOR_START_HEIGHT": str(start_height),
        # the checkout asks the merchant wallet for its address; regtest uses mainnet's
        "MERCHANT_ADDRESS": "", "MONERO_NETWORK": "mainnet",
    }


def sandbox_settings(environ: Mapping[str, str], owned: Mapping[str, str]) -> dict[str, str]:
    """Every setting as text, in declaration order: what the service runs with and what
    sandbox.env records (empty values included, so sourcing it overrides a stale shell)."""
    return {s.name: owned[s.name] if s.name in owned
            else environ.get(s.name, TUNABLE_DEFAULTS.get(s.name, s.default)) for s in SETTINGS}


def write_env_file(path: Path, values: Mapping[str, str]) -> None:
    """Shell syntax for ``set -a; . sandbox.env; set +a``; replaced atomically."""
    lines = [f"# Written by `anonticket sandbox` (pid {os.getpid()}) and removed when it stops.",
             f"# Load it into a shell with: set -a; . {shlex.quote(str(path))}; set +a"]
    lines += [f"{name}={shlex.quote(value)}" for name, value in values.items()]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)


# ---------------------------------------------------------------------- what to run next
@dataclass(frozen=True)
class Ready:
    directory: Path
    program: str  # how to run this command line from the current directory
    dir_option: str  # "" or " --dir DIR"
    public_url: str
    internal_url: str
    merchant_url: str
    merchant_address: str
    height: int
    confirmations: int
    receipt: str  # the example payment's secret; pid derives from it
    pid: str
    integrated_address: str

    @property
    def env_file(self) -> Path:
        return self.directory / ENV_FILE


def flow(r: Ready) -> list[tuple[str, list[str]]]:
    """The walk through the payment flow, step by step; TOKEN stands for the token that
    step 4 answers. tests/cli/test_sandbox.py runs exactly these commands."""
    redeem = f"curl -s -w '\\n' {r.public_url}/api/v1/redeem -d '{{\"receipt\":\"{r.receipt}\"}}'"
    bare = f"curl -s -w '\\n' {r.public_url}/api/v1/redeem -d '{{\"pid\":\"{r.pid}\"}}'"
    introspect = f"curl -s -w '\\n' {r.public_url}/api/v1/token/TOKEN"
    n = r.confirmations
    return [
        (f"pay {EXAMPLE_XMR} XMR to the example receipt's payment id, as the customer's wallet would",
         [f"{r.program} sandbox pay {r.pid} {EXAMPLE_XMR}{r.dir_option}"]),
        (f"redeem with the receipt: 202 pending with 0 of {n} confirmations (404 until the "
         "monitor's next poll)", [redeem]),
        (f"mine {n} blocks, so the payment has {n} confirmations", [f"{r.program} sandbox mine {n}{r.dir_option}"]),
        ("redeem again: 200 success with the service_token, TOKEN below (a retry: already_claimed)", [redeem]),
        ("the payment id alone (what the payer's wallet saw) claims nothing: 404, as for a "
         "payment nobody made", [bare]),
        ("introspect the token, as the operator's other services do", [introspect]),
        ("revoke it as the operator, through the internal listener that sandbox.env names",
         [f"set -a; . {shlex.quote(str(r.env_file))}; set +a",
          f"{r.program} token revoke TOKEN --reason test", introspect]),
    ]


def banner(r: Ready) -> str:
    rows = [("directory", str(r.directory)), ("public listener", r.public_url),
            ("checkout", f"{r.public_url}/pay (open it in a browser)"),
            ("internal listener", f"{r.internal_url} (/metrics, admin routes)"),
            ("merchant wallet", f"{r.merchant_url} (watch-only monero-wallet-rpc)"),
            ("merchant address", r.merchant_address), ("chain height", str(r.height)),
            ("confirmations", f"{r.confirmations} (MONITOR_MIN_CONFIRMATIONS)"),
            ("settings", f"{r.env_file} (for token inspect/revoke and stats)"),
            ("example receipt", r.receipt), ("its payment id", r.pid),
            ("integrated address", r.integrated_address)]
    width = max(len(label) for label, _ in rows)
    lines = ["anonticket sandbox: a private regtest Monero chain and the service watching it", ""]
    lines += [f"  {label:<{width}}  {value}" for label, value in rows]
    lines += ["", "Walk the payment flow from another terminal, in this directory:"]
    for number, (what, commands) in enumerate(flow(r), 1):
        lines.append(f"  {number}. {what}")
        lines += [f"     $ {command}" for command in commands]
    lines += ["", f"Or as a customer, in a browser: open {r.public_url}/pay, create a payment, pay the "
              "address it shows with",
              f"  $ {r.program} sandbox pay <its address> <its amount>{r.dir_option}",
              f"then check the payment, mine with `{r.program} sandbox mine {r.confirmations}{r.dir_option}`"
              " and get the access token."]
    lines += ["", f"{READY} (pid {os.getpid()}); Ctrl-C stops the service, both wallets and monerod."]
    return "\n".join(lines)


def program_name(cwd: Path) -> str:
    """``bin/anonticket`` from a checkout's root, its absolute path elsewhere, or the
    installed console script."""
    script = Path(__file__).resolve().parents[2] / "bin" / "anonticket"
    if not script.is_file():
        return "anonticket"
    try:
        return str(script.relative_to(cwd.resolve()))
    except ValueError:
        return str(script)


# ---------------------------------------------------------------------- sandbox
def run_sandbox(directory: Path, *, public_port: int = 0, internal_port: int = 0, dir_option: str = "",
                environ: Mapping[str, str] = os.environ, out: TextIO = sys.stdout) -> int:
    """Start everything, print what to run next, serve until SIGINT/SIGTERM, stop everything."""
    directory = directory.resolve()
    public, internal = f"{HOST}:{public_port}", f"{HOST}:{internal_port}"
    # a bad setting fails now, not after the chain has been mined
    placeholder = owned_settings(directory, f"http://{HOST}:1", 0, public, internal)
    config = Config.from_env(sandbox_settings(environ, placeholder))
    logging.basicConfig(level=config.log_level, format="%(asctime)sZ %(levelname)s %(name)s %(message)s",
                        datefmt="%Y-%m-%dT%H:%M:%S", stream=sys.stderr, force=True)
    logging.Formatter.converter = time.gmtime
    with contextlib.suppress(RegtestError):
        RegtestNetwork.attach(directory / CHAIN_DIR)
        raise SandboxError(f"a sandbox is already running in {directory}: stop it first (Ctrl-C in its terminal)")
    directory.mkdir(parents=True, exist_ok=True)
    with _sigterm_interrupts():
        try:
            ensure_monero_installed()
            net = RegtestNetwork.start(directory / CHAIN_DIR, view_only=True, owner_pid=os.getpid())
        except KeyboardInterrupt:
            raise SandboxError("interrupted while starting the chain; nothing was left running") from None
        except RegtestError as exc:
            raise SandboxError(f"the regtest chain did not start: {_first_line(exc)} "
                               f"(logs under {directory / CHAIN_DIR})") from None
        try:
            for suffix in ("", "-wal", "-shm"):  # the old database's payments were on a chain that is gone
                (directory / (DB_FILE + suffix)).unlink(missing_ok=True)
            owned = owned_settings(directory, net.merchant_url, net.start_height, public, internal)
            settings = sandbox_settings(environ, owned)
            return asyncio.run(_serve(net, Config.from_env(settings), settings, dir_option, out))
        except KeyboardInterrupt:  # before the service's own signal handlers were in place
            return 0
        finally:
            with _signals_ignored():  # a second Ctrl-C must not leave monerod behind
                log.info("stopping the wallets and monerod")
                net.stop()
                (directory / ENV_FILE).unlink(missing_ok=True)
            log.info("sandbox stopped")


async def _serve(net: RegtestNetwork, config: Config, settings: dict[str, str], dir_option: str,
                 out: TextIO) -> int:
    from anonticket.service.app import start_service  # aiohttp: only for the command that serves

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        service = await start_service(config)
    except OSError as exc:  # a --public-port / --internal-port already in use
        raise SandboxError(f"the service could not listen: {exc.strerror or type(exc).__name__}") from None
    try:
        settings.update(API_BIND_ADDRESS=service.public_address,
                        API_INTERNAL_BIND_ADDRESS=service.internal_address)
        write_env_file(net.directory.parent / ENV_FILE, settings)
        receipt = Receipt.generate()
        pid = receipt.pid.hex()
        ready = Ready(
            directory=net.directory.parent, program=program_name(Path.cwd()), dir_option=dir_option,
            public_url=f"http://{service.public_address}", internal_url=f"http://{service.internal_address}",
            merchant_url=net.merchant_url, merchant_address=net.merchant_address, height=net.start_height,
            confirmations=config.monitor_min_confirmations, receipt=receipt.hex(), pid=pid,
            integrated_address=make_integrated_address(net.merchant_address, pid))
        print(banner(ready), file=out, flush=True)
        chain_died = await until_stopped(stop, net)
    finally:
        log.info("stopping the service")
        await service.aclose()
    if chain_died:
        raise SandboxError(f"the regtest chain stopped unexpectedly (logs under {net.directory})")
    return 0


async def until_stopped(stop: asyncio.Event, net: RegtestNetwork) -> bool:
    """Wait for a signal; True instead if the chain's processes went away meanwhile.
    Runs as long as the developer keeps the sandbox, like ``serve``."""
    while True:
        try:
            await asyncio.wait_for(stop.wait(), _CHAIN_CHECK_SECS)
            return False
        except TimeoutError:
            state = load_state(net.directory)
            if not state or state.get("stopped") or not running(net.directory, state):
                return True


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM while the chain starts unwinds like Ctrl-C, so the start's own cleanup runs."""
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().partition("\n")[0]


# ---------------------------------------------------------------------- pay, mine
def _attach(directory: Path, dir_option: str) -> RegtestNetwork:
    try:
        return RegtestNetwork.attach(directory.resolve() / CHAIN_DIR)
    except RegtestError:
        raise SandboxError(f"no sandbox is running in {directory.resolve()} "
                           f"(start one with: {program_name(Path.cwd())} sandbox{dir_option})") from None


def pay(directory: Path, pid_or_address: str, piconero: int, dir_option: str = "") -> dict[str, Any]:
    """Pay the merchant's integrated address for a 16-hex PID, or an integrated address of
    the sandbox's merchant as the checkout shows it, from the payer wallet."""
    net = _attach(directory, dir_option)
    pid16 = pid_or_address
    if not _PID16.fullmatch(pid_or_address):
        decoded = decode_address(pid_or_address)  # _pid_or_address checked it decodes
        if decoded.payment_id is None or decoded.standard_address() != net.merchant_address:
            raise SandboxError("sandbox pay: that is not an integrated address of this sandbox's merchant")
        pid16 = decoded.payment_id.hex()
    try:
        with net.lock:  # nobody mines it between the transfer and the template check
            paid = net.pay(pid16.lower(), piconero)
            # monerod leaves a just-relayed tx out of block templates for a moment: a
            # `sandbox mine` right after this must confirm the payment, not the block after
            wait_until_minable(net, [paid["txid"]])
    except RegtestError as exc:
        raise SandboxError(f"sandbox pay failed: {_first_line(exc)}") from None
    return {"txid": paid["txid"], "amount": paid["amount"], "fee": paid["fee"], "height": paid["height"]}


def mine(directory: Path, blocks: int, dir_option: str = "") -> dict[str, Any]:
    net = _attach(directory, dir_option)
    try:
        height = net.mine(blocks)
    except RegtestError as exc:
        raise SandboxError(f"sandbox mine failed: {_first_line(exc)}") from None
    return {"mined": blocks, "height": height}


# ---------------------------------------------------------------------- command line
def _pid_or_address(text: str) -> str:
    if _PID16.fullmatch(text):
        return text
    try:
        if decode_address(text).payment_id is not None:
            return text
    except AddressError:
        pass
    raise argparse.ArgumentTypeError("must be 16 hex characters (an integrated-address payment id) "
                                     "or an integrated address")


def _count(text: str) -> int:
    # ASCII digits ("²".isdigit() is true), few enough for int()
    if not (text.isascii() and text.isdigit() and len(text) <= 5
            and 1 <= int(text) <= _MAX_MINE):
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to {_MAX_MINE}")
    return int(text)


def _port(text: str) -> int:
    if not (text.isascii() and text.isdigit() and len(text) <= 5) or int(text) > 65535:
        raise argparse.ArgumentTypeError("must be a port number from 0 to 65535 (0: any free port)")
    return int(text)


def _dir_option(args: argparse.Namespace) -> tuple[Path, str]:
    given = args.dir is not None
    directory = Path(args.dir if given else DEFAULT_DIR)
    return directory, f" --dir {shlex.quote(str(directory.resolve()))}" if given else ""


def cmd_sandbox(args: argparse.Namespace) -> int:
    directory, option = _dir_option(args)
    return run_sandbox(directory, public_port=args.public_port, internal_port=args.internal_port,
                       dir_option=option)


def cmd_sandbox_pay(args: argparse.Namespace) -> int:
    directory, option = _dir_option(args)
    print(json.dumps(pay(directory, args.pid, args.amount, option)))
    return 0


def cmd_sandbox_mine(args: argparse.Namespace) -> int:
    directory, option = _dir_option(args)
    print(json.dumps(mine(directory, args.blocks, option)))
    return 0


def add_sandbox_parser(commands: Any, amount: Callable[[str], int]) -> None:
    """``sandbox [--dir DIR]``, ``sandbox pay PID XMR``, ``sandbox mine N`` (``amount``:
    the command line's XMR parser, so amounts read the same everywhere)."""
    dir_help = f"the sandbox's directory (default ./{DEFAULT_DIR})"
    sandbox = commands.add_parser(
        "sandbox", help="a private regtest Monero chain and the service wired to it, for trying the flow",
        description="Start monerod (regtest, offline), a watch-only merchant wallet-rpc and a funded payer "
                    "wallet-rpc, all on loopback, then the service watching the merchant wallet; print what "
                    "to run next, and run until Ctrl-C or SIGTERM, which stop everything it started. "
                    "Installs Debian's monero package when it is missing. The environment may set "
                    "MONITOR_MIN_CONFIRMATIONS, MONITOR_POLL_INTERVAL_SECS, MONITOR_MIN_PAYMENT_AMOUNT and "
                    "LOG_LEVEL; the database, listeners and wallet are the sandbox's own.")
    sandbox.add_argument("--dir", metavar="DIR", help=dir_help)
    sandbox.add_argument("--public-port", type=_port, default=0, metavar="PORT",
                         help=f"public listener port on {HOST} (default: a free port)")
    sandbox.add_argument("--internal-port", type=_port, default=0, metavar="PORT",
                         help=f"internal listener port on {HOST} (default: a free port)")
    sandbox.set_defaults(func=cmd_sandbox)
    actions = sandbox.add_subparsers(dest="sandbox_cmd", metavar="ACTION",
                                     help="none: start a sandbox; pay or mine: act on the running one")
    # SUPPRESS: an action's --dir, when absent, must not reset one given before the action
    pay_cmd = actions.add_parser(
        "pay", help="pay the sandbox merchant's integrated address for PID from the payer wallet",
        description="Pay AMOUNT XMR to the running sandbox's merchant for payment id PID (or to an "
                    "integrated address of that merchant, as the checkout shows it) and print one "
                    "JSON line: txid, amount and fee (piconero), and the height the payment will be "
                    "mined at.")
    pay_cmd.add_argument("pid", metavar="PID", type=_pid_or_address,
                         help="payment id, 16 hex, or an integrated address of the sandbox's merchant")
    pay_cmd.add_argument("amount", metavar="AMOUNT_XMR", type=amount, help="amount in XMR, e.g. 0.5")
    pay_cmd.add_argument("--dir", metavar="DIR", default=argparse.SUPPRESS, help=dir_help)
    pay_cmd.set_defaults(func=cmd_sandbox_pay)
    mine_cmd = actions.add_parser(
        "mine", help="mine N blocks on the sandbox chain",
        description="Mine N blocks on the running sandbox's chain (each one confirmation more for every "
                    "mined payment) and print one JSON line with the new height.")
    mine_cmd.add_argument("blocks", metavar="N", type=_count, help=f"blocks to mine, 1 to {_MAX_MINE}")
    mine_cmd.add_argument("--dir", metavar="DIR", default=argparse.SUPPRESS, help=dir_help)
    mine_cmd.set_defaults(func=cmd_sandbox_mine)
