"""ragline on many machines, on one: a real PostgreSQL (pip wheel), the real Milvus
standalone server (the ``milvus`` wheel), two ``ragline serve`` replica processes and
``ragline worker`` processes, all sharing state through the engines only (each has its
own data dir). Only what needs several processes is here: the coordination stores' own
contract is tests/test_coordination.py."""

from __future__ import annotations

import json
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import psycopg
import pytest
from anyio.abc import Process

from conftest import (
    Running,
    bot_settings,
    free_port,
    serve,
    upstream_running,
)
from deployment import kill_all, launch, until_ready
from fake_embeddings import FakeEmbeddings, embeddings_server
from ragline import Settings
from ragline.chunking import Chunker, minilm_tokenizer
from ragline.settings import redact
from teams_fakes import FakeTeams
from upstream import Behavior, FakeUpstream, tool_results

pytestmark = pytest.mark.anyio

WORDS = ["heron", "river", "reed", "fish", "water", "stone", "light", "wind", "marsh", "dawn"]


def text(seed: int, words: int = 60) -> str:
    return " ".join(WORDS[(seed * 7 + i * 3) % len(WORDS)] + str(i % 10) for i in range(words))


@dataclass
class Cluster:
    database_url: str
    env: dict[str, str]
    root: Path
    processes: list[Process] = field(default_factory=list)

    async def start(self, *argv: str, **env: str) -> Process:
        """A ``ragline`` process of the cluster, with a data dir and a log file of its own."""
        name = f"p{len(self.processes)}"
        environment = {**self.env, "RAGLINE_DATA_DIR": str(self.root / name), **env}
        process = await launch(list(argv), environment, self.root / f"{name}.log")
        self.processes.append(process)
        return process

    async def serve(self, **env: str) -> str:
        """A ``ragline serve`` replica, once ready: its URL."""
        port = free_port()
        process = await self.start("serve", "--port", str(port), **env)
        url = f"http://127.0.0.1:{port}"
        await until_ready(url, process)
        return url

    async def milvus_count(self, collection: str = "default") -> int:
        """Chunks in the Milvus server's collection."""
        from pymilvus import MilvusClient

        def count() -> int:
            client = MilvusClient(uri=self.env["RAGLINE_VECTOR_URI"])
            try:
                rows = client.query(
                    collection, filter="", output_fields=["count(*)"], consistency_level="Strong"
                )
                return int(rows[0]["count(*)"])
            finally:
                client.close()

        return await anyio.to_thread.run_sync(count)

    async def milvus_ids(self, ids: list[str], collection: str = "default") -> set[str]:
        """Which of ``ids`` the Milvus server's collection holds."""
        from pymilvus import MilvusClient

        def found() -> set[str]:
            client = MilvusClient(uri=self.env["RAGLINE_VECTOR_URI"])
            try:
                rows = client.get(collection, ids=ids, output_fields=["id"])
                return {str(row["id"]) for row in rows}
            finally:
                client.close()

        return await anyio.to_thread.run_sync(found)

    def rows(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.database_url) as conn:
            return conn.execute(sql.encode(), args).fetchall()


# The cluster's vectors live on the real Milvus server of the session (Milvus 2.3.5
# standalone, from the `milvus` wheel), in a fresh database for each test.
_VECTOR_URI = [""]


@pytest.fixture(autouse=True)
def _vectors_on_milvus_standalone(milvus_database: str) -> None:
    _VECTOR_URI[0] = milvus_database


