"""The ledger's rules that both SQL dialects apply the same way: pure functions over rows, no I/O.

Each dialect's module reads what a decision needs, calls in here, and writes the result with
its own SQL, so "SQLite and PostgreSQL debit, credit and check the ledger alike" holds by
construction, not by two copies kept in step:

- ``plan_debits``: a batch of debits decided in order, each against the balance the earlier
  ones left, with Idempotency-Key replays and conflicts;
- ``plan_claims``, ``claim_token`` and ``visible_row``: a batch of claims (bare PIDs and
  receipts) split by kind, each claimed payment's token, and which stored rows a bare PID
  may see under REDEEM_PLAIN_PIDS=refuse;
- ``refuse_topup``: whether a top-up may claim a PID onto a token, or what it answers instead;
- ``claim_row``: a PID's state as a redeem answers it;
- ``credits_per_pid`` and ``credits_per_token``: a credit's new transfers summed per PID
  (and the earliest transfer kept for the token's derivation), then per token for the PIDs
  already claimed;
- ``LEDGER_INVARIANTS`` and ``ledger_report``: what ``db check`` counts, in SQL that means the
  same on both (grouped scans, ``MATERIALIZED`` CTEs, boolean comparisons).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from anonticket.domain.ids import PaymentId, Receipt, Transfer, derive_receipt_token, derive_service_token
from anonticket.storage.rows import ClaimRow, DebitOutcome, DebitRequest, TokenRow, TopupOutcome
from anonticket.domain.timestamp import MAX_CREDIT_SECONDS, MAX_TIMESTAMP, SECONDS_PER_DAY

# (token, key) -> (request digest, status, body) of an answer stored or given in this batch
Answers = dict[tuple[bytes, str | None], tuple[bytes, int, dict[str, Any]]]


def seconds_bought(amount: int, price_per_day: int | None) -> int | None:
    """What ``amount`` piconero buys at the price in force, at most ``MAX_CREDIT_SECONDS``
    (anonticket/domain/timestamp.py); None is unlimited time."""
    if price_per_day is None:
        return None
    return min(amount * SECONDS_PER_DAY // price_per_day, MAX_CREDIT_SECONDS)


def add_seconds(bought: int | None, more: int | None) -> int | None:
    """Two credits' seconds as one credit: capped like each; None (unlimited) wins."""
    return None if bought is None or more is None else min(bought + more, MAX_CREDIT_SECONDS)


def expiry_after(now: int, seconds: int | None) -> int | None:
    """The expiry of a token issued at ``now`` with ``seconds`` bought (None: no limit),
    never past ``MAX_TIMESTAMP``. The SQL twins: each dialect's ``_EXTEND_EXPIRY``."""
    return None if seconds is None else min(now + min(seconds, MAX_CREDIT_SECONDS), MAX_TIMESTAMP)


# ---------------------------------------------------------------------- debits
def decide_debit(record: TokenRow, amount: int, now: int,
                 final_only: bool = False) -> tuple[int, dict[str, Any]]:
    """A debit's refusal, or 200 with the body to be filled in once applied.

    ``final_only`` (private-token issuance) also refuses a token holding provisional credit,
    after the balance (waiting for the confirmations would not cure a 402)."""
    status = record.status(now)
    if status == "revoked":
        return 403, {"error": "token_revoked"}
    if status == "withdrawn":
        return 403, {"error": "payment_withdrawn"}
    if status == "expired":
        return 403, {"error": "token_expired"}
    if record.remaining < amount:
        return 402, {"error": "insufficient_balance", "remaining": record.remaining}
    if final_only and record.provisional:
        return 403, {"error": "token_provisional"}
    return 200, {}


