"""The command line: ``anonticket`` and its subcommands.

``parser`` (argparse and ``main``, the entry point), ``command`` (what each subcommand
does), ``credential`` (``keys`` and ``credential fetch``), ``admin_client`` (the internal
listener's HTTP client), ``maintenance`` (``db
backup`` and ``db check``), ``sandbox`` (the whole payment flow on a regtest chain). Heavy
imports happen inside the commands that need them, so ``--help`` and ``pid new`` start fast.

May import: crypto, domain, config, storage, ledger, monero, runtime, api, monitor, webhooks,
service, regtest.
"""
