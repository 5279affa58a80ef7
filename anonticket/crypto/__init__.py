"""Standards cryptography and wire formats, one small module per standard.

Pure code over pycryptodome and the standard library: no I/O, no storage, no aiohttp and no
other anonticket module, so each module reads beside its standard, uses its names, and is proven
by the standard's own vectors (tests/vectors/) and by an independent implementation in a test.
"""
