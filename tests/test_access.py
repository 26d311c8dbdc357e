"""Who may see and stop what: the rules of :mod:`ragline.access`, and owned work through
real ``ragline serve`` processes on both backends. Another member gets the 404 of an
object that does not exist for a run, a job and a request outcome, reading, following
and cancelling, on either replica; an admin may cancel it, and the log names both."""

from __future__ import annotations

import json
from typing import Any

import anyio
import httpx
import pytest

from deployment import ADMIN, backend_env, deployment, ingest, make_member
from ragline.access import Grant, Principal, Readable, acl_class, normalize_entries
from ragline.errors import Forbidden, Hidden, InvalidRequest
from upstream import Behavior, FakeUpstream

ANN = Principal("ann", frozenset({"team-a"}))
BOB = Principal("bob", frozenset({"team-b"}))


def test_an_acl_class_is_stable_and_zero_means_no_acl() -> None:
    assert acl_class(()) == acl_class(None) == acl_class(["*", "user:ann"]) == 0
    one = acl_class(["group:team-a", "user:ann"])
    assert one == acl_class(["user:ann", "group:team-a", "user:ann"]) > 0
    assert one != acl_class(["group:team-a"])
    assert one < 2**63


def test_entries_are_users_groups_or_everyone() -> None:
    assert normalize_entries([" user:ann", "group:x", "*", "group:x"], "read") == (
        "*",
        "group:x",
        "user:ann",
    )
    for bad in ("ann", "team:a", "user:", "user:a b", "group:-x", 7):
        with pytest.raises(InvalidRequest):
            normalize_entries([bad], "read")


def test_a_reader_may_read_class_zero_and_the_classes_that_name_them() -> None:
    mine, theirs = acl_class(["group:team-a"]), acl_class(["user:bob"])
    known = {mine: ["group:team-a"], theirs: ["user:bob"]}
    assert Readable.of(ANN, known) == Readable(frozenset({0, mine}))
    assert Readable.of(BOB, known) == Readable(frozenset({0, theirs}))
    assert Readable.of(Principal("root", admin=True), known) == Readable.everything()


def test_a_grant_hides_what_cannot_be_read_and_forbids_what_cannot_be_written() -> None:
    grant = Grant(read=("group:team-b",), creator="ann")
    grant.check(ANN, "write", "c")  # the owner may do anything
    grant.check(BOB, "read", "c")
    with pytest.raises(Forbidden):
        grant.check(BOB, "write", "c")
    with pytest.raises(Hidden):
        grant.check(Principal("eve"), "write", "c")


def forever(body: dict[str, Any]) -> Behavior:
    """A run talks for as long as anyone listens; a chat answers in three tokens."""
    if "talk" in json.dumps(body["messages"]):
        return Behavior(tokens=100_000, interval=0.05)
    return Behavior(tokens=3)


