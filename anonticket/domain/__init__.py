"""Pure values and rules, no I/O: what the rest of the house computes with.

``ids`` (payment IDs, service tokens, the derivation between them, their pseudonyms),
``amount`` (XMR as exact text and integer piconero), ``address`` (the Monero address
codec), ``payment_uri`` (the ``monero:`` URI), ``payment_request`` (what a customer is
asked to pay, with its QR code), ``webhook`` (Standard Webhooks messages and signatures),
``timestamp`` (the time horizon every stored time stays under, and RFC 3339 stamps),
``errors`` (every error with its HTTP status, code and fixed message). Secrets print as
placeholders and error texts are fixed strings, so none can reach a log or a body.

May import: crypto.
"""
