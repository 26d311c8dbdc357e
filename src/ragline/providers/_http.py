"""What the HTTP providers share: posting JSON under a lifetime, and error mapping."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import httpx

from ..errors import StageTimeout, UpstreamError
from ..lifetime import Lifetime

__all__ = ["ClientShards", "check_vectors", "error_message", "post_json", "unit"]


class ClientShards:
    """Many small httpx connection pools side by side instead of one large one.

    httpx's pool scans every connection it holds on each request and each response end,
    so one pool of thousands of streaming connections spends its time in bookkeeping
    (measured: 1,000 concurrent streams through one pool took 54 s to reach the
    upstream, 3.8 s through 32 small ones). Each request takes the least loaded shard;
    together they hold at most ``max_connections``.
    """

    def __init__(
        self, max_connections: int, timeout: httpx.Timeout, *, per_shard: int = 64
    ) -> None:
        count = max(1, math.ceil(max_connections / per_shard))
        size = math.ceil(max_connections / count)
        # One TLS context for all: building one per client cost 2.8 s for 64 shards.
        tls = httpx.create_ssl_context()
        self._clients = [
            httpx.AsyncClient(
                limits=httpx.Limits(max_connections=size, max_keepalive_connections=size),
                timeout=timeout,
                verify=tls,
            )
            for _ in range(count)
        ]
        self._load = [0] * count

    @contextmanager
    def client(self) -> Iterator[httpx.AsyncClient]:
        """The least loaded client, counted as busy for the block."""
        index = min(range(len(self._load)), key=self._load.__getitem__)
        self._load[index] += 1
        try:
            yield self._clients[index]
        finally:
            self._load[index] -= 1

    async def aclose(self) -> None:
        """Close every pool."""
        for client in self._clients:
            await client.aclose()


async def post_json(
    client: httpx.AsyncClient,
    url: str,
    body: dict[str, Any],
    lifetime: Lifetime,
    *,
    stage: str,
    headers: dict[str, str] | None = None,
) -> Any:
    """POST ``body`` and return the decoded JSON answer. A cancellation of ``lifetime``
    closes the connection; transport timeouts become :class:`StageTimeout`, everything
    else that goes wrong :class:`UpstreamError`."""
    await lifetime.checkpoint()
    try:
        response = await client.post(url, json=body, headers=headers)
    except httpx.TimeoutException as exc:
        raise StageTimeout(
            stage, None, f"{stage}: upstream timed out ({type(exc).__name__})"
        ) from None
    except httpx.HTTPError as exc:
        raise UpstreamError(f"{stage}: upstream unreachable: {type(exc).__name__}: {exc}") from None
    if response.status_code >= 400:
        try:
            message = error_message(response.json())
        except ValueError:
            message = response.text[:200]
        raise UpstreamError(
            f"{stage}: upstream answered {response.status_code}: {message}",
            status=response.status_code,
        )
    try:
        return response.json()
    except ValueError:
        raise UpstreamError(f"{stage}: upstream answered with malformed JSON") from None


def error_message(payload: object) -> str:
    """The message of an error body in OpenAI's, Cohere's or a plain shape."""
    if isinstance(payload, dict):
        error = payload.get("error", payload.get("message", payload))
        if isinstance(error, dict):
            return str(error.get("message") or json.dumps(error))
        return str(error)
    return str(payload)


def unit(vector: list[float]) -> list[float]:
    """``vector`` scaled to length 1 (cosine similarity becomes a dot product)."""
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return [x / norm for x in vector]


def check_vectors(vectors: Sequence[Sequence[float]], count: int, dimensions: int) -> None:
    """Refuse an answer with the wrong number or size of vectors."""
    if len(vectors) != count:
        raise UpstreamError(f"embed: asked for {count} vectors, got {len(vectors)}")
    for vector in vectors:
        if len(vector) != dimensions:
            raise UpstreamError(f"embed: expected {dimensions} dimensions, got {len(vector)}")