async def until(predicate: Any, timeout: float = 30) -> None:
    with anyio.fail_after(timeout):
        while not await predicate():
            await anyio.sleep(0.05)


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["embedded", "cluster"])
async def test_another_members_work_is_not_there_and_an_admin_cancel_names_both(
    kind: str, tmp_path: Any, request: pytest.FixtureRequest
) -> None:
    upstream = FakeUpstream(forever)
    async with (
        deployment(kind, tmp_path, backend_env(kind, request), upstream) as made,
        httpx.AsyncClient(timeout=60) as http,
    ):
        first, other = made.urls[0], made.other
        ann = await make_member(http, first, "ann", "team-a")
        bob = await make_member(http, first, "bob", "team-b")
        job_id = await ingest(http, first, ann, [{"id": "a", "text": "ann's notes"}], "notes")
        started = await http.post(f"{first}/api/v1/runs", json={"query": "talk"}, headers=ann)
        assert started.status_code == 202, started.text
        run_id = started.json()["run_id"]
        await upstream.wait_for_calls(1)
        asked = {**ann, "x-request-id": "ann-asks"}
        await http.post(f"{first}/api/v1/inference/chat", json={"query": "hi"}, headers=asked)

        # bob, on either replica: each of ann's objects reads as one that does not exist.
        for url in made.urls:
            for path, method in [
                (f"/api/v1/runs/{run_id}", "GET"),
                (f"/api/v1/runs/{run_id}", "DELETE"),
                (f"/api/v1/runs/{run_id}/events", "GET"),
                (f"/api/v1/ingest/{job_id}", "GET"),
                (f"/api/v1/ingest/{job_id}", "DELETE"),
                ("/api/v1/requests/ann-asks", "GET"),
            ]:
                theirs = await http.request(method, url + path, headers=bob)
                fake = path.replace(run_id, "run_nope").replace(job_id, "nope")
                none = await http.request(
                    method, url + fake.replace("ann-asks", "nope"), headers=bob
                )
                assert theirs.status_code == none.status_code == 404, (path, theirs.text)
                assert theirs.json()["error"]["code"] == none.json()["error"]["code"]
            listed = (await http.get(f"{url}/api/v1/runs", headers=bob)).json()
            assert listed["runs"] == []
        mine = (await http.get(f"{other}/api/v1/runs/{run_id}", headers=ann)).json()
        assert (mine["owner"], mine["state"]) == ("ann", "running")
        assert [
            r["id"] for r in (await http.get(f"{other}/api/v1/runs", headers=ann)).json()["runs"]
        ] == [run_id]

        # The admin sees and cancels it, from the other replica; the log names both.
        cancelled = await http.delete(f"{other}/api/v1/runs/{run_id}", headers=ADMIN)
        assert cancelled.status_code == 202, cancelled.text

        async def ended() -> bool:
            found = (await http.get(f"{first}/api/v1/runs/{run_id}", headers=ann)).json()
            return bool(found["state"] == "cancelled")

        await until(ended)
        lines = [
            json.loads(line)
            for line in made.log(len(made.urls) - 1).splitlines()
            if line.startswith("{")
        ]
        (line,) = [entry for entry in lines if entry.get("run_id") == run_id and entry.get("owner")]
        assert line["owner"] == "ann"
        assert line["principal"].startswith("admin-")
        assert "admin-key" not in made.log(len(made.urls) - 1)  # names, never keys
        denied = [entry for entry in lines if entry.get("msg") == "access denied"]
        assert denied
        assert all(entry["principal"] == "bob" for entry in denied)


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["embedded", "cluster"])
async def test_a_revoked_or_rotated_key_is_refused_on_every_replica_within_5_s(
    kind: str, tmp_path: Any, request: pytest.FixtureRequest
) -> None:
    async with (
        deployment(kind, tmp_path, backend_env(kind, request), FakeUpstream()) as made,
        httpx.AsyncClient(timeout=60) as http,
    ):
        first, other = made.urls[0], made.other
        bob = await make_member(http, first, "bob", "team-b")
        ann = await make_member(http, first, "ann")
        for url in made.urls:  # both replicas know them (and cache them)
            assert (await http.get(f"{url}/api/v1/me", headers=bob)).json()["name"] == "bob"
            assert (await http.get(f"{url}/api/v1/me", headers=ann)).status_code == 200
        assert (
            await http.delete(f"{first}/api/v1/principals/bob", headers=ADMIN)
        ).status_code == 200
        rotated = await http.post(f"{first}/api/v1/principals/ann/keys", headers=ADMIN)
        assert rotated.status_code == 201, rotated.text
        new_ann = {"authorization": f"Bearer {rotated.json()['key']}"}
        began = anyio.current_time()
        for url in made.urls:
            for old in (bob, ann):

                async def refused(url: str = url, old: dict[str, str] = old) -> bool:
                    return (await http.get(f"{url}/api/v1/me", headers=old)).status_code == 401

                await until(refused, timeout=10)
        assert anyio.current_time() - began < 5.0
        assert (await http.get(f"{other}/api/v1/me", headers=new_ann)).json()["name"] == "ann"
        # Unknown, revoked and malformed keys: one body.
        bodies = {
            (await http.get(f"{other}/api/v1/me", headers=headers)).text
            for headers in (
                bob,
                {"authorization": "Bearer rl_unknown"},
                {"authorization": "Basic x"},
                {},
            )
        }
        assert len(bodies) == 1
        # Admin routes are not there for members.
        for method, path in [("GET", "/api/v1/principals"), ("POST", "/api/v1/principals/x/keys")]:
            answer = await http.request(method, f"{other}{path}", headers=new_ann)
            assert answer.status_code == 404