@dataclass(slots=True)
class DebitPlan:
    """A batch decided: the answers in request order and what makes them true.

    ``applied`` holds each granted debit with its answer's body, whose ``debit_id`` the
    dialect fills in (``number``) once it knows the ids; the same dict is the body of the
    outcome and of the stored key, so both show the id. ``keyed`` is every answer to store
    under its Idempotency-Key, ``spent`` each debited token's spent afterwards.
    """

    outcomes: list[DebitOutcome]
    applied: list[tuple[DebitRequest, dict[str, Any]]]
    keyed: list[tuple[DebitRequest, int, dict[str, Any]]]
    spent: dict[bytes, int]

    def number(self, ids: Iterable[int]) -> None:
        for debit_id, (_, body) in zip(ids, self.applied, strict=True):
            body["debit_id"] = debit_id


def plan_debits(requests: Sequence[DebitRequest], records: dict[bytes, TokenRow],
                answers: Answers, now: int) -> DebitPlan:
    """Decide every request in order, against the balance the earlier ones left.

    ``records`` are the tokens' rows and ``answers`` the stored answers of the batch's keys,
    as read inside the transaction (both are updated as the batch goes). Per (token, key)
    the first answer counts: the same request again replays it, another one is a 422; an
    unknown token is a 404 and stores nothing (it has no scope to keep a key in).
    """
    plan = DebitPlan([], [], [], {})
    outcomes, applied, keyed = plan.outcomes, plan.applied, plan.keyed
    for request in requests:
        scope = (request.token, request.key)
        if request.key is not None and scope in answers:
            digest, status, body = answers[scope]
            if digest != request.request_digest:
                outcomes.append(DebitOutcome(422, {"error": "idempotency_key_reused"}))
            else:
                outcomes.append(DebitOutcome(status, body, replayed=True))
            continue
        record = records.get(request.token)
        if record is None:
            outcomes.append(DebitOutcome(404, {"error": "token_not_found"}))
            continue
        status, body = decide_debit(record, request.amount, now, request.final_only)
        if status == 200:
            record = record.with_spent(record.spent + request.amount)
            records[request.token] = record
            plan.spent[request.token] = record.spent
            body = {"debit_id": None, "amount": request.amount,
                    "remaining": record.remaining, "expires_at": record.expires_at}
            applied.append((request, body))
        if request.key is not None:
            answers[scope] = (request.request_digest, status, body)
            keyed.append((request, status, body))
        outcomes.append(DebitOutcome(status, body, record=record))
    return plan


# ---------------------------------------------------------------------- claims and top-ups
# what a redeem claims with: a bare PID (its 32 raw bytes) or the receipt its PID derives from
Claim = bytes | Receipt


def claim_pid(claim: Claim) -> bytes:
    """The raw PID of the payment a claim is for."""
    return claim if isinstance(claim, bytes) else claim.pid_raw


@dataclass(slots=True)
class ClaimPlan:
    """A batch of claims by kind: ``by_receipt`` maps each PID a receipt claims to the first
    such receipt, ``plain`` holds the bare PIDs no receipt of the batch claims. A receipt
    claim goes first, so a bare PID given at the same moment (REDEEM_PLAIN_PIDS=allow)
    finds the payment claimed and its receipt-derived token, never the reverse."""

    by_receipt: dict[bytes, Receipt]
    plain: set[bytes]

    def claimant(self, pid: bytes) -> Claim:
        """The claim a payment claimed by this batch's UPDATE answers."""
        return self.by_receipt.get(pid, pid)


def plan_claims(claims: Iterable[Claim]) -> ClaimPlan:
    by_receipt: dict[bytes, Receipt] = {}
    plain: set[bytes] = set()
    for claim in claims:
        if isinstance(claim, bytes):
            plain.add(claim)
        else:
            by_receipt.setdefault(claim.pid_raw, claim)
    return ClaimPlan(by_receipt, plain - by_receipt.keys())


