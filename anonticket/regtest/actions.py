"""What a test does to a running network: mine, pay, reorganise, double-spend.

Every action holds the directory lock and refreshes both wallets before it returns,
so the merchant's ``get_transfers`` already shows the result and tests sharing one
network never see each other half way. Log lines name heights and counts only:
payment ids and txids are secrets in this project, even on a test chain.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator
from typing import Any, Protocol

from anonticket.regtest.errors import RegtestError
from anonticket.regtest.process import DirLock
from anonticket.regtest.rpc import RpcClient, RpcError

log = logging.getLogger("anonticket.regtest")


class RunningNetwork(Protocol):
    """What an action needs of a running network. ``network.RegtestNetwork`` is one; it
    imports this module (its methods are these actions), so the arrow points from the
    network to its actions and never back."""

    daemon: RpcClient
    merchant: RpcClient
    payer: RpcClient
    payer_address: str
    auto_refresh_seconds: int
    lock: DirLock

    def height(self) -> int: ...


NO_PAYMENT_ID = "0000000000000000"
# Regtest fees are ~0.003 XMR; the reserve also covers a transfer with many inputs.
FEE_RESERVE = 5 * 10**10
# 20 blocks unlock 20 more coinbase outputs (~280 XMR) and every change output
# older than 10 blocks: another ~20 payments.
REFILL_BLOCKS = 20
MAX_REFILLS = 10
_HEX = frozenset("0123456789abcdef")


def sync(net: RunningNetwork) -> None:
    net.payer.call("refresh")
    net.merchant.call("refresh")


def generate(net: RunningNetwork, n: int, address: str | None = None) -> list[str]:
    """Mine without syncing (callers sync once at the end); the new block hashes."""
    reply = net.daemon.call("generateblocks", {"amount_of_blocks": n, "wallet_address": address or net.payer_address},
                            timeout=60.0 + n)
    return list(reply.get("blocks") or [])


def wait_until_minable(net: RunningNetwork, txids: list[str], timeout: float = 10.0) -> None:
    """Wait until the next block template includes every txid.

    monerod leaves a just-relayed transaction out of new block templates for a moment
    (its Dandelion++ stem state ends on another thread), so mining right after a transfer
    can miss it and land it one block later.
    """
    deadline = time.monotonic() + timeout
    while txids:
        template = net.daemon.call("get_block_template",
                                   {"wallet_address": net.payer_address, "reserve_size": 0})
        blob = str(template.get("blocktemplate_blob", ""))
        if all(txid in blob for txid in txids):
            return
        if time.monotonic() > deadline:
            # best effort: mining now may land the transaction a block later, as before
            log.warning("a transaction is not in the block template after %.0fs; mining anyway",
                        timeout)
            return
        time.sleep(0.02)


@contextlib.contextmanager
def merchant_refresh_paused(net: RunningNetwork) -> Iterator[None]:
    """Keep the merchant's 1 s background refresh from seeing an intermediate state
    (a popped chain, a pool tx flushed and put back)."""
    period = net.auto_refresh_seconds
    if period:
        net.merchant.call("auto_refresh", {"enable": False})
    try:
        yield
    finally:
        if period:
            net.merchant.call("auto_refresh", {"enable": True, "period": period})


def pool_txids_to_mine(net: RunningNetwork) -> list[str]:
    """The pool's transactions the next block should take: all but those the daemon saw
    double-spent (a block never takes one of those, so waiting for it would be vain)."""
    reply = net.daemon.path("/get_transaction_pool", {})
    return [str(tx["id_hash"]) for tx in reply.get("transactions") or []
            if not tx.get("double_spend_seen")]


def mine(net: RunningNetwork, n: int) -> int:
    """Mine n blocks, the first one with every transaction waiting in the pool.

    A payment made just before (``pay`` and then ``mine 2``, the sandbox's own steps) then
    has exactly n confirmations: mining at once used to land it one block late now and
    then, while monerod still kept it out of block templates.
    """
    if n < 1:
        raise RegtestError("mine needs n >= 1")
    with net.lock:
        wait_until_minable(net, pool_txids_to_mine(net))
        generate(net, n)
        sync(net)
        return net.height()


def pay(net: RunningNetwork, pid16: str, amount: int, *, mine: int = 0, double_spend_attempt: bool = False,
        unlock_time: int = 0) -> dict[str, Any]:
    """Pay ``amount`` piconero to the merchant's integrated address for ``pid16``.

    ``double_spend_attempt``: a conflicting tx is tried at once and rejected, so the
    merchant first meets the payment with ``double_spend_seen`` true (wallet-rpc 0.18
    never updates that flag for a pool tx it has already seen). ``unlock_time`` (a
    block height, or a unix time when >= 500000000) makes a time-locked payment;
    wallet-rpc 0.18 accepts it and reports it in ``get_transfers``.
    Returns txid, amount, fee, payment_id, address and ``height``, the daemon block
    count afterwards: with ``mine=0`` that is the height the tx will be mined at.
    """
    pid = pid16.lower()
    if len(pid) != 16 or not set(pid) <= _HEX:
        raise RegtestError("the payment id must be 16 hex characters (an integrated-address payment id)")
    integrated = net.merchant.call("make_integrated_address", {"payment_id": pid})["integrated_address"]
    return _transfer(net, integrated, amount, mine=mine, double_spend_attempt=double_spend_attempt,
                     unlock_time=unlock_time, extra={"payment_id": pid})


def pay_subaddress(net: RunningNetwork, amount: int, *, mine: int = 0) -> dict[str, Any]:
    """Pay a newly created merchant subaddress; the merchant sees payment id 0000000000000000."""
    with net.lock:
        sub = net.merchant.call("create_address", {"account_index": 0, "label": ""})
        return _transfer(net, sub["address"], amount, mine=mine,
                         extra={"payment_id": NO_PAYMENT_ID, "subaddr_index": {"major": 0, "minor": sub["address_index"]}})


def pay_address(net: RunningNetwork, address: str, amount: int, *, mine: int = 0) -> dict[str, Any]:
    return _transfer(net, address, amount, mine=mine)


def pay_many(net: RunningNetwork, destinations: list[tuple[str, int]], *, mine: int = 0) -> dict[str, Any]:
    """One transaction paying every (address, amount) of ``destinations``: what an exchange
    batching its customers' withdrawals sends (at most one integrated address among them)."""
    if not destinations:
        raise RegtestError("pay_many needs at least one destination")
    for _, amount in destinations:
        if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
            raise RegtestError("every amount must be a positive integer number of piconero")
    first = destinations[0][0]
    total = sum(amount for _, amount in destinations)
    return _transfer(net, first, total, mine=mine,
                     destinations=[{"amount": a, "address": d} for d, a in destinations])


def _transfer(net: RunningNetwork, address: str, amount: int, *, mine: int, double_spend_attempt: bool = False,
              unlock_time: int = 0, extra: dict[str, Any] | None = None,
              destinations: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        raise RegtestError("the amount must be a positive integer number of piconero (1 XMR = 10**12)")
    if mine < 0 or unlock_time < 0:
        raise RegtestError("mine and unlock_time must be >= 0")
    params: dict[str, Any] = {"destinations": destinations or [{"amount": amount, "address": address}],
                              "account_index": 0,
                              "priority": 0, "get_tx_key": True}
    if unlock_time:
        params["unlock_time"] = unlock_time
    with net.lock:
        net.payer.call("refresh")
        _ensure_spendable(net, amount)
        # the merchant must meet the tx only once it is already flagged
        paused = merchant_refresh_paused(net) if double_spend_attempt else contextlib.nullcontext()
        with paused:
            try:
                sent = net.payer.call("transfer", params)
            except RpcError as exc:
                if "not enough" not in exc.message.lower():
                    raise
                log.info("payer transfer refused (%s); mining %d blocks to unlock more outputs",
                         exc.message, REFILL_BLOCKS)
                generate(net, REFILL_BLOCKS)
                net.payer.call("refresh")
                sent = net.payer.call("transfer", params)
            result: dict[str, Any] = {"txid": sent["tx_hash"], "amount": sent["amount"], "fee": sent["fee"],
                                      "address": address, "unlock_time": unlock_time, **(extra or {})}
            if double_spend_attempt:
                attempt = _double_spend(net, sent["tx_hash"], "attempt")
                result["double_spend_attempt_txid"] = attempt["double_spend_txid"]
        if mine:
            wait_until_minable(net, [sent["tx_hash"]])
            generate(net, mine)
        sync(net)
        result["height"] = net.height()
        return result


def _ensure_spendable(net: RunningNetwork, amount: int) -> None:
    """Mine until the payer can afford ``amount``, so a long suite never runs dry."""
    for _ in range(MAX_REFILLS):
        balance = net.payer.call("get_balance", {"account_index": 0})
        unlocked = int(balance.get("unlocked_balance", 0))
        if unlocked >= amount + FEE_RESERVE:
            return
        log.info("payer has %.3f XMR unlocked, needs %.3f: mining %d blocks "
                 "(this also confirms the transactions waiting in the pool)",
                 unlocked / 1e12, (amount + FEE_RESERVE) / 1e12, REFILL_BLOCKS)
        generate(net, REFILL_BLOCKS)
        net.payer.call("refresh")
    raise RegtestError(f"the payer still cannot afford {amount} piconero after mining "
                       f"{MAX_REFILLS * REFILL_BLOCKS} blocks")


def reorg(net: RunningNetwork, depth: int, *, drop: list[str] | tuple[str, ...] = (),
          move_by: int | None = None) -> dict[str, Any]:
    """Replace the top ``depth`` blocks by ``depth + 1`` new ones (a longer chain wins).

    Transactions of the popped blocks are re-mined at their original heights, except
    those in ``drop``: they vanish (the merchant forgets them), or with ``move_by=K``
    land K blocks later. They are re-submitted only once the new chain has grown back
    to their original height: monerod re-validates popped txs at the lower height,
    where a just-unlocked coinbase ring member is locked again, and never retries.
    """
    if depth < 1:
        raise RegtestError("reorg depth must be >= 1")
    if move_by is not None and move_by < 0:
        raise RegtestError("move_by must be >= 0")
    with net.lock:
        old_height = net.height()
        if depth >= old_height - 1:
            raise RegtestError(f"cannot pop {depth} of {old_height} blocks")
        fork = old_height - depth
        old_top = net.daemon.call("get_last_block_header")["block_header"]["hash"]
        popped = [(h, txid) for h in range(fork, old_height)
                  for txid in net.daemon.call("get_block", {"height": h}).get("tx_hashes") or []]
        txids = [txid for _, txid in popped]
        selected = set(drop)
        if not selected <= set(txids):
            raise RegtestError(f"{len(selected - set(txids))} of the transactions to drop are not in "
                               f"the top {depth} blocks")
        blobs = _fetch_blobs(net, txids)
        schedule: dict[int, list[str]] = {}  # offset from the fork -> txs to submit before that block
        plan: list[dict[str, Any]] = []
        for h, txid in popped:
            if txid in selected and move_by is None:
                plan.append({"txid": txid, "old_height": h, "action": "dropped"})
                continue
            offset = h - fork + (move_by if txid in selected and move_by else 0)
            schedule.setdefault(offset, []).append(txid)
            plan.append({"txid": txid, "old_height": h, "action": "moved" if txid in selected else "kept",
                         "expected_height": fork + offset})
        new_blocks = max(depth + 1, max(schedule, default=-1) + 1)
        rejected = 0
        mined: list[str] = []
        with merchant_refresh_paused(net):
            net.daemon.path("/pop_blocks", {"nblocks": depth})
            if txids:  # pop_blocks returned them to the pool
                net.daemon.call("flush_txpool", {"txids": txids})
            offset = 0
            while offset < new_blocks:
                accepted = []
                for txid in schedule.get(offset, []):
                    reply = net.daemon.path("/send_raw_transaction", {"tx_as_hex": blobs[txid]}, check=False)
                    rejected += reply.get("status") != "OK"
                    if reply.get("status") == "OK":
                        accepted.append(txid)
                if accepted:
                    wait_until_minable(net, accepted)
                following = min([o for o in schedule if o > offset] + [new_blocks])
                mined += generate(net, following - offset)
                offset = following
        _record_new_heights(net, plan)
        sync(net)
        if any(p["action"] == "dropped" for p in plan):
            # the payer spent outputs in the vanished txs: make them spendable again
            net.payer.call("rescan_spent")
        misplaced = [p for p in plan if p["action"] != "dropped" and p.get("new_height") != p["expected_height"]]
        if rejected or misplaced:
            raise RegtestError(f"reorg: {rejected} re-submitted transaction(s) rejected, "
                               f"{len(misplaced)} not at their planned height")
        return {"popped": depth, "fork_height": fork, "old_height": old_height, "old_top_hash": old_top,
                "new_height": net.height(), "new_top_hash": mined[-1] if mined else None,
                "new_blocks": len(mined), "txs": plan}


def _fetch_blobs(net: RunningNetwork, txids: list[str]) -> dict[str, str]:
    if not txids:
        return {}
    got = net.daemon.path("/get_transactions", {"txs_hashes": txids, "decode_as_json": False})
    blobs = {t["tx_hash"]: t["as_hex"] for t in got.get("txs") or [] if t.get("as_hex")}
    if len(blobs) != len(txids):
        raise RegtestError(f"could not fetch {len(txids) - len(blobs)} of the popped transactions")
    return blobs


def _record_new_heights(net: RunningNetwork, plan: list[dict[str, Any]]) -> None:
    kept = [p["txid"] for p in plan if p["action"] != "dropped"]
    if not kept:
        return
    got = net.daemon.path("/get_transactions", {"txs_hashes": kept, "decode_as_json": False})
    where = {t["tx_hash"]: None if t.get("in_pool") else t.get("block_height") for t in got.get("txs") or []}
    for p in plan:
        if p["action"] != "dropped":
            p["new_height"] = where.get(p["txid"])


def double_spend(net: RunningNetwork, txid: str, *, mode: str = "replace") -> dict[str, Any]:
    """A 0-conf double spend of a payer tx still in the pool.

    ``replace``: the tx vanishes from the pool, replaced by a conflicting payer->payer
    tx. ``attempt``: the conflicting tx is rejected and the original stays, flagged
    ``double_spend_seen`` by the daemon (the merchant wallet only shows the flag for a
    tx it had not seen yet: use ``pay(double_spend_attempt=True)`` for that).
    """
    if mode not in ("replace", "attempt"):
        raise RegtestError("double_spend mode must be 'replace' or 'attempt'")
    with net.lock:
        with merchant_refresh_paused(net):
            result = _double_spend(net, txid, mode)
        sync(net)
        result["height"] = net.height()
    return result


def _double_spend(net: RunningNetwork, txid: str, mode: str) -> dict[str, Any]:
    """Flush the tx, let the payer forget it spent those outputs, sign a sweep of one of
    them without relaying, then submit the sweep (and for ``attempt`` the original first)."""
    got = net.daemon.path("/get_transactions", {"txs_hashes": [txid], "decode_as_json": True})
    txs = got.get("txs") or []
    if not txs:
        raise RegtestError("the transaction to double-spend is unknown to the daemon")
    if not txs[0].get("in_pool"):
        raise RegtestError("the transaction to double-spend is already mined: use reorg(drop=...) instead")
    original = txs[0]["as_hex"]
    key_images = [vin["key"]["k_image"] for vin in json.loads(txs[0]["as_json"])["vin"] if "key" in vin]
    net.daemon.call("flush_txpool", {"txids": [txid]})
    net.payer.call("rescan_spent")
    sweep = net.payer.call("sweep_single", {"key_image": key_images[0], "address": net.payer_address,
                                            "do_not_relay": True, "get_tx_hex": True})
    if mode == "attempt":
        back = net.daemon.path("/send_raw_transaction", {"tx_as_hex": original}, check=False)
        if back.get("status") != "OK":
            raise RegtestError(f"could not put the original transaction back into the pool: {back.get('reason')}")
    reply = net.daemon.path("/send_raw_transaction", {"tx_as_hex": sweep["tx_blob"]}, check=False)
    net.payer.call("rescan_spent")
    if mode == "replace" and reply.get("status") != "OK":
        raise RegtestError(f"the daemon rejected the double spend: {reply.get('reason') or reply.get('status')}")
    if mode == "attempt" and not reply.get("double_spend"):
        raise RegtestError("expected the daemon to reject the double spend as such")
    return {"original_txid": txid, "double_spend_txid": sweep["tx_hash"], "mode": mode,
            "double_spend_relayed": reply.get("status") == "OK"}


def evict(net: RunningNetwork, txid: str) -> str:
    """Drop a tx from the daemon's pool without mining or replacing it, as a node does
    when its pool evicts a transaction (monerod's ``flush_txpool``, allowed on regtest);
    the merchant wallet then sees it nowhere. Returns its blob, for ``resubmit``: a
    transaction that left the pool can still be mined later, if anyone relays it again.
    Nothing spends its inputs meanwhile unless the payer is told to (``rescan_spent``)."""
    with net.lock:
        got = net.daemon.path("/get_transactions", {"txs_hashes": [txid], "decode_as_json": False})
        txs = got.get("txs") or []
        if not txs or not txs[0].get("in_pool"):
            raise RegtestError("the transaction to evict is not in the pool")
        blob = str(txs[0]["as_hex"])
        with merchant_refresh_paused(net):
            net.daemon.call("flush_txpool", {"txids": [txid]})
        sync(net)
    return blob


def resubmit(net: RunningNetwork, blob: str, txid: str) -> None:
    """Relay an evicted transaction again (``evict``): back in the pool, minable.

    A raw transaction the daemon takes over RPC may wait in its Dandelion++ stem state,
    out of every block template, far longer than a wallet's own transfer does (seen once:
    more than 30 s); ``relay_tx`` broadcasts it at once, so the next block can hold it."""
    with net.lock:
        reply = net.daemon.path("/send_raw_transaction", {"tx_as_hex": blob}, check=False)
        if reply.get("status") != "OK":
            raise RegtestError(f"the daemon refused the transaction again: {reply.get('reason')}")
        net.daemon.call("relay_tx", {"txids": [txid]})
        wait_until_minable(net, [txid], timeout=30.0)
        sync(net)
