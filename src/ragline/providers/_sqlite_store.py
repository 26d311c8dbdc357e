"""One SQLite file of a small embedded store (conversations, feedback): a connection
opened on first use with the store's schema, and every call a transaction on the thread
bridge under the caller's lifetime."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from ..lifetime import Lifetime
from ..threads import ThreadBridge

__all__ = ["SqliteStore"]

T = TypeVar("T")


class SqliteStore:
    """The file at ``path`` with ``schema`` (``CREATE … IF NOT EXISTS`` statements)."""

    schema = ""

    def __init__(self, path: str | Path, bridge: ThreadBridge) -> None:
        self.path = Path(path)
        self.bridge = bridge
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    async def open(self, lifetime: Lifetime) -> None:
        """Create or open the file."""
        await self.bridge.call(lifetime, self._run, lambda db: None)

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """``work`` in one transaction (BEGIN IMMEDIATE: a writer of another process waits
        for the lock instead of failing halfway), on the one connection."""
        with self._lock:
            if self._db is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
                db.execute("PRAGMA busy_timeout = 5000")
                db.executescript(self.schema)
                self._db = db
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                out = work(db)
            except BaseException:  # rolled back whatever the error, then raised again
                if db.in_transaction:  # some errors have rolled it back already
                    db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            return out

    async def _call(self, lifetime: Lifetime, work: Callable[[sqlite3.Connection], T]) -> T:
        return await self.bridge.call(lifetime, self._run, work)
