"""BM25 on SQLite FTS5 (``SqliteFile.keyword_search``): its two ways to the answer give
the answer of the one filtered query it replaced, hit for hit and score for score.

A reader of every ACL class in the collection gets the best ``2 * limit`` rows of the whole
index ranked first and only those filtered; when too few of them pass (rows of other
collections, of generations not switched in, of classes the reader may not read) or for
other readers, one query filters as it ranks. The file holds all of that: two collections,
documents rewritten (old generations still in the index), documents never switched in, and
three ACL classes.
"""

from __future__ import annotations

import random
import re
from collections.abc import Collection
from pathlib import Path
from typing import Any

import pytest

from ragline.access import acl_class
from ragline.models import Chunk, Hit
from ragline.providers._sqlite_file import SqliteFile

WORDS = [
    "heron",
    "marsh",
    "river",
    "stone",
    "reed",
    "wader",
    "fish",
    "wing",
    "nest",
    "mud",
    "tide",
    "the",
    "of",
    "a",
    "and",
]
TEAM = ("group:team",)
OTHERS = ("group:others",)


def reference(
    db: SqliteFile, collection: str, query: str, limit: int, classes: Collection[int] | None
) -> list[Hit]:
    """The one query keyword_search ran before: filter (collection, visible generation,
    ACL) while ranking by BM25."""
    words = re.findall(r"\w+", query.lower())
    if not words:
        return []
    only = ""
    if classes is not None:
        only = f"AND documents.acl IN ({','.join(str(int(c)) for c in sorted(classes))}) "
    rows: list[Any] = db._query(
        "SELECT chunk_text.document_id, chunk_text.chunk_index, chunk_text.text, "
        "chunk_text.source, -bm25(chunk_text) AS score, chunk_text.generation "
        "FROM chunk_text JOIN documents ON documents.collection = chunk_text.collection "
        "AND documents.document_id = chunk_text.document_id "
        "AND documents.generation = chunk_text.generation "
        "WHERE chunk_text MATCH ? AND chunk_text.collection = ? " + only + "ORDER BY "
        "bm25(chunk_text) LIMIT ?",
        (" OR ".join(f'"{w}"' for w in words), collection, limit),
    )
    return [Hit(r[0], r[1], r[2], r[3], r[4], r[5], bm25=r[4]) for r in rows]


def write(db: SqliteFile, collection: str, document: str, texts: list[str], **switch: Any) -> int:
    generation = db.begin_generation(collection, document, "test")
    chunks = [
        Chunk(f"{document}-{generation}-{i}", document, i, text, f"{document}.txt", (), generation)
        for i, text in enumerate(texts)
    ]
    db.intend_chunks(collection, chunks)
    if switch.get("readers") is not None:
        db.switch(
            collection,
            document,
            generation,
            content_hash=f"h{generation}",
            chunks=len(chunks),
            source=f"{document}.txt",
            readers=switch["readers"],
        )
    return generation


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> SqliteFile:
    rng = random.Random(7)
    db = SqliteFile(Path(tmp_path_factory.mktemp("keywords")) / "records.sqlite")

    def texts(count: int) -> list[str]:
        return [" ".join(rng.choices(WORDS, k=rng.randint(3, 12))) for _ in range(count)]

    for i in range(60):
        readers = [(), TEAM, OTHERS][i % 3]
        write(db, "birds", f"d{i}", texts(rng.randint(1, 4)), readers=readers)
        if i % 5 == 0:  # rewritten: the first generation's chunks stay in the index
            write(db, "birds", f"d{i}", texts(2), readers=readers)
        if i % 7 == 0:  # a generation still being written: never visible
            write(db, "birds", f"d{i}", texts(3), readers=None)
    for i in range(200):  # another collection, most of the index
        write(db, "fish", f"f{i}", texts(2), readers=())
    return db


FILTERED = re.compile(r"chunk_text MATCH .* AND chunk_text\.collection = ")
QUERIES = ["heron", "heron marsh", "the heron of the marsh", "tide mud wader", "zzz", "?!", "a"]


@pytest.mark.parametrize("collection", ["birds", "fish", "none"])
@pytest.mark.parametrize("limit", [1, 4, 20, 100, 1000])
def test_keyword_search_answers_as_the_filtered_query_did(
    db: SqliteFile, collection: str, limit: int
) -> None:
    readers: list[frozenset[int] | None] = [
        None,  # an admin
        frozenset({0, acl_class(TEAM), acl_class(OTHERS)}),  # reads every class it has
        frozenset({0, acl_class(TEAM)}),  # reads two of three
        frozenset({0}),
        frozenset({12345}),  # a class nothing has
    ]
    for classes in readers:
        for query in QUERIES:
            got = db.keyword_search(collection, query, limit, classes)
            assert got == reference(db, collection, query, limit, classes), (
                collection,
                limit,
                classes,
                query,
            )


def test_a_reader_of_everything_is_answered_from_the_ranked_candidates(db: SqliteFile) -> None:
    # "fish" is most of the index: the best 2 * limit rows of the index hold 4 of it.
    statements: list[str] = []
    db._db.set_trace_callback(statements.append)
    try:
        assert len(db.keyword_search("fish", "heron marsh", 4, None)) == 4
        assert not any(FILTERED.search(s) for s in statements), statements
        statements.clear()
        # "none" has nothing: the filtered query answers.
        db.keyword_search("none", "heron marsh", 4, None)
        assert any(FILTERED.search(s) for s in statements), statements
    finally:
        db._db.set_trace_callback(None)
