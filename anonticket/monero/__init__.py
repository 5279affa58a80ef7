"""Talking to Monero: the wallet client and what its answers mean.

``wallet_rpc`` (the monero-wallet-rpc JSON-RPC client: one session, a deadline on every
call, typed errors with fixed texts), ``scan`` (what one ``get_transfers`` answer means:
pure), ``merchant`` (the operator's primary address, from the setting and the wallet,
checked), ``gc_pause`` (the garbage collector paused around decoding a big answer: here,
beside the wallet client that first needs it, and below the monitor that also does).
Nothing here keeps a cursor or writes: the monitor drives these.

May import: crypto, domain, config, storage, ledger.
"""