@asynccontextmanager
async def cluster(
    tmp_path: Path,
    database_url: str,
    embeddings: FakeEmbeddings,
    upstream: FakeUpstream | None = None,
) -> AsyncIterator[Cluster]:
    async with AsyncExitStack() as stack:
        vector_uri = _VECTOR_URI[0]
        await stack.enter_async_context(embeddings_server(embeddings))
        llm = "http://127.0.0.1:9/v1"
        if upstream is not None:
            await stack.enter_async_context(upstream_running(upstream))
            llm = upstream.base_url
        made = Cluster(
            database_url,
            {
                "RAGLINE_DATABASE_URL": database_url,
                "RAGLINE_VECTOR_URI": vector_uri,
                "RAGLINE_EMBEDDINGS": "openai",
                "RAGLINE_EMBEDDINGS_BASE_URL": f"{embeddings.url}/v1",
                "RAGLINE_EMBEDDINGS_API_KEY": embeddings.key,
                "RAGLINE_EMBEDDINGS_MODEL": "fake-embedding",
                "RAGLINE_EMBEDDINGS_DIMENSIONS": str(embeddings.dimensions),
                "RAGLINE_EMBEDDINGS_BATCH_SIZE": "2",
                "RAGLINE_LLM_PROVIDER": "openai",
                "RAGLINE_LLM_BASE_URL": llm,
                "RAGLINE_LLM_MODEL": "fake-model",
                "RAGLINE_RETRIEVAL_MODE": "hybrid",
                "RAGLINE_INGEST_BATCH_SIZE": "2",
                "RAGLINE_INGEST_PART_DOCUMENTS": "10",
                "RAGLINE_CHUNK_TOKENS": "24",
                "RAGLINE_CHUNK_OVERLAP": "4",
                "RAGLINE_WORKER_HEARTBEAT": "0.5",
                "RAGLINE_WORKER_STALLED_AFTER": "3",
                "RAGLINE_SHUTDOWN_GRACE": "3",
            },
            tmp_path,
        )
        try:
            yield made
        finally:
            with anyio.move_on_after(30, shield=True):
                await kill_all(made.processes)


async def wait_for_state(http: httpx.AsyncClient, url: str, job_id: str, *states: str) -> Any:
    with anyio.fail_after(120):
        while True:
            status = (await http.get(f"{url}/api/v1/ingest/{job_id}")).json()
            if status["state"] in states:
                return status
            await anyio.sleep(0.05)


async def test_documents_ingested_through_one_replica_are_found_through_another(
    tmp_path: Path, database_url: str
) -> None:
    documents = [{"id": f"d{i}", "text": text(i)} for i in range(12)]
    documents.append({"id": "code", "text": "The error code XQ-7731 means a broken heron."})
    async with cluster(tmp_path, database_url, FakeEmbeddings()) as made:
        a = await made.serve()
        b = await made.serve()
        async with httpx.AsyncClient(timeout=30) as http:
            answer = await http.post(f"{a}/api/v1/ingest", json={"documents": documents})
            assert answer.status_code == 202, answer.text
            job_id = answer.json()["job_id"]
            status = await wait_for_state(http, b, job_id, "succeeded", "failed", "cancelled")
            assert status["state"] == "succeeded", status["error"]
            assert len(status["parts"]) == 2  # 13 documents, 10 a part: any worker takes each
            assert status["progress"]["documents"]["done"] == 13
            # Dense and keyword search through the other replica see the same documents.
            found = await http.post(
                f"{b}/api/v1/retrieve", json={"query": "XQ-7731 broken heron", "top_k": 3}
            )
            assert found.status_code == 200, found.text
            best = found.json()["hits"][0]
            assert best["document_id"] == "code"
            assert best["bm25"] is not None  # found by BM25 (in PostgreSQL) ...
            assert best["similarity"] is not None  # ... and by the vectors (on Milvus)
            collection = (await http.get(f"{b}/api/v1/collections/default")).json()
            assert collection["documents"] == 13
        (count,) = made.rows("SELECT count(*) FROM chunks")[0]
        assert count == collection["chunks"]


