"""The record store: generations, the switch, garbage, jobs; transactions all or nothing."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from ragline import Chunk
from ragline.records import Records


def chunk(chunk_id: str, generation: int, text: str = "herons wait by the river") -> Chunk:
    return Chunk(chunk_id, "doc", 0, text, "doc.txt", (), generation)


@pytest.fixture
def records(tmp_path: Path) -> Records:
    return Records(tmp_path / "records.sqlite")


def test_a_generation_becomes_visible_only_when_switched(records: Records) -> None:
    first = records.begin_generation("c", "doc", owner="job1")
    records.intend_chunks("c", [chunk("a", first), chunk("b", first)])
    assert records.active("c", ["doc"]) == {}
    records.switch("c", "doc", first, content_hash="h1", chunks=2, source="doc.txt")
    assert records.active("c", ["doc"]) == {"doc": first}
    second = records.begin_generation("c", "doc", owner="job2")
    assert second == first + 1
    records.intend_chunks("c", [chunk("c", second)])
    records.switch("c", "doc", second, content_hash="h2", chunks=1, source="doc.txt")
    assert records.active("c", ["doc"]) == {"doc": second}
    assert records.garbage("c") == [("doc", first, ["a", "b"])]
    records.forget("c", "doc", first)
    assert records.garbage("c") == []
    assert records.documents("c")["doc"].content_hash == "h2"


def test_an_interrupted_generation_is_garbage_and_numbers_never_repeat(records: Records) -> None:
    orphan = records.begin_generation("c", "doc", owner="crashed")
    records.intend_chunks("c", [chunk("x", orphan)])
    assert records.garbage("c") == [("doc", orphan, ["x"])]
    assert records.garbage("c", keep_owner="crashed") == []
    records.forget("c", "doc", orphan)
    assert records.begin_generation("c", "doc", owner="next") == orphan  # reuse is safe: gone


def test_a_failed_transaction_leaves_nothing(records: Records) -> None:
    generation = records.begin_generation("c", "doc", owner="job")
    with pytest.raises(sqlite3.OperationalError):
        records._transaction(
            [
                ("UPDATE generations SET state = 'active' WHERE collection = 'c'", ()),
                ("INSERT INTO no_such_table VALUES (1)", ()),
            ]
        )
    assert records.active("c", ["doc"]) == {}
    assert records.garbage("c") == [("doc", generation, [])]


def test_remove_retires_a_document(records: Records) -> None:
    generation = records.begin_generation("c", "doc", owner="job")
    records.switch("c", "doc", generation, content_hash="h", chunks=0, source="s")
    records.remove("c", "doc")
    assert records.documents("c") == {}
    assert records.garbage("c") == [("doc", generation, [])]


def test_jobs_and_collections_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "records.sqlite"
    first = Records(path)
    first.save_job("j1", "queued", {"inputs": ["a"]})
    first.save_job("j1", "running", {"inputs": ["a"], "progress": None})
    first.touch_collection("c", "model", 384)
    first.close()
    again = Records(path)
    assert again.jobs("running") == [("j1", "running", {"inputs": ["a"], "progress": None})]
    assert again.jobs("queued") == []
    (collection,) = again.collections()
    assert collection["name"] == "c"
    assert collection["documents"] == 0
    again.close()


def test_keyword_search_sees_only_visible_generations(records: Records) -> None:
    first = records.begin_generation("c", "doc", owner="job")
    records.intend_chunks("c", [chunk("a", first, "the heron waits by the river")])
    assert records.keyword_search("c", "heron", 5) == []  # not switched in yet
    records.switch("c", "doc", first, content_hash="h", chunks=1, source="doc.txt")
    (hit,) = records.keyword_search("c", "Herons? rivers!", 5)
    assert hit.text == "the heron waits by the river"
    assert hit.score > 0
    second = records.begin_generation("c", "doc", owner="job")
    records.intend_chunks("c", [chunk("b", second, "stones in the marsh")])
    records.switch("c", "doc", second, content_hash="h2", chunks=1, source="doc.txt")
    assert records.keyword_search("c", "heron", 5) == []
    assert [h.generation for h in records.keyword_search("c", "marsh", 5)] == [second]
    assert records.keyword_search("c", '"; DROP TABLE chunks; --', 5) == []
