"""The record store and job store: one conformance suite, run on SQLite and on a real
PostgreSQL. Generations, the switch, garbage, keyword search, jobs; transactions all or
nothing; a cancelled caller cancels its query on the server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from ragline import Cause, Chunk, Lifetime, Unavailable
from ragline.access import Readable, acl_class
from ragline.providers import Records
from ragline.providers.postgres import PostgresPool
from ragline.providers.postgres_records import PostgresRecords
from ragline.providers.sqlite import SqliteRecords
from ragline.settings import redact
from ragline.threads import ThreadBridge

pytestmark = pytest.mark.anyio

ALL = Readable.everything()


def chunk(
    chunk_id: str, generation: int, text: str = "herons wait by the river", document: str = "doc"
) -> Chunk:
    return Chunk(chunk_id, document, 0, text, "doc.txt", (), generation)


@pytest.fixture
def life() -> Lifetime:
    return Lifetime.root("test")


@pytest.fixture(params=["sqlite", "postgres"])
async def records(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Records]:
    if request.param == "sqlite":
        sqlite = SqliteRecords(tmp_path / "records.sqlite", ThreadBridge())
        yield sqlite
        sqlite.close()
        return
    pool = PostgresPool(request.getfixturevalue("database_url"))
    await pool.open(Lifetime.root("open"))
    yield PostgresRecords(pool)
    await pool.aclose()


async def test_a_generation_becomes_visible_only_when_switched(
    records: Records, life: Lifetime
) -> None:
    first = await records.begin_generation("c", "doc", "job1", life)
    await records.intend_chunks("c", [chunk("a", first), chunk("b", first)], life)
    assert await records.active("c", ["doc"], life) == {}
    await records.switch(
        "c", "doc", first, life, content_hash="h1", chunks=2, source="doc.txt", readers=()
    )
    assert await records.active("c", ["doc", "other"], life) == {"doc": first}
    second = await records.begin_generation("c", "doc", "job2", life)
    assert second == first + 1
    await records.intend_chunks("c", [chunk("c", second)], life)
    await records.switch(
        "c", "doc", second, life, content_hash="h2", chunks=1, source="doc.txt", readers=()
    )
    assert await records.active("c", ["doc"], life) == {"doc": second}
    assert await records.garbage("c", life, owner="gc") == [("doc", first, ["a", "b"])]
    await records.forget("c", "doc", first, life)
    assert await records.garbage("c", life, owner="gc") == []
    assert (await records.documents("c", life))["doc"].content_hash == "h2"
    assert await records.documents("elsewhere", life) == {}


async def test_an_interrupted_generation_is_garbage_and_numbers_never_repeat(
    records: Records, life: Lifetime
) -> None:
    orphan = await records.begin_generation("c", "doc", "crashed", life)
    await records.intend_chunks("c", [chunk("x", orphan)], life)
    assert await records.garbage("c", life, owner="crashed") == [("doc", orphan, ["x"])]
    # A store that other writers share gives a writer only its own unfinished work; the
    # only writer of a store owns whatever is unfinished.
    others = await records.garbage("c", life, owner="someone-alive")
    assert others == ([] if records.shared else [("doc", orphan, ["x"])])
    await records.forget("c", "doc", orphan, life)
    assert await records.begin_generation("c", "doc", "next", life) == orphan  # gone: safe


async def test_recording_a_chunk_twice_keeps_one(records: Records, life: Lifetime) -> None:
    generation = await records.begin_generation("c", "doc", "job", life)
    await records.intend_chunks("c", [chunk("a", generation)], life)
    await records.intend_chunks("c", [chunk("a", generation), chunk("b", generation)], life)
    await records.switch(
        "c", "doc", generation, life, content_hash="h", chunks=2, source="s", readers=()
    )
    assert await records.prune("c", ["other"], life) == 1
    assert await records.garbage("c", life, owner="gc") == [("doc", generation, ["a", "b"])]


async def test_concurrent_writers_get_distinct_generations(
    records: Records, life: Lifetime
) -> None:
    found: list[int] = []

    async def begin(owner: str) -> None:
        found.append(await records.begin_generation("c", "doc", owner, life))

    async with anyio.create_task_group() as tg:
        for i in range(8):
            tg.start_soon(begin, f"w{i}")
    assert sorted(found) == list(range(1, 9))


async def test_remove_retires_a_document(records: Records, life: Lifetime) -> None:
    generation = await records.begin_generation("c", "doc", "job", life)
    await records.switch(
        "c", "doc", generation, life, content_hash="h", chunks=0, source="s", readers=()
    )
    assert await records.prune("c", ["other"], life) == 1
    assert await records.documents("c", life) == {}
    assert await records.garbage("c", life, owner="gc") == [("doc", generation, [])]


async def test_jobs_keep_their_state_and_order(records: Records, life: Lifetime) -> None:
    await records.save_job("j1", "queued", {"inputs": ["a"]}, life)
    await records.save_job("j2", "queued", {"inputs": ["b"], "n": 1.5}, life)
    await records.save_job("j1", "running", {"inputs": ["a"], "progress": None}, life)
    assert await records.jobs(life, states=["running"]) == [
        ("j1", "running", {"inputs": ["a"], "progress": None})
    ]
    assert [j for j, _, _ in await records.jobs(life)] == ["j1", "j2"]
    assert await records.jobs(life, states=["succeeded"]) == []
    assert await records.job("j2", life) == ("queued", {"inputs": ["b"], "n": 1.5})
    assert await records.job("nope", life) is None


async def test_collections_count_visible_documents(records: Records, life: Lifetime) -> None:
    await records.touch_collection("c", "model", 384, life)
    (empty,) = await records.collections(life)
    assert (empty["name"], empty["documents"], empty["chunks"]) == ("c", 0, 0)
    generation = await records.begin_generation("c", "doc", "job", life)
    await records.switch(
        "c", "doc", generation, life, content_hash="h", chunks=3, source="s", readers=()
    )
    (full,) = await records.collections(life)
    assert (full["embedding_model"], full["dimensions"]) == ("model", 384)
    assert (full["documents"], full["chunks"]) == (1, 3)
    assert full["last_ingestion"] > 0


async def test_keyword_search_sees_only_visible_generations(
    records: Records, life: Lifetime
) -> None:
    first = await records.begin_generation("c", "doc", "job", life)
    await records.intend_chunks("c", [chunk("a", first, "the heron waits by the river")], life)
    assert (
        await records.keyword_search("c", "heron", 5, life, readable=ALL) == []
    )  # not switched in yet
    await records.switch(
        "c", "doc", first, life, content_hash="h", chunks=1, source="doc.txt", readers=()
    )
    (hit,) = await records.keyword_search("c", "Herons? rivers!", 5, life, readable=ALL)
    assert hit.text == "the heron waits by the river"
    assert hit.score > 0
    assert hit.bm25 == hit.score
    assert await records.keyword_search("other", "heron", 5, life, readable=ALL) == []
    second = await records.begin_generation("c", "doc", "job", life)
    await records.intend_chunks("c", [chunk("b", second, "stones in the marsh")], life)
    await records.switch(
        "c", "doc", second, life, content_hash="h2", chunks=1, source="doc.txt", readers=()
    )
    assert await records.keyword_search("c", "heron", 5, life, readable=ALL) == []
    assert [
        h.generation for h in await records.keyword_search("c", "marsh", 5, life, readable=ALL)
    ] == [second]
    assert (
        await records.keyword_search("c", '"; DROP TABLE chunks; --', 5, life, readable=ALL) == []
    )
    assert await records.keyword_search("c", "?!", 5, life, readable=ALL) == []


async def test_keyword_search_returns_only_readable_documents_and_fills_its_limit(
    records: Records, life: Lifetime
) -> None:
    team_a = ("group:team-a",)
    for i in range(12):  # 10 better matches that the reader may not read, 2 it may
        readers = team_a if i < 10 else ()
        text = "heron heron marsh" if i < 10 else "a heron somewhere"
        generation = await records.begin_generation("c", f"d{i}", "job", life)
        await records.intend_chunks("c", [chunk(f"c{i}", generation, text, f"d{i}")], life)
        await records.switch(
            "c", f"d{i}", generation, life, content_hash="h", chunks=1, source="s", readers=readers
        )
    assert await records.acl_classes("c", life) == {0: [], acl_class(team_a): list(team_a)}
    member = Readable(frozenset({0}))
    assert {
        h.document_id for h in await records.keyword_search("c", "heron", 2, life, readable=member)
    } == {"d10", "d11"}
    reader_of_a = Readable(frozenset({0, acl_class(team_a)}))
    best = await records.keyword_search("c", "heron marsh", 3, life, readable=reader_of_a)
    assert len(best) == 3
    assert {h.document_id for h in best} <= {f"d{i}" for i in range(10)}
    assert len(await records.keyword_search("c", "heron", 50, life, readable=ALL)) == 12


async def test_keyword_search_ranks_the_better_match_first(
    records: Records, life: Lifetime
) -> None:
    texts = {
        "d1": "stones lie in the marsh near the road",
        "d2": "the heron hunts fish in the marsh; the heron waits, the heron strikes",
        "d3": "a heron flew over the hills",
    }
    for document_id, text in texts.items():
        generation = await records.begin_generation("c", document_id, "job", life)
        piece = Chunk(
            f"{document_id}-0", document_id, 0, text, f"{document_id}.txt", (), generation
        )
        await records.intend_chunks("c", [piece], life)
        await records.switch(
            "c",
            document_id,
            generation,
            life,
            content_hash="h",
            chunks=1,
            source=piece.source,
            readers=(),
        )
    hits = await records.keyword_search("c", "heron marsh", 2, life, readable=ALL)
    assert [h.document_id for h in hits][:1] == ["d2"]
    assert len(hits) == 2


async def test_text_with_a_nul_byte_is_recorded(records: Records, life: Lifetime) -> None:
    generation = await records.begin_generation("c", "doc", "job", life)
    await records.intend_chunks("c", [chunk("a", generation, "heron\x00 river")], life)
    await records.switch(
        "c", "doc", generation, life, content_hash="h", chunks=1, source="s", readers=()
    )
    (hit,) = await records.keyword_search("c", "heron", 5, life, readable=ALL)
    assert "heron" in hit.text


# -- PostgreSQL only ---------------------------------------------------------------------


def server_queries(url: str, like: str) -> list[tuple[str, str]]:
    """(state, query) of the server's other sessions whose query contains ``like``."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT state, query FROM pg_stat_activity "
            "WHERE pid != pg_backend_pid() AND query LIKE %s",
            (f"%{like}%",),
        ).fetchall()
    return [(str(r[0]), str(r[1])) for r in rows]


