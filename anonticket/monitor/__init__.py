"""The wallet monitor (``loop``): the poll loop that turns transfers into redeemable credit.

A start/stop pair: each poll reads monero-wallet-rpc (``monero``), credits what is
confirmed through the ledger in one transaction with the cursor, and replaces the pending
view; readiness reads its status from ``State``. It never imports the API or the webhook
sender: they meet in ``runtime``.

May import: crypto, domain, config, storage, ledger, monero, runtime.
"""
