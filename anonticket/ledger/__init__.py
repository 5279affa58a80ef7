"""The in-memory views over storage and the rules that keep them true.

``views`` (``Ledger``: redeem, introspection, top-ups, debits and crediting, with the caches
updated after each commit), ``answers`` (what a redeem answers: claimed, pending, or "ask
storage"), ``key_index`` (the compact "certainly unknown" index of PID and
token prefixes), ``cache`` (the negative PID cache with a TTL, the bounded record map),
``batching`` (concurrent claims and debits grouped into one storage call). Memory is a cache
of storage, never a second truth: what a write touched is re-read or dropped when its
outcome is unknown.

May import: crypto, domain, config, storage.
"""
