"""Signing keys by key id, fetched from an issuer and cached (:class:`KeySet`): the Bot
Framework's keys for the Teams webhook, an OpenID Connect issuer's for bearer JWTs.

The set is fetched again once it is stale; an unknown key id triggers one refetch, at
most every few minutes, so that a stream of forged tokens cannot become a stream of
fetches. One fetch runs at a time; the others use its result.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import anyio

from .lifetime import Lifetime

__all__ = ["KeySet"]

K = TypeVar("K")


class KeySet(Generic[K]):
    """The keys ``fetch`` returns (key id to key), cached."""

    def __init__(
        self,
        fetch: Callable[[Lifetime], Awaitable[dict[str, K]]],
        *,
        refresh_after: float = 24 * 3600.0,
        refetch_unknown_after: float = 300.0,
    ) -> None:
        self._fetch = fetch
        self._refresh_after = refresh_after
        self._refetch_unknown_after = refetch_unknown_after
        self._keys: dict[str, K] = {}
        self._fetched_at: float | None = None
        self._lock = anyio.Lock()

    async def get(self, kid: str, lifetime: Lifetime) -> K | None:
        """The key called ``kid``, fetching the set first when it is stale or, within
        the refetch limit, when it lacks that key."""
        now = time.monotonic()
        stale = self._fetched_at is None or now - self._fetched_at > self._refresh_after
        unknown = kid not in self._keys and (
            self._fetched_at is None or now - self._fetched_at > self._refetch_unknown_after
        )
        if stale or unknown:
            async with self._lock:
                if self._fetched_at is None or self._fetched_at < now:
                    self._keys = await self._fetch(lifetime)
                    self._fetched_at = time.monotonic()
        return self._keys.get(kid)
