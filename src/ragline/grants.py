"""Who may read and write each collection, and what a search may return
(:class:`Grants`).

A collection belongs to its creator: its first writer, or whoever set its access first.
Until access is set, only the creator and admins may read or write it; the default
collection, seeded for everyone, is readable by every principal. Checks answer 404 to a
principal who may not read a collection (nothing reveals that it exists) and 403 to one
who may read but not write it. Every check reads the grant store, so a change takes
effect on the next request on every replica.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from .access import Grant, Principal, Readable, normalize_entries, principal_of
from .errors import Forbidden, InvalidRequest
from .lifetime import Lifetime
from .principals import Principals
from .providers import RecordStore
from .providers.directory import GrantStore

__all__ = ["Grants"]

log = logging.getLogger("ragline.access")


class Grants:
    """Collection grants, checked; the ACL classes a principal's search may return."""

    def __init__(
        self,
        store: GrantStore,
        records: RecordStore,
        principals: Principals,
        *,
        default_collection: str,
    ) -> None:
        self.store = store
        self.records = records
        self.principals = principals
        self.default_collection = default_collection

    def _unset(self, collection: str) -> Grant:
        """The grant of a collection nobody set access on."""
        return Grant(read=("*",)) if collection == self.default_collection else Grant()

    async def grant(self, collection: str, lifetime: Lifetime) -> Grant:
        """The grant ``collection`` is under now."""
        return await self.store.grant(collection, lifetime) or self._unset(collection)

    async def readable(self, lifetime: Lifetime, collection: str | None) -> Readable:
        """What the lifetime's principal may find in ``collection`` (404 if they may not
        read it at all)."""
        principal = principal_of(lifetime)
        if principal.admin:
            return Readable.everything()
        name = collection or self.default_collection
        (await self.grant(name, lifetime)).check(principal, "read", name)
        return Readable.of(principal, await self.records.acl_classes(name, lifetime))

    async def check_write(
        self, principal: Principal, collection: str | None, lifetime: Lifetime
    ) -> str:
        """Let ``principal`` write ``collection`` or refuse (404 or 403). A collection that
        does not exist yet becomes theirs. Its name."""
        name = collection or self.default_collection
        found = await self.store.grant(name, lifetime)
        if found is None and not principal.admin:
            if name == self.default_collection or await self._exists(name, lifetime):
                found = self._unset(name)
            else:
                found = await self.store.claim(name, principal.name, lifetime)
        if found is not None:
            found.check(principal, "write", name)
        return name

    async def set_access(
        self,
        principal: Principal,
        collection: str,
        read: Iterable[object],
        write: Iterable[object],
        lifetime: Lifetime,
    ) -> Grant:
        """``PUT /api/v1/collections/{name}/access``: its owner or an admin sets who may
        read and write it; every entry must name a known user or group (422)."""
        readers = normalize_entries(read, "read")
        writers = normalize_entries(write, "write")
        known = await self.principals.known(lifetime)
        unknown = sorted({*readers, *writers} - known - {"*"})
        if self.principals.oidc is not None:
            # An issuer's users and groups exist only in its tokens: nothing to check
            # them against here (a typo then grants nobody, rather than failing).
            unknown = []
        if unknown:
            raise InvalidRequest(
                f"unknown users or groups: {', '.join(unknown[:10])}", param="read"
            )
        found = await self.store.grant(collection, lifetime)
        exists = found is not None or await self._exists(collection, lifetime)
        current = found or (self._unset(collection) if exists else Grant(creator=principal.name))
        if not (principal.admin or current.creator == principal.name):
            current.check(principal, "read", collection)  # 404 unless they may read it
            raise Forbidden(
                f"only the owner of collection {collection!r} or an admin sets its access",
                code="not_collection_owner",
                principal=principal.name,
            )
        grant = await self.store.set_grant(
            collection, readers, writers, lifetime, creator=principal.name
        )
        log.info(
            "collection access set",
            extra={"principal": principal.name, "collection": collection, **grant.public()},
        )
        return grant

    async def visible(
        self, principal: Principal, collections: list[dict[str, Any]], lifetime: Lifetime
    ) -> list[dict[str, Any]]:
        """The collections ``principal`` may read, each with its access."""
        grants = await self.store.grants(lifetime)
        shown = []
        for item in collections:
            grant = grants.get(item["name"]) or self._unset(item["name"])
            if grant.allows(principal, "read"):
                shown.append({**item, "access": grant.public()})
        return shown

    async def _exists(self, collection: str, lifetime: Lifetime) -> bool:
        return any(c["name"] == collection for c in await self.records.collections(lifetime))