async def test_a_cancelled_caller_cancels_its_query_on_the_server(database_url: str) -> None:
    import psycopg

    pool = PostgresPool(database_url)
    records = PostgresRecords(pool)
    await pool.open(Lifetime.root("open"))
    holder = await psycopg.AsyncConnection.connect(database_url, autocommit=True)
    try:
        # Another session holds the document's lock: begin_generation waits on the server.
        await holder.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", ("c\x1fdoc",))
        request = Lifetime.root("request")
        returned = anyio.Event()

        async def call() -> None:
            with request:
                await records.begin_generation("c", "doc", "w", request)
            returned.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            with anyio.fail_after(30):
                while not [
                    q
                    for q in server_queries(database_url, "pg_advisory_xact_lock")
                    if q[0] == "active"
                ]:
                    await anyio.sleep(0.05)
            request.cancel(Cause.CLIENT_DISCONNECTED)
            with anyio.fail_after(10):
                await returned.wait()
        # The server stops the query: nothing of ours is left running there. The cancel
        # request reaches the backend asynchronously, so give it a (generous) moment; the
        # query itself would wait on the lock for ever.
        with anyio.fail_after(5):
            while [
                q for q in server_queries(database_url, "pg_advisory_xact_lock") if q[0] == "active"
            ]:
                await anyio.sleep(0.02)
        life = Lifetime.root("after")
        assert await records.garbage("c", life, owner="gc") == []  # the transaction rolled back
        assert await records.begin_generation("c", "other", "w", life) == 1  # pool still good
    finally:
        with anyio.move_on_after(5, shield=True):
            await holder.close()
            await pool.aclose()


