"""The record store: generations, the switch, garbage, jobs; transactions all or nothing."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from ragline.records import Records


@pytest.fixture
def records(tmp_path: Path) -> Records:
    return Records(tmp_path / "records.sqlite")


def test_a_generation_becomes_visible_only_when_switched(records: Records) -> None:
    first = records.begin_generation("c", "doc", owner="job1")
    records.intend_chunks("c", [("a", "doc", first), ("b", "doc", first)])
    assert records.active("c", ["doc"]) == {}
    records.switch("c", "doc", first, content_hash="h1", chunks=2, source="doc.txt")
    assert records.active("c", ["doc"]) == {"doc": first}
    second = records.begin_generation("c", "doc", owner="job2")
    assert second == first + 1
    records.intend_chunks("c", [("c", "doc", second)])
    records.switch("c", "doc", second, content_hash="h2", chunks=1, source="doc.txt")
    assert records.active("c", ["doc"]) == {"doc": second}
    assert records.garbage("c") == [("doc", first, ["a", "b"])]
    records.forget("c", "doc", first)
    assert records.garbage("c") == []
    assert records.documents("c")["doc"].content_hash == "h2"


def test_an_interrupted_generation_is_garbage_and_numbers_never_repeat(records: Records) -> None:
    orphan = records.begin_generation("c", "doc", owner="crashed")
    records.intend_chunks("c", [("x", "doc", orphan)])
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
