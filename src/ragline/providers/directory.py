"""Who exists and what they may read: the principal store and the grant store.

Shared state like the run log: :class:`PrincipalStore` and :class:`GrantStore` have an
embedded implementation (a SQLite file beside the records, :mod:`.sqlite_directory`), a
PostgreSQL one that every replica shares (:mod:`.postgres_directory`) and one in memory
(:mod:`.inprocess`, for an application that mounts ragline's middleware); one conformance
suite holds them to this. :func:`ragline.backend.build_backend` picks one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from ..access import Grant, Principal
from ..lifetime import Lifetime

__all__ = ["GrantStore", "PrincipalStore"]


@runtime_checkable
class PrincipalStore(Protocol):
    """Principals and the digests of their keys (never a key itself)."""

    async def add_principal(self, principal: Principal, digest: str, lifetime: Lifetime) -> bool:
        """Add ``principal`` with its key's digest; False if the name is taken."""
        ...

    async def principals(self, lifetime: Lifetime) -> list[Principal]:
        """Every principal, by name."""
        ...

    async def find_key(self, digest: str, lifetime: Lifetime) -> Principal | None:
        """The principal whose key has this digest."""
        ...

    async def replace_key(self, name: str, digest: str, lifetime: Lifetime) -> bool:
        """Give ``name`` a new key (the old one stops working); False if no such name."""
        ...

    async def remove_principal(self, name: str, lifetime: Lifetime) -> bool:
        """Revoke ``name`` and its key; False if no such name."""
        ...


@runtime_checkable
class GrantStore(Protocol):
    """Who may read and write each collection."""

    async def grant(self, collection: str, lifetime: Lifetime) -> Grant | None:
        """The grant of ``collection``, if it has one."""
        ...

    async def grants(self, lifetime: Lifetime) -> dict[str, Grant]:
        """Every collection's grant."""
        ...

    async def claim(self, collection: str, creator: str, lifetime: Lifetime) -> Grant:
        """The grant of ``collection``, made with ``creator`` as its owner (access not
        set) if it had none: the first writer of a new collection owns it."""
        ...

    async def set_grant(
        self,
        collection: str,
        read: Sequence[str],
        write: Sequence[str],
        lifetime: Lifetime,
        *,
        creator: str,
    ) -> Grant:
        """Set who may read and write ``collection`` (``creator`` owns it if it had no
        owner yet); the grant as it now is."""
        ...
