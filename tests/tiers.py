"""The two tiers of the suite: the full one (what CI runs) and the quick one (``--quick``).

conftest.py marks the heavy tests from what they use and leaves them out of the quick tier.
The helpers that start a heavy part by hand (a PostgreSQL cluster, nginx, Caddy, a browser)
call ``starting`` first, so a test that starts one without a fixture conftest knows is left
out of the quick tier too, with the reason in the summary, instead of slowing it down.
docs/testing.md describes both tiers.
"""

from __future__ import annotations

# set once by conftest.py's pytest_configure from --quick
QUICK = False


def starting(part: str) -> None:
    """Skip the calling test in the quick tier: it is about to start ``part``."""
    if QUICK:
        import pytest  # here, not at the top: bench/ imports pg_cluster without pytest running

        pytest.skip(f"starts {part}: not in the quick tier (docs/testing.md)")
