"""The wallet monitor: turns monero-wallet-rpc transfers into redeemable credit.

Each poll reads the wallet height H (a block count: a transfer at height h has
H − h confirmations) and asks for everything above the cursor plus the pool, in one
call. Transfers at depth ≥ N (h ≤ H − N) are credited and the cursor moves to H − N in
the same transaction; the rest form the pending view, rebuilt from scratch each poll
so a transfer a reorg or a double spend removed stops being pending by itself.

``min_height`` is EXCLUSIVE in wallet-rpc, so asking from the last scanned height (not
the next one) is what makes a payment mined exactly at the cursor's next block visible
— the Rust original's bug. The top is left open: a transfer mined between our two
calls then shows as pending instead of vanishing for one poll.

The wallet can report a transfer for the first time AT OR BELOW the cursor: a reorg
deeper than N mines a waiting payment there, or a watch-only wallet restored with too
high a restore height is rescanned. For the first, a poll also re-reads the last
``MONITOR_RESCAN_MARGIN_BLOCKS`` scanned blocks (never below ``MONITOR_START_HEIGHT``),
in a second bounded call, whenever the wallet's view under the cursor may have changed:
a transaction pending at the last poll is gone from above the cursor, the wallet height
went down, it is this process's first poll — and at least every
``_MARGIN_BACKSTOP_SECS`` whatever happened, which is what the promise rests on; the
triggers only make the common case immediate. Re-reading on every poll instead would
re-decode the margin's already-credited transfers each time (docs/benchmarks.md). For the
second, an operator's rescan request (``state.monitor.request_rescan``) lowers the cursor.
Re-reading is harmless either way: transfers are unique by txid.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable

from anonticket.ledger.cache import BoundedMap
from anonticket.domain.ids import Transfer
from anonticket.domain.errors import StorageUnavailable, StorageValueOutOfRange
from anonticket.monero.gc_pause import paused_gc
from anonticket.domain.ids import PaymentId
from anonticket.monero.scan import Classified, Scan, Subaddresses, scan, subaddress_index
from anonticket.monero.subaddresses import wallet_knows
from anonticket.monero.wallet_rpc import WalletTransfers
from anonticket.runtime.state import State
from anonticket.monero.wallet_rpc import WalletError, WalletRpc

log = logging.getLogger("anonticket.monitor")

_BACKOFF_CAP_SECS = 60.0
_REPORTED_CAPACITY = 100_000
# One Monero block: the margin slides by about a block between two backstop re-reads.
_MARGIN_BACKSTOP_SECS = 120.0
# the subaddress restore check runs at the first poll and then this often
_COVERAGE_CHECK_SECS = 300.0
# allocations remembered (index -> PID); a miss is one indexed read
_SUBADDRESS_CACHE = 100_000
# CRYPTONOTE_MAX_BLOCK_NUMBER, wallet-rpc's own default max_height: "no upper bound"
_NO_MAX_HEIGHT = 500_000_000


class Monitor:
    def __init__(self, state: State, wallet: WalletRpc | None = None, *,
                 rng: random.Random | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``rng``, ``sleep`` and ``clock`` are seams for tests: backoff and the margin's
        backstop are checked without waiting."""
        self.state = state
        config = state.config
        self._wallet = wallet or WalletRpc(
            config.monero_rpc_url, timeout=config.monero_rpc_timeout_secs,
            user=config.monero_rpc_user, password=config.monero_rpc_password,
        )
        self._rng = rng or random.Random()
        self._sleep = sleep
        self._cursor: int | None = None
        self._failures = 0
        self._polled_ok = False
        # (key, result) pairs already counted, so a transfer seen pending in ten polls
        # counts once; bounded because plain payments in the pool can stay a long time
        self._reported: BoundedMap[tuple[str, str], bool] = BoundedMap(_REPORTED_CAPACITY)
        self._clock = clock
        # what the margin's triggers compare with, from the last successful poll
        self._watched: set[str] = set()
        self._wallet_height: int | None = None
        self._margin_read_at = clock()
        self._margin_failing = False
        # provisional credit: when each outstanding one was first found missing from the
        # wallet (pool and blocks alike), and the txids withdrawn by this process (they are
        # never provisional again: only the confirmed credit brings them back)
        self._missing_since: dict[bytes, float] = {}
        self._withdrawn: BoundedMap[bytes, bool] = BoundedMap(_REPORTED_CAPACITY)
        self._provisional_watch = True  # read the outstanding ones at least once
        # the checkout's allocations, a cache of storage (a row never changes once written)
        self._subaddress_pids: BoundedMap[int, PaymentId] = BoundedMap(_SUBADDRESS_CACHE)
        self._coverage_checked_at: float | None = None

    @property
    def cursor(self) -> int | None:
        """The last fully scanned height, once the first poll has read it."""
        return self._cursor

    async def start(self) -> None:
        await self._wallet.start()

    async def aclose(self) -> None:
        await self._wallet.close()

    async def run(self) -> None:
        """Poll forever; on failure back off exponentially (capped, jittered), reset on success."""
        interval = self.state.config.monitor_poll_interval_secs
        while True:
            try:
                await self.poll_once()
            except WalletError as exc:
                self._record_failure(exc.reason)
            except StorageUnavailable:
                self._record_failure("storage_error")
            except Exception as exc:  # noqa: BLE001 - a bug must not end the task silently
                # the type only: a message could quote a value from the wallet
                self._record_failure("internal", type(exc).__name__)
            await self._sleep(self._backoff() if self._failures else interval)

    def _backoff(self) -> float:
        """Delay after ``_failures`` consecutive failures: interval·2^(k−1), capped, then
        scaled by a random factor in [0.5, 1] so many instances do not retry in step."""
        interval = self.state.config.monitor_poll_interval_secs
        cap = max(_BACKOFF_CAP_SECS, interval)
        exponent = min(max(self._failures - 1, 0), 32)
        return min(cap, interval * 2.0**exponent) * self._rng.uniform(0.5, 1.0)

    def _record_failure(self, reason: str, detail: str = "") -> None:
        status, metrics = self.state.monitor, self.state.metrics
        counter = metrics.poll.get(reason) or metrics.poll["bad_response"]
        counter.inc()
        if self._failures == 0 or status.last_error != reason:
            log.warning("wallet poll failed (%s%s); retrying with backoff",
                        reason, f": {detail}" if detail else "")
        self._failures += 1
        status.last_error = reason

    async def poll_once(self) -> int:
        """One poll; returns how many transfers were newly credited. Raises on failure."""
        state = self.state
        config, ledger = state.config, state.ledger
        if self._cursor is None:
            stored = await ledger.storage.get_cursor()
            # the start height is the first height scanned: the cursor is the one before
            self._cursor = stored if stored is not None else config.monitor_start_height - 1
        await self._apply_rescan_request()
        cursor = self._cursor
        height = await self._wallet.get_height()
        need = config.monitor_min_confirmations
        batch = await self._wallet.get_transfers(max(cursor, 0), _NO_MAX_HEIGHT, pool=True)
        subaddresses = Subaddresses(config.subaddress_account, self._subaddress_pids)
        with paused_gc():
            found = scan(batch, height, cursor, need, config.api_accept_long_pids, subaddresses,
                         resolved=False)
        del batch  # the raw entries: the credit below should not carry them (or walk them)
        floor = cursor
        if self._margin_due(found, cursor, height):
            await self._read_margin(found, cursor, height)
            floor = min(cursor, self._margin_floor(cursor))
        if found.unresolved:
            await self._resolve_subaddresses(found, height, floor)
        new_cursor = max(cursor, height - need)
        credited = await self._credit(list(found.credited.values()),
                                      new_cursor if new_cursor != cursor else None)
        self._cursor = new_cursor
        self._watched, self._wallet_height = found.watched, height
        ledger.set_pending(found.pending)
        await self._provisional(found)
        for verdict in found.reportable:
            self._count_once(verdict)
        state.metrics.transfer["credited"].inc(credited)
        self._record_success(height)
        await self._check_coverage()
        return credited

    async def _resolve_subaddresses(self, found: Scan, height: int, floor: int) -> None:
        """Look up the subaddress indexes the cache did not know and scan their entries
        again: an allocated one is credited under its PID, the rest are reported
        ``unallocated_subaddress`` (not credited: no checkout is waiting for them)."""
        config = self.state.config
        account = config.subaddress_account
        entries, found.unresolved = found.unresolved, []
        known = await self.state.ledger.storage.subaddress_pids(
            account, sorted({subaddress_index(entry, account) for entry, _ in entries}))
        for index, raw in known.items():
            self._subaddress_pids.put(index, PaymentId.from_bytes(raw))
        again = WalletTransfers([e for e, in_pool in entries if not in_pool],
                                [e for e, in_pool in entries if in_pool])
        found.add(scan(again, height, floor, config.monitor_min_confirmations,
                       config.api_accept_long_pids, Subaddresses(account, self._subaddress_pids),
                       resolved=True))

    async def _check_coverage(self) -> None:
        """At the first poll and every few minutes: does the wallet know the highest
        subaddress the checkout allocated? A wallet restored from keys with too short a
        lookahead does not, and payments to it would go unseen (docs/operations.md)."""
        now = self._clock()
        if (self._coverage_checked_at is not None
                and now - self._coverage_checked_at < _COVERAGE_CHECK_SECS):
            return
        self._coverage_checked_at = now
        state = self.state
        try:
            coverage = await wallet_knows(self._wallet, state.ledger.storage,
                                          state.config.subaddress_account)
        except StorageUnavailable:
            return
        status, metrics = state.monitor, state.metrics
        if coverage.known is False and status.subaddress_known is not False:
            log.error("the wallet does not know subaddress index %d of account %d, the highest "
                      "the checkout allocated: payments to it go unseen. Restore the wallet "
                      "with a subaddress lookahead beyond it (docs/operations.md#subaddresses)",
                      coverage.highest, state.config.subaddress_account)
        elif coverage.known and status.subaddress_known is False:
            log.info("the wallet knows every allocated subaddress again")
        status.subaddress_highest, status.subaddress_known = coverage.highest, coverage.known
        metrics.subaddress_highest_index.set(-1 if coverage.highest is None else coverage.highest)
        if coverage.known is not None:
            metrics.subaddress_unknown_to_wallet.set(0 if coverage.known else 1)

    async def _credit(self, transfers: list[Transfer], scanned_height: int | None) -> int:
        """Credit ``transfers`` and move the cursor in one transaction; returns how many
        were new. When the database cannot hold what one of them would make (a sum past
        2^63 - 1 piconero: a wallet reporting impossible amounts), that one is found by
        halving, reported and skipped, the rest credited, and the cursor moves on: one
        such transfer must not stop every later payment from being credited. A skipped
        transfer is tried again only by a re-read of its block (the margin, a rescan)."""
        ledger = self.state.ledger
        try:
            return (await ledger.credit(transfers, scanned_height)).transfers_credited
        except StorageValueOutOfRange:
            if not transfers:
                raise  # the cursor alone: not a transfer's doing
        credited = await self._credit_or_skip(transfers)
        if scanned_height is not None:
            await ledger.credit((), scanned_height)
        return credited

    async def _credit_or_skip(self, transfers: list[Transfer]) -> int:
        try:
            return (await self.state.ledger.credit(transfers, None)).transfers_credited
        except StorageValueOutOfRange:
            if len(transfers) > 1:
                half = len(transfers) // 2
                return (await self._credit_or_skip(transfers[:half])
                        + await self._credit_or_skip(transfers[half:]))
        self._count_once(Classified("uncreditable", transfers[0].txid.hex()))
        return 0

    async def _provisional(self, found: Scan) -> None:
        """Provisional credit, after the confirmed credit of the same poll (so a transfer
        that just reached N confirmations is settled, not withdrawn): withdraw what the
        wallet flags as a double spend, or has been missing from both its pool and its
        blocks for ``PROVISIONAL_WITHDRAW_GRACE_SECS`` (a tx mined between two polls moves
        from the pool to its blocks, and a wallet refresh can briefly show it in neither);
        then credit the unconfirmed transfers not credited yet, within the caps."""
        state = self.state
        config, ledger, metrics = state.config, state.ledger, state.metrics
        enabled = config.provisional_max_per_pid > 0
        if not (enabled or self._provisional_watch):
            return
        outstanding = await ledger.storage.outstanding_provisional()
        self._provisional_watch = bool(outstanding)
        now = self._clock()
        grace = config.provisional_withdraw_grace_secs
        gone: dict[bytes, bytes] = {}
        for txid, pid in outstanding.items():
            if txid in found.double_spent:
                gone[txid] = pid
            elif found.still_has(txid.hex()):
                self._missing_since.pop(txid, None)
            elif now - self._missing_since.setdefault(txid, now) >= grace:
                gone[txid] = pid
        for txid in list(self._missing_since):
            if txid not in outstanding:
                del self._missing_since[txid]
        if gone:
            result = await ledger.withdraw(gone, gone.values())
            for txid in gone:
                self._withdrawn.put(txid, True)
                self._missing_since.pop(txid, None)
            metrics.provisional_withdrawn.inc(len(result.amounts))
            metrics.provisional_withdrawn_piconero.inc(sum(result.amounts))
            metrics.provisional_unrecovered_piconero.inc(result.unrecovered)
            if result.amounts:
                log.warning("withdrew %d provisional credit(s) whose payment failed to confirm",
                            len(result.amounts))
        if not enabled:
            return
        fresh = [t for txid, t in found.unconfirmed.items()
                 if txid not in outstanding and txid not in found.double_spent
                 and self._withdrawn.get(txid) is None]
        if not fresh:
            return
        credited = await ledger.credit_provisional(
            fresh, max_per_pid=config.provisional_max_per_pid,
            max_outstanding=config.provisional_max_outstanding)
        metrics.provisional_credited.inc(credited.transfers_credited)
        for txid in credited.over_cap:
            self._count_once(Classified("over_cap", txid.hex()))
        if credited.credited_pids:
            self._provisional_watch = True

    def _margin_floor(self, cursor: int) -> int:
        """Where the margin starts (exclusive): never below the start height, which the
        operator chose as the first height to credit (older payments may have been served
        by another system). A rescan below it lowers the cursor itself, so is not cut off."""
        config = self.state.config
        start_floor = min(cursor, config.monitor_start_height - 1)
        return max(cursor - config.monitor_rescan_margin_blocks, start_floor)

    def _margin_due(self, found: Scan, cursor: int, wallet_height: int) -> bool:
        """Whether the wallet's view at or below the cursor may have changed since the last
        poll. A pending transaction missing from above the cursor was dropped (a double
        spend, a reorg) or mined below it (a reorg deeper than N): the margin tells which."""
        if self._margin_floor(cursor) >= cursor:
            return False  # no margin (0, or the cursor still at the start height)
        if self._wallet_height is None:
            return True  # this process's first poll: what was pending before is not known
        if wallet_height < self._wallet_height:
            return True
        if self._clock() - self._margin_read_at >= _MARGIN_BACKSTOP_SECS:
            return True
        return not all(found.still_has(txid) for txid in self._watched)

    async def _read_margin(self, found: Scan, cursor: int, wallet_height: int) -> None:
        """Add what the wallet reports in the margin to ``found``. A failure here does not
        fail the poll: crediting above the cursor must never wait for the margin (too big
        an answer would otherwise stop the monitor); the backstop tries again."""
        self._margin_read_at = self._clock()
        floor = self._margin_floor(cursor)
        try:
            batch = await self._wallet.get_transfers(max(floor, 0), cursor, pool=False)
        except WalletError as exc:
            if not self._margin_failing:
                log.warning("re-reading the %d blocks below the cursor failed (%s); polls go on "
                            "without them and retry every %.0f s", cursor - floor, exc.reason,
                            _MARGIN_BACKSTOP_SECS)
            self._margin_failing = True
            return
        if self._margin_failing:
            log.info("re-reading the blocks below the cursor works again")
            self._margin_failing = False
        config = self.state.config
        with paused_gc():
            found.add(scan(batch, wallet_height, floor, config.monitor_min_confirmations,
                           config.api_accept_long_pids,
                           Subaddresses(config.subaddress_account, self._subaddress_pids),
                           resolved=False))

    async def _apply_rescan_request(self) -> None:
        """Lower the cursor to just below an operator's requested height, durably and
        before the poll reads: a poll that then fails, or a crash, resumes the rescan from
        the database. Heights above the cursor are read by the poll anyway."""
        state = self.state
        requested = state.monitor.take_rescan()
        if requested is None or self._cursor is None or requested - 1 >= self._cursor:
            return
        try:
            await state.ledger.credit((), requested - 1)
        except BaseException:
            state.monitor.request_rescan(requested)  # not applied: the next poll tries again
            raise
        log.info("re-scanning from height %d on the operator's request (cursor was %d)",
                 requested, self._cursor)
        self._cursor = requested - 1
        state.monitor.scanned_height = self._cursor

    def _count_once(self, verdict: Classified) -> None:
        if self._reported.get((verdict.key, verdict.result)) is not None:
            return
        self._reported.put((verdict.key, verdict.result), True)
        if verdict.result == "over_cap":
            self.state.metrics.provisional_over_cap.inc()
            return
        self.state.metrics.transfer[verdict.result].inc()
        if verdict.result == "invalid":
            log.warning("skipped a wallet entry that failed validation (field: %s)", verdict.problem)
        elif verdict.result == "uncreditable":
            log.warning("skipped a confirmed transfer that cannot be credited: its amount, or "
                        "its payment's or token's total with it, is beyond 2^63 - 1 piconero; "
                        "the wallet reports amounts no real payment has")

    def _record_success(self, wallet_height: int) -> None:
        status, metrics = self.state.monitor, self.state.metrics
        if self._failures:
            log.info("wallet poll recovered after %d failed attempts", self._failures)
        elif not self._polled_ok:
            log.info("wallet monitor running: wallet height %d, scanned up to %d",
                     wallet_height, self._cursor)
        self._polled_ok = True
        self._failures = 0
        status.last_error = None
        status.last_success = time.monotonic()
        status.wallet_height = wallet_height
        status.scanned_height = self._cursor
        metrics.wallet_height.set(wallet_height)
        metrics.scanned_height.set(self._cursor if self._cursor is not None else -1)
        metrics.last_success.set(time.time())
        metrics.poll["ok"].inc()
