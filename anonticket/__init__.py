"""anonticket: anonymous access tokens sold for Monero.

The folders are the layers and the capabilities; each ``__init__.py`` says what its package
owns and what it may import, and docs/architecture.md draws the whole house::

    crypto/    standards cryptography, one module per standard (PASETO, credentials, blind RSA,
               Privacy Pass): no other anonticket module, so a service can import a verifier alone
    domain/    pure values and rules: PIDs and tokens, amounts, the address codec, payment URIs,
               webhook messages, the errors that carry their HTTP status
    config/    every setting declared once -> a frozen Config
    storage/   the only SQL: one interface, a module per part and per dialect, the schema files
    ledger/    the in-memory views over storage (known PIDs and tokens, record caches, batching)
    monero/    the wallet RPC client, transfer scanning, the merchant's address
    runtime/   what the running parts share: the State object, the metrics
    api/       the HTTP handlers and pages           monitor/   the wallet poll loop
    webhooks/  the outbox's sender
    service/   wiring: the app, leadership, housekeeping, sockets, systemd notify
    client/    the customer's Privacy Pass client (fetch, store, spend tokens): crypto only
    cli/       the command line, the admin client, the sandbox
    regtest/   a private regtest Monero network for tests and the sandbox (stdlib only)

Imports go one way, down this line, and never in a circle, not even inside a package
(tests/docs/test_layers.py)::

    crypto ← domain ← config ← storage ← ledger ← monero ← runtime ← {api, monitor, webhooks} ← service ← client ← cli

The three in braces never import each other (they meet in ``runtime.State``); ``regtest``
imports nothing of the service and only ``cli`` imports it; nothing below ``api`` imports
``aiohttp.web``. This file imports nothing.
"""