async def test_a_cancel_on_one_replica_stops_a_job_running_elsewhere_at_a_batch_boundary(
    tmp_path: Path, database_url: str
) -> None:
    documents = [{"id": f"d{i}", "text": text(i, 120)} for i in range(40)]
    slow = FakeEmbeddings(delay=0.1)
    async with cluster(tmp_path, database_url, slow) as made:
        a = await made.serve()  # takes parts
        # API only; one part, so the job is caught running on A
        b = await made.serve(RAGLINE_SERVE_JOBS="false", RAGLINE_INGEST_PART_DOCUMENTS="100")
        async with httpx.AsyncClient(timeout=30) as http:
            job_id = (await http.post(f"{b}/api/v1/ingest", json={"documents": documents})).json()[
                "job_id"
            ]
            with anyio.fail_after(60):
                while True:
                    status = (await http.get(f"{b}/api/v1/ingest/{job_id}")).json()
                    progress = status["progress"]
                    if progress and progress["chunks"]["done"] >= 4:
                        break
                    await anyio.sleep(0.05)
            cancelled = await http.delete(f"{b}/api/v1/ingest/{job_id}")
            assert cancelled.status_code == 202  # accepted: it stops at a batch boundary
            status = await wait_for_state(http, a, job_id, "cancelled", "succeeded", "failed")
        assert status["state"] == "cancelled"
        assert status["cause"] == "explicit"
        assert status["progress"]["documents"]["done"] < 40
        assert {p["state"] for p in status["parts"]} == {"cancelled"}
        # Nothing half-visible: every visible document has all its chunks, no more.
        visible = made.rows("SELECT document_id, generation, chunks FROM documents")
        for document_id, generation, chunks in visible:
            (written,) = made.rows(
                "SELECT count(*) FROM chunks WHERE document_id = %s AND generation = %s",
                document_id,
                generation,
            )[0]
            assert written == chunks


async def test_a_worker_killed_mid_job_is_replaced_and_the_result_equals_a_clean_run(
    tmp_path: Path, database_url: str
) -> None:
    documents = [{"id": f"d{i}", "text": text(i, 120)} for i in range(20)]
    slow = FakeEmbeddings(delay=0.05)
    async with cluster(tmp_path, database_url, slow) as made:
        # API only, and one part: the worker is caught in the middle of it
        api = await made.serve(RAGLINE_SERVE_JOBS="false", RAGLINE_INGEST_PART_DOCUMENTS="100")
        first = await made.start("worker")
        async with httpx.AsyncClient(timeout=30) as http:
            job_id = (
                await http.post(f"{api}/api/v1/ingest", json={"documents": documents})
            ).json()["job_id"]
            with anyio.fail_after(60):
                while not made.rows(
                    "SELECT 1 FROM documents"
                ):  # some documents switched in, the part is mid-way
                    await anyio.sleep(0.05)
            first.send_signal(signal.SIGKILL)
            await first.wait()
            (switched,) = made.rows("SELECT count(*) FROM documents")[0]
            assert 0 < switched < 20
            await made.start("worker")
            status = await wait_for_state(http, api, job_id, "succeeded", "failed", "cancelled")
        assert status["state"] == "succeeded", status
        documents_count, chunks_sum = made.rows("SELECT count(*), sum(chunks) FROM documents")[0]
        assert documents_count == 20
        (chunk_rows,) = made.rows("SELECT count(*) FROM chunks")[0]
        assert chunk_rows == chunks_sum  # the killed attempt's half-written chunks are gone
        (writing,) = made.rows("SELECT count(*) FROM generations WHERE state != 'active'")[0]
        assert writing == 0
        # Equal to a clean run: every chunk the chunker makes, once, and no more in Milvus.
        chunker = Chunker(minilm_tokenizer(), size=24, overlap=4)
        assert chunks_sum == sum(len(chunker.split(d["text"])) for d in documents)
        assert await made.milvus_count() == chunks_sum


def searching_then_slow(body: dict[str, Any]) -> Behavior:
    """An agent's model: first it calls the search tool, then it answers slowly; a
    question with "forever" is answered for as long as anyone listens."""
    if "forever" in str(body["messages"]):
        return Behavior(tokens=100_000, interval=0.05)
    if not tool_results(body):
        return Behavior(tokens=0, tool_calls=[("search", '{"query": "heron"}')])
    return Behavior(tokens=30, interval=0.05)


async def read_events(
    http: httpx.AsyncClient, url: str, *, after: int | None = None, stop_at: int | None = None
) -> list[tuple[int, str]]:
    """A run's SSE events as (id, event name); hangs up after id ``stop_at``."""
    headers = {"last-event-id": str(after)} if after is not None else {}
    seen: list[tuple[int, str]] = []
    ident, name = -1, ""
    async with http.stream("GET", url, headers=headers) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("id: "):
                ident = int(line[4:])
            elif line.startswith("event: "):
                name = line[7:]
            elif line == "" and name:
                seen.append((ident, name))
                if name == "done" or ident == stop_at:
                    break
                name = ""
    return seen


