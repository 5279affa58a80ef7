"""Wiring: open the database, build both applications, start and stop everything in order.

Start order: database → indexes → listeners → monitor → READY. On PostgreSQL the indexes
and the monitor wait for the leader lock instead (anonticket/service/leadership.py): every
instance listens, the active one serves. Stop order (one
``AsyncExitStack``): both listeners stop accepting at once and let their in-flight
requests finish, then our socket files go; only then does the monitor stop (a credit it
is committing completes first, see ``Ledger.credit``), so whatever a draining request
reads is still kept current; then the access log is flushed and the database closed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from anonticket.service import sd_notify
from anonticket.api.access import add_access_routes
from anonticket.api.balance import add_topup_route
from anonticket.api.credential import add_credential_routes
from anonticket.api.private_token import add_private_token_routes
from anonticket.api.access_log import AccessLogBuffer, make_access_logger_class
from anonticket.api.errors import JsonErrorRunner, make_middleware
from anonticket.api.internal import add_internal_routes, make_auth_middleware
from anonticket.api.public import add_public_routes
from anonticket.api.request import MAX_BODY_BYTES, STATE
from anonticket.api.standby import make_standby_middleware
from anonticket.ledger.cache import TtlSet
from anonticket.ledger.credentials import Credentials, Revocations, key_document_max_age
from anonticket.ledger.keyring import KeyRing
from anonticket.ledger.private_tokens import PrivateTokens
from anonticket.config import Config, HostPort
from anonticket.service.housekeeping import Housekeeper
from anonticket.ledger.views import Ledger
from anonticket.monero.merchant import AddressCheck
from anonticket.monero.subaddresses import SubaddressAllocator
from anonticket.runtime.metrics import Metrics
from anonticket.monitor.loop import Monitor
from anonticket.runtime.state import MonitorStatus, State, WebhookControl
from anonticket.storage import Storage, is_postgres_url, open_storage, unix_now
from anonticket.service.unix_socket import claim_socket_path, remove_socket, restrictive_umask, socket_inode
from anonticket.webhooks.sender import WebhookSender

log = logging.getLogger("anonticket")

# After an early error answer aiohttp waits this long for the rest of a body it will discard.
_LINGERING_SECS = 2.0
_SHUTDOWN_TIMEOUT = 10.0
_INTERNAL_SOCKET_MODE = 0o600


async def open_state(config: Config, stack: AsyncExitStack) -> State:
    storage = await open_storage(
        config.database_url, synchronous=config.database_synchronous,
        busy_timeout_ms=config.database_busy_timeout_ms,
    )
    stack.push_async_callback(storage.close)
    metrics = Metrics()
    ledger = make_ledger(config, storage, metrics)
    if is_postgres_url(config.database_url):
        # loaded on taking over: a standby's views would be stale by then anyway
        return State(config, metrics, ledger, MonitorStatus(enabled=config.monitor_enabled),
                     active=False)
    await ledger.load()
    return State(config, metrics, ledger, MonitorStatus(enabled=config.monitor_enabled))


def make_ledger(config: Config, storage: Storage, metrics: Metrics) -> Ledger:
    """A ledger with empty in-memory views (``load`` fills the indexes, the signing keys
    and the recent revocations)."""
    return Ledger(
        storage,
        min_payment=config.monitor_min_payment_amount,
        min_confirmations=config.monitor_min_confirmations,
        negative_cache=TtlSet(config.api_negative_cache_capacity, config.api_negative_cache_ttl_secs),
        price_per_day=config.access_price_per_day,
        on_negative_cache_hit=metrics.negative_cache_hits.inc,
        credentials=(credentials := make_credentials(config, storage)),
        private_tokens=make_private_tokens(config, credentials.ring),
        plain_pids=config.redeem_plain_pids,
    )


def make_private_tokens(config: Config, ring: KeyRing) -> PrivateTokens | None:
    """The Privacy Pass units, their keys in the credential keys' ring; None when no unit
    is configured (PRIVATE_TOKEN_UNITS empty: the feature is off)."""
    if not config.private_token_units:
        return None
    return PrivateTokens(ring, config.private_token_units,
                         epoch_secs=config.private_token_key_epoch_secs,
                         grace_secs=config.private_token_key_grace_secs,
                         issuer_name=config.private_token_issuer_name,
                         max_batch=config.private_token_max_batch, clock=ring.clock)


def make_credentials(config: Config, storage: Storage, clock: Callable[[], int] = unix_now
                     ) -> Credentials:
    """The credential keys and checks. A rotated-in key is published for as long as the key
    document may be cached before it signs (``key_document_max_age``)."""
    ttl = config.credential_ttl_secs
    ring = KeyRing(storage, clock=clock, verify_secs=ttl,
                   publish_ahead_secs=key_document_max_age(ttl))
    return Credentials(ring, Revocations(ttl, clock), ttl=ttl,
                       audiences=config.credential_audiences, clock=clock)


def _standby(state: State, internal: bool) -> list[Any]:
    """The standby middleware, on PostgreSQL only (on SQLite the instance is always active)."""
    if not is_postgres_url(state.config.database_url):
        return []
    return [make_standby_middleware(state, internal=internal)]


# the customer listener's limits on a request line and a header line (aiohttp's default is
# 8190): its parser answers a longer one 400 before any route is looked up
PUBLIC_MAX_LINE_BYTES = 4096


def build_public_app(state: State) -> web.Application:
    app = web.Application(
        client_max_size=MAX_BODY_BYTES,
        middlewares=[make_middleware(state.metrics, state.config.api_max_in_flight),
                     *_standby(state, internal=False)],
        handler_args={"max_field_size": PUBLIC_MAX_LINE_BYTES,
                      "max_line_size": PUBLIC_MAX_LINE_BYTES},
    )
    app[STATE] = state
    add_public_routes(app)
    add_topup_route(app)
    add_access_routes(app)
    add_credential_routes(app)
    add_private_token_routes(app)
    return app


def build_internal_app(state: State) -> web.Application:
    middlewares = [make_middleware(state.metrics, state.config.api_max_in_flight)]
    if state.config.api_internal_token:
        middlewares.append(make_auth_middleware(state.config.api_internal_token))
    middlewares += _standby(state, internal=True)
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
    leadership: Any = None  # anonticket.service.leadership.Leadership on PostgreSQL
    webhook_sender: WebhookSender | None = None  # runs only while this instance is active
    _stack: AsyncExitStack = field(default_factory=AsyncExitStack)

    async def aclose(self) -> None:
        await self._stack.aclose()


Closer = Callable[[], Awaitable[None]]


async def _start_site(
    app: web.Application,
    *,
    name: str,
    unix_path: str | None,
    unix_mode: int,
    tcp: HostPort,
    access_log: AccessLogBuffer | None,
    keepalive_secs: float,
) -> tuple[str, Closer]:
    """Start one listener; returns where it listens (the real port when 0 was asked) and
    how to stop it: stop accepting, drain the requests in flight, remove our socket file."""
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
    socket_file: tuple[str, int] | None = None
    async with AsyncExitStack() as site_stack:
        site_stack.push_async_callback(runner.cleanup)
        if unix_path:
            claim_socket_path(unix_path)
            with restrictive_umask(unix_mode):
                site: web.BaseSite = web.UnixSite(runner, unix_path)
                await site.start()
            socket_file = (unix_path, socket_inode(unix_path))
            # LIFO: on a failure below the runner stops first, then our socket file goes
            site_stack.callback(remove_socket, *socket_file)
            os.chmod(unix_path, unix_mode)
            where = f"unix:{unix_path}"
        else:
            site = web.TCPSite(runner, tcp.host, tcp.port)
            await site.start()
            host, port = runner.addresses[0][:2]
            where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        site_stack.pop_all()

    async def close() -> None:
        try:
            await runner.cleanup()
        finally:
            if socket_file is not None:
                remove_socket(*socket_file)

    return where, close


async def _close_together(closers: list[Closer]) -> None:
    """Stop every listener at once: one still accepting while the other drains would only
    take in requests for the drain to wait on."""
    results = await asyncio.gather(*(close() for close in closers), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


async def _start_task(stack: AsyncExitStack, work: Any, name: str) -> asyncio.Task[None]:
    """A background task whose stop (cancel, then wait for it) is on the exit stack."""
    task = asyncio.create_task(work, name=name)

    async def stop() -> None:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task

    stack.push_async_callback(stop)
    return task


async def _start_webhooks(state: State, stack: AsyncExitStack) -> WebhookSender | None:
    """With WEBHOOK_URL set: record events from the first request on (before the
    listeners start), and have the sender's client ready; its task starts later."""
    if not state.config.webhook_url:
        return None
    sender = WebhookSender(state)
    await sender.start()
    stack.push_async_callback(sender.aclose)
    state.ledger.storage.enable_outbox(sender.wake)
    state.webhooks = WebhookControl(wake=sender.wake, ping=sender.ping)
    return sender


