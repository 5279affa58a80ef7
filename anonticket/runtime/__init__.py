"""What the running parts share, below all of them.

``state`` (``State``: the one object both listeners, the monitor and the senders hold —
config, ledger, merchant, metrics, the monitor's status, the webhook switch) and
``metrics`` (every Prometheus series, declared once and pre-registered). They sit below
the API, the monitor and the webhook sender, which all use them, so those three never need
each other; nothing here knows aiohttp.web.

May import: crypto, domain, config, storage, ledger, monero.
"""
