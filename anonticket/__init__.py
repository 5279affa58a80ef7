"""anonticket: anonymous access tokens sold for Monero."""
