"""Ingestion jobs over HTTP on a real server with MiniLM and Milvus Lite: shutdown and
restart, per-document reports for bad input, cancel, roots, first start, collections."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from conftest import Running, serve
from ragline import Settings
from ragline.providers.sqlite import SqliteRecords
from ragline.threads import ThreadBridge

pytestmark = pytest.mark.anyio

WORDS = ["heron", "river", "reed", "fish", "water", "stone", "light", "wind", "marsh", "dawn"]


def text(seed: int, words: int = 150) -> str:
    return " ".join(WORDS[(seed * 7 + i * 3) % len(WORDS)] + str(i % 10) for i in range(words))


def settings(data: Path, **values: Any) -> Settings:
    base: dict[str, Any] = {
        "data_dir": str(data / "data"),
        "llm_provider": "openai",
        "llm_base_url": "http://127.0.0.1:9/v1",
        "ingest_batch_size": 2,
        "chunk_tokens": 24,
        "chunk_overlap": 4,
        "ingest_roots": str(data),
    }
    base.update(values)
    return Settings(**base)


@asynccontextmanager
async def client(running: Running) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=running.url, timeout=30) as http:
        yield http


def sqlite_jobs(running: Running) -> list[tuple[str, str, dict[str, Any]]]:
    records = running.server.runtime.records
    assert isinstance(records, SqliteRecords)
    return records.file.jobs()


async def wait_for_state(http: httpx.AsyncClient, job_id: str, *states: str) -> dict[str, Any]:
    with anyio.fail_after(120):
        while True:
            status = (await http.get(f"/api/v1/ingest/{job_id}")).json()
            if status["state"] in states:
                return status
            await anyio.sleep(0.05)


async def test_shutdown_during_a_job_then_restart_finishes_it(tmp_path: Path) -> None:
    documents = [{"id": f"d{i}", "text": text(i)} for i in range(30)]
    async with serve(settings(tmp_path)) as running, client(running) as http:
        answer = await http.post("/api/v1/ingest", json={"documents": documents})
        assert answer.status_code == 202
        job_id = answer.json()["job_id"]
        with anyio.fail_after(120):
            while True:
                progress = (await http.get(f"/api/v1/ingest/{job_id}")).json()["progress"]
                if progress and progress["documents"]["done"] >= 3:
                    break
                await anyio.sleep(0.02)
        running.server.stop()
    records = SqliteRecords(tmp_path / "data" / "records.sqlite", ThreadBridge())
    ((_, state, body),) = records.file.jobs()
    records.close()
    assert state == "running"
    assert body["cause"] == "shutdown"
    async with serve(settings(tmp_path)) as running, client(running) as http:
        status = await wait_for_state(http, job_id, "succeeded", "failed", "cancelled")
        assert status["state"] == "succeeded"
        collection = (await http.get("/api/v1/collections/default")).json()
    assert collection["documents"] == 30
    assert collection["embedding_model"] == "all-MiniLM-L6-v2"


async def test_bad_input_is_reported_per_document_and_the_rest_is_indexed(
    tmp_path: Path,
) -> None:
    lines = [
        json.dumps({"id": "j1", "text": "a good line about herons"}),
        "{not json",
        json.dumps({"text": "no id here"}),
        json.dumps({"id": "good.txt", "text": "same id as an uploaded file"}),
        json.dumps({"id": "j2", "text": "another good line about rivers"}),
    ]
    files = {
        "good.txt": b"Herons wait by the river for fish.",
        "notes.md": b"# Notes\n\nReeds grow in the marsh.",
        "page.html": b"<html><head><title>T</title><script>x()</script></head>"
        b"<body><p>Stones in the water.</p></body></html>",
        "data.jsonl": "\n".join(lines).encode(),
        "binary.txt": b"abc\x00\x01\x02def",
        "empty.md": b"   \n",
        "latin1.txt": "caf\u00e9 cr\u00e8me".encode("latin-1"),
        "huge.txt": b"word " * 30_000,
        "slides.docx": b"PK\x03\x04",
    }
    upload = [("files", (name, data)) for name, data in files.items()]
    async with (
        serve(settings(tmp_path, max_document_bytes=65_536)) as running,
        client(running) as http,
    ):
        answer = await http.post("/api/v1/ingest", files=upload, data={"collection": "mixed"})
        assert answer.status_code == 202, answer.text
        status = await wait_for_state(http, answer.json()["job_id"], "succeeded", "failed")
        hits = (
            await http.post(
                "/api/v1/retrieve",
                json={"query": "herons by the river", "top_k": 10, "collection": "mixed"},
            )
        ).json()["hits"]
    assert status["state"] == "succeeded"
    reasons = {
        e["source"].split(":")[0]
        + (":" + e["source"].split(":")[1] if ":" in e["source"] else ""): e["reason"]
        for e in status["progress"]["errors"]
    }
    joined = json.dumps(status["progress"]["errors"])
    for expected in (
        "binary",
        "empty",
        "UTF-8",
        "too large",
        "unsupported",
        "JSON",
        "id",
        "duplicate",
    ):
        assert expected.lower() in joined.lower(), (expected, reasons)
    indexed = {h["document_id"] for h in hits}
    assert {"good.txt", "notes.md", "page.html", "j1", "j2"} <= indexed
    assert not indexed & {"binary.txt", "empty.md", "latin1.txt", "huge.txt"}


async def test_uploads_with_one_base_name_never_overwrite_each_other(tmp_path: Path) -> None:
    upload = [
        ("files", ("a/x.txt", b"alpha herons wade")),
        ("files", ("b/x.txt", b"beta herons fly")),
        ("files", ("../../etc/passwd.txt", b"gamma reeds")),
        ("files", ("/etc/passwd.txt", b"delta reeds")),
    ]
    async with serve(settings(tmp_path)) as running, client(running) as http:
        answer = await http.post("/api/v1/ingest", files=upload, data={"collection": "same"})
        status = await wait_for_state(http, answer.json()["job_id"], "succeeded", "failed")
        hits = (
            await http.post(
                "/api/v1/retrieve",
                json={"query": "herons reeds", "top_k": 10, "collection": "same"},
            )
        ).json()["hits"]
    assert status["state"] == "succeeded"
    texts = {h["text"] for h in hits}
    # The first of each name is kept; the second is a per-document error, never a silent loss.
    assert {"alpha herons wade", "gamma reeds"} <= texts
    duplicates = [e for e in status["progress"]["errors"] if "duplicate" in e["reason"]]
    assert sorted(e["document_id"] for e in duplicates) == ["passwd.txt", "x.txt"]
    assert status["progress"]["documents"]["done"] + len(duplicates) == len(upload)


async def test_delete_stops_a_job_at_the_next_batch_boundary(tmp_path: Path) -> None:
    documents = [{"id": f"d{i}", "text": text(i, 400)} for i in range(40)]
    async with serve(settings(tmp_path)) as running, client(running) as http:
        job_id = (await http.post("/api/v1/ingest", json={"documents": documents})).json()["job_id"]
        with anyio.fail_after(120):
            while not ((await http.get(f"/api/v1/ingest/{job_id}")).json()["progress"] or {}):
                await anyio.sleep(0.02)
        cancelled = await http.delete(f"/api/v1/ingest/{job_id}")
        assert cancelled.status_code == 202
        status = await wait_for_state(http, job_id, "cancelled", "succeeded")
        collection = (await http.get("/api/v1/collections")).json()
        missing = await http.get("/api/v1/ingest/nope")
    assert status["state"] == "cancelled"
    assert status["cause"] == "explicit"
    assert status["progress"]["documents"]["done"] < 40
    assert missing.status_code == 404
    assert collection == {"collections": []}  # nothing finished: no ingestion recorded


async def test_paths_only_under_the_roots(tmp_path: Path) -> None:
    inside = tmp_path / "inside"
    inside.mkdir()
    (inside / "a.txt").write_text("Herons and reeds.")
    async with serve(settings(tmp_path)) as running, client(running) as http:
        refused = await http.post("/api/v1/ingest", json={"paths": ["/etc"]})
        traversal = await http.post(
            "/api/v1/ingest", json={"paths": [str(inside / ".." / ".." / "x")]}
        )
        accepted = await http.post("/api/v1/ingest", json={"paths": [str(inside)]})
        status = await wait_for_state(http, accepted.json()["job_id"], "succeeded", "failed")
        empty = await http.post("/api/v1/ingest", json={})
    assert refused.status_code == 422
    assert refused.json()["error"]["code"] == "path_not_allowed"
    assert traversal.status_code == 422
    assert status["state"] == "succeeded"
    assert status["progress"]["documents"]["done"] == 1
    assert empty.status_code == 422


async def test_first_start_ingests_the_seed_docs_into_an_empty_collection(
    tmp_path: Path,
) -> None:
    seed = tmp_path / "docs"
    seed.mkdir()
    (seed / "intro.md").write_text("# ragline\n\nThe ragline mascot is a heron named Pip.")
    async with serve(settings(tmp_path, seed_docs=str(seed))) as running, client(running) as http:
        ((job_id, _, _),) = sqlite_jobs(running)
        await wait_for_state(http, job_id, "succeeded")
        hits = (await http.post("/api/v1/retrieve", json={"query": "mascot"})).json()["hits"]
    assert hits[0]["document_id"] == "intro.md"
    async with serve(settings(tmp_path, seed_docs=str(seed))) as running:
        assert len(sqlite_jobs(running)) == 1  # not empty: no second seed


async def test_hybrid_retrieval_finds_an_exact_rare_word(tmp_path: Path) -> None:
    documents = [{"id": f"d{i}", "text": text(i, 60)} for i in range(8)]
    documents.append({"id": "code", "text": "The error code is XQ-7731 for a broken heron."})
    async with (
        serve(settings(tmp_path, retrieval_mode="hybrid")) as running,
        client(running) as http,
    ):
        job_id = (await http.post("/api/v1/ingest", json={"documents": documents})).json()["job_id"]
        await wait_for_state(http, job_id, "succeeded")
        hits = (await http.post("/api/v1/retrieve", json={"query": "xq-7731", "top_k": 3})).json()[
            "hits"
        ]
    assert hits[0]["document_id"] == "code"
