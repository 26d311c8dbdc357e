"""Bearer JWTs from an OpenID Connect issuer (Entra ID, Keycloak, Auth0…) as principals
(:class:`OidcVerifier`).

A token is accepted when its signature verifies against the issuer's key set (the JWKS
URL, fetched and cached by :class:`~ragline.keyset.KeySet`), its issuer and
audience are the configured ones, and it has not expired. Its name and groups come from
the configured claims (Entra ID: ``preferred_username`` or ``oid``, and ``groups``, which
holds group object ids); members of the admin group are administrators.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import httpx
import jwt

from .access import NAME, Principal
from .errors import Unavailable
from .keyset import KeySet
from .lifetime import Lifetime
from .settings import Settings

__all__ = ["OidcVerifier", "looks_like_jwt"]

log = logging.getLogger("ragline.access")

_MAX_TOKEN = 16_384
_ALGORITHMS = ("RS256", "RS384", "RS512", "ES256", "ES384", "PS256")


def looks_like_jwt(token: str) -> bool:
    """Three base64url segments: a JWT, not one of ragline's own keys."""
    return token.count(".") == 2 and not token.startswith("rl_")


class OidcVerifier:
    """Turns an issuer's bearer JWT into a :class:`~ragline.access.Principal`, or None."""

    def __init__(
        self,
        *,
        jwks_url: str,
        issuer: str,
        audience: str,
        name_claim: str = "preferred_username",
        groups_claim: str = "groups",
        admin_group: str | None = None,
        algorithms: Sequence[str] = ("RS256",),
        clock_skew: float = 60.0,
        refetch_unknown_after: float = 300.0,
        refresh_after: float = 24 * 3600.0,
        timeout: float = 5.0,
    ) -> None:
        unknown = set(algorithms) - set(_ALGORITHMS)
        if unknown:
            raise ValueError(f"RAGLINE_OIDC_ALGORITHMS: unsupported {sorted(unknown)}")
        self.jwks_url, self.issuer, self.audience = jwks_url, issuer, audience
        self.name_claim, self.groups_claim, self.admin_group = name_claim, groups_claim, admin_group
        self.algorithms = list(algorithms)
        self.clock_skew = clock_skew
        self._timeout = timeout
        self._keys: KeySet[Any] = KeySet(
            self._fetch, refresh_after=refresh_after, refetch_unknown_after=refetch_unknown_after
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> OidcVerifier | None:
        """The verifier ``RAGLINE_OIDC_*`` asks for, or None when it is not configured."""
        s = settings
        if s.oidc_jwks_url is None or s.oidc_issuer is None or s.oidc_audience is None:
            return None
        return cls(
            jwks_url=s.oidc_jwks_url,
            issuer=s.oidc_issuer,
            audience=s.oidc_audience,
            name_claim=s.oidc_name_claim,
            groups_claim=s.oidc_groups_claim,
            admin_group=s.oidc_admin_group,
            algorithms=s.oidc_algorithms,
        )

    async def principal(self, token: str, lifetime: Lifetime) -> Principal | None:
        """The token's principal; None for any token that does not verify (the caller
        answers every such token alike)."""
        if len(token) > _MAX_TOKEN:
            return None
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            return None
        kid, alg = header.get("kid"), header.get("alg")
        if not isinstance(kid, str) or alg not in self.algorithms:
            return None
        key = await self._keys.get(kid, lifetime)
        if key is None:
            return None
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=self.algorithms,
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.clock_skew,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.PyJWTError as exc:
            log.info("token refused", extra={"reason": type(exc).__name__})
            return None
        name = claims.get(self.name_claim)
        if not isinstance(name, str) or not NAME.fullmatch(name):
            log.info("token refused", extra={"reason": f"no usable {self.name_claim} claim"})
            return None
        raw = claims.get(self.groups_claim) or []
        groups = frozenset(g for g in raw if isinstance(g, str) and NAME.fullmatch(g))
        admin = self.admin_group is not None and self.admin_group in groups
        return Principal(name, groups, admin)

    async def _fetch(self, lifetime: Lifetime) -> dict[str, Any]:
        await lifetime.checkpoint()
        try:
            async with httpx.AsyncClient(timeout=self._timeout, follow_redirects=False) as http:
                response = await http.get(self.jwks_url)
                response.raise_for_status()
                document = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            # The issuer is unreachable: a 503 for this request, keys kept for the next.
            raise Unavailable(
                f"OIDC: cannot fetch the key set at {self.jwks_url}: {type(exc).__name__}"
            ) from None
        keys: dict[str, Any] = {}
        for entry in document.get("keys", []) if isinstance(document, dict) else []:
            if not isinstance(entry, dict) or not isinstance(entry.get("kid"), str):
                continue
            try:
                keys[entry["kid"]] = jwt.PyJWK(entry).key
            except jwt.PyJWTError:
                log.warning("skipping an unusable OIDC signing key", extra={"kid": entry["kid"]})
        log.info("OIDC signing keys fetched", extra={"keys": len(keys)})
        return keys
