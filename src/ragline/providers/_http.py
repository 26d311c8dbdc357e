"""What the HTTP providers share: posting JSON under a lifetime, and error mapping."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import httpx

from ..errors import StageTimeout, UpstreamError
from ..lifetime import Lifetime

__all__ = ["check_vectors", "error_message", "post_json", "unit"]


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
