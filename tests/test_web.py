"""The web page in a real browser: Debian's headless Chromium driven by Playwright, against
a real ``ragline serve`` process in front of the fake model and embedding servers.

Each state the tests reach is saved as a screenshot under ``build/screenshots`` (or
``RAGLINE_SCREENSHOTS``); docs/web.png is one of them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from conftest import free_port, upstream_running
from fake_embeddings import FakeEmbeddings, embeddings_server
from ragline import Lifetime, ThreadBridge
from ragline.providers.feedback import FeedbackRecord, Reaction, SentAnswer
from ragline.providers.sqlite_feedback import SqliteFeedback
from upstream import Behavior, FakeUpstream, tool_results

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("RAGLINE_TEST_CHROMIUM", "/usr/bin/chromium")
SHOTS = Path(os.environ.get("RAGLINE_SCREENSHOTS", ROOT / "build" / "screenshots"))
KEY = "sk-page-test"
# As the machine's probe found: without these, Chromium reaches for Google's hosts
# through a closed network at every start.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

DOCS = [
    {"id": "alpha", "text": "Alpha centauri is the closest star system to the Sun."},
    {"id": "beta", "text": "Betelgeuse is a red supergiant star in Orion."},
]


@dataclass
class Site:
    url: str
    upstream: FakeUpstream
    embeddings: FakeEmbeddings
    headers: dict[str, str]


@asynccontextmanager
async def site(
    tmp_path: Path,
    behave: Callable[[dict[str, Any]], Behavior],
    *,
    api_keys: Sequence[str] = (),
    delay: float = 0.0,
    env: dict[str, str] | None = None,
) -> AsyncIterator[Site]:
    """``ragline serve`` (retrieval on, Milvus Lite) before the fake model and embeddings;
    with ``api_keys`` (admins' keys), ``Site.headers`` carry the first."""
    upstream = FakeUpstream(behave)
    embeddings = FakeEmbeddings(delay=delay)
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(upstream_running(upstream))
        await stack.enter_async_context(embeddings_server(embeddings))
        port = free_port()
        env = {
            **os.environ,
            "RAGLINE_DATA_DIR": str(tmp_path / "data"),
            "RAGLINE_LLM_PROVIDER": "openai",
            "RAGLINE_LLM_BASE_URL": upstream.base_url,
            "RAGLINE_LLM_MODEL": "fake-model",
            "RAGLINE_EMBEDDINGS": "openai",
            "RAGLINE_EMBEDDINGS_BASE_URL": f"{embeddings.url}/v1",
            "RAGLINE_EMBEDDINGS_API_KEY": embeddings.key,
            "RAGLINE_EMBEDDINGS_MODEL": "fake-embedding",
            "RAGLINE_EMBEDDINGS_DIMENSIONS": str(embeddings.dimensions),
            "RAGLINE_EMBEDDINGS_BATCH_SIZE": "2",
            "RAGLINE_INGEST_BATCH_SIZE": "2",
            "RAGLINE_API_KEYS": ",".join(api_keys),
            **(env or {}),
        }
        log = (tmp_path / "serve.log").open("wb")
        stack.callback(log.close)
        process = await anyio.open_process(
            [sys.executable, "-m", "ragline", "serve", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        url = f"http://127.0.0.1:{port}"
        headers = bearer(api_keys[0]) if api_keys else {}
        try:
            async with httpx.AsyncClient() as http:
                with anyio.fail_after(120):
                    while True:
                        assert process.returncode is None, (tmp_path / "serve.log").read_text()
                        try:
                            if (await http.get(f"{url}/readyz")).status_code == 200:
                                break
                        except httpx.TransportError:
                            pass
                        await anyio.sleep(0.1)
            yield Site(url, upstream, embeddings, headers)
        finally:
            process.terminate()
            with anyio.move_on_after(10, shield=True):
                await process.wait()
            if process.returncode is None:
                process.kill()


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def chromium() -> str:
    """Debian's Chromium; never skipped: CI installs it (`make unit`)."""
    assert Path(CHROMIUM).exists(), (
        f"no Chromium at {CHROMIUM}: `make unit` installs Debian's (apt-get install chromium)"
    )
    return CHROMIUM


def shot_path(name: str) -> str:
    SHOTS.mkdir(parents=True, exist_ok=True)
    return str(SHOTS / f"{name}.png")


@asynccontextmanager
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            with anyio.move_on_after(10, shield=True):
                await launched.close()


async def shot(page: Page, name: str) -> None:
    await page.screenshot(path=shot_path(name), full_page=True)


async def ingest(
    s: Site,
    documents: list[dict[str, Any]],
    *,
    headers: dict[str, str] | None = None,
    collection: str | None = None,
) -> None:
    """Index ``documents`` (as the site's admin, or with ``headers``) and wait for it."""
    body: dict[str, Any] = {"documents": documents}
    if collection is not None:
        body["collection"] = collection
    async with httpx.AsyncClient(
        headers=s.headers if headers is None else headers, timeout=30
    ) as http:
        started = await http.post(f"{s.url}/api/v1/ingest", json=body)
        assert started.status_code == 202, started.text
        job = started.json()
        with anyio.fail_after(60):
            while True:
                found = (await http.get(f"{s.url}/api/v1/ingest/{job['job_id']}")).json()
                if found["state"] == "succeeded":
                    return
                assert found["state"] in {"queued", "running"}, found
                await anyio.sleep(0.05)


def answering(*texts: str, interval: float = 0.05) -> Callable[[dict[str, Any]], Behavior]:
    return lambda body: Behavior(texts=list(texts), tokens=len(texts), interval=interval)


async def test_a_question_streams_into_the_page_with_sources_and_citations(
    tmp_path: Path,
) -> None:
    words = ["Alpha ", "Centauri ", "is ", "closest ", "[1]", "."]
    async with site(tmp_path, answering(*words, interval=0.3)) as s, browser() as b:
        await ingest(s, DOCS)
        page = await b.new_page()
        await page.goto(s.url)
        await page.fill("#question", "Which star system is closest?")
        await page.click("#ask")  # Send, as well as Enter (test_web_chat.py)
        answer = page.locator("#thread .turn .answer")
        # Streamed: the first words are on the page while the model is still producing.
        await expect(answer).to_contain_text("Alpha Centauri", timeout=10_000)
        call = s.upstream.calls[0]
        assert not call.finished, "the whole answer arrived at once"
        await shot(page, "chat-streaming")
        await expect(answer).to_contain_text("closest [1].", timeout=10_000)
        await expect(page.locator(".source-card").first).to_be_visible()
        cite = answer.locator("a.cite").first
        # The cards of turn 1: each turn of the thread keeps its own sources.
        await expect(cite).to_have_attribute("href", "#t1-source-1")
        await expect(page.locator("#t1-source-1")).to_contain_text("Alpha centauri")
        await shot(page, "chat-answered")
        # Every control is labelled, and the page holds at phone width (no sideways scroll).
        unlabelled = await page.evaluate(
            "() => [...document.querySelectorAll('input, select, textarea')]"
            ".filter(e => e.type !== 'hidden' && e.labels.length === 0"
            " && !e.getAttribute('aria-label')).map(e => e.id)"
        )
        assert unlabelled == []
        await page.set_viewport_size({"width": 390, "height": 844})
        width = await page.evaluate("() => document.documentElement.scrollWidth")
        assert width <= 390
        await shot(page, "chat-phone")


async def test_stop_closes_the_model_connection_at_once_and_the_page_shows_what_happened(
    tmp_path: Path,
) -> None:
    endless = answering(*[f"w{i} " for i in range(2000)], interval=0.02)
    async with site(tmp_path, endless) as s, browser() as b:
        page = await b.new_page()
        await page.goto(s.url)
        await page.fill("#question", "Talk for a long time")
        await page.press("#question", "Enter")  # asked from the keyboard
        await expect(page.locator("#thread .turn .answer")).to_contain_text("w5 ", timeout=10_000)
        call = s.upstream.calls[0]
        clicked = time.monotonic()
        await page.click("#stop")
        with anyio.fail_after(5):
            await call.closed.wait()
        assert call.closed_at is not None
        # Generous (shared, noisy machines): a click closes the upstream in ms (BENCHMARKS).
        assert call.closed_at - clicked < 1.0, f"closed {call.closed_at - clicked:.3f} s after"
        produced = len(call.token_times)
        outcome = page.locator("#thread .turn .outcome")
        await expect(outcome.locator("[data-field=cause]")).to_have_text(
            "client_disconnected", timeout=10_000
        )
        shown = int(await outcome.locator("[data-field=tokens]").inner_text())
        # The tokens the server counted are the ones the model sent before it closed.
        assert produced - 1 <= shown <= produced
        # The contract is at most one token after a stop (the one in flight when the
        # hang-up is noticed; the upstream here sends one every 20 ms).
        after = int(await outcome.locator("[data-field=tokens-after]").inner_text())
        assert after <= 1
        await shot(page, "chat-stopped")
        await expect(page.locator("#ask")).to_be_enabled()


async def test_an_upload_shows_progress_and_cancel_stops_at_a_batch_boundary(
    tmp_path: Path,
) -> None:
    # 0.2 s per embedding request of 2 chunks: a job of 16 or 30 documents takes seconds.
    async with site(tmp_path, answering("ok"), delay=0.2) as s, browser() as b:
        folder = tmp_path / "upload"
        folder.mkdir()
        small = []
        for i in range(16):  # 8 batches: 1.6 s of progress to see
            small.append(folder / f"note{i}.txt")
            small[-1].write_text(f"Note {i} is about comets and their tails number {i}.")
        page = await b.new_page()
        await page.goto(s.url)
        await page.fill("#upload-collection", "notes")
        await page.set_input_files("#file-input", [str(p) for p in small])
        await page.click("#upload")
        progress = page.locator("#job-progress")
        await expect(progress).to_be_visible(timeout=10_000)
        # Progress is shown while the job runs, before it is done.
        await page.wait_for_function(
            "() => { const p = document.querySelector('#job-progress');"
            " return p && p.value > 0 && p.value < p.max; }",
            timeout=20_000,
        )
        await shot(page, "upload-progress")
        await expect(page.locator("#job-status")).to_contain_text("Done", timeout=30_000)
        await expect(page.locator("#collections")).to_contain_text("notes")
        await shot(page, "upload-done")

        many = []
        for i in range(30):
            many.append(folder / f"long{i}.txt")
            many[-1].write_text(f"Document {i} about planets, moons and orbits, page {i}.")
        await page.fill("#upload-collection", "slow")
        await page.set_input_files("#file-input", [str(p) for p in many])
        await page.click("#upload")
        await page.wait_for_function(
            "() => { const p = document.querySelector('#job-progress');"
            " return p && p.value >= 2 && p.value < p.max; }",
            timeout=20_000,
        )
        await page.click("#job-cancel")
        status = page.locator("#job-status")
        await expect(status).to_contain_text("Cancelled", timeout=20_000)
        await shot(page, "upload-cancelled")
        async with httpx.AsyncClient(headers=s.headers) as http:
            collections = (await http.get(f"{s.url}/api/v1/collections")).json()["collections"]
            job_requests = len(s.embeddings.requests)
            await anyio.sleep(1.0)
            # Stopped: no embedding request after the cancellation settled.
            assert len(s.embeddings.requests) == job_requests
        slow = next((c for c in collections if c["name"] == "slow"), {"documents": 0})
        # At a batch boundary: some documents whole, not all of them.
        assert 0 < slow["documents"] < 30


async def test_a_runs_steps_appear_live_and_cancel_stops_it(tmp_path: Path) -> None:
    gate = anyio.Event()

    def behave(body: dict[str, Any]) -> Behavior:
        if "SLOW" in json.dumps(body):
            return Behavior(texts=[f"s{i} " for i in range(2000)], tokens=2000, interval=0.05)
        if not tool_results(body):
            return Behavior(tool_calls=[("search", '{"query": "closest star"}')], tokens=0)
        # The answer after the tool waits for the gate: the steps before it are on the page.
        return Behavior(tokens=3, gate_after=0, release=gate)

    async with site(tmp_path, behave) as s, browser() as b:
        await ingest(s, DOCS)
        page = await b.new_page()
        await page.goto(s.url)
        await page.fill("#run-query", "Which star is closest?")
        await page.click("#run-start")
        steps = page.locator("#run-steps")
        # Live: the tool call and its result are shown while the run still waits on the model.
        await expect(steps.locator("[data-event=tool_call]")).to_contain_text(
            "search", timeout=15_000
        )
        await expect(steps.locator("[data-event=tool_result]")).to_be_visible(timeout=15_000)
        await expect(page.locator("#run-state")).to_contain_text("running")
        await shot(page, "run-live")
        gate.set()
        await expect(steps.locator("[data-event=done]")).to_be_visible(timeout=15_000)
        await expect(page.locator("#run-answer")).to_contain_text("t0 t1 t2")

        await page.fill("#run-query", "SLOW: talk for a long time")
        await page.click("#run-start")
        await expect(steps.locator("[data-event=step]").first).to_be_visible(timeout=15_000)
        await page.click("#run-cancel")
        await expect(page.locator("#run-state")).to_contain_text("cancelled", timeout=15_000)
        slow = next(c for c in s.upstream.calls if "SLOW" in json.dumps(c.body))
        with anyio.fail_after(5):
            await slow.closed.wait()
        await shot(page, "run-cancelled")


async def test_with_api_keys_the_page_without_a_key_gets_nothing(tmp_path: Path) -> None:
    async with site(tmp_path, answering("ok"), api_keys=[KEY]) as s, browser() as b:
        await ingest(s, DOCS)
        page = await b.new_page()
        answers: list[tuple[str, int]] = []
        page.on("response", lambda r: answers.append((r.url, r.status)))
        await page.goto(s.url)
        await expect(page.locator("#key-form")).to_be_visible(timeout=10_000)
        await anyio.sleep(1.0)  # let every call the page makes on its own come back
        api = [(u, status) for u, status in answers if "/api/" in u or u.endswith("/metrics")]
        assert api, "the page asked the server nothing"
        assert all(status == 401 for _, status in api), api
        # Nothing of the server's data is on the page: not a collection, not a count.
        assert "default" not in await page.locator("#collections").inner_text()
        await shot(page, "key-asked")

        await page.fill("#key-input", KEY)
        await page.click("#key-save")
        await expect(page.locator("#key-form")).to_be_hidden()
        await expect(page.locator("#collections")).to_contain_text("default", timeout=10_000)
        # Kept for this tab's session only.
        stored = await page.evaluate("() => sessionStorage.getItem('ragline-key')")
        assert stored == KEY
        assert await page.evaluate("() => localStorage.length") == 0


async def make_member(s: Site, name: str, groups: list[str]) -> str:
    """A member principal, made by the site's admin over HTTP: its key."""
    async with httpx.AsyncClient(headers=s.headers, timeout=30) as http:
        made = await http.post(
            f"{s.url}/api/v1/principals", json={"name": name, "groups": groups, "admin": False}
        )
    assert made.status_code == 201, made.text
    return str(made.json()["key"])


async def finished_run(s: Site, key: str, query: str, collection: str) -> str:
    """A run started over HTTP with ``key``, waited for until it has completed: its id."""
    async with httpx.AsyncClient(headers=bearer(key), timeout=30) as http:
        started = await http.post(
            f"{s.url}/api/v1/runs", json={"query": query, "collection": collection}
        )
        assert started.status_code == 202, started.text
        run_id = str(started.json()["run_id"])
        with anyio.fail_after(30):
            while (found := (await http.get(f"{s.url}/api/v1/runs/{run_id}")).json())[
                "state"
            ] == "running":
                await anyio.sleep(0.05)
    assert found["state"] == "completed", found
    return run_id


async def sign_in(page: Page, key: str) -> None:
    await expect(page.locator("#key-form")).to_be_visible(timeout=10_000)
    await page.fill("#key-input", key)
    await page.click("#key-save")


async def sign_out(page: Page) -> None:
    await page.click("#sign-out")
    await expect(page.locator("#who")).to_have_text("Not signed in", timeout=10_000)


async def test_signing_in_shows_who_you_are_and_only_your_collections_and_runs(
    tmp_path: Path,
) -> None:
    def behave(body: dict[str, Any]) -> Behavior:
        if "SLOW" in json.dumps(body):
            return Behavior(texts=[f"s{i} " for i in range(2000)], tokens=2000, interval=0.05)
        return Behavior(texts=["ok"], tokens=1)

    async with site(tmp_path, behave, api_keys=["admin-key"]) as s, browser() as b:
        ann = await make_member(s, "ann", ["eng"])
        bob = await make_member(s, "bob", ["ops"])
        # The first writer of a new collection owns it: only its owner (and admins) read it.
        await ingest(s, DOCS[:1], headers=bearer(ann), collection="ann_notes")
        await ingest(s, DOCS[1:], headers=bearer(bob), collection="bob_notes")
        await finished_run(s, ann, "ANN-TASK: which star is closest?", "ann_notes")
        await finished_run(s, bob, "BOB-TASK: which star is red?", "bob_notes")

        page = await b.new_page()
        await page.goto(s.url)
        who = page.locator("#who")
        collections = page.locator("#collections")
        runs = page.locator("#run-list")
        # Keys are on: the page asks for one at once, and shows nothing yet.
        await expect(page.locator("#key-form")).to_be_visible(timeout=10_000)
        await expect(who).to_have_text("Not signed in")
        await expect(page.locator("#sign-in")).to_be_visible()

        # A wrong key is refused, said so, and not kept.
        await sign_in(page, "not-a-key")
        await expect(page.locator("#key-msg")).to_contain_text("refused", timeout=10_000)
        await expect(who).to_have_text("Not signed in")
        assert await page.evaluate("() => sessionStorage.getItem('ragline-key')") is None
        await shot(page, "sign-in-refused")
        await page.click("#sign-in")  # the header's Sign in leads to the form
        await expect(page.locator("#key-input")).to_be_focused()

        # Bob: his name, role and groups; his collection and run, none of Ann's.
        await sign_in(page, bob)
        await expect(page.locator("#key-form")).to_be_hidden(timeout=10_000)
        await expect(who).to_contain_text("Signed in as bob (member; groups: ops)")
        await expect(collections).to_contain_text("bob_notes", timeout=10_000)
        await expect(collections).not_to_contain_text("ann_notes")
        await expect(collections.locator("tr", has_text="bob_notes")).to_contain_text("bob (owner)")
        await expect(runs).to_contain_text("BOB-TASK", timeout=10_000)
        await expect(runs).to_contain_text("completed")
        await expect(runs).not_to_contain_text("ANN-TASK")
        await expect(page.locator("#run-list-h")).to_have_text("Your runs")
        await expect(runs.locator("th.owner")).to_be_hidden()  # a member's runs are all theirs
        await expect(page.locator("#run-collection")).not_to_contain_text("ann_notes")
        await shot(page, "signed-in-member")

        # Signing out forgets the key and wipes Bob's lists before anyone else signs in.
        await sign_out(page)
        await expect(page.locator("#key-form")).to_be_visible()
        await expect(collections).not_to_contain_text("bob_notes")
        await expect(runs).not_to_contain_text("BOB-TASK")
        assert await page.evaluate("() => sessionStorage.getItem('ragline-key')") is None

        # Ann: hers, none of Bob's; a run she starts on the page joins her list.
        await sign_in(page, ann)
        await expect(who).to_contain_text("Signed in as ann (member; groups: eng)", timeout=10_000)
        await expect(collections).to_contain_text("ann_notes", timeout=10_000)
        await expect(collections).not_to_contain_text("bob_notes")
        await expect(runs).to_contain_text("ANN-TASK", timeout=10_000)
        await expect(runs).not_to_contain_text("BOB-TASK")
        await page.select_option("#run-collection", "ann_notes")
        await page.fill("#run-query", "PAGE-TASK: and the brightest?")
        await page.click("#run-start")
        await expect(page.locator("#run-state")).to_contain_text("completed", timeout=15_000)
        page_run = runs.locator("tr", has_text="PAGE-TASK")
        await expect(page_run).to_contain_text("completed", timeout=10_000)
        await shot(page, "signed-in-other-member")

        # Signing out in the middle of a run: its steps go, and none arrive later.
        await page.fill("#run-query", "SLOW: talk for a long time")
        await page.click("#run-start")
        steps = page.locator("#run-steps")
        await expect(steps.locator("[data-event=step]").first).to_be_visible(timeout=15_000)
        await expect(runs.locator("tr", has_text="SLOW")).to_contain_text("running")
        await sign_out(page)
        await expect(steps).to_be_empty()
        await expect(runs).not_to_contain_text("SLOW")
        await anyio.sleep(1.0)  # the run goes on at the server: nothing of it may come back
        await expect(steps).to_be_empty()
        await expect(page.locator("#run-state")).to_be_empty()
        await expect(page.locator("#run-error")).to_be_hidden()
        await expect(page.locator("#run-start")).to_be_enabled()

        # The admin sees everyone's collections and runs, each run with its owner.
        await sign_in(page, "admin-key")
        await expect(who).to_contain_text("(admin; no groups)", timeout=10_000)
        await expect(collections).to_contain_text("ann_notes", timeout=10_000)
        await expect(collections).to_contain_text("bob_notes")
        await expect(page.locator("#run-list-h")).to_have_text("All runs")
        await expect(runs.locator("tr", has_text="BOB-TASK")).to_contain_text("bob", timeout=10_000)
        await expect(runs.locator("tr", has_text="PAGE-TASK")).to_contain_text("ann")
        await shot(page, "signed-in-admin")

        # The key was never in the address, nor in a cookie, nor kept beyond this tab.
        assert "key" not in page.url
        assert await page.context.cookies() == []
        assert await page.evaluate("() => localStorage.length") == 0


async def seed_feedback(data_dir: Path) -> None:
    """Three ratings of the bot's answers, written to the server's own feedback file (as
    its Teams webhook would): two likes, then a dislike with a comment."""
    store = SqliteFeedback(data_dir / "feedback.sqlite", ThreadBridge())
    life = Lifetime.root("seed")
    try:
        ratings: list[tuple[Reaction, str]] = [
            ("like", "Spot on"),
            ("like", ""),
            ("dislike", "Wrong star, it is Proxima"),
        ]
        for n, (reaction, text) in enumerate(ratings):
            question = "Which star is closest?" if n == 2 else f"Question {n}?"
            sent = SentAnswer(f"m{n}", "a:1chat", "tenant", question, "Alpha Centauri [1]")
            await store.record_answer(sent, life)
            rated = FeedbackRecord(sent, reaction, text, "29:ann", time.time() + n)
            await store.add_feedback(rated, life)
    finally:
        store.close()


async def test_admins_see_what_teams_users_said_and_members_see_nothing_of_it(
    tmp_path: Path,
) -> None:
    async with site(tmp_path, answering("ok"), api_keys=["admin-key"]) as s, browser() as b:
        bob = await make_member(s, "bob", [])
        await seed_feedback(tmp_path / "data")
        page = await b.new_page()
        asked: list[str] = []
        page.on("request", lambda r: asked.append(r.url))
        await page.goto(s.url)
        feedback = page.locator("#feedback")
        await sign_in(page, "admin-key")
        await expect(feedback).to_be_visible(timeout=10_000)
        await expect(page.locator("#feedback-tally")).to_have_text("👍 2 liked · 👎 1 disliked")
        newest = page.locator("#feedback-list li").first
        await expect(newest).to_contain_text("Wrong star, it is Proxima")
        await expect(newest).to_contain_text("Which star is closest?")
        await expect(newest.locator(".thumb")).to_have_text("👎 disliked")
        await expect(page.locator("#feedback-list li")).to_have_count(3)
        await shot(page, "feedback-admin")

        # A member: nothing of it on the page, and the page never asks for it.
        await sign_out(page)
        await expect(feedback).to_be_hidden()
        asked.clear()
        await sign_in(page, bob)
        await expect(page.locator("#who")).to_contain_text("bob (member", timeout=10_000)
        await expect(page.locator("#saved-status")).to_contain_text("Updated", timeout=10_000)
        await expect(feedback).to_be_hidden()
        assert not [u for u in asked if "/api/v1/feedback" in u], asked


async def test_without_credentials_the_page_says_local_needs_no_sign_in(tmp_path: Path) -> None:
    async with site(tmp_path, answering("ok")) as s, browser() as b:
        page = await b.new_page()
        await page.goto(s.url)
        await expect(page.locator("#who")).to_have_text(
            "local (admin, no sign-in needed)", timeout=10_000
        )
        await expect(page.locator("#key-form")).to_be_hidden()
        await expect(page.locator("#sign-in")).to_be_hidden()
        await expect(page.locator("#sign-out")).to_be_hidden()
        await expect(page.locator("#run-list-h")).to_have_text("All runs")
        await expect(page.locator("#run-list")).to_contain_text("No runs yet.", timeout=10_000)
        await shot(page, "open-mode")


async def test_the_api_document_renders_offline_at_docs(tmp_path: Path) -> None:
    async with site(tmp_path, answering("ok"), api_keys=[KEY]) as s, browser() as b:
        page = await b.new_page()
        requested: list[str] = []
        page.on("request", lambda r: requested.append(r.url))
        await page.goto(f"{s.url}/docs")
        chat = page.locator("#post_api_v1_inference_chat")
        await expect(chat).to_contain_text("/api/v1/inference/chat", timeout=10_000)
        await chat.locator("summary").click()
        await expect(chat).to_contain_text("ConversationChat")  # a ChatRequest that continues one
        await expect(chat).to_contain_text("conversation_id")
        await expect(chat).to_contain_text("429")
        assert all(u.startswith(s.url) for u in requested), requested  # nothing from outside
        await shot(page, "api-docs")
