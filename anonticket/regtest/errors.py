"""The one exception the regtest fixture raises (its RPC error is a subclass)."""


class RegtestError(Exception):
    """The regtest network could not be started, reached or driven as asked.

    Messages name processes, ports, heights and log tails, never a payment id or txid.
    """
