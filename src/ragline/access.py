"""Who is asking, and what they may read: principals, collection grants, document ACLs.

A :class:`Principal` has a name, groups and a role. Every piece of work records the
name of the principal that started it; another member asking about it gets the same 404
as for something that does not exist. A collection's :class:`Grant` says who may read
and write it (entries ``user:NAME``, ``group:NAME`` or ``*``); a document's ACL narrows
that for the document. Retrieval filters inside the store query: documents with the same
ACL share an *ACL class* (a number stored on every chunk and document), and a search
passes the classes its principal may read (:class:`Readable`), so the store never
returns a passage outside them and ``top_k`` is filled from permitted ones.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from .errors import Forbidden, Hidden, InvalidRequest, NotFound
from .lifetime import Lifetime

__all__ = [
    "LOCAL",
    "Grant",
    "Principal",
    "Readable",
    "acl_class",
    "admin_cancel",
    "key_digest",
    "new_key",
    "normalize_entries",
    "owned",
    "principal_of",
]

log = logging.getLogger("ragline.access")

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}\Z")
Right = Literal["read", "write"]


@dataclass(frozen=True, slots=True)
class Principal:
    """Someone who asks: a person, a service, a Teams user. Admins see everything."""

    name: str
    groups: frozenset[str] = frozenset()
    admin: bool = False

    @property
    def entries(self) -> frozenset[str]:
        """The grant and ACL entries that name this principal."""
        return frozenset({"*", f"user:{self.name}", *(f"group:{g}" for g in self.groups)})

    def public(self) -> dict[str, object]:
        """``GET /api/v1/me``, and each entry of ``GET /api/v1/principals``."""
        return {"name": self.name, "groups": sorted(self.groups), "admin": self.admin}


#: Everyone, when the server has no credentials at all (the embedded default on
#: loopback): one local administrator, as before principals existed.
LOCAL = Principal("local", admin=True)


def principal_of(lifetime: Lifetime) -> Principal:
    """The principal a piece of work runs for. There is no default: work that lost its
    principal reads nothing, rather than everything."""
    found = lifetime.get("principal")
    if not isinstance(found, Principal):
        raise Hidden("this work runs for no principal", code="no_principal")
    return found


def owned(principal: Principal, owner: str | None, missing: NotFound) -> None:
    """Refuse ``principal`` an object ``owner`` made, unless it is theirs or they are an
    admin, with ``missing``: exactly the 404 of an object that does not exist."""
    if principal.admin or owner == principal.name:
        return
    raise Hidden(missing.message, code=missing.code, principal=principal.name)


def admin_cancel(principal: Principal, owner: str | None, what: str, ident: str) -> None:
    """Log an admin's cancel of someone else's work, naming both."""
    if owner != principal.name:
        log.warning(
            "admin cancel of another principal's %s",
            what,
            extra={"principal": principal.name, "owner": owner, f"{what}_id": ident},
        )


def normalize_entries(entries: Iterable[object], where: str) -> tuple[str, ...]:
    """Grant or ACL entries, checked and sorted (duplicates dropped)."""
    found: set[str] = set()
    for entry in entries:
        if not isinstance(entry, str):
            raise InvalidRequest(f"{where}: entries are strings", param=where)
        text = entry.strip()
        kind, sep, name = text.partition(":")
        if text != "*" and not (sep and kind in ("user", "group") and NAME.match(name)):
            raise InvalidRequest(
                f"{where}: {entry[:80]!r} is not user:NAME, group:NAME or *", param=where
            )
        found.add(text)
    return tuple(sorted(found))


def acl_class(entries: Iterable[str] | None) -> int:
    """The ACL class of a document's read entries: 0 for none (or ``*``), which every
    reader of the collection may read; otherwise a stable positive 63-bit number."""
    readers = tuple(sorted(set(entries or ())))
    if not readers or "*" in readers:
        return 0
    digest = hashlib.blake2b("\n".join(readers).encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") & (2**63 - 1)) or 1


@dataclass(frozen=True, slots=True)
class Readable:
    """The ACL classes a search may return; ``classes=None``: every one (an admin)."""

    classes: frozenset[int] | None

    @classmethod
    def everything(cls) -> Readable:
        return cls(None)

    @classmethod
    def of(cls, principal: Principal, known: Mapping[int, Iterable[str]]) -> Readable:
        """What ``principal`` may read of a collection whose ACL classes are ``known``
        (class number to read entries); class 0 is always among them."""
        if principal.admin:
            return cls(None)
        mine = principal.entries
        return cls(frozenset({0, *(c for c, e in known.items() if mine.intersection(e))}))

    def allows(self, acl: int) -> bool:
        return self.classes is None or acl in self.classes


@dataclass(frozen=True, slots=True)
class Grant:
    """Who may read and write a collection. ``creator`` (its owner) and admins always
    may; until access is set, nobody else may, except that the seeded
    default collection is readable by everyone."""

    read: tuple[str, ...] = ()
    write: tuple[str, ...] = ()
    creator: str | None = None

    def allows(self, principal: Principal, right: Right) -> bool:
        if principal.admin or (self.creator is not None and principal.name == self.creator):
            return True
        entries = self.read if right == "read" else self.write
        return not principal.entries.isdisjoint(entries)

    def check(self, principal: Principal, right: Right, collection: str) -> None:
        """Refuse what ``principal`` may not do: 404 if they may not even read it (nothing
        reveals that it exists), 403 if they may read but not write."""
        if self.allows(principal, right):
            return
        if right == "write" and self.allows(principal, "read"):
            raise Forbidden(
                f"you may read collection {collection!r} but not write it",
                code="collection_read_only",
                principal=principal.name,
            )
        raise Hidden(
            f"no collection {collection!r}", code="collection_not_found", principal=principal.name
        )

    def public(self) -> dict[str, object]:
        return {"read": list(self.read), "write": list(self.write), "creator": self.creator}


def new_key() -> str:
    """A new API key: 256 random bits. Shown once; only its digest is stored."""
    return "rl_" + secrets.token_urlsafe(32)


def key_digest(key: str) -> str:
    """What is stored of a key. A key is 256 random bits, so a plain SHA-256 is as good
    as a slow password hash here, and lookups by it take the same time for any key."""
    return hashlib.sha256(key.encode()).hexdigest()