async def test_an_unreachable_server_is_named_without_its_password() -> None:
    from conftest import free_port

    url = f"postgresql://ragline:s3cret@127.0.0.1:{free_port()}/ragline"
    pool = PostgresPool(url, connect_timeout=1)
    records = PostgresRecords(pool)
    with pytest.raises(Unavailable) as raised:
        await pool.open(Lifetime.root("open"))
    assert "127.0.0.1" in raised.value.message
    assert "s3cret" not in raised.value.message
    assert "s3cret" not in repr(records)
    assert "s3cret" not in repr(pool)
    with pytest.raises(Unavailable):
        await records.documents("c", Lifetime.root("call"))


async def test_replicas_starting_together_apply_the_schema_once(database_url: str) -> None:
    import psycopg

    from ragline.providers.postgres import migrations

    pools = [PostgresPool(database_url) for _ in range(4)]
    async with anyio.create_task_group() as tg:
        for pool in pools:
            tg.start_soon(pool.open, Lifetime.root("open"))
    life = Lifetime.root("t")
    await PostgresRecords(pools[0]).save_job("j", "queued", {}, life)
    assert await PostgresRecords(pools[3]).job("j", life) == ("queued", {})
    for pool in pools:
        await pool.aclose()
    with psycopg.connect(database_url) as conn:
        versions = [r[0] for r in conn.execute("SELECT version FROM ragline_migrations")]
    assert versions == [v for v, _, _ in migrations()]


