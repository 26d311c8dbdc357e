"""The default query transformer: the query as it came."""

from __future__ import annotations

from ..lifetime import Lifetime

__all__ = ["IdentityTransformer"]


class IdentityTransformer:
    """Returns the query unchanged."""

    async def transform(self, query: str, lifetime: Lifetime) -> str:
        await lifetime.checkpoint()
        return query
