"""The principal store and grant store on PostgreSQL (:class:`PostgresDirectory`),
shared by every replica; composed on their :class:`~ragline.providers.postgres.PostgresPool`."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from ..access import Grant, Principal
from ..lifetime import Lifetime
from .postgres import PostgresPool

__all__ = ["PostgresDirectory"]

_GRANT = "SELECT collection, readers, writers, creator, set FROM collection_grants"


class PostgresDirectory:
    """:class:`~ragline.providers.directory.PrincipalStore` and
    :class:`~ragline.providers.directory.GrantStore` on PostgreSQL."""

    def __init__(self, pool: PostgresPool) -> None:
        self.pool = pool

    # -- principals --------------------------------------------------------------------
    async def add_principal(self, principal: Principal, digest: str, lifetime: Lifetime) -> bool:
        rows = await self.pool.rows(
            lifetime,
            "INSERT INTO principals VALUES (%s, %s, %s, %s, %s) "
            "ON CONFLICT (name) DO NOTHING RETURNING name",
            (principal.name, sorted(principal.groups), principal.admin, digest, time.time()),
        )
        return bool(rows)

    async def principals(self, lifetime: Lifetime) -> list[Principal]:
        rows = await self.pool.rows(
            lifetime, "SELECT name, groups, admin FROM principals ORDER BY name"
        )
        return [_principal(row) for row in rows]

    async def find_key(self, digest: str, lifetime: Lifetime) -> Principal | None:
        rows = await self.pool.rows(
            lifetime, "SELECT name, groups, admin FROM principals WHERE key_digest = %s", (digest,)
        )
        return _principal(rows[0]) if rows else None

    async def replace_key(self, name: str, digest: str, lifetime: Lifetime) -> bool:
        rows = await self.pool.rows(
            lifetime,
            "UPDATE principals SET key_digest = %s WHERE name = %s RETURNING name",
            (digest, name),
        )
        return bool(rows)

    async def remove_principal(self, name: str, lifetime: Lifetime) -> bool:
        rows = await self.pool.rows(
            lifetime, "DELETE FROM principals WHERE name = %s RETURNING name", (name,)
        )
        return bool(rows)

    # -- grants ------------------------------------------------------------------------
    async def grant(self, collection: str, lifetime: Lifetime) -> Grant | None:
        rows = await self.pool.rows(lifetime, _GRANT + " WHERE collection = %s", (collection,))
        return _grant(rows[0]) if rows else None

    async def grants(self, lifetime: Lifetime) -> dict[str, Grant]:
        rows = await self.pool.rows(lifetime, _GRANT)
        return {row[0]: _grant(row) for row in rows}

    async def claim(self, collection: str, creator: str, lifetime: Lifetime) -> Grant:
        rows = await self.pool.rows(
            lifetime,
            "WITH new AS (INSERT INTO collection_grants VALUES (%s, '{}', '{}', %s, false) "
            "ON CONFLICT (collection) DO NOTHING RETURNING *) "
            f"SELECT * FROM new UNION ALL {_GRANT} WHERE collection = %s",
            (collection, creator, collection),
        )
        return _grant(rows[0])

    async def set_grant(
        self,
        collection: str,
        read: Sequence[str],
        write: Sequence[str],
        lifetime: Lifetime,
        *,
        creator: str,
    ) -> Grant:
        rows = await self.pool.rows(
            lifetime,
            "INSERT INTO collection_grants AS g VALUES (%s, %s, %s, %s, true) "
            "ON CONFLICT (collection) DO UPDATE SET readers = excluded.readers, "
            "writers = excluded.writers, creator = COALESCE(g.creator, excluded.creator), "
            "set = true RETURNING *",
            (collection, list(read), list(write), creator),
        )
        return _grant(rows[0])


def _principal(row: Any) -> Principal:
    return Principal(str(row[0]), frozenset(row[1]), bool(row[2]))


def _grant(row: Any) -> Grant:
    return Grant(tuple(row[1]), tuple(row[2]), row[3])
