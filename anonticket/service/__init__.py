"""The running service, wired: what starts, in which order, and how it stops.

``app`` (open the database, build both applications, start the listeners and the
background tasks, stop them in order), ``leadership`` (active/passive on PostgreSQL: the
leader lock and what changes on taking over or stepping down), ``housekeeping`` (expiry
notices and pruning, off the request path), ``unix_socket`` (never steal a live socket,
never clobber a file), ``sd_notify`` (systemd readiness).

May import: crypto, domain, config, storage, ledger, monero, runtime, api, monitor, webhooks.
"""
