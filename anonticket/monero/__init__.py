"""The wallet RPC client, transfer scanning and the merchant's address."""
