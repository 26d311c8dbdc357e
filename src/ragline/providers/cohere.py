"""Embeddings from Cohere's embed API (v2), or a server that speaks it."""

from __future__ import annotations

from collections.abc import Sequence

import httpx
from pydantic import SecretStr

from ..errors import UpstreamError
from ..lifetime import Lifetime
from . import EmbedKind
from ._http import check_vectors, post_json, unit

__all__ = ["CohereEmbedder"]

_MAX_TEXTS = 96  # the API's limit per call
_INPUT_TYPE = {"query": "search_query", "document": "search_document"}


class CohereEmbedder:
    """``POST {base_url}/v2/embed`` with ``input_type`` set by what the text is for."""

    def __init__(
        self,
        *,
        api_key: SecretStr | None,
        model: str = "embed-english-v3.0",
        dimensions: int = 1024,
        base_url: str = "https://api.cohere.com",
        batch_size: int = _MAX_TEXTS,
        timeout: float = 60.0,
    ) -> None:
        self.model = model
        self.dimensions = dimensions
        self._url = base_url.rstrip("/") + "/v2/embed"
        self._api_key = api_key
        self._batch_size = min(batch_size, _MAX_TEXTS)
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(timeout, connect=5.0))

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()

    async def embed(
        self, texts: Sequence[str], lifetime: Lifetime, *, kind: EmbedKind = "document"
    ) -> list[list[float]]:
        """Embed ``texts`` in batches of at most 96; vectors come back at unit length."""
        headers = {"accept": "application/json"}
        if self._api_key is not None:
            headers["authorization"] = f"Bearer {self._api_key.get_secret_value()}"
        vectors: list[list[float]] = []
        for start in range(0, len(texts), self._batch_size):
            batch = list(texts[start : start + self._batch_size])
            body = {
                "model": self.model,
                "texts": batch,
                "input_type": _INPUT_TYPE[kind],
                "embedding_types": ["float"],
                "truncate": "END",
            }
            answer = await post_json(
                self._client, self._url, body, lifetime, stage="embed", headers=headers
            )
            try:
                got = [unit([float(x) for x in row]) for row in answer["embeddings"]["float"]]
            except (KeyError, TypeError, ValueError):
                raise UpstreamError("embed: upstream answered an unexpected shape") from None
            check_vectors(got, len(batch), self.dimensions)
            vectors.extend(got)
        return vectors
