"""Collection grants and document ACLs, enforced inside retrieval: through real
``ragline serve`` processes on both backends (the cluster's second replica answers), by
every path that retrieves (``/api/v1/retrieve``, chat sources, ``/v1/chat/completions``,
the agent's search tool), and never a passage in a prompt that its reader may not read.
"""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import asgi_client
from deployment import ADMIN, backend_env, deployment, ingest, make_member
from fake_embeddings import WordEmbedder
from ragline import Lifetime, Settings
from ragline.access import Principal
from ragline.errors import Hidden
from upstream import Behavior, FakeUpstream, tool_results

pytestmark = pytest.mark.anyio

SECRET = {"id": "secret-a", "text": "The launch code of team A is 4711."}
RESTRICTED = {
    "id": "restricted",
    "text": "The launch code of the harbour is 9999, for team A only.",
    "acl": {"read": ["group:team-a"]},
}
PUBLIC = {"id": "public", "text": "The launch code of the public fountain is 1234."}
FORBIDDEN = ("4711", "9999")  # what no prompt of bob's may ever hold


def searching(body: dict[str, Any]) -> Behavior:
    """A model that searches once when it may, then answers."""
    tools = [t["function"]["name"] for t in body.get("tools") or ()]
    if "search" in tools and not tool_results(body):
        return Behavior(tokens=0, tool_calls=[("search", '{"query": "launch code"}')])
    return Behavior(texts=["It ", "is ", "[1]."])


async def retrieve(
    http: httpx.AsyncClient, url: str, who: dict[str, str], collection: str | None, top_k: int = 5
) -> httpx.Response:
    body: dict[str, Any] = {"query": "what is the launch code", "top_k": top_k}
    if collection is not None:
        body["collection"] = collection
    return await http.post(f"{url}/api/v1/retrieve", json=body, headers=who)


def ids(answer: httpx.Response, key: str = "hits") -> set[str]:
    assert answer.status_code == 200, answer.text
    return {hit["document_id"] for hit in answer.json()[key]}


@pytest.mark.parametrize(
    ("kind", "mode"), [("embedded", "dense"), ("embedded", "hybrid"), ("cluster", "hybrid")]
)
async def test_a_member_never_retrieves_what_they_may_not_read(
    kind: str, mode: str, tmp_path: Any, request: pytest.FixtureRequest
) -> None:
    upstream = FakeUpstream(searching)
    engines = backend_env(kind, request)
    async with (
        deployment(kind, tmp_path, engines, upstream, retrieval_mode=mode) as made,
        httpx.AsyncClient(timeout=60) as http,
    ):
        first, other = made.urls[0], made.other
        ann = await make_member(http, first, "ann", "team-a")
        bob = await make_member(http, first, "bob", "team-b")
        await ingest(http, first, ann, [SECRET], "team_a")  # ann's own collection
        await ingest(http, first, ADMIN, [RESTRICTED, PUBLIC])  # the default collection

        # bob, on the other replica, sees neither ann's collection nor its secret.
        listed = (await http.get(f"{other}/api/v1/collections", headers=bob)).json()
        assert [c["name"] for c in listed["collections"]] == ["default"]
        hidden = await retrieve(http, other, bob, "team_a")
        missing = await retrieve(http, other, bob, "no_such_collection")
        assert hidden.status_code == missing.status_code == 404
        assert hidden.json()["error"]["code"] == missing.json()["error"]["code"]
        assert ids(await retrieve(http, other, bob, None)) == {"public"}
        chat = await http.post(
            f"{other}/api/v1/inference/chat",
            json={"query": "what is the launch code", "top_k": 5},
            headers=bob,
        )
        assert ids(chat, "sources") == {"public"}
        completion = await http.post(
            f"{other}/v1/chat/completions",
            json={"model": "fake-model", "messages": [{"role": "user", "content": "launch code?"}]},
            headers=bob,
        )
        assert completion.status_code == 200, completion.text
        assert {s["document_id"] for s in completion.json()["ragline"]["sources"]} == {"public"}
        run = await http.post(
            f"{other}/api/v1/runs", json={"query": "find the launch code"}, headers=bob
        )
        assert run.status_code == 202, run.text
        run_id = run.json()["run_id"]
        with anyio.fail_after(60):
            while True:
                state = (await http.get(f"{other}/api/v1/runs/{run_id}", headers=bob)).json()
                if state["state"] != "running":
                    break
                await anyio.sleep(0.05)
        assert state["state"] == "completed", state
        assert {s["document_id"] for s in state["sources"]} == {"public"}
        # Nothing bob may not read reached the model, in any prompt or tool result.
        for call in upstream.calls:
            assert not any(secret in json.dumps(call.body) for secret in FORBIDDEN)
        assert any(tool_results(call.body) for call in upstream.calls)  # the tool did run

        # ann reads her group's document, and her own collection.
        assert ids(await retrieve(http, other, ann, None)) == {"public", "restricted"}
        assert ids(await retrieve(http, other, ann, "team_a")) == {"secret-a"}
        # A grant takes effect on the next query, on every replica.
        access = {"read": ["group:team-b"], "write": []}
        put = await http.put(f"{first}/api/v1/collections/team_a/access", json=access, headers=ann)
        assert put.status_code == 200, put.text
        assert ids(await retrieve(http, other, bob, "team_a")) == {"secret-a"}
        revoke = {"read": [], "write": []}
        await http.put(f"{first}/api/v1/collections/team_a/access", json=revoke, headers=ann)
        assert (await retrieve(http, other, bob, "team_a")).status_code == 404


