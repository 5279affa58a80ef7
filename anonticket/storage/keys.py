"""Signing keys: the ones anonticket generates for itself (credentials; later the Privacy
Pass issuer's), kept where every instance of a deployment finds them.

Generic over ``purpose``: each purpose has at most one key *in force* (``retired_at`` NULL:
the one signing now, or published and about to). Rotation retires it at the new key's
``not_before`` and records until when what it signed can still be presented
(``expires_at``); housekeeping deletes a key after that. Reads go to the reader connection,
which sees the last commit; every write is one ``BEGIN IMMEDIATE`` transaction, so a key
and the retirement of its predecessor land together or not at all.
"""

from __future__ import annotations

from anonticket.storage.core import StorageCore
from anonticket.storage.rows import SIGNING_KEY_COLUMNS, SigningKeyRow

_INSERT = f"""INSERT INTO signing_keys ({SIGNING_KEY_COLUMNS})
              VALUES (?, ?, ?, ?, ?, ?, NULL, NULL)"""


def _values(key: SigningKeyRow) -> tuple[object, ...]:
    return (key.key_id, key.purpose, key.secret, key.public, key.created_at, key.not_before)


class SigningKeyStore(StorageCore):
    async def list_signing_keys(self, purpose: str | None = None) -> list[SigningKeyRow]:
        """Every stored key (of ``purpose``), oldest first (of two that start in the same
        second, the one retired in it first)."""
        if purpose is None:
            rows = await self._read(
                f"""SELECT {SIGNING_KEY_COLUMNS} FROM signing_keys
                    ORDER BY not_before, retired_at IS NULL, key_id""")
        else:
            rows = await self._read(
                f"""SELECT {SIGNING_KEY_COLUMNS} FROM signing_keys WHERE purpose = ?
                    ORDER BY not_before, retired_at IS NULL, key_id""", (purpose,))
        return [SigningKeyRow(*row) for row in rows]

    async def add_first_signing_key(self, key: SigningKeyRow) -> bool:
        """Store ``key`` as its purpose's key in force unless one is in force already;
        True if it was stored. What a start does when it finds no key: two starts at once
        (or a start and a rotation) keep exactly one."""
        async with self._transaction() as db:
            cursor = await db.execute(
                f"""INSERT INTO signing_keys ({SIGNING_KEY_COLUMNS})
                    SELECT ?, ?, ?, ?, ?, ?, NULL, NULL
                    WHERE NOT EXISTS (SELECT 1 FROM signing_keys
                                      WHERE purpose = ? AND retired_at IS NULL)""",
                (*_values(key), key.purpose))
            return cursor.rowcount == 1

    async def rotate_signing_key(self, key: SigningKeyRow, *, verify_secs: int,
                                 drop_previous: bool = False) -> None:
        """Make ``key`` its purpose's key in force from ``key.not_before`` on, in one
        transaction with what that means for the others:

        - a key that has not started signing (``not_before`` after ``key.created_at``, the
          moment of the rotation) and would only start at or after ``key.not_before`` never
          signs: deleted;
        - a key that signs until later (the one in force, or one an earlier rotation retired
          in the future) is retired at that moment, and verifies for ``verify_secs`` more;
        - ``drop_previous`` (a compromised key) deletes every other key of the purpose at
          once: nothing they signed verifies any more.
        """
        async with self._transaction() as db:
            if drop_previous:
                await db.execute("DELETE FROM signing_keys WHERE purpose = ?", (key.purpose,))
            else:
                await db.execute(
                    """DELETE FROM signing_keys
                       WHERE purpose = ? AND not_before >= ? AND not_before > ?""",
                    (key.purpose, key.not_before, key.created_at))
                await db.execute(
                    """UPDATE signing_keys SET retired_at = ?1, expires_at = ?1 + ?2
                       WHERE purpose = ?3 AND (retired_at IS NULL OR retired_at > ?1)""",
                    (key.not_before, verify_secs, key.purpose))
            await db.execute(_INSERT, _values(key))

    async def remove_expired_signing_keys(self, now: int) -> int:
        """Delete the keys whose last signature has expired by ``now``; returns how many.
        A probe on the reader first: housekeeping asks often and almost always finds none."""
        probe = await self._read(
            "SELECT 1 FROM signing_keys WHERE expires_at <= ? LIMIT 1", (now,))
        if not probe:
            return 0
        async with self._transaction() as db:
            cursor = await db.execute("DELETE FROM signing_keys WHERE expires_at <= ?", (now,))
            return cursor.rowcount