async def test_a_dropped_connection_is_unavailable_then_recovers(database_url: str) -> None:
    import psycopg

    pool = PostgresPool(database_url, pool_size=2)
    records = PostgresRecords(pool)
    await pool.open(Lifetime.root("open"))
    life = Lifetime.root("t")
    try:
        await records.save_job("j", "queued", {}, life)
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid != pg_backend_pid()"
            )
        outcomes: list[str] = []
        for _ in range(4):
            try:
                await records.job("j", life)
                outcomes.append("ok")
            except Unavailable as exc:
                outcomes.append(exc.message.split(" is ")[0])
        assert set(outcomes) <= {"ok", f"PostgreSQL at {redact(database_url)}"}
        assert outcomes[-1] == "ok"  # the pool replaced the dead connections by itself
    finally:
        await pool.aclose()


async def test_bm25_statistics_follow_what_is_recorded_and_forgotten(database_url: str) -> None:
    import psycopg

    pool = PostgresPool(database_url)
    records = PostgresRecords(pool)
    life = Lifetime.root("t")
    await pool.open(life)
    try:
        first = await records.begin_generation("c", "doc", "job", life)
        await records.intend_chunks(
            "c",
            [chunk("a", first, "herons wait"), chunk("b", first, "the heron and the marsh")],
            life,
        )
        second = await records.begin_generation("c", "doc", "job", life)
        await records.intend_chunks("c", [chunk("c", second, "stones in the marsh")], life)
        await records.forget("c", "doc", first, life)
        with psycopg.connect(database_url) as conn:
            kept = conn.execute("SELECT chunks, total_length FROM chunk_stats").fetchall()
            terms = dict(conn.execute("SELECT term, df FROM term_stats WHERE df > 0").fetchall())
            recomputed = dict(
                conn.execute(
                    "SELECT w.lexeme, count(*) FROM chunks c, unnest(c.words) w GROUP BY 1"
                ).fetchall()
            )
        assert kept == [(1, 2)]  # "stones", "marsh": "in" and "the" are stop words
        assert terms == recomputed == {"stone": 1, "marsh": 1}
    finally:
        await pool.aclose()


async def test_a_shared_store_collects_what_a_dead_writer_abandoned(database_url: str) -> None:
    pool = PostgresPool(database_url)
    life = Lifetime.root("t")
    await pool.open(life)
    try:
        records = PostgresRecords(pool, abandoned_after=3600)
        live = await records.begin_generation("c", "doc", "alive", life)
        assert await records.garbage("c", life, owner="other") == []
        # The same rows, seen by a store that counts an hour-old writer as dead: none is
        # that old, so nothing yet; one begun "two hours ago" is collected by anyone.
        import psycopg

        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("UPDATE generations SET began_at = began_at - 7200")
        assert await records.garbage("c", life, owner="other") == [("doc", live, [])]
    finally:
        await pool.aclose()


async def test_prune_keeps_only_what_it_is_told_at_once(records: Records, life: Lifetime) -> None:
    for name in ("a", "b", "c"):
        generation = await records.begin_generation("col", name, "job", life)
        await records.intend_chunks("col", [chunk(f"{name}1", generation)], life)
        await records.switch(
            "col", name, generation, life, content_hash="h", chunks=1, source="s", readers=()
        )
    assert await records.prune("col", {"b", "not-there"}, life) == 2
    assert set(await records.documents("col", life)) == {"b"}
    assert [g[0] for g in await records.garbage("col", life, owner="gc")] == ["a", "c"]
    assert await records.prune("col", [], life) == 1
    assert await records.documents("col", life) == {}


async def test_sqlite_past_its_keyword_hand_over_size_warns_once(
    tmp_path: Path, life: Lifetime, caplog: pytest.LogCaptureFixture
) -> None:
    # Counted after each committed batch of chunks (never on a search): one warning per
    # collection when it passes the limit, none below it, none again.
    sqlite = SqliteRecords(tmp_path / "records.sqlite", ThreadBridge(), handover_chunks=10)
    try:
        with caplog.at_level("WARNING", logger="ragline.providers.sqlite"):
            first = await sqlite.begin_generation("c", "doc", "job", life)
            await sqlite.intend_chunks("c", [chunk(f"a{i}", first) for i in range(8)], life)
            await sqlite.intend_chunks("c", [chunk(f"a{i}", first) for i in range(8)], life)
            await sqlite.intend_chunks("other", [chunk(f"o{i}", 1) for i in range(9)], life)
            assert not [r for r in caplog.records if r.name == "ragline.providers.sqlite"]
            for batch in range(4):
                await sqlite.intend_chunks(
                    "c", [chunk(f"b{batch}-{i}", first) for i in range(3)], life
                )
            await sqlite.keyword_search("c", "herons", 5, life, readable=ALL)
    finally:
        sqlite.close()
    warnings = [r.getMessage() for r in caplog.records if r.name == "ragline.providers.sqlite"]
    assert len(warnings) == 1
    assert "collection 'c' holds 11 chunks" in warnings[0]
    assert "past 10" in warnings[0]
    assert "docs/DEPLOY.md" in warnings[0]
