"""MemoryStore against the VectorStore conformance suite, on asyncio and on trio."""

from __future__ import annotations

import pytest

from ragline.providers.memory import MemoryStore
from store_conformance import StoreConformance

pytestmark = pytest.mark.both_backends

DEFAULT = "shelf"


@pytest.fixture
async def store() -> MemoryStore:
    return MemoryStore(default_collection=DEFAULT)


class TestMemoryStore(StoreConformance):
    """Exact in-memory search passes the whole contract."""

    default_collection = DEFAULT
