"""The customer's side of Privacy Pass: fetch blind-signed tokens from an anonticket issuer,
keep them in a private file, spend one as an ``Authorization`` header
(``privacy_pass``). Standard library and pycryptodome only (through ``anonticket.crypto``),
so a script imports it with nothing of the service installed; ``bin/anonticket client``
(``cli``) is its command line.

Placed just below ``cli`` so the command can import it; it uses ``crypto`` alone
(tests/cli/test_client_cli.py checks it).

May import: crypto, domain, config, storage, ledger, monero, runtime, api, monitor, webhooks, service.
"""