def claim_token(claim: Claim, pid: bytes, txid: bytes) -> bytes:
    """The token of the payment ``pid`` claimed now by ``claim``, from its earliest transfer
    ``txid``: ``SHA3-256(receipt-tag || receipt || txid)`` for a receipt,
    ``SHA3-256("<pid hex>|<txid hex>")`` for a bare PID (anonticket/domain/ids.py)."""
    if isinstance(claim, bytes):
        return derive_service_token(PaymentId(pid), txid.hex()).raw
    return derive_receipt_token(claim.raw, txid).raw


def visible_row(claim: Claim, found: tuple[int, ClaimRow] | None, refuse_plain: bool
                ) -> ClaimRow | None:
    """The row a claim that claimed nothing now is answered with: ``found`` is the stored
    (plain_pid_ok, row) of its PID. Under ``refuse_plain`` a bare PID does not see a
    payment that is not marked plain_pid_ok: it is answered as an unknown PID."""
    if found is None:
        return None
    plain_pid_ok, row = found
    if refuse_plain and isinstance(claim, bytes) and not plain_pid_ok:
        return None
    return row


def claim_row(status: int, amount: int, token_columns: Sequence[Any]) -> ClaimRow:
    """A PID's state read with its token's columns (NULLs while unclaimed), not claimed now."""
    token = token_columns[0]
    record = TokenRow(*token_columns) if token is not None else None
    return ClaimRow(status, amount, token, claimed_now=False, record=record)


def refuse_topup(token: bytes, own_pid: bytes, record: TokenRow, pid: bytes, status: int,
                 amount: int, owner: bytes | None, min_amount: int) -> TopupOutcome | None:
    """What a top-up of ``token`` (its own PID ``own_pid``, its row ``record``) with the
    payment ``pid`` (``status``, ``amount``, claimed onto ``owner``) answers without
    changing anything, or None when the PID is to be claimed onto the token. A retry of a
    top-up that went through finds the PID on this token and answers as the first time."""
    if status == 1:
        if owner == token and pid != own_pid:
            return TopupOutcome("topped_up", amount, record)
        return TopupOutcome("pid_already_claimed", amount)
    if record.revoked_at is not None:
        return TopupOutcome("token_revoked", amount)
    if amount < min_amount:
        return TopupOutcome("underpaid", amount)
    return None


# ---------------------------------------------------------------------- credits
@dataclass(slots=True)
class PidCredit:
    """One PID's share of a credit: the sum, the earliest transfer (lowest height, then
    txid: the one its token derives from while unclaimed) and the seconds bought (each
    transfer priced on its own; None: unlimited)."""

    txid: bytes
    amount: int
    first_height: int
    seconds: int | None


def credits_per_pid(fresh: Iterable[Transfer], price_per_day: int | None
                    ) -> dict[bytes, PidCredit]:
    per_pid: dict[bytes, PidCredit] = {}
    for t in fresh:
        bought = seconds_bought(t.amount, price_per_day)
        credit = per_pid.get(t.pid.raw)
        if credit is None:
            per_pid[t.pid.raw] = PidCredit(t.txid, t.amount, t.height, bought)
            continue
        credit.amount += t.amount
        credit.seconds = add_seconds(credit.seconds, bought)
        if (t.height, t.txid) < (credit.first_height, credit.txid):
            credit.txid, credit.first_height = t.txid, t.height
    return per_pid


def credits_per_token(owners: Iterable[tuple[bytes, bytes]], per_pid: dict[bytes, PidCredit]
                      ) -> dict[bytes, tuple[int, int | None]]:
    """(piconero, seconds) each token gains from the claimed PIDs among ``per_pid``;
    ``owners`` are (pid, token) pairs. Several PIDs may share a token (top-ups); seconds
    are None (unlimited) as soon as one of its credits buys unlimited time."""
    deltas: dict[bytes, tuple[int, int | None]] = {}
    for pid, token in owners:
        credit = per_pid[pid]
        amount, seconds = deltas.get(token, (0, 0))
        seconds = add_seconds(seconds, credit.seconds)
        deltas[token] = (amount + credit.amount, seconds)
    return deltas


