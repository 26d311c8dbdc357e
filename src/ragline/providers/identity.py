"""The transformer that changes nothing: the query as it came."""

from __future__ import annotations

from collections.abc import Sequence

from ..lifetime import Lifetime
from ..models import Message

__all__ = ["IdentityTransformer"]


class IdentityTransformer:
    """Returns the query unchanged (``RAGLINE_QUERY_REWRITE=off``)."""

    async def transform(self, query: str, history: Sequence[Message], lifetime: Lifetime) -> str:
        await lifetime.checkpoint()
        return query
