"""A Milvus search whose ACL filter never leaves ``top_k`` short (blocking: the caller
runs it on the thread bridge).

Milvus filters inside the HNSW walk: with a selective filter (a reader who may read 1% of
a collection), a walk of ``ef`` steps meets too few permitted rows and returns fewer hits
than asked although more exist (measured: 8 of 20 on average at 10k chunks, and no
``ef`` up to 2,048 filled 200; docs/BENCHMARKS.md section 9). So a filtered search that
comes back short fetches the permitted rows with their vectors (the same filter, one
query); when they are few, they are ranked exactly here; otherwise the search runs again
with a far wider walk.

Milvus Lite serves its file from this very process (a gRPC server on a thread), so a
search through the client crosses gRPC and protobuf twice in Python for nothing: 3.3 ms
of which 1.5 ms is the search itself at 20 hits on Cranfield. :func:`lite_collection`
finds the collection behind that server, and the walk calls it directly, with the same
filter, walk width and output fields (its hits are the same dicts); anything else
(a server, a Lite file served by another process) goes through the client.
"""

from __future__ import annotations

import math
import os
from typing import Any

__all__ = ["lite_collection", "search"]

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
    uri: str = "",
) -> list[dict[str, Any]]:
    """The ``top_k`` nearest rows that pass ``where``, as Milvus's hits (``entity``,
    ``distance``: cosine similarity), best first. ``uri``: the client's; a Milvus Lite
    file that this process serves is searched in process (:func:`lite_collection`)."""
    lite = lite_collection(uri, name) if uri else None

    def walk(ef: int) -> list[dict[str, Any]]:
        if lite is not None:
            return _walk_lite(lite, vector, top_k, where, output, ef)
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

    # A walk twice as wide as the hits asked for: the recall callers had when they asked
    # for twice as many hits to keep the best half, without paying Lite for the other
    # half (it builds every hit returned, about 60 us each, and the walk is cheap).
    rows = walk(min(max(64, 2 * top_k), 32_768))
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


def lite_collection(uri: str, name: str) -> Any:
    """The Milvus Lite collection ``name`` of the file at ``uri`` if this process serves
    that file, else None (a server's URI, a file another process serves: then the client
    goes through gRPC)."""
    if uri.startswith(("http://", "https://", "tcp://", "grpc://")):
        return None
    try:
        from milvus_lite.exceptions import MilvusLiteError
        from milvus_lite.server_manager import server_manager_instance
    except ImportError:
        return None
    try:
        served = server_manager_instance._servers.get(os.path.abspath(uri))
        return served[1].get_collection(name) if served else None
    except (AttributeError, TypeError, IndexError, MilvusLiteError):
        return None  # another milvus-lite than the one known here; or no such collection


def _walk_lite(
    collection: Any, vector: list[float], top_k: int, where: str, output: list[str], ef: int
) -> list[dict[str, Any]]:
    """One HNSW walk of an in-process Lite collection; its errors as the client's."""
    from milvus_lite.exceptions import MilvusLiteError
    from pymilvus.exceptions import MilvusException

    try:
        result = collection.search(
            query_vectors=[vector],
            top_k=top_k,
            metric_type="COSINE",
            expr=where or None,
            output_fields=output,
            search_params={"ef": ef},
        )
    except MilvusLiteError as exc:
        raise MilvusException(message=str(exc)) from None
    return list(result[0]) if result else []
