"""Milvus as the vector store: Milvus Lite in a local file by default, a Milvus server or
cluster when the URI is ``http(s)://``. The same client code talks to both.

pymilvus is blocking (gRPC), so every call goes through the thread bridge. Each collection
keeps the chunk id, vector, document id, chunk index, generation, ACL class, source and
text, under a cosine HNSW index.

Servers: Milvus 2.3 or later (tested on 2.3.5 standalone and ``milvus-lite server``). What
ragline calls (COSINE metric, upsert, databases in the URI path) all exist in 2.3; the
COSINE metric and upsert came in 2.3, so an older server is refused at connect, by its
version. Reads are ``Strong`` by default (``RAGLINE_VECTOR_CONSISTENCY``): a server's own
default (``Bounded``) would hide what was just written, for up to 5 s on 2.3, from a
reader that checked the record store first, so a document just switched in could be
found only in part. Strong costs a server's time tick per search (0.13-0.4 s on 2.3.5
standalone here; Milvus Lite is unaffected).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio

from ..access import Readable
from ..errors import InvalidRequest, UpstreamError
from ..lifetime import Lifetime
from ..models import Chunk, Hit
from ..settings import redact
from ..threads import CancelToken, ThreadBridge
from ._milvus_rows import CHUNK_ID_BYTES, MAX_ID_BYTES, MAX_TEXT_BYTES, SOURCE_BYTES, chunk_row
from ._milvus_search import search as filled_search

__all__ = ["MilvusStore"]

_OUTPUT = ["document_id", "chunk_index", "generation", "source", "text"]
_OLDEST = (2, 3)  # COSINE and upsert
# Past this many chunks in a collection, Lite should hand over to a server (bench/scale.py).
LITE_HANDOVER_CHUNKS = 100_000
log = logging.getLogger("ragline.providers.milvus")


class MilvusStore:
    """A :class:`~ragline.providers.VectorStore` on Milvus (Lite or server)."""

    def __init__(
        self,
        bridge: ThreadBridge,
        *,
        uri: str,
        dimensions: int,
        default_collection: str = "default",
        token: str | None = None,
        consistency: str = "Strong",
        handover_chunks: int | None = LITE_HANDOVER_CHUNKS,
    ) -> None:
        self._bridge = bridge
        self.handover_chunks = handover_chunks  # Lite only: warn past it (None: never)
        self._sizes: dict[str, int] = {}  # collection → rows, as last counted plus upserts
        self._warned: set[tuple[str, str]] = set()  # (file, collection): said once
        self.consistency = consistency
        self.uri = uri
        self.dimensions = dimensions
        self.default_collection = default_collection
        self._token = token
        self._client: Any = None
        self.server_version: str | None = None  # as the server says it, once connected
        self._known: set[str] = set()
        # Collections made before document ACLs have no `acl` field: every chunk in
        # them is of class 0, and an ACL cannot be written into them.
        self._without_acl: set[str] = set()
        self._create_lock = anyio.Lock()

    @property
    def is_lite(self) -> bool:
        """Whether this is an embedded Milvus Lite file."""
        return not self.uri.startswith(("http://", "https://", "tcp://", "grpc://"))

    async def open(self, lifetime: Lifetime) -> None:
        """Connect (Milvus Lite: start the embedded server on its file)."""
        if self._client is None:
            self._client = await self._bridge.run(lifetime, self._connect)

    def _connect(self, token: CancelToken) -> Any:
        from pymilvus import MilvusClient
        from pymilvus.exceptions import MilvusException

        # pymilvus and Milvus Lite log tracebacks for errors that we report ourselves, in
        # one line that names the server (see _reached).
        logging.getLogger("pymilvus").setLevel(logging.CRITICAL)
        if self.is_lite:
            Path(self.uri).parent.mkdir(parents=True, exist_ok=True)
            logging.getLogger("milvus_lite").setLevel(logging.CRITICAL)
        try:
            client = MilvusClient(uri=self.uri, token=self._token or "")
        except MilvusException as exc:
            if self.is_lite:
                raise UpstreamError(
                    f"cannot open Milvus Lite at {self.uri}: another process owns it (one "
                    "process may own a data directory); stop that process, or send the work "
                    "to the server that owns it"
                ) from None
            raise self._failure("cannot connect to Milvus at", exc) from None
        if not self.is_lite:
            try:
                self.server_version = str(client.get_server_version())
            except MilvusException as exc:
                client.close()
                raise self._failure("cannot connect to Milvus at", exc) from None
            if (_release(self.server_version) or _OLDEST) < _OLDEST:
                client.close()
                raise UpstreamError(
                    f"Milvus at {redact(self.uri)} is {self.server_version}: ragline needs "
                    "Milvus 2.3 or later (the COSINE metric and upsert came in 2.3)"
                )
        return client

    async def aclose(self) -> None:
        """Close the client; for Milvus Lite also stop its server, which otherwise keeps
        the file locked until the process exits."""
        client, self._client = self._client, None
        self._known.clear()
        if client is not None:
            with anyio.move_on_after(5, shield=True):
                await anyio.to_thread.run_sync(self._close, client)

    def _close(self, client: Any) -> None:
        client.close()
        if self.is_lite:
            from milvus_lite.server_manager import server_manager_instance

            server_manager_instance.release_server(self.uri)

    async def _collection(
        self, name: str | None, lifetime: Lifetime, *, create: bool
    ) -> str | None:
        await self.open(lifetime)
        name = name or self.default_collection
        if name in self._known:
            return name
        async with self._create_lock:
            if name not in self._known:
                exists = await self._bridge.run(lifetime, self._prepare, name)
                if not exists:
                    if not create:
                        return None
                    await self._bridge.run(lifetime, self._create, name)
                self._known.add(name)
        return name

    def _prepare(self, token: CancelToken, name: str) -> bool:
        """Whether ``name`` exists; if it does, check its dimension and load it (a
        restarted Milvus reopens collections released, and search needs them loaded)."""
        with self._reached():
            return self._prepare_reached(name, token)

    def _prepare_reached(self, name: str, token: CancelToken) -> bool:
        if not self._client.has_collection(name):
            return False
        described = self._client.describe_collection(name)
        if not any(f.get("name") == "acl" for f in described.get("fields", ())):
            self._without_acl.add(name)
        for field in described.get("fields", ()):
            if field.get("name") == "vector":
                dim = int(field.get("params", {}).get("dim", self.dimensions))
                if dim != self.dimensions:
                    raise InvalidRequest(
                        f"collection {name!r} holds {dim}-dimensional vectors; the embedder "
                        f"makes {self.dimensions}: use another collection or re-ingest"
                    )
        self._await_index(name, token)
        self._client.load_collection(name)
        return True

    def _await_index(self, name: str, token: CancelToken) -> None:
        """A collection that another replica or worker is creating has no index for a
        moment (creating one with its index is three calls: create, index, load), and
        loading it fails until it has: wait for the index, or, if it never comes (its
        creator died in between), build it."""
        from pymilvus.exceptions import MilvusException

        for _ in range(20):  # its creator indexes it within a second
            if self._client.list_indexes(name, field_name="vector"):
                return
            if token.wait(0.25):
                return
        try:
            self._client.create_index(name, self._index_params())
        except MilvusException:
            if not self._client.list_indexes(name, field_name="vector"):
                raise

    def _index_params(self) -> Any:
        index = self._client.prepare_index_params()
        index.add_index(
            field_name="vector",
            index_type="HNSW",
            metric_type="COSINE",
            params={"M": 16, "efConstruction": 200},
        )
        return index

    def _create(self, token: CancelToken, name: str) -> None:
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=CHUNK_ID_BYTES)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self.dimensions)
        schema.add_field("document_id", DataType.VARCHAR, max_length=MAX_ID_BYTES)
        schema.add_field("chunk_index", DataType.INT64)
        schema.add_field("generation", DataType.INT64)
        schema.add_field("acl", DataType.INT64)
        schema.add_field("source", DataType.VARCHAR, max_length=SOURCE_BYTES)
        schema.add_field("text", DataType.VARCHAR, max_length=MAX_TEXT_BYTES)
        try:
            with self._reached():
                self._client.create_collection(
                    name,
                    schema=schema,
                    index_params=self._index_params(),
                    consistency_level=self.consistency,
                )
        except UpstreamError:
            # Another replica or worker may have created it at the same moment (the
            # server then refuses ours): use theirs once it is ready.
            for _ in range(20):
                try:
                    if self._prepare(token, name):
                        return
                except UpstreamError:
                    pass
                if token.wait(0.25):
                    break
            raise

    async def search(
        self,
        vector: Sequence[float],
        top_k: int,
        lifetime: Lifetime,
        *,
        readable: Readable,
        collection: str | None = None,
    ) -> list[Hit]:
        """The ``top_k`` nearest chunks of ``readable`` ACL classes by cosine similarity,
        best first; the classes are a filter expression of the search itself."""
        self._check_dimensions(len(vector), "query")
        name = await self._collection(collection, lifetime, create=False)
        if name is None:
            return []
        where = ""
        if readable.classes is not None:
            if name in self._without_acl:
                if 0 not in readable.classes:
                    return []  # every chunk of such a collection is of class 0
            else:
                where = f"acl in [{', '.join(str(int(c)) for c in sorted(readable.classes))}]"
        try:
            rows = await self._bridge.run(lifetime, self._search, name, list(vector), top_k, where)
        except UpstreamError:
            # A restarted server has the collection released: prepare (load) it again.
            self._known.discard(name)
            raise
        return [
            Hit(
                document_id=row["entity"]["document_id"],
                chunk_index=int(row["entity"]["chunk_index"]),
                text=row["entity"]["text"],
                source=row["entity"]["source"],
                score=float(row["distance"]),
                generation=int(row["entity"]["generation"]),
                similarity=float(row["distance"]),
            )
            for row in rows
        ]

    def _search(
        self, token: CancelToken, name: str, vector: list[float], top_k: int, where: str
    ) -> Any:
        with self._reached():
            return filled_search(
                self._client, name, vector, top_k, where, _OUTPUT, self.consistency, self.uri
            )

    async def upsert(
        self, chunks: Sequence[Chunk], lifetime: Lifetime, *, collection: str | None = None
    ) -> None:
        """Insert or replace ``chunks`` by id."""
        if not chunks:
            return
        rows = [self._row(chunk) for chunk in chunks]
        name = await self._collection(collection, lifetime, create=True)
        if name in self._without_acl:
            if any(row["acl"] for row in rows):
                raise InvalidRequest(
                    f"collection {name!r} was made before document ACLs and cannot hold "
                    "a document with one: ingest it into a new collection"
                )
            for row in rows:
                del row["acl"]
        await self._bridge.run(lifetime, self._upsert, name, rows)

    def _check_dimensions(self, got: int, what: str) -> None:
        if got != self.dimensions:
            raise InvalidRequest(
                f"{what}: vector has {got} dimensions, the store expects {self.dimensions}"
            )

    def _row(self, chunk: Chunk) -> dict[str, Any]:
        self._check_dimensions(len(chunk.vector), f"chunk {chunk.id[:64]}")
        return chunk_row(chunk)

    def _upsert(self, token: CancelToken, name: str | None, rows: list[dict[str, Any]]) -> None:
        with self._reached():
            self._client.upsert(collection_name=name, data=rows)
            if self.is_lite and self.handover_chunks is not None and name is not None:
                self._check_size(name, len(rows))

    def _check_size(self, name: str, added: int) -> None:
        """Warn once when a Lite collection passes its hand-over size: counted on the first
        batch and when the estimate (last count + rows upserted since) reaches the limit."""
        key, limit = (str(Path(self.uri).resolve()), name), self.handover_chunks or 0
        rows = self._sizes.get(name)
        if key in self._warned or (rows is not None and rows + added < limit):
            self._sizes[name] = (rows or 0) + added
            return
        self._sizes[name] = rows = int(self._client.get_collection_stats(name)["row_count"])
        if rows >= limit:
            self._warned.add(key)
            log.warning(
                f"collection {name!r} holds {rows} chunks in Milvus Lite ({self.uri}), past "
                f"{limit}, where Lite should hand over to a Milvus server (search, memory and "
                "reopening grow with it): point RAGLINE_VECTOR_URI at one and re-ingest; see "
                "docs/DEPLOY.md, 'When an embedded part should hand over to its server'"
            )

    async def delete(
        self, ids: Sequence[str], lifetime: Lifetime, *, collection: str | None = None
    ) -> None:
        """Remove chunks by id; unknown ids are ignored."""
        name = await self._collection(collection, lifetime, create=False)
        if name is None or not ids:
            return
        await self._bridge.run(lifetime, self._delete, name, list(ids))

    def _delete(self, token: CancelToken, name: str, ids: list[str]) -> None:
        with self._reached():
            self._client.delete(collection_name=name, ids=ids)

    async def settle(self, lifetime: Lifetime, *, collection: str | None = None) -> None:
        """Milvus Lite: seal the rows written since the last call, so that searches use
        the index (it builds in the background) instead of scanning them one by one in
        Python, about 30 us a row: 50 ms for 2,000 fresh rows, 3 ms sealed. A few
        milliseconds when little is new. A server seals and indexes on its own, and
        flushes are rate-limited there: nothing to do."""
        if not self.is_lite:
            return
        name = await self._collection(collection, lifetime, create=False)
        if name is not None:
            await self._bridge.run(lifetime, self._flush, name)

    def _flush(self, token: CancelToken, name: str) -> None:
        with self._reached():
            self._client.flush(collection_name=name)

    @contextmanager
    def _reached(self) -> Iterator[None]:
        """Milvus's own errors (a server that went away, a collection not loaded) as an
        :class:`UpstreamError` that names the server, its password withheld: a 502 or a
        final error event, never a 500. The client reconnects by itself once the server
        is back."""
        from pymilvus.exceptions import MilvusException

        try:
            yield
        except MilvusException as exc:
            raise self._failure("Milvus at", exc) from None

    def _failure(self, what: str, exc: Exception) -> UpstreamError:
        """Milvus's error as ours: the server named, its password withheld."""
        where = redact(self.uri)
        reason = str(getattr(exc, "message", "") or exc).replace(self.uri, where)
        if self.server_version:
            reason += f" (server {self.server_version})"
        return UpstreamError(f"{what} {where}: {reason}")


def _release(version: str) -> tuple[int, int] | None:
    """(major, minor) of a Milvus version such as ``v2.3.5-lite``; None for another
    server (``milvus_lite-3.2.2``, the Lite server, which is not versioned as Milvus)."""
    match = re.fullmatch(r"v?(\d+)\.(\d+)(?:[.\-+].*)?", version.strip())
    return (int(match[1]), int(match[2])) if match else None
