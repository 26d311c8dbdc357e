"""PostgreSQL, shared by every replica and worker: one connection pool that the record
store, the job store and the coordination stores (:mod:`ragline.providers.postgres_records`,
:mod:`ragline.providers.postgres_shared`) are composed on.

psycopg 3 (async) over a connection pool. Each query runs in the caller's task, under
its lifetime: when that is cancelled, psycopg sends PostgreSQL a cancel request for the
running query and waits for it, so nothing keeps running on the server for nobody.

The schema comes from the numbered SQL files in ``providers/migrations/``, applied once
each, in order, under an advisory lock (so replicas that start together apply it once),
and recorded in ``ragline_migrations``.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from importlib import resources
from typing import TYPE_CHECKING, Any

import anyio

from ..errors import Unavailable, UpstreamError
from ..lifetime import Lifetime
from ..settings import redact

if TYPE_CHECKING:
    from psycopg import AsyncConnection
    from psycopg_pool import AsyncConnectionPool

__all__ = ["NOTICE_CHANNEL", "PostgresPool", "migrations"]

# pg_advisory_xact_lock key: "ragline" in ASCII, so other applications' keys do not clash.
_MIGRATION_LOCK = 0x7261676C696E65
# The one channel every notice travels on (LISTEN/NOTIFY); the payload says what.
NOTICE_CHANNEL = "ragline"


def migrations() -> list[tuple[int, str, str]]:
    """The schema's migrations as (version, name, SQL), in order."""
    folder = resources.files("ragline.providers") / "migrations"
    found = []
    for entry in folder.iterdir():
        match = re.fullmatch(r"(\d+)_(\w+)\.sql", entry.name)
        if match:
            found.append((int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    return sorted(found)


class PostgresPool:
    """A pool of connections to the PostgreSQL at ``url``, with the schema brought up to
    date when it opens. The stores built on it share it; it opens and closes once."""

    def __init__(self, url: str, *, pool_size: int = 10, connect_timeout: float = 5.0) -> None:
        self.url = url
        self.pool_size = pool_size
        self.connect_timeout = connect_timeout
        self._pool: AsyncConnectionPool[Any] | None = None

    def __repr__(self) -> str:
        return f"PostgresPool({redact(self.url)!r})"

    # -- life --------------------------------------------------------------------------
    async def open(self, lifetime: Lifetime) -> None:
        """Connect, and bring the schema up to date. An unreachable server raises
        :class:`~ragline.errors.Unavailable` naming it (its password withheld)."""
        from psycopg import Error
        from psycopg_pool import AsyncConnectionPool

        await lifetime.checkpoint()
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            self.url,
            min_size=1,
            max_size=self.pool_size,
            open=False,
            timeout=self.connect_timeout,
            kwargs={"autocommit": True, "connect_timeout": max(1, round(self.connect_timeout))},
            name="ragline",
        )
        try:
            await pool.open(wait=True, timeout=self.connect_timeout)
            async with pool.connection() as conn:
                await _migrate(conn)
        except Error as exc:
            with anyio.move_on_after(2, shield=True):
                await pool.close(timeout=1)
            raise self.error_for(exc) from None
        except BaseException:
            with anyio.move_on_after(2, shield=True):
                await pool.close(timeout=1)
            raise
        self._pool = pool

    async def aclose(self) -> None:
        """Close the pool."""
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close(timeout=1)

    def error_for(self, exc: Exception) -> UpstreamError:
        """psycopg's error as ours: a lost or refused connection is :class:`Unavailable`
        (503), any other a 502; the server named, its password withheld."""
        from psycopg import OperationalError

        where = redact(self.url)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        reason = reason.replace(self.url, where)
        if isinstance(exc, OperationalError):
            return Unavailable(f"PostgreSQL at {where} is unreachable: {reason}")
        return UpstreamError(f"PostgreSQL at {where}: {reason}")

    # -- queries -----------------------------------------------------------------------
    @asynccontextmanager
    async def connection(
        self, lifetime: Lifetime, *, transaction: bool = False
    ) -> AsyncIterator[AsyncConnection[Any]]:
        """A pooled connection for the block (in one transaction with ``transaction``)."""
        from psycopg import Error

        await lifetime.checkpoint()
        if self._pool is None:
            raise Unavailable(f"PostgreSQL at {redact(self.url)} is not connected")
        try:
            async with self._pool.connection() as conn:
                if transaction:
                    async with conn.transaction():
                        yield conn
                else:
                    yield conn
        except Error as exc:
            raise self.error_for(exc) from None

    async def rows(
        self, lifetime: Lifetime, sql: str, args: Sequence[Any] | Mapping[str, Any] = ()
    ) -> list[Any]:
        """The rows of one query."""
        async with self.connection(lifetime) as conn:
            cursor = await conn.execute(sql, args)
            return await cursor.fetchall()

    async def execute(
        self, lifetime: Lifetime, sql: str, args: Sequence[Any] | Mapping[str, Any] = ()
    ) -> None:
        """Run one statement."""
        async with self.connection(lifetime) as conn:
            await conn.execute(sql, args)

    async def listen(
        self, lifetime: Lifetime, *, ready: Callable[[], Awaitable[None]] | None = None
    ) -> AsyncIterator[str]:
        """The payloads sent on :data:`NOTICE_CHANNEL` by any process, on a connection of
        its own (LISTEN ties it up). ``ready`` runs once listening, to catch up with what
        came before."""
        from psycopg import AsyncConnection, Error

        await lifetime.checkpoint()
        try:
            conn = await AsyncConnection.connect(self.url, autocommit=True)
        except Error as exc:
            raise self.error_for(exc) from None
        try:
            await conn.execute(f"LISTEN {NOTICE_CHANNEL}")
            if ready is not None:
                await ready()
            async for notice in conn.notifies():
                yield notice.payload
        except Error as exc:
            raise self.error_for(exc) from None
        finally:
            with anyio.move_on_after(1, shield=True):
                await conn.close()


async def _migrate(conn: AsyncConnection[Any]) -> None:
    """Apply the migrations not applied yet, in one transaction, one replica at a time."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS ragline_migrations (version integer PRIMARY KEY, "
            "name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        cursor = await conn.execute("SELECT version FROM ragline_migrations")
        done = {row[0] for row in await cursor.fetchall()}
        for version, name, sql in migrations():
            if version not in done:
                await conn.execute(sql.encode())
                await conn.execute(
                    "INSERT INTO ragline_migrations (version, name) VALUES (%s, %s)",
                    (version, name),
                )
