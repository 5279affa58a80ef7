"""The HTTP layer: thin handlers and pages over ``State``; errors rendered in one place.

``request`` (what every handler shares: the State key, bounded body reading, JSON answers),
``errors`` (the one error renderer and the middlewares), ``public`` (redeem, introspection,
health), ``balance`` (top-ups and debits), ``gateway`` (the proxies' check), ``internal``
(the operator's routes), ``webhooks`` (the outbox's admin routes), ``checkout``, ``access``,
``pages`` and ``forms`` (the no-JS pages), ``access_cookie`` (the access cookie's name per
request), ``standby`` (a passive instance's 503), ``access_log`` (a log line without a
token). It never imports the monitor or the webhook sender: they meet in ``runtime``.

May import: crypto, domain, config, storage, ledger, monero, runtime.
"""
