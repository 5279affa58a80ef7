"""Standards cryptography and wire formats, one small module per standard.

Pure code over pycryptodome and the standard library: no I/O, no storage, no aiohttp and no
other anonticket module, so each module can be read beside its RFC and proven by the RFC's own
vectors and by an independent implementation (tests/test_blind_rsa.py, tests/interop/).
"""
