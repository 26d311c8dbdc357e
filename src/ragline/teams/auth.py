"""Who may post activities: the Bot Framework's JWT, checked before anything runs.

The signing keys come from the OpenID metadata's ``jwks_uri`` and are cached
(:class:`~ragline.keyset.KeySet`). A key lists the channels it endorses, and the
token's ``serviceurl`` claim pins the URL the bot will post its replies to: a token for
one service URL cannot send the bot's credentials to another.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import httpx
import jwt

from ..errors import Unauthorized, UpstreamError
from ..keyset import KeySet
from ..lifetime import Lifetime
from .activity import Activity

__all__ = ["BotAuthenticator"]

log = logging.getLogger("ragline.teams")

_MAX_TOKEN = 16_384


@dataclass(frozen=True, slots=True)
class _Key:
    key: Any  # a cryptography public key
    endorsements: frozenset[str]


@dataclass(frozen=True, slots=True)
class Token:
    """A verified token: its claims, and the channels its signing key endorses."""

    claims: dict[str, Any]
    endorsements: frozenset[str]


class BotAuthenticator:
    """Validates the ``Authorization`` header of an inbound activity."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        app_id: str,
        metadata_url: str,
        issuer: str,
        clock_skew: float = 300.0,
        refresh_after: float = 24 * 3600.0,
        refetch_unknown_after: float = 300.0,
    ) -> None:
        self._client = client
        self.app_id = app_id
        self.metadata_url = metadata_url
        self.issuer = issuer
        self.clock_skew = clock_skew
        self._keys = KeySet(
            self._fetch, refresh_after=refresh_after, refetch_unknown_after=refetch_unknown_after
        )

    async def verify(
        self, authorization: str | None, activity: Activity, lifetime: Lifetime
    ) -> dict[str, Any]:
        """The token's claims, or :class:`Unauthorized` saying what was wrong."""
        return self.bind(await self.verify_token(authorization, lifetime), activity)

    async def verify_token(self, authorization: str | None, lifetime: Lifetime) -> Token:
        """The token itself: signature, audience, issuer, expiry. Checked before the body
        is read as an activity, so a caller without a valid token learns nothing of it."""
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("missing bearer token")
        if len(token) > _MAX_TOKEN:
            raise Unauthorized("token too large")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthorized("malformed token") from None
        if header.get("alg") != "RS256":
            raise Unauthorized("token not signed with RS256")
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise Unauthorized("token names no signing key")
        key = await self._keys.get(kid, lifetime)
        if key is None:
            raise Unauthorized("token signed by an unknown key")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=["RS256"],
                audience=self.app_id,
                issuer=self.issuer,
                leeway=self.clock_skew,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token expired") from None
        except jwt.InvalidAudienceError:
            raise Unauthorized("token audience is not this bot") from None
        except jwt.InvalidIssuerError:
            raise Unauthorized("token issuer is not trusted") from None
        except jwt.InvalidSignatureError:
            raise Unauthorized("token signature does not verify") from None
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"invalid token: {type(exc).__name__}") from None
        return Token(claims, key.endorsements)

    def bind(self, token: Token, activity: Activity) -> dict[str, Any]:
        """The token's claims if they cover ``activity``: its channel endorsed by the
        signing key, its serviceUrl the token's."""
        if activity.channel_id not in token.endorsements:
            raise Unauthorized(f"signing key does not endorse channel {activity.channel_id!r}")
        claimed = token.claims.get("serviceurl")
        if not isinstance(claimed, str) or claimed.rstrip("/") != activity.service_url.rstrip("/"):
            raise Unauthorized("token serviceurl does not match the activity's serviceUrl")
        return token.claims

    async def _fetch(self, lifetime: Lifetime) -> dict[str, _Key]:
        await lifetime.checkpoint()
        metadata = await self._get_json(self.metadata_url)
        jwks_uri = metadata.get("jwks_uri") if isinstance(metadata, dict) else None
        if not isinstance(jwks_uri, str):
            raise UpstreamError("bot auth: OpenID metadata has no jwks_uri")
        document = await self._get_json(jwks_uri)
        keys: dict[str, _Key] = {}
        for entry in document.get("keys", []) if isinstance(document, dict) else []:
            if not isinstance(entry, dict) or not isinstance(entry.get("kid"), str):
                continue
            try:
                public = jwt.PyJWK(entry, algorithm="RS256").key
            except jwt.PyJWTError:
                log.warning("skipping an unusable signing key", extra={"kid": entry["kid"]})
                continue
            endorsements = entry.get("endorsements") or []
            keys[entry["kid"]] = _Key(public, frozenset(str(e) for e in endorsements))
        if not keys:
            raise UpstreamError("bot auth: the key set has no usable keys")
        log.info("bot signing keys fetched", extra={"keys": len(keys)})
        return keys

    async def _get_json(self, url: str) -> Any:
        try:
            response = await self._client.get(url)
            response.raise_for_status()
            return response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise UpstreamError(f"bot auth: cannot fetch {url}: {type(exc).__name__}") from None