# ---------------------------------------------------------------------- db check
# each invariant: (what a non-zero count means, the query counting its violations)
LEDGER_INVARIANTS = (
    ("PIDs have transfers but no payment row",
     """SELECT count(*) FROM (SELECT pid FROM transfers
                             UNION SELECT pid FROM provisional_credits WHERE state = 0) AS s
        WHERE NOT EXISTS (SELECT 1 FROM payments AS p WHERE p.pid = s.pid)"""),
    # a payment holds its confirmed transfers and its provisional credits (not withdrawn
    # ones: a claimed payment whose only credit was withdrawn holds 0)
    ("payments differ from the sum of their transfers",
     """WITH sums AS MATERIALIZED (
            SELECT pid, sum(amount) AS total
            FROM (SELECT pid, amount FROM transfers
                  UNION ALL SELECT pid, amount FROM provisional_credits WHERE state = 0) AS c
            GROUP BY pid)
        SELECT count(*) FROM payments AS p LEFT JOIN sums USING (pid)
        WHERE coalesce(sums.total, 0) != p.amount"""),
    ("claimed payments have no token, or unclaimed ones have one",
     """SELECT count(*) FROM payments
        WHERE (status = 1) != (token IS NOT NULL)
           OR (token IS NOT NULL AND NOT EXISTS
                 (SELECT 1 FROM service_tokens AS t WHERE t.token = payments.token))"""),
    # lost: what withdrawn provisional credits had already spent, never taken back
    ("tokens differ from the sum of their payments",
     """WITH sums AS MATERIALIZED (
            SELECT token, sum(amount) AS total FROM payments WHERE token IS NOT NULL
            GROUP BY token)
        SELECT count(*) FROM service_tokens AS t LEFT JOIN sums USING (token)
        WHERE sums.total IS NULL OR sums.total + t.lost != t.amount"""),
    ("debits belong to no token",
     """SELECT count(*) FROM debits AS d
        WHERE NOT EXISTS (SELECT 1 FROM service_tokens AS t WHERE t.token = d.token)"""),
    ("tokens' spent differs from the sum of their debits",
     """WITH sums AS MATERIALIZED (SELECT token, sum(amount) AS total FROM debits GROUP BY token)
        SELECT count(*) FROM service_tokens AS t LEFT JOIN sums USING (token)
        WHERE coalesce(sums.total, 0) != t.spent OR t.spent > t.amount"""),
    ("payments' or tokens' provisional counts differ from their provisional credits",
     """WITH per_pid AS MATERIALIZED (
            SELECT pid, count(*) AS n FROM provisional_credits WHERE state = 0 GROUP BY pid),
        per_token AS MATERIALIZED (
            SELECT token, sum(provisional) AS n FROM payments WHERE token IS NOT NULL
            GROUP BY token)
        SELECT (SELECT count(*) FROM payments AS p LEFT JOIN per_pid USING (pid)
                WHERE coalesce(per_pid.n, 0) != p.provisional)
             + (SELECT count(*) FROM service_tokens AS t LEFT JOIN per_token USING (token)
                WHERE coalesce(per_token.n, 0) != t.provisional)"""),
    ("the provisional total differs from the sum of the provisional credits",
     """SELECT count(*) FROM provisional_outstanding
        WHERE amount != (SELECT coalesce(sum(amount), 0) FROM provisional_credits
                         WHERE state = 0)"""),
    ("tokens marked withdrawn still hold credit",
     """SELECT count(*) FROM service_tokens WHERE withdrawn = 1 AND amount != lost"""),
)


def ledger_report(counts: Sequence[int]) -> list[str]:
    """``db check``'s lines for the violations counted by ``LEDGER_INVARIANTS``, in order."""
    return [f"{count} {what}" for (what, _), count in zip(LEDGER_INVARIANTS, counts, strict=True)
            if count]