async def test_a_runs_events_resume_on_another_replica(tmp_path: Path, database_url: str) -> None:
    upstream = FakeUpstream(searching_then_slow)
    async with cluster(tmp_path, database_url, FakeEmbeddings(), upstream) as made:
        a = await made.serve()
        b = await made.serve()
        async with httpx.AsyncClient(timeout=60) as http:
            started = await http.post(f"{a}/api/v1/runs", json={"query": "where is the heron?"})
            assert started.status_code == 202, started.text
            run_id = started.json()["run_id"]
            # B knows the run at once, though A runs it.
            assert (await http.get(f"{b}/api/v1/runs/{run_id}")).json()["state"] == "running"
            first = await read_events(http, f"{a}/api/v1/runs/{run_id}/events", stop_at=1)
            rest = await read_events(http, f"{b}/api/v1/runs/{run_id}/events", after=first[-1][0])
            whole = await read_events(http, f"{a}/api/v1/runs/{run_id}/events")
            final = (await http.get(f"{b}/api/v1/runs/{run_id}")).json()
        assert [i for i, _ in first] == [0, 1]
        assert first + rest == whole  # resumed after id 1: nothing lost, nothing twice
        assert whole[-1][1] == "done"
        assert "tool_result" in {name for _, name in whole}
        assert final["state"] == "completed"
        assert final["text"].startswith("t0 t1")


async def test_a_delete_on_one_replica_stops_a_run_on_another_at_once(
    tmp_path: Path, database_url: str
) -> None:
    upstream = FakeUpstream(searching_then_slow)
    async with cluster(tmp_path, database_url, FakeEmbeddings(), upstream) as made:
        a = await made.serve()
        b = await made.serve()
        async with httpx.AsyncClient(timeout=60) as http:
            started = await http.post(f"{a}/api/v1/runs", json={"query": "talk forever"})
            run_id = started.json()["run_id"]
            (call,) = await upstream.wait_for_calls(1)
            with anyio.fail_after(30):
                while len(call.token_times) < 3:
                    await anyio.sleep(0.02)
            cancelled = await http.delete(f"{b}/api/v1/runs/{run_id}")
            assert cancelled.status_code == 202
            asked = time.monotonic()
            with anyio.fail_after(10):
                await call.closed.wait()  # A closed its upstream call: the model stopped
            tokens_after = call.tokens_after(asked + 1.0)  # generous on a shared machine
            with anyio.fail_after(10):
                while (await http.get(f"{b}/api/v1/runs/{run_id}")).json()["state"] == "running":
                    await anyio.sleep(0.05)
            final = (await http.get(f"{b}/api/v1/runs/{run_id}")).json()
            events = await read_events(http, f"{b}/api/v1/runs/{run_id}/events")
        assert tokens_after == 0
        assert final["state"] == "cancelled"
        assert final["cause"] == "explicit"
        assert events[-1][1] == "done"


@asynccontextmanager
async def teams_replicas(
    tmp_path: Path,
    database_url: str,
    behave: Callable[[dict[str, Any]], Behavior],
    into: list[Running] | None = None,
) -> AsyncIterator[tuple[FakeTeams, FakeUpstream, list[str]]]:
    """Two replicas (in this process, sharing nothing but the database) behind the fake
    Teams and the fake model; ``into`` receives the two servers."""
    upstream = FakeUpstream(behave)
    async with upstream_running(upstream), FakeTeams.running() as teams:

        def config(name: str) -> Settings:
            return bot_settings(
                upstream, teams, database_url=database_url, data_dir=str(tmp_path / name)
            )

        async with serve(config("a")) as a, serve(config("b")) as b:
            if into is not None:
                into += [a, b]
            yield teams, upstream, [f"{a.url}/api/messages", f"{b.url}/api/messages"]


