"""What a chunk becomes in a Milvus collection: one row, its strings within the schema's
limits (``MilvusStore`` makes the schema with the same limits)."""

from __future__ import annotations

from typing import Any

from ..errors import InvalidRequest
from ..models import Chunk

MAX_TEXT_BYTES = 65_535
MAX_ID_BYTES = 512
CHUNK_ID_BYTES = 128
SOURCE_BYTES = 2048


def chunk_row(chunk: Chunk) -> dict[str, Any]:
    """The row of ``chunk`` (its vector's length is the caller's to check); a 400 for an
    id too long, the text and source clipped to whole UTF-8 characters."""
    if len(chunk.document_id.encode()) > MAX_ID_BYTES or len(chunk.id.encode()) > CHUNK_ID_BYTES:
        raise InvalidRequest(f"chunk {chunk.id[:64]}: id too long")
    return {
        "id": chunk.id,
        "vector": [float(x) for x in chunk.vector],
        "document_id": chunk.document_id,
        "chunk_index": chunk.chunk_index,
        "generation": chunk.generation,
        "acl": chunk.acl,
        "source": _clip(chunk.source, SOURCE_BYTES),
        "text": _clip(chunk.text, MAX_TEXT_BYTES),
    }


def _clip(text: str, max_bytes: int) -> str:
    data = text.encode()
    if len(data) <= max_bytes:
        return text
    return data[:max_bytes].decode("utf-8", "ignore")
