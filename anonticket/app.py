"""Wiring: open the database, build both applications, start and stop everything in order.

Start order: database → indexes → listeners → monitor → READY. Stop order is the
reverse (an ``AsyncExitStack``): stop accepting, let in-flight requests finish, stop
the monitor, flush the access log, close the database, remove our sockets.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from anonticket import sd_notify
from anonticket.api.access_log import AccessLogBuffer, make_access_logger_class
from anonticket.api.errors import JsonErrorRunner, make_middleware
from anonticket.api.internal import add_internal_routes, make_auth_middleware
from anonticket.api.public import MAX_BODY_BYTES, STATE, add_public_routes
from anonticket.cache import TtlSet
from anonticket.config import Config, HostPort
from anonticket.ledger import Ledger
from anonticket.merchant import AddressCheck
from anonticket.metrics import Metrics
from anonticket.monitor import Monitor
from anonticket.state import MonitorStatus, State
from anonticket.storage import Storage, database_path
from anonticket.unix_socket import claim_socket_path, remove_socket, restrictive_umask, socket_inode

log = logging.getLogger("anonticket")

# After an early error answer aiohttp waits this long for the rest of a body it will discard.
_LINGERING_SECS = 2.0
_SHUTDOWN_TIMEOUT = 10.0
_INTERNAL_SOCKET_MODE = 0o600


async def open_state(config: Config, stack: AsyncExitStack) -> State:
    storage = await Storage.open(
        database_path(config.database_url), synchronous=config.database_synchronous,
        busy_timeout_ms=config.database_busy_timeout_ms,
    )
    stack.push_async_callback(storage.close)
    metrics = Metrics()
    ledger = Ledger(
        storage,
        min_payment=config.monitor_min_payment_amount,
        min_confirmations=config.monitor_min_confirmations,
        negative_cache=TtlSet(config.api_negative_cache_capacity, config.api_negative_cache_ttl_secs),
        on_negative_cache_hit=metrics.negative_cache_hits.inc,
    )
    await ledger.load()
    return State(config, metrics, ledger, MonitorStatus(enabled=config.monitor_enabled))


def build_public_app(state: State) -> web.Application:
    app = web.Application(
        client_max_size=MAX_BODY_BYTES,
        middlewares=[make_middleware(state.metrics, state.config.api_max_in_flight)],
        handler_args={"max_field_size": 4096, "max_line_size": 4096},
    )
    app[STATE] = state
    add_public_routes(app)
    return app


def build_internal_app(state: State) -> web.Application:
    middlewares = [make_middleware(state.metrics, state.config.api_max_in_flight)]
    if state.config.api_internal_token:
        middlewares.append(make_auth_middleware(state.config.api_internal_token))
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=middlewares)
    app[STATE] = state
    add_internal_routes(app)
    return app


@dataclass
class Service:
    """A running service: the state and where each listener ended up (for tests and logs)."""

    state: State
    public_address: str = ""
    internal_address: str = ""
    monitor_task: asyncio.Task[None] | None = None
    _stack: AsyncExitStack = field(default_factory=AsyncExitStack)

    async def aclose(self) -> None:
        await self._stack.aclose()


async def _start_site(
    stack: AsyncExitStack,
    app: web.Application,
    *,
    name: str,
    unix_path: str | None,
    unix_mode: int,
    tcp: HostPort,
    access_log: AccessLogBuffer | None,
    keepalive_secs: float,
) -> str:
    """Start one listener; returns where it listens (the real port when 0 was asked)."""
    if access_log is not None:
        logging_args: dict[str, Any] = {
            "access_log": logging.getLogger("anonticket.access"),
            "access_log_class": make_access_logger_class(access_log, name),
        }
    else:
        logging_args = {"access_log": None}
    # the keep-alive timer is also aiohttp's header-read deadline: slowloris is bounded by it
    runner = JsonErrorRunner(
        app, handle_signals=False, keepalive_timeout=keepalive_secs,
        shutdown_timeout=_SHUTDOWN_TIMEOUT, lingering_time=_LINGERING_SECS, **logging_args,
    )
    await runner.setup()
    async with AsyncExitStack() as site_stack:
        site_stack.push_async_callback(runner.cleanup)
        if unix_path:
            claim_socket_path(unix_path)
            with restrictive_umask(unix_mode):
                site: web.BaseSite = web.UnixSite(runner, unix_path)
                await site.start()
            os.chmod(unix_path, unix_mode)
            # LIFO: on exit the runner stops first, then our socket file goes
            stack.callback(remove_socket, unix_path, socket_inode(unix_path))
            where = f"unix:{unix_path}"
        else:
            site = web.TCPSite(runner, tcp.host, tcp.port)
            await site.start()
            host, port = runner.addresses[0][:2]
            where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        stack.push_async_callback(runner.cleanup)
        site_stack.pop_all()
    return where


async def start_service(config: Config) -> Service:
    stack = AsyncExitStack()
    try:
        address_check = AddressCheck(config)  # a bad MERCHANT_ADDRESS stops here (exit 2)
        state = await open_state(config, stack)
        service = Service(state, _stack=stack)
        # before the listeners: an address the wallet contradicts stops the start too
        await address_check.start(state.merchant)
        stack.push_async_callback(address_check.aclose)
        access_log = AccessLogBuffer() if config.api_access_log else None
        if access_log is not None:
            stack.callback(access_log.flush)
        service.public_address = await _start_site(
            stack, build_public_app(state), name="public", unix_path=config.api_unix_socket,
            unix_mode=config.api_unix_socket_mode, tcp=config.api_bind_address,
            access_log=access_log, keepalive_secs=config.api_keepalive_timeout_secs,
        )
        service.internal_address = await _start_site(
            stack, build_internal_app(state), name="internal",
            unix_path=config.api_internal_unix_socket, unix_mode=_INTERNAL_SOCKET_MODE,
            tcp=config.api_internal_bind_address, access_log=access_log,
            keepalive_secs=config.api_keepalive_timeout_secs,
        )
        if config.monitor_enabled:
            monitor = Monitor(state)
            await monitor.start()
            task = asyncio.create_task(monitor.run(), name="anonticket-monitor")
            service.monitor_task = task

            async def stop_monitor() -> None:
                task.cancel()
                with suppress(asyncio.CancelledError):
                    await task
                await monitor.aclose()

            stack.push_async_callback(stop_monitor)
    except BaseException:
        await stack.aclose()
        raise
    log.info("public listener on %s, internal listener on %s, monitor %s",
             service.public_address, service.internal_address,
             "on" if config.monitor_enabled else "off")
    return service


async def serve(config: Config) -> int:
    """Run until SIGTERM/SIGINT; returns the process exit status."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    service = await start_service(config)
    sd_notify.notify("READY=1")
    try:
        await stop.wait()
        log.info("stopping: finishing in-flight requests")
        sd_notify.notify("STOPPING=1")
    finally:
        await service.aclose()
    log.info("stopped")
    return 0