async def test_an_activity_delivered_to_two_replicas_is_answered_once(
    tmp_path: Path, database_url: str
) -> None:
    async with teams_replicas(
        tmp_path, database_url, lambda body: Behavior(tokens=5, interval=0.05)
    ) as (teams, upstream, urls):
        activity = teams.activity("what is ragline?", kind="groupChat")
        conversation = activity["conversation"]["id"]
        async with anyio.create_task_group() as tg:
            for url in urls:
                tg.start_soon(teams.deliver, url, activity)
        await teams.wait_for(lambda: teams.messages(conversation), timeout=60)
        await anyio.sleep(1.0)  # a second answer would have come by now
        assert len(teams.messages(conversation)) == 1
        assert len(upstream.calls) == 1


async def test_one_conversations_turns_on_two_replicas_are_answered_in_order(
    tmp_path: Path, database_url: str
) -> None:
    async with teams_replicas(
        tmp_path, database_url, lambda body: Behavior(tokens=6, interval=0.2)
    ) as (teams, upstream, urls):
        first = teams.activity("q0", kind="groupChat")
        second = teams.activity("q1", kind="groupChat")
        conversation = first["conversation"]["id"]
        assert second["conversation"]["id"] == conversation
        await teams.deliver(urls[0], first)
        await teams.deliver(urls[1], second)
        await teams.wait_for(lambda: len(teams.messages(conversation)) == 2, timeout=60)
        calls = {call.query.split()[-1]: call for call in upstream.calls}
        assert calls["q0"].token_times[-1] <= calls["q1"].received_at  # one after the other
        replies = [m["replyToId"] for m in teams.messages(conversation)]
        assert replies == [first["id"], second["id"]]


@asynccontextmanager
async def replica_in_process(tmp_path: Path, database_url: str) -> AsyncIterator[Running]:
    """One replica on uvicorn in this process, on ``database_url``, with fake embeddings
    and a fake model."""
    upstream = FakeUpstream()
    async with embeddings_server(FakeEmbeddings()) as fake, upstream_running(upstream):
        settings = Settings(
            data_dir=str(tmp_path / "data"),
            database_url=database_url,
            llm_provider="openai",
            llm_base_url=upstream.base_url,
            embeddings_provider="openai",
            embeddings_base_url=f"{fake.url}/v1",
            embeddings_api_key=fake.key,  # type: ignore[arg-type]
            embeddings_dimensions=fake.dimensions,
        )
        async with serve(settings) as running:
            yield running


async def test_a_database_down_at_start_is_named_and_ready_once_it_is_up(
    tmp_path: Path, postgres_server: str
) -> None:
    """The database does not exist yet (as good as down): the replica serves, /readyz says
    why, requests get a 503, never a 500; once the database is there, it becomes ready."""
    base, _, query = postgres_server.partition("?")
    name = f"later_{uuid.uuid4().hex[:12]}"
    url = f"{base.rsplit('/', 1)[0]}/{name}?{query}"
    async with (
        replica_in_process(tmp_path, url) as running,
        httpx.AsyncClient(base_url=running.url, timeout=30) as http,
    ):
        before = await http.get("/readyz")
        collections = await http.get("/api/v1/collections")
        with psycopg.connect(postgres_server, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"'.encode())
        with anyio.fail_after(60):
            while (await http.get("/readyz")).status_code != 200:
                await anyio.sleep(0.1)
        after = await http.get("/api/v1/collections")
    assert before.status_code == 503
    assert f"PostgreSQL at {redact(url)}" in before.json()["reason"]
    assert collections.status_code == 503
    assert collections.json()["error"]["code"] == "unavailable"
    assert after.status_code == 200


async def test_a_database_that_drops_mid_request_is_a_503_never_a_500(
    tmp_path: Path, database_url: str
) -> None:
    async with (
        replica_in_process(tmp_path, database_url) as running,
        httpx.AsyncClient(base_url=running.url, timeout=30) as http,
    ):
        assert (await http.get("/api/v1/collections")).status_code == 200
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid != pg_backend_pid()"
            )
        statuses = [(await http.get("/api/v1/collections")).status_code for _ in range(5)]
    assert set(statuses) <= {200, 503}
    assert statuses[-1] == 200  # recovered by itself


