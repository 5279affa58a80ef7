"""The webhook sender (``sender``): delivers the outbox's due events, signed at every attempt.

A start/stop pair working from the database only, so a restart resumes exactly what was
not delivered. The events themselves are written by storage (``storage.events``) inside
the transaction of the change they report; their format and signature are
``domain.webhook``. It never imports the API or the monitor.

May import: crypto, domain, config, storage, ledger, monero, runtime.
"""
