"""Standards cryptography, one module per scheme: PASETO v4.public with its PASERK keys, and the
credential verifier built on it (and, beside them, RFC 9474 blind RSA).

Pure standards code: pycryptodome and the standard library only — no aiohttp, no storage, no
project types — so a third-party service can import a verifier from here with nothing else
installed, and each module can be read against its specification's own steps and names.
"""