async def test_prune_across_parts_removes_what_no_part_saw(
    tmp_path: Path, database_url: str
) -> None:
    async with cluster(tmp_path, database_url, FakeEmbeddings()) as made:
        a = await made.serve(RAGLINE_INGEST_PART_DOCUMENTS="2")
        async with httpx.AsyncClient(timeout=30) as http:
            everything = [{"id": f"d{i}", "text": text(i)} for i in range(6)]
            first = await http.post(f"{a}/api/v1/ingest", json={"documents": everything})
            await wait_for_state(http, a, first.json()["job_id"], "succeeded")
            kept = everything[:3]  # two parts: d0 d1, and d2
            again = await http.post(f"{a}/api/v1/ingest", json={"documents": kept, "prune": True})
            status = await wait_for_state(
                http, a, again.json()["job_id"], "succeeded", "failed", "cancelled"
            )
        assert status["state"] == "succeeded"
        assert len(status["parts"]) == 2
        assert status["progress"]["documents"]["pruned"] == 3
        assert status["progress"]["documents"]["skipped"] == 3  # unchanged: not rewritten
        assert sorted(r[0] for r in made.rows("SELECT document_id FROM documents")) == [
            "d0",
            "d1",
            "d2",
        ]


async def test_a_replicas_shutdown_interrupts_only_its_own_turns(
    tmp_path: Path, database_url: str
) -> None:
    servers: list[Running] = []
    async with teams_replicas(
        tmp_path, database_url, lambda body: Behavior(tokens=15, interval=0.2), servers
    ) as (teams, upstream, urls):
        here = teams.activity("on a", kind="groupChat")
        there = teams.activity("on b", kind="groupChat", conversation_id="19:other@thread.v2")
        await teams.deliver(urls[0], here)
        await teams.deliver(urls[1], there)
        await upstream.wait_for_calls(2)
        servers[0].server.stop()  # replica A shuts down while both turns stream
        await teams.wait_for(lambda: teams.messages("19:other@thread.v2"), timeout=60)
        calls = {call.query.split()[-1]: call for call in upstream.calls}
        with anyio.fail_after(30):
            await calls["a"].closed.wait()
    assert calls["b"].finished  # B's turn ran to its end
    assert not calls["a"].finished  # A's was cut by A's shutdown


async def test_a_cli_ingest_beside_a_worker_leaves_the_workers_document_whole(
    tmp_path: Path, database_url: str
) -> None:
    """`ragline ingest` with RAGLINE_DATABASE_URL writes in its own process while a
    worker is in the middle of a long document of the same collection. Its garbage
    collection must take only what it left half-written itself: before, it reclaimed the
    worker's unfinished generation, whose first chunks were then missing for good (the
    worker switched the document in, and its content hash made later runs skip it)."""
    long = [{"id": f"long{i}", "text": text(i, 400)} for i in range(4)]
    small = tmp_path / "small"
    small.mkdir()
    for i in range(3):
        (small / f"note{i}.txt").write_text(text(100 + i, 30), encoding="utf-8")
    slow = FakeEmbeddings(delay=0.1)
    async with cluster(tmp_path, database_url, slow) as made:
        # API only, and one part, so that one worker writes the long documents in order.
        api = await made.serve(RAGLINE_SERVE_JOBS="false", RAGLINE_INGEST_PART_DOCUMENTS="100")
        await made.start("worker")
        async with httpx.AsyncClient(timeout=30) as http:
            job_id = (await http.post(f"{api}/api/v1/ingest", json={"documents": long})).json()[
                "job_id"
            ]
            with anyio.fail_after(60):  # the worker is part-way into its first document
                while made.rows("SELECT count(*) FROM chunks")[0][0] < 4:
                    await anyio.sleep(0.05)
            assert made.rows("SELECT count(*) FROM documents")[0][0] == 0
            cli = await made.start("ingest", str(small))
            with anyio.fail_after(120):
                await cli.wait()
            assert cli.returncode == 0, (made.root / f"p{len(made.processes) - 1}.log").read_text()
            status = await wait_for_state(http, api, job_id, "succeeded", "failed", "cancelled")
        assert status["state"] == "succeeded", status
        # Equal to a clean run: 7 documents, every chunk the chunker makes, once.
        chunker = Chunker(minilm_tokenizer(), size=24, overlap=4)
        expected = sum(len(chunker.split(d["text"])) for d in long)
        expected += sum(len(chunker.split(p.read_text())) for p in small.iterdir())
        documents_count, chunks_sum = made.rows("SELECT count(*), sum(chunks) FROM documents")[0]
        assert (documents_count, chunks_sum) == (7, expected)
        assert await made.milvus_count() == expected
        # And every long document still has its first chunk, in the vector store.
        firsts = made.rows(
            "SELECT c.chunk_id FROM chunks c JOIN documents d USING (collection, document_id, "
            "generation) WHERE c.chunk_index = 0 AND d.document_id LIKE %s",
            "long%",
        )
        assert len(firsts) == 4
        assert await made.milvus_ids([row[0] for row in firsts]) == {row[0] for row in firsts}