@pytest.mark.parametrize("kind", ["embedded", "cluster"])
async def test_top_k_is_filled_from_permitted_passages(
    kind: str, tmp_path: Any, request: pytest.FixtureRequest
) -> None:
    # 50 forbidden passages match the query better than any of the 5 permitted ones: a
    # filter applied after the search would leave bob with nothing.
    forbidden = [
        {
            "id": f"f{i}",
            "text": f"heron river marsh heron river marsh {i}",
            "acl": {"read": ["group:team-a"]},
        }
        for i in range(50)
    ]
    permitted = [{"id": f"p{i}", "text": f"heron stone wind light dawn {i}"} for i in range(5)]
    async with (
        deployment(kind, tmp_path, backend_env(kind, request), FakeUpstream()) as made,
        httpx.AsyncClient(timeout=60) as http,
    ):
        bob = await make_member(http, made.urls[0], "bob", "team-b")
        await ingest(http, made.urls[0], ADMIN, forbidden + permitted)
        body = {"query": "heron river marsh heron river marsh", "top_k": 5}
        found = await http.post(f"{made.other}/api/v1/retrieve", json=body, headers=bob)
        assert ids(found) == {f"p{i}" for i in range(5)}
        everything = await http.post(f"{made.other}/api/v1/retrieve", json=body, headers=ADMIN)
        assert ids(everything) <= {f"f{i}" for i in range(50)}  # the admin's best 5


async def test_writing_is_404_unless_readable_else_403_and_new_collections_are_the_writers(
    tmp_path: Any, request: pytest.FixtureRequest
) -> None:
    async with (
        deployment("embedded", tmp_path, {}, FakeUpstream()) as made,
        httpx.AsyncClient(timeout=60) as http,
    ):
        url = made.urls[0]
        ann = await make_member(http, url, "ann", "team-a")
        bob = await make_member(http, url, "bob", "team-b")
        await ingest(http, url, ann, [SECRET], "team_a")
        doc = {"documents": [PUBLIC]}
        hidden = await http.post(
            f"{url}/api/v1/ingest", json={**doc, "collection": "team_a"}, headers=bob
        )
        assert hidden.status_code == 404, hidden.text
        assert (await http.post(f"{url}/api/v1/ingest", json=doc, headers=bob)).status_code == 403
        server_files = {"paths": [str(tmp_path)], "collection": "bobs_notes"}
        refused = await http.post(f"{url}/api/v1/ingest", json=server_files, headers=bob)
        assert refused.status_code == 403, refused.text  # the server's files: admins only
        grant = {"read": ["user:bob"], "write": []}
        assert (
            await http.put(f"{url}/api/v1/collections/team_a/access", json=grant, headers=ann)
        ).status_code == 200
        read_only = await http.post(
            f"{url}/api/v1/ingest", json={**doc, "collection": "team_a"}, headers=bob
        )
        assert read_only.status_code == 403, read_only.text
        # bob may read, not own: he cannot set its access (403), nor may a stranger (404).
        assert (
            await http.put(f"{url}/api/v1/collections/team_a/access", json=grant, headers=bob)
        ).status_code == 403
        await ingest(http, url, bob, [PUBLIC], "bobs_notes")  # a new collection: bob's
        listed = (await http.get(f"{url}/api/v1/collections", headers=bob)).json()
        assert {c["name"] for c in listed["collections"]} == {"team_a", "bobs_notes"}
        assert (
            await http.get(f"{url}/api/v1/collections/bobs_notes", headers=ann)
        ).status_code == 404
        unknown = {"read": ["group:nobody-has-this"], "write": []}
        bad = await http.put(f"{url}/api/v1/collections/team_a/access", json=unknown, headers=ann)
        assert bad.status_code == 422, bad.text
        malformed = {"read": ["team:a"], "write": []}
        bad = await http.put(f"{url}/api/v1/collections/team_a/access", json=malformed, headers=ann)
        assert bad.status_code == 422, bad.text


# -- a property: whatever the principals, grants and ACLs, no hit lies outside the rights --

USERS = [f"u{i}" for i in range(5)]
GROUPS = [f"g{i}" for i in range(4)]
VOCABULARY = ["heron", "river", "reed", "marsh", "stone", "wind", "dawn", "fish"]
COLLECTIONS = {"c0": "u0", "c1": "u1", "default": None}  # each one's creator


