"""Standards cryptography and wire formats, one small module per standard: PASETO v4.public
with its PASERK keys and the credential signer/verifier built on it; RFC 9474 blind RSA and the
Privacy Pass (RFC 9576–9578) token type 0x0002 messages and HTTP headers.

Pure code over pycryptodome and the standard library: no I/O, no storage, no aiohttp and no
other anonticket module, so a third-party service can import a verifier from here with nothing
else installed, each module reads beside its standard and uses its names, and each is proven by
the standard's own vectors (tests/vectors/) and by an independent implementation in a test.

May import: nothing.
"""