async def start_service(config: Config) -> Service:
    stack = AsyncExitStack()
    try:
        address_check = AddressCheck(config)  # a bad MERCHANT_ADDRESS stops here (exit 2)
        state = await open_state(config, stack)
        service = Service(state, _stack=stack)
        # before the listeners: an address the wallet contradicts stops the start too
        await address_check.start(state.merchant)
        stack.push_async_callback(address_check.aclose)
        if config.checkout_address_mode == "subaddress":
            allocator = SubaddressAllocator(config, state.ledger.storage)
            await allocator.start()
            stack.push_async_callback(allocator.aclose)
            state.subaddresses = allocator
        access_log = AccessLogBuffer() if config.api_access_log else None
        if access_log is not None:
            stack.callback(access_log.flush)
        # the monitor's slot is pushed before the listeners, so it is closed after they
        # have drained: requests in flight at SIGTERM still read credits and pending as they land
        monitor_stack = AsyncExitStack()
        stack.push_async_callback(monitor_stack.aclose)
        sender = await _start_webhooks(state, monitor_stack)
        listeners: list[Closer] = []
        stack.push_async_callback(_close_together, listeners)
        service.public_address, close = await _start_site(
            build_public_app(state), name="public", unix_path=config.api_unix_socket,
            unix_mode=config.api_unix_socket_mode, tcp=config.api_bind_address,
            access_log=access_log, keepalive_secs=config.api_keepalive_timeout_secs,
        )
        listeners.append(close)
        service.internal_address, close = await _start_site(
            build_internal_app(state), name="internal",
            unix_path=config.api_internal_unix_socket, unix_mode=_INTERNAL_SOCKET_MODE,
            tcp=config.api_internal_bind_address, access_log=access_log,
            keepalive_secs=config.api_keepalive_timeout_secs,
        )
        listeners.append(close)
        service.webhook_sender = sender
        if is_postgres_url(config.database_url):
            await _start_leadership(service, monitor_stack)
        else:
            service.monitor_task = await _start_background(state, monitor_stack, sender)
    except BaseException:
        await stack.aclose()
        raise
    log.info("public listener on %s, internal listener on %s, monitor %s, webhooks %s",
             service.public_address, service.internal_address,
             "on" if config.monitor_enabled else "off", "on" if config.webhook_url else "off")
    return service


