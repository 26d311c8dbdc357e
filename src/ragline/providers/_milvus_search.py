"""A Milvus search whose ACL filter never leaves ``top_k`` short (blocking: the caller
runs it on the thread bridge).

Milvus filters inside the HNSW walk: with a selective filter (a reader who may read 1% of
a collection), a walk of ``ef`` steps meets too few permitted rows and returns fewer hits
than asked although more exist (measured: 8 of 20 on average at 10k chunks, and no
``ef`` up to 2,048 filled 200; docs/BENCHMARKS.md section 9). So a filtered search that
comes back short fetches the permitted rows with their vectors (the same filter, one
query); when they are few, they are ranked exactly here; otherwise the search runs again
with a far wider walk.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["search"]

EXACT_AT_MOST = 4_096  # permitted rows ranked exactly instead of searched again
_WIDE_EF = 4_096


def search(
    client: Any,
    name: str,
    vector: list[float],
    top_k: int,
    where: str,
    output: list[str],
    consistency: str,
) -> list[dict[str, Any]]:
    """The ``top_k`` nearest rows that pass ``where``, as Milvus's hits (``entity``,
    ``distance``: cosine similarity), best first."""

    def walk(ef: int) -> list[dict[str, Any]]:
        result = client.search(
            collection_name=name,
            data=[vector],
            filter=where,
            limit=top_k,
            output_fields=output,
            search_params={"metric_type": "COSINE", "params": {"ef": ef}},
            consistency_level=consistency,
        )
        return list(result[0]) if result else []

    rows = walk(max(64, top_k))
    if not where or len(rows) >= top_k:
        return rows
    # One query: the permitted rows themselves, if they are few enough to rank here.
    found = client.query(
        name,
        filter=where,
        output_fields=[*output, "vector"],
        limit=EXACT_AT_MOST + 1,
        consistency_level=consistency,
    )
    if len(found) <= EXACT_AT_MOST:
        return _exact(vector, found, top_k)
    return walk(min(max(_WIDE_EF, top_k * 16), 32_768))


def _exact(vector: list[float], found: list[dict[str, Any]], top_k: int) -> list[dict[str, Any]]:
    """``found`` (rows with their vectors) ranked by cosine similarity to ``vector``."""
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    scored = []
    for row in found:
        other = row.pop("vector")
        length = math.sqrt(sum(x * x for x in other)) or 1.0
        cosine = sum(a * b for a, b in zip(vector, other, strict=True)) / (norm * length)
        scored.append({"entity": row, "distance": cosine})
    scored.sort(key=lambda hit: -hit["distance"])
    return scored[:top_k]