@dataclass
class Corpus:
    runtime: Any
    acls: dict[tuple[str, str], tuple[str, ...]]  # (collection, document) -> read entries
    texts: dict[tuple[str, str], str]


@pytest.fixture
async def corpus(tmp_path: Any) -> AsyncIterator[Corpus]:
    """45 documents in three collections, a third without an ACL, the rest readable by a
    random one or two of the users and groups; each one chunk."""
    chance = random.Random(26)
    entries = [f"user:{u}" for u in USERS] + [f"group:{g}" for g in GROUPS]
    acls: dict[tuple[str, str], tuple[str, ...]] = {}
    texts: dict[tuple[str, str], str] = {}
    settings = Settings(
        data_dir=str(tmp_path),
        llm_provider="openai",
        llm_base_url="http://127.0.0.1:9/v1",
        retrieval=True,
        retrieval_mode="hybrid",
    )
    async with asgi_client(settings, embedder=WordEmbedder()) as http:
        runtime = http._transport.app.state.runtime  # type: ignore[attr-defined]
        for collection, creator in COLLECTIONS.items():
            documents = []
            for i in range(15):
                acl = (
                    ()
                    if chance.random() < 0.33
                    else tuple(chance.sample(entries, chance.randint(1, 2)))
                )
                text = " ".join(chance.sample(VOCABULARY, 3)) + f" number{i}"
                acls[(collection, f"d{i}")], texts[(collection, f"d{i}")] = acl, text
                doc: dict[str, Any] = {"id": f"d{i}", "text": text}
                if acl:
                    doc["acl"] = {"read": list(acl)}
                documents.append(doc)
            body = {"documents": documents, "collection": collection}
            job = (await http.post("/api/v1/ingest", json=body)).json()["job_id"]
            with anyio.fail_after(60):
                while (await http.get(f"/api/v1/ingest/{job}")).json()["state"] != "succeeded":
                    await anyio.sleep(0.02)
            if creator is not None:
                with Lifetime.root("t") as life:
                    await runtime.grants.store.claim(collection, creator, life)
        yield Corpus(runtime, acls, texts)


principals = st.builds(
    lambda name, groups: Principal(name, frozenset(groups)),
    st.sampled_from([*USERS, "u5"]),
    st.sets(st.sampled_from([*GROUPS, "g4"]), max_size=2),
)
grants = st.sets(
    st.sampled_from([*(f"user:{u}" for u in USERS), *(f"group:{g}" for g in GROUPS), "*"]),
    max_size=3,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    principal=principals,
    admin=st.integers(0, 9),
    reads=st.tuples(grants, grants),
    collection=st.sampled_from(list(COLLECTIONS)),
    words=st.lists(st.sampled_from(VOCABULARY), min_size=1, max_size=3),
    top_k=st.integers(1, 12),
)
@pytest.mark.anyio
async def test_no_hit_ever_lies_outside_the_callers_rights(
    corpus: Corpus,
    principal: Principal,
    admin: int,
    reads: tuple[set[str], set[str]],
    collection: str,
    words: list[str],
    top_k: int,
) -> None:
    if admin == 0:  # one example in ten is an admin, who reads everything
        principal = Principal(principal.name, principal.groups, True)
    runtime = corpus.runtime
    with Lifetime.root("t").child("q", values={"principal": principal}) as life:
        for name, read in zip(("c0", "c1"), reads, strict=True):
            await runtime.grants.store.set_grant(name, sorted(read), [], life, creator="x")
        mine = principal.entries
        read = dict(zip(("c0", "c1"), reads, strict=True)).get(collection, {"*"})
        may_read = principal.admin or COLLECTIONS[collection] == principal.name or bool(mine & read)
        allowed = {
            doc
            for (coll, doc), acl in corpus.acls.items()
            if coll == collection and (principal.admin or not acl or mine & set(acl))
        }
        query = " ".join(words)
        if not may_read:
            with pytest.raises(Hidden):
                await runtime.pipeline.retrieve(query, top_k, life, collection)
            return
        readable = await runtime.grants.readable(life, collection)
        (vector,) = await WordEmbedder().embed([query], life)
        dense = await runtime.pipeline.store.search(
            vector, top_k, life, readable=readable, collection=collection
        )
        lexical = await runtime.records.keyword_search(
            collection, query, top_k, life, readable=readable
        )
        hybrid = await runtime.pipeline.retrieve(query, top_k, life, collection)
        for hits in (dense, lexical, hybrid):
            assert {h.document_id for h in hits} <= allowed
        # top_k is filled from what may be read, never post-filtered to fewer.
        assert len(dense) == min(top_k, len(allowed))
        matching = {d for d in allowed if set(words) & set(corpus.texts[(collection, d)].split())}
        assert len(lexical) == min(top_k, len(matching))
        assert len(hybrid) == min(top_k, len(allowed))