async def _start_background(state: State, stack: AsyncExitStack,
                            sender: WebhookSender | None = None) -> asyncio.Task[None] | None:
    """Housekeeping, the webhook sender (when on) and the monitor (when enabled), their stops
    on ``stack``; the monitor's task."""
    await _start_task(stack, Housekeeper(state).run(), "anonticket-housekeeping")
    if sender is not None:
        await _start_task(stack, sender.run(), "anonticket-webhooks")
    if not state.config.monitor_enabled:
        return None
    monitor = Monitor(state)
    await monitor.start()
    stack.push_async_callback(monitor.aclose)
    return await _start_task(stack, monitor.run(), "anonticket-monitor")


async def _start_leadership(service: Service, stack: AsyncExitStack) -> None:
    """Stand by until the leader lock is ours; each term as the active instance gets fresh
    views loaded from the database and its own monitor, stopped when the term ends."""
    from anonticket.service.leadership import Leadership
    from anonticket.storage.postgres.leader import LeaderLock

    state, config = service.state, service.state.config
    storage = state.ledger.storage
    state.metrics.active.set(0)
    term: list[AsyncExitStack] = []

    async def on_elected() -> None:
        ledger = make_ledger(config, storage, state.metrics)
        await ledger.load()
        state.ledger = ledger
        state.monitor = MonitorStatus(enabled=config.monitor_enabled)
        stack = AsyncExitStack()
        try:
            service.monitor_task = await _start_background(state, stack, service.webhook_sender)
        except BaseException:
            await stack.aclose()
            raise
        term.append(stack)

    async def on_deposed() -> None:
        while term:
            await term.pop().aclose()

    lock = LeaderLock(config.database_url, busy_timeout_ms=config.database_busy_timeout_ms)
    service.leadership = Leadership(state, storage, lock, on_elected=on_elected,  # type: ignore[arg-type]
                                    on_deposed=on_deposed,
                                    check_secs=config.database_leader_check_secs)
    try:
        await service.leadership.attempt()
    finally:
        # pushed even if the first round failed: its stop steps down and releases the lock
        await _start_task(stack, service.leadership.run(), "anonticket-leadership")


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
