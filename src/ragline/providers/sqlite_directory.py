"""The embedded principal store and grant store (:class:`SqliteDirectory`): a small
SQLite file beside the records. ``ragline principals`` may write it while a server runs
(WAL mode; each call is one short statement), and the server sees the change on its next
lookup."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from ..access import Grant, Principal
from ..lifetime import Lifetime
from ._sqlite_store import SqliteStore

__all__ = ["SqliteDirectory"]


_SCHEMA = """
PRAGMA journal_mode = WAL;
CREATE TABLE IF NOT EXISTS principals (
    name TEXT PRIMARY KEY, groups TEXT NOT NULL, admin INTEGER NOT NULL,
    key_digest TEXT NOT NULL UNIQUE, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS collection_grants (
    collection TEXT PRIMARY KEY, readers TEXT NOT NULL, writers TEXT NOT NULL,
    creator TEXT, is_set INTEGER NOT NULL);
"""
_GRANT = "SELECT collection, readers, writers, creator, is_set FROM collection_grants"


class SqliteDirectory(SqliteStore):
    """:class:`~ragline.providers.directory.PrincipalStore` and
    :class:`~ragline.providers.directory.GrantStore` in one SQLite file; each call runs
    on the thread bridge under the caller's lifetime."""

    schema = _SCHEMA

    async def _rows(self, lifetime: Lifetime, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        return await self._call(lifetime, lambda db: db.execute(sql, args).fetchall())

    # -- principals --------------------------------------------------------------------
    async def add_principal(self, principal: Principal, digest: str, lifetime: Lifetime) -> bool:
        rows = await self._rows(
            lifetime,
            "INSERT INTO principals VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (name) DO NOTHING RETURNING name",
            principal.name,
            json.dumps(sorted(principal.groups)),
            int(principal.admin),
            digest,
            time.time(),
        )
        return bool(rows)

    async def principals(self, lifetime: Lifetime) -> list[Principal]:
        rows = await self._rows(
            lifetime, "SELECT name, groups, admin FROM principals ORDER BY name"
        )
        return [_principal(row) for row in rows]

    async def find_key(self, digest: str, lifetime: Lifetime) -> Principal | None:
        rows = await self._rows(
            lifetime, "SELECT name, groups, admin FROM principals WHERE key_digest = ?", digest
        )
        return _principal(rows[0]) if rows else None

    async def replace_key(self, name: str, digest: str, lifetime: Lifetime) -> bool:
        rows = await self._rows(
            lifetime,
            "UPDATE principals SET key_digest = ? WHERE name = ? RETURNING name",
            digest,
            name,
        )
        return bool(rows)

    async def remove_principal(self, name: str, lifetime: Lifetime) -> bool:
        rows = await self._rows(
            lifetime, "DELETE FROM principals WHERE name = ? RETURNING name", name
        )
        return bool(rows)

    # -- grants ------------------------------------------------------------------------
    async def grant(self, collection: str, lifetime: Lifetime) -> Grant | None:
        rows = await self._rows(lifetime, _GRANT + " WHERE collection = ?", collection)
        return _grant(rows[0]) if rows else None

    async def grants(self, lifetime: Lifetime) -> dict[str, Grant]:
        return {row[0]: _grant(row) for row in await self._rows(lifetime, _GRANT)}

    async def claim(self, collection: str, creator: str, lifetime: Lifetime) -> Grant:
        await self._rows(
            lifetime,
            "INSERT INTO collection_grants VALUES (?, '[]', '[]', ?, 0) "
            "ON CONFLICT (collection) DO NOTHING",
            collection,
            creator,
        )
        found = await self.grant(collection, lifetime)
        assert found is not None  # just made, and grants are never deleted
        return found

    async def set_grant(
        self,
        collection: str,
        read: Sequence[str],
        write: Sequence[str],
        lifetime: Lifetime,
        *,
        creator: str,
    ) -> Grant:
        rows = await self._rows(
            lifetime,
            "INSERT INTO collection_grants VALUES (?, ?, ?, ?, 1) "
            "ON CONFLICT (collection) DO UPDATE SET readers = excluded.readers, "
            "writers = excluded.writers, "
            "creator = COALESCE(collection_grants.creator, excluded.creator), "
            "is_set = 1 RETURNING collection, readers, writers, creator, is_set",
            collection,
            json.dumps(list(read)),
            json.dumps(list(write)),
            creator,
        )
        return _grant(rows[0])


def _principal(row: tuple[Any, ...]) -> Principal:
    return Principal(str(row[0]), frozenset(json.loads(row[1])), bool(row[2]))


def _grant(row: tuple[Any, ...]) -> Grant:
    return Grant(tuple(json.loads(row[1])), tuple(json.loads(row[2])), row[3])
