"""Who a request comes from: the keys of ``RAGLINE_API_KEYS`` (administrators, as they
always were) and the principals an administrator made (:class:`Principals`).

A server with no credentials at all (no keys set, no principal made) has one caller,
:data:`~ragline.access.LOCAL`, an administrator: the embedded default on loopback stays
as easy as it was. Once any credential exists, every request must present one.

Bearer JWTs of an OpenID Connect issuer are principals too when it is configured
(:mod:`ragline.oidc`).

Lookups are cached for ``ttl`` seconds (2 by default), so that a key costs the database
nothing on most requests and a revoked key is refused on every replica within that
time; the replica that revokes forgets it at once.

Deployments configured as code declare principals in a TOML file
(``RAGLINE_PRINCIPALS_FILE``, :mod:`ragline.principal_file`): a name, groups, a role and
the SHA-256 of the key, never the key. They authenticate like stored ones, and only a
change of the file changes them: revoking or re-keying one is a 409.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path

from pydantic import SecretStr

from .access import LOCAL, NAME, Principal, key_digest, new_key
from .errors import Conflict, Hidden, InvalidRequest
from .lifetime import Lifetime
from .oidc import OidcVerifier, looks_like_jwt
from .principal_file import RULE, read_principals_file
from .providers.directory import PrincipalStore

__all__ = ["Principals"]

log = logging.getLogger("ragline.access")

_CACHED = 10_000  # digests remembered, found or not: a flood of bad keys cannot grow it


class Principals:
    """Finds the principal of a credential, and manages principals for administrators."""

    def __init__(
        self,
        keys: Sequence[SecretStr],
        store: PrincipalStore,
        *,
        ttl: float = 2.0,
        configured: Iterable[Principal] = (),
        principals_file: str | Path | None = None,
        oidc: OidcVerifier | None = None,
    ) -> None:
        """``principals_file``: read here, so that a file with an error refuses to start
        (:class:`~ragline.config_file.ConfigFileError`, ``file:line: what``)."""
        self.store = store
        self.ttl = ttl
        self.oidc = oidc  # bearer JWTs of an OpenID Connect issuer, when configured
        # Configured keys are administrators, each named by a prefix of its digest (a
        # name for logs and ownership that says nothing about the key).
        self._keys = [
            (k.get_secret_value().encode(), f"admin-{key_digest(k.get_secret_value())[:8]}")
            for k in keys
        ]
        # Principals named by configuration (a Teams mapping): they exist for grants.
        self.configured = {p.name: p for p in configured}
        # Declared in the principals file: by key digest (to authenticate) and by name.
        self._declared = read_principals_file(principals_file) if principals_file else {}
        self.declared = {p.name: p for p in self._declared.values()}
        self._found: OrderedDict[str, tuple[float, Principal | None]] = OrderedDict()
        self._any: tuple[float, bool] = (-1.0, False)

    async def required(self, lifetime: Lifetime) -> bool:
        """Whether requests must present a credential: some credential exists."""
        if self._keys or self._declared or self.oidc is not None:
            return True
        at, found = self._any
        if time.monotonic() - at > self.ttl:
            found = bool(await self.store.principals(lifetime))
            self._any = (time.monotonic(), found)
        return found

    async def identify(self, authorization: str | None, lifetime: Lifetime) -> Principal | None:
        """The principal of an ``Authorization`` header; None for a missing, malformed,
        unknown or revoked credential (all alike, in body and in time)."""
        if not await self.required(lifetime):
            return LOCAL
        scheme, _, presented = (authorization or "").partition(" ")
        token = presented.strip()
        if scheme.lower() != "bearer" or not token:
            return None
        if self.oidc is not None and looks_like_jwt(token):
            return await self.oidc.principal(token, lifetime)
        if len(token) > 512:
            return None
        given = token.encode()
        admin: str | None = None
        for key, name in self._keys:  # every key compared: the time does not tell which
            if hmac.compare_digest(given, key):
                admin = name
        if admin is not None:
            return Principal(admin, admin=True)
        digest = hashlib.sha256(given).hexdigest()
        # Declared keys first: a dict lookup is all that tells them apart in time.
        declared = self._declared.get(digest)
        if declared is not None:
            return declared
        return await self._lookup(digest, lifetime)

    async def _lookup(self, digest: str, lifetime: Lifetime) -> Principal | None:
        cached = self._found.get(digest)
        now = time.monotonic()
        if cached is not None and now - cached[0] <= self.ttl:
            found = cached[1]
        else:
            found = await self.store.find_key(digest, lifetime)
            self._found[digest] = (now, found)
            self._found.move_to_end(digest)
            while len(self._found) > _CACHED:
                self._found.popitem(last=False)
        # A stored principal that the file declares since: the file wins, and only the
        # declared key is that name's.
        return None if found is not None and found.name in self.declared else found

    def _forget(self) -> None:
        self._found.clear()
        self._any = (-1.0, False)

    # -- administration ----------------------------------------------------------------
    async def create(
        self, name: str, groups: Iterable[str], admin: bool, lifetime: Lifetime
    ) -> str:
        """Make a principal; its key, which is shown only this once."""
        groups = tuple(groups)
        _check_name(name, "name")
        for group in groups:
            _check_name(group, "groups")
        self._not_declared(name, "change its entry")
        reserved = name == LOCAL.name or name.startswith(("admin-", "teams-"))
        if name in self.configured or reserved:
            raise Conflict(f"the name {name!r} is reserved", code="principal_exists")
        key = new_key()
        principal = Principal(name, frozenset(groups), admin)
        if not await self.store.add_principal(principal, key_digest(key), lifetime):
            raise Conflict(f"a principal named {name!r} exists", code="principal_exists")
        self._forget()
        log.info("principal created", extra={"principal": name, "admin": admin})
        return key

    async def rotate(self, name: str, lifetime: Lifetime) -> str:
        """A new key for ``name``; the old one stops working."""
        self._not_declared(name, "give it a new key_sha256")
        key = new_key()
        if not await self.store.replace_key(name, key_digest(key), lifetime):
            raise Hidden(f"no principal {name!r}", code="principal_not_found")
        self._forget()
        log.info("principal key rotated", extra={"principal": name})
        return key

    async def revoke(self, name: str, lifetime: Lifetime) -> None:
        """Remove ``name``: its key is refused here at once, elsewhere within ``ttl``."""
        self._not_declared(name, "remove its entry")
        if not await self.store.remove_principal(name, lifetime):
            raise Hidden(f"no principal {name!r}", code="principal_not_found")
        self._forget()
        log.info("principal revoked", extra={"principal": name})

    def _not_declared(self, name: str, change: str) -> None:
        if name in self.declared:
            raise Conflict(
                f"{name!r} is declared in the principals file (RAGLINE_PRINCIPALS_FILE): "
                f"{change} there and restart",
                code="principal_declared",
            )

    async def listing(self, lifetime: Lifetime) -> list[dict[str, object]]:
        """Every principal, stored or declared, by name, without keys: each
        :meth:`~ragline.access.Principal.public` with ``declared``."""
        stored = [p for p in await self.store.principals(lifetime) if p.name not in self.declared]
        entries = [{**p.public(), "declared": False} for p in stored]
        entries += [{**p.public(), "declared": True} for p in self.declared.values()]
        return sorted(entries, key=lambda entry: str(entry["name"]))

    async def known(self, lifetime: Lifetime) -> set[str]:
        """The ``user:`` and ``group:`` entries a grant may name."""
        everyone = [
            *await self.store.principals(lifetime),
            *self.configured.values(),
            *self.declared.values(),
        ]
        names = {f"user:{p.name}" for p in everyone}
        names |= {f"user:{name}" for _, name in self._keys} | {f"user:{LOCAL.name}"}
        return names | {f"group:{g}" for p in everyone for g in p.groups}


def _check_name(name: object, param: str) -> None:
    # fullmatch: ``$`` alone would let a name end in a newline.
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise InvalidRequest(f"{param}: {str(name)[:80]!r} is not a name ({RULE})", param=param)
