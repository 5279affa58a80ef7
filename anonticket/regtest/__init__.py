"""A private, offline regtest Monero network for tests and the sandbox.

Stdlib only and independent of the service code, so the service is tested against
the real monerod / monero-wallet-rpc 0.18 rather than against itself::

    net = RegtestNetwork.start(tmpdir, owner_pid=os.getpid())
    paid = net.pay("0123456789abcdef", 10**12)      # in the merchant's pool view now
    net.mine(10)                                    # 10 confirmations
    net.stop()

``network`` starts, attaches and stops the processes; ``actions`` pays, mines,
reorganises and double-spends; ``watchdog`` stops a network whose owner died.

It stands alone: only ``cli`` (the sandbox) imports it, and tests do.

May import: nothing.
"""

from anonticket.regtest.errors import RegtestError
from anonticket.regtest.network import MERCHANT_KEYS, PAYER_KEYS, RegtestNetwork
from anonticket.regtest.process import ensure_monero_installed
from anonticket.regtest.rpc import RpcError

__all__ = ["MERCHANT_KEYS", "PAYER_KEYS", "RegtestError", "RegtestNetwork", "RpcError", "ensure_monero_installed"]