def rewrites_then_answers(body: dict[str, Any]) -> Behavior:
    """A follow-up's rewrite gets a standalone query; every answer four tokens."""
    if "Search query:" in body["messages"][-1]["content"]:
        return Behavior(tokens=1, texts=["stopping an ingestion batch"])
    return Behavior(tokens=4)


async def test_a_teams_follow_up_on_the_other_replica_has_the_first_turns_context(
    tmp_path: Path, database_url: str
) -> None:
    """The second message of a thread lands on the other replica: the model sees the
    first turn, retrieval searches for the rewritten follow-up; "new chat" forgets."""
    upstream = FakeUpstream(rewrites_then_answers)
    embeddings = FakeEmbeddings()
    async with (
        embeddings_server(embeddings) as fake,
        upstream_running(upstream),
        FakeTeams.running() as teams,
    ):

        def config(name: str) -> Settings:
            return bot_settings(
                upstream,
                teams,
                database_url=database_url,
                data_dir=str(tmp_path / name),
                retrieval=True,
                embeddings="openai",
                embeddings_model="fake-embedding",
                embeddings_base_url=f"{fake.url}/v1",
                embeddings_api_key=fake.key,
                embeddings_dimensions=fake.dimensions,
            )

        async with serve(config("a")) as a, serve(config("b")) as b:
            urls = [f"{a.url}/api/messages", f"{b.url}/api/messages"]
            first = teams.activity("How large is an ingestion batch?", kind="groupChat")
            conversation = first["conversation"]["id"]
            await teams.deliver(urls[0], first)
            await teams.wait_for(lambda: len(teams.messages(conversation)) == 1, timeout=60)
            follow = teams.activity(
                "and how do I stop one?", kind="groupChat", conversation_id=conversation
            )
            await teams.deliver(urls[1], follow)
            await teams.wait_for(lambda: len(teams.messages(conversation)) == 2, timeout=60)
            rewrite, answer = upstream.calls[-2:]
            fresh = teams.activity("new chat", kind="groupChat", conversation_id=conversation)
            await teams.deliver(urls[0], fresh)
            await teams.wait_for(lambda: len(teams.messages(conversation)) == 3, timeout=60)
            alone = teams.activity("and then?", kind="groupChat", conversation_id=conversation)
            await teams.deliver(urls[1], alone)
            await teams.wait_for(lambda: len(teams.messages(conversation)) == 4, timeout=60)
    asked = [m["content"] for m in answer.body["messages"]]
    assert "How large is an ingestion batch?" in asked
    assert "t0 t1 t2 t3 " in asked
    assert "User: How large is an ingestion batch?" in rewrite.body["messages"][-1]["content"]
    queries = [body["input"] for path, _, body in embeddings.requests if path == "/v1/embeddings"]
    assert ["stopping an ingestion batch"] in queries  # what retrieval searched for
    assert "forgotten" in teams.messages(conversation)[2]["text"]
    last = upstream.calls[-1].body["messages"]
    assert [m["content"] for m in last if m["role"] == "assistant"] == []  # no history
    assert len([c for c in upstream.calls if "Search query:" in json.dumps(c.body)]) == 1
