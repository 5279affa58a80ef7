"""Redeem, introspection and crediting, with in-memory views kept coherent with SQLite.

This process is the only writer of its database, so what it caches can only change
through the methods below, which update the caches after each commit. A write whose
outcome is unknown (it raised: on PostgreSQL a COMMIT may land and its answer be lost, a
dropped connection or a timeout while the COMMIT waits for a synchronous standby) drops
the cached rows it may have changed, and the views take what a write finds stored, not
only what it reports as new: its retry then repairs what the lost answer left out (see
``credit`` and ``_claim_batch``). Three views keep the hot paths off SQLite:

- ``KeyIndex`` of every stored PID and token prefix: an unknown one is answered 404
  without a query (a prefix hit still asks the database);
- bounded maps PID → token and token → record (balance, expiry) for claimed PIDs,
  filled on first use and replaced after every write that changes a record;
- the pending view (PIDs the wallet shows unconfirmed), replaced by each monitor poll;
- under REDEEM_PLAIN_PIDS=refuse, a ``KeyIndex`` of the payments a bare PID may claim: those
  credited before receipts, a set the migration fixed, so loading it at start is enough.

A receipt's PID takes the same memory-first path as a PID (storage derives its token). Under
``refuse`` a bare PID outside that set is answered as unknown before anything else is looked
at, the pending view included, and stays out of the negative cache (where it would hide the
payment from its receipt for a while).

Concurrent claims and debits are grouped (``batching``): while one batch is in SQLite,
new ones queue for the next, so N concurrent redeems cost one transaction, not N.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping

from anonticket.ledger.answers import ASK_STORAGE, Claimed, Pending, AskStorage
from anonticket.ledger.batching import KeyedBatcher, SequenceBatcher
from anonticket.ledger.credentials import Credentials
from anonticket.ledger.cache import BoundedMap, TtlSet
from anonticket.domain.ids import PaymentId, Receipt, ServiceToken, Transfer
from anonticket.domain.errors import InvalidRequest, PaymentNotFound, TokenNotFound, Underpaid
from anonticket.ledger.key_index import KeyIndex
from anonticket.storage import (
    ClaimRow,
    CreditResult,
    DebitOutcome,
    DebitRequest,
    Storage,
    TokenRow,
    TopupOutcome,
    is_storable_text,
    unix_now,
)

log = logging.getLogger("anonticket.ledger")

_RECORD_CACHE_CAPACITY = 200_000


class Ledger:
    def __init__(
        self,
        storage: Storage,
        *,
        min_payment: int,
        min_confirmations: int,
        negative_cache: TtlSet[bytes],
        price_per_day: int | None = None,
        on_negative_cache_hit: Callable[[], None] = lambda: None,
        clock: Callable[[], int] = unix_now,
        credentials: Credentials | None = None,
        plain_pids: str = "refuse",
    ) -> None:
        self.storage = storage
        self.credentials = credentials  # keys and recent revocations, loaded with the rest
        # REDEEM_PLAIN_PIDS: "refuse" (a bare PID claims only what _plain_pids holds) or "allow"
        self.refuse_plain = plain_pids == "refuse"
        self.min_payment = min_payment
        self.min_confirmations = min_confirmations
        self.price_per_day = price_per_day
        self.negative_cache = negative_cache
        self._on_negative_cache_hit = on_negative_cache_hit
        self.clock = clock
        self._known_pids = KeyIndex()
        self._known_tokens = KeyIndex()
        self._plain_pids = KeyIndex()
        self._claimed: BoundedMap[bytes, bytes] = BoundedMap(_RECORD_CACHE_CAPACITY)
        self._records: BoundedMap[bytes, TokenRow] = BoundedMap(_RECORD_CACHE_CAPACITY)
        self._pending: dict[bytes, int] = {}
        # bumped after every commit that changes a cached record, so a read that raced
        # with a write does not put the stale row it read into the cache
        self._write_version = 0
        self._claims: KeyedBatcher[bytes | Receipt, ClaimRow] = KeyedBatcher(
            self._claim_batch, lambda row: row.claimed_now)
        self._debits: SequenceBatcher[DebitRequest, DebitOutcome] = SequenceBatcher(
            self._debit_batch)

    async def load(self) -> None:
        """Build the prefix indexes from the database (start-up)."""
        self._known_pids.replace(await self.storage.load_pid_prefixes())
        self._known_tokens.replace(await self.storage.load_token_prefixes())
        if self.credentials is not None:
            await self.credentials.load(self.storage)
        if self.refuse_plain:
            self._plain_pids.replace(await self.storage.load_plain_pid_prefixes())
        log.info("loaded %d payments (%d claimable by a bare PID) and %d tokens",
                 len(self._known_pids), len(self._plain_pids) if self.refuse_plain
                 else len(self._known_pids), len(self._known_tokens))

    # ------------------------------------------------------------------ redeem
    async def redeem(self, claim: PaymentId | Receipt) -> Claimed | Pending:
        answer = await self.redeem_or_none(claim)
        if answer is None:
            raise PaymentNotFound()
        return answer

    async def redeem_or_none(self, claim: PaymentId | Receipt) -> Claimed | Pending | None:
        """``redeem``, with None for an unknown PID: in a flood of random PIDs raising
        and catching the 404 cost more than finding out (docs/benchmarks.md)."""
        if isinstance(claim, Receipt):
            raw, receipt = claim.pid_raw, claim
        elif self.plain_pid_refused(claim.raw):
            return None
        else:
            raw, receipt = claim.raw, None
        answer = self.redeem_from_memory(raw)
        if answer is ASK_STORAGE:
            return await self.redeem_from_storage(raw, receipt)
        return answer  # type: ignore[return-value]

    def plain_pid_refused(self, raw: bytes) -> bool:
        """Whether a bare PID is answered as unknown whatever is stored or pending for it:
        REDEEM_PLAIN_PIDS=refuse and no payment credited before receipts has its prefix.
        One bisect, before the caches: a PID thief learns nothing, not even by timing."""
        return self.refuse_plain and not self._plain_pids.might_contain(raw)

    def redeem_from_memory(self, raw: bytes) -> Claimed | Pending | None | AskStorage:
        """What memory alone can answer (already claimed, pending, certainly unknown), or
        ``ASK_STORAGE``; synchronous, so the hot answers cost no coroutine."""
        token = self._claimed.get(raw)
        if token is not None:
            record = self._records.get(token)
            if record is not None:
                return Claimed("already_claimed", token, record)
            return ASK_STORAGE
        pending = self._pending.get(raw)
        if pending is None and raw in self.negative_cache:
            self._on_negative_cache_hit()
            return None
        if not self._known_pids.might_contain(raw):
            # nothing credited yet: answer from memory, no SQLite round trip
            if pending is not None:
                return Pending(pending, self.min_confirmations)
            self._remember_unknown(raw)
            return None
        return ASK_STORAGE

    async def redeem_from_storage(self, raw: bytes, receipt: Receipt | None = None
                                  ) -> Claimed | Pending | None:
        """The rest of ``redeem_or_none``, after ``redeem_from_memory`` said ``ASK_STORAGE``:
        ``raw`` is the PID, ``receipt`` the receipt it derives from (None: a bare PID, which
        the caller has checked with ``plain_pid_refused``)."""
        pending = self._pending.get(raw)
        row, won = await self._claims.submit(raw if receipt is None else receipt)
        if row is not None and row.status == 1 and row.record is not None:
            return Claimed("success" if won else "already_claimed", row.record.token, row.record)
        if pending is not None or (pending := self._pending.get(raw)) is not None:
            return Pending(pending, self.min_confirmations)
        if row is None:
            self._remember_unknown(raw)
            return None
        raise Underpaid(balance=row.amount, minimum=self.min_payment)

    def _unknown_pid_answer(self, raw: bytes) -> Pending | None | AskStorage:
        """For a PID memory knows has no payment row (no credited PID has its prefix, or
        the negative cache holds it), what it is: pending or unknown (None). Otherwise
        ``ASK_STORAGE``. The same rules as ``redeem_from_memory``'s, without its claims."""
        pending = self._pending.get(raw)
        if pending is None and raw in self.negative_cache:
            self._on_negative_cache_hit()
            return None
        if self._known_pids.might_contain(raw):
            return ASK_STORAGE
        if pending is not None:
            return Pending(pending, self.min_confirmations)
        self._remember_unknown(raw)
        return None

    def _remember_unknown(self, raw: bytes) -> None:
        self.negative_cache.add(raw)

    async def _claim_batch(self, claims: list[bytes | Receipt]) -> Mapping[bytes | Receipt, ClaimRow]:
        try:
            rows = await self.storage.claim_payments(
                claims, self.min_payment, self.clock(), refuse_plain=self.refuse_plain)
        finally:
            self._write_version += 1
        # no await from here on: the caches are updated before any other write can start.
        # A claim only creates rows (nothing cached can go stale by it), so a failed one
        # drops nothing; every claimed row's token is indexed, not only one claimed now:
        # the retry of a claim whose answer was lost reads it as claimed before
        for claim, row in rows.items():
            record = row.record
            if row.status == 1 and record is not None:
                self._known_tokens.add(record.token)
                self._records.put(record.token, record)
                self._claimed.put(claim if isinstance(claim, bytes) else claim.pid_raw,
                                  record.token)
        return rows

    async def peek(self, claim: PaymentId | Receipt) -> tuple[ClaimRow | None, int | None]:
        """A payment's stored row and its pending confirmations, without claiming it (the
        checkout's status page): what a redeem would find, the same rule for a bare PID."""
        if isinstance(claim, Receipt):
            raw, refuse = claim.pid_raw, False
        elif self.plain_pid_refused(claim.raw):
            return None, None
        else:
            raw, refuse = claim.raw, self.refuse_plain
        row = await self.storage.get_claim(raw, refuse_plain=refuse)
        return row, self._pending.get(raw)

    # ------------------------------------------------------------------ top-ups
    async def topup(self, token: ServiceToken, claim: PaymentId | Receipt
                    ) -> TopupOutcome | Pending | None:
        """Add a paid PID's credit to a token (by its receipt, or by the bare PID under the
        same rule as redeem). None: the PID is unknown (nothing confirmed or pending);
        ``Pending`` while its payment waits for confirmations.

        An unknown PID is answered from memory, as redeem does: otherwise anyone holding
        one token could queue a write transaction per random PID ahead of the operator's
        debits."""
        if not self._known_tokens.might_contain(token.raw):
            return TopupOutcome("token_not_found")
        if isinstance(claim, Receipt):
            pid, refuse = claim.pid, False
        elif self.plain_pid_refused(claim.raw):
            return None
        else:
            pid, refuse = claim, self.refuse_plain
        unknown = self._unknown_pid_answer(pid.raw)
        if unknown is not ASK_STORAGE:
            return unknown  # type: ignore[return-value]
        try:
            outcome = await self.storage.topup_token(
                token.raw, pid.raw, self.min_payment, self.clock(), refuse_plain=refuse)
        except BaseException:
            self._records.pop(token.raw)  # the outcome is unknown: it may have topped up
            raise
        finally:
            self._write_version += 1
        pending = self._pending.get(pid.raw)
        if outcome.kind == "pending_or_unknown":
            if pending is None:
                self._remember_unknown(pid.raw)
                return None
            return Pending(pending, self.min_confirmations)
        if outcome.kind == "topped_up" and outcome.record is not None:
            self._records.put(token.raw, outcome.record)
            self._claimed.put(pid.raw, token.raw)
        elif outcome.kind == "underpaid" and pending is not None:
            return Pending(pending, self.min_confirmations)  # more is on its way, as redeem says
        return outcome

    # ------------------------------------------------------------------ tokens
    async def introspect(self, token: ServiceToken) -> TokenRow:
        record = await self.find_token(token)
        if record is None:
            raise TokenNotFound()
        return record

    def cached_token(self, raw: bytes) -> TokenRow | None:
        """The record if this process has it in memory; None says nothing either way."""
        return self._records.get(raw)

    def token_certainly_unknown(self, raw: bytes) -> bool:
        """True when no issued token has this one's prefix: a 404 without I/O."""
        return not self._known_tokens.might_contain(raw)

    async def find_token(self, token: ServiceToken) -> TokenRow | None:
        """``introspect``, with None for an unknown token (no exception on the hot 404)."""
        raw = token.raw
        record = self._records.get(raw)
        if record is not None:
            return record
        if not self._known_tokens.might_contain(raw):
            return None
        version = self._write_version
        record = await self.storage.get_token(raw)
        if record is None:
            return None
        if version == self._write_version:
            self._records.put(raw, record)
        return record

    async def revoke(
        self, token: ServiceToken, reason: str | None, abuse_score: int | None
    ) -> TokenRow:
        now = self.clock()
        try:
            record = await self.storage.revoke_token(token.raw, reason, abuse_score, now)
        except BaseException:
            if self.credentials is not None:  # it may have committed: refuse its credentials
                self.credentials.revocations.add(token.raw, now)
            raise
        finally:
            self._write_version += 1
            self._records.pop(token.raw)
        if record is None:
            raise TokenNotFound()
        self._records.put(token.raw, record)
        if self.credentials is not None and record.revoked_at is not None:
            self.credentials.revocations.add(token.raw, record.revoked_at)
        return record

    # ------------------------------------------------------------------ debits
    async def debit(self, request: DebitRequest) -> DebitOutcome:
        """Apply one debit exactly once (batched with concurrent ones into one transaction).

        An unknown token is answered without a transaction; everything else, replays
        included, is decided inside one, so a replay can never race its original.
        Text the database cannot store is refused here, before the request joins a
        batch: inside one it would fail every debit in it, other customers' included.
        """
        if not (request.memo is None or is_storable_text(request.memo)) or not (
                request.key is None or is_storable_text(request.key)):
            raise InvalidRequest("memo and Idempotency-Key must be valid Unicode text "
                                 "without U+0000")
        if not self._known_tokens.might_contain(request.token):
            return DebitOutcome(404, {"error": "token_not_found"})
        return await self._debits.submit(request)

    async def _debit_batch(self, requests: list[DebitRequest]) -> list[DebitOutcome]:
        try:
            outcomes = await self.storage.apply_debits(requests, self.clock())
        except BaseException:
            for request in requests:  # the outcome is unknown: any of them may be spent
                self._records.pop(request.token)
            raise
        finally:
            self._write_version += 1
        for request, outcome in zip(requests, outcomes, strict=True):
            if outcome.record is not None:
                self._records.put(request.token, outcome.record)
        return outcomes

    # ------------------------------------------------------------------ monitor
    @property
    def pending_view(self) -> Mapping[bytes, int]:
        return self._pending

    def set_pending(self, pending: Mapping[bytes, int]) -> list[bytes]:
        """Replace the pending view; returns the PIDs that were not pending before."""
        new = [pid for pid in pending if pid not in self._pending]
        self._pending = dict(pending)
        for pid in new:
            self.negative_cache.discard(pid)
        return new

    async def credit(self, transfers: Iterable[Transfer], scanned_height: int | None) -> CreditResult:
        """Credit confirmed transfers and move the cursor atomically, then refresh the views.

        The views take what is stored, not only what this call credited: every incoming PID
        enters the known-PID index and leaves the negative cache, and every cached token an
        incoming PID is claimed onto is replaced by its stored row (``CreditResult.stored``).
        A credit whose COMMIT landed but whose answer was lost raises here; the monitor then
        sends the same transfers again, which finds them all stored and credits nothing new,
        and this is what still brings its PIDs and tokens into the views. Until then the
        failed call has indexed the PIDs (at worst a redeem asks the database once more)
        and dropped the cached rows of the tokens this process knows them claimed onto.

        The write and the refresh run as one shielded task, and a cancel (the monitor
        stopping) waits for it before it propagates. aiosqlite commits on its own thread,
        so a cancel arriving during the COMMIT stops only the await, not the commit: the
        credit would be in the database but not in the views, and its PID answered 404
        from memory until a restart. The wait is that one write at most, bounded like any
        write by the write lock and the busy timeout.
        """
        transfers = tuple(transfers)
        pids = [t.pid.raw for t in transfers]

        async def write_then_refresh() -> CreditResult:
            try:
                result = await self.storage.credit_transfers(
                    transfers, scanned_height, self.clock(), self.price_per_day)
            except BaseException:
                self._credit_unknown(pids)
                raise
            finally:
                self._write_version += 1
            self._index_pids(pids)
            records = self._records
            for token, record in result.stored.items():
                if records.get(token) is not None:
                    records.put(token, record)
            return result

        work = asyncio.ensure_future(write_then_refresh())
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            while not work.done():
                try:
                    await asyncio.wait((work,))  # a wait, unlike an await, never cancels work
                except asyncio.CancelledError:
                    pass  # cancelled again: still the same answer, after the write
            if not work.cancelled():
                work.exception()  # retrieved: a failed write was rolled back, the cancel wins
            raise

    def _index_pids(self, pids: list[bytes]) -> None:
        """Every PID a credit was given may be stored now: into the "maybe" index, out of
        the negative cache (``add_many`` skips a PID already indexed)."""
        self._known_pids.add_many(pids)
        discard = self.negative_cache.discard
        for pid in pids:
            discard(pid)

    def _credit_unknown(self, pids: list[bytes]) -> None:
        """A credit raised: it may have committed. Its PIDs are indexed as if it had (if
        it did not, a redeem asks the database and finds nothing), and the cached rows of
        the tokens this process knows them claimed onto are dropped. A cached token whose
        claim this process never saw (introspected only) is refreshed by the retry."""
        self._index_pids(pids)
        for pid in pids:
            token = self._claimed.get(pid)
            if token is not None:
                self._records.pop(token)
