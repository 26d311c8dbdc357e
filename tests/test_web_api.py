"""The page's routes and the memory of request outcomes (the browser itself: test_web.py)."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import httpx
import pytest

from conftest import RawClient, asgi_client, serve, settings_for, upstream_running
from ragline.outcomes import Outcome, Outcomes
from upstream import Behavior, FakeUpstream

pytestmark = pytest.mark.anyio

PROMPT = json.dumps({"query": "what is ragline?"}).encode()


async def test_the_page_and_its_assets_are_served_same_origin_only() -> None:
    upstream = FakeUpstream()
    async with asgi_client(settings_for(upstream, api_keys=["k1"])) as http:
        page = await http.get("/")  # public: the page holds no data
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        policy = page.headers["content-security-policy"]
        assert "default-src 'self'" in policy
        assert "frame-ancestors 'none'" in policy
        assert '/ui/app.js"' in page.text
        script = await http.get("/ui/app.js")
        assert script.status_code == 200
        assert script.headers["content-type"].startswith("text/javascript")
        assert (await http.get("/ui/style.css")).headers["content-type"].startswith("text/css")
        missing = await http.get("/ui/secrets.txt")
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "not_found"
        assert (await http.get("/ui/index.html")).status_code == 404  # only at /
        # Only the named assets: nothing else in the package is reachable.
        traversal = await http.get("/ui/%2E%2E%2Fsettings.py")
        assert traversal.status_code in {401, 404}
        assert b"Settings" not in traversal.content
        # The API stays behind the key.
        assert (await http.get("/api/v1/collections")).status_code == 401


async def test_the_page_is_off_with_its_setting() -> None:
    async with asgi_client(settings_for(FakeUpstream(), web=False)) as http:
        assert (await http.get("/")).status_code == 404
        assert (await http.get("/ui/app.js")).status_code == 404


async def test_a_stopped_stream_tells_its_cause_tokens_and_how_soon_the_model_closed() -> None:
    upstream = FakeUpstream(lambda body: Behavior(tokens=10_000, interval=0.01))
    async with upstream_running(upstream), serve(settings_for(upstream)) as running:
        raw = await RawClient.connect(running.port)
        await raw.send(
            "GET", "/api/v1/inference/stream?query=hello", headers={"x-request-id": "stop-1"}
        )
        await raw.read_until(b"data:", 5)
        await raw.close()
        call = upstream.calls[0]
        with anyio.fail_after(10):
            await call.closed.wait()
        async with httpx.AsyncClient(base_url=running.url) as http:
            with anyio.fail_after(10):
                while (found := await http.get("/api/v1/requests/stop-1")).status_code == 404:
                    await anyio.sleep(0.02)
        outcome = found.json()
        assert outcome["cause"] == "client_disconnected"
        assert outcome["route"] == "/api/v1/inference/stream"
        assert outcome["status"] == 499
        produced = len(call.token_times)
        assert produced - 1 <= outcome["completion_tokens"] <= produced
        assert outcome["tokens_after_cancel"] <= 1
        assert 0 <= outcome["upstream_closed_ms"] < 2000
        assert "owner" not in outcome


async def test_only_the_principal_that_made_a_request_and_admins_read_its_outcome(
    tmp_path: Path,
) -> None:
    upstream = FakeUpstream(lambda body: Behavior(tokens=3))
    async with (
        upstream_running(upstream),
        asgi_client(settings_for(upstream, api_keys=["admin-key"], data_dir=str(tmp_path))) as http,
    ):
        admin = {"authorization": "Bearer admin-key"}
        keys = {}
        for name in ("ann", "bob"):
            made = await http.post("/api/v1/principals", json={"name": name}, headers=admin)
            assert made.status_code == 201, made.text
            keys[name] = {"authorization": f"Bearer {made.json()['key']}"}
        one = {**keys["ann"], "x-request-id": "mine"}
        answered = await http.post("/api/v1/inference/chat", content=PROMPT, headers=one)
        assert answered.status_code == 200, answered.text
        found = await http.get("/api/v1/requests/mine", headers=keys["ann"])
        assert found.status_code == 200
        assert found.json()["completion_tokens"] == 3
        assert found.json()["cause"] is None
        other = await http.get("/api/v1/requests/mine", headers=keys["bob"])
        never = await http.get("/api/v1/requests/never-made", headers=keys["bob"])
        # Someone else's request reads exactly as one never made (only the id differs).
        assert other.status_code == never.status_code == 404
        assert other.text.replace("mine", "never-made") == never.text
        assert (await http.get("/api/v1/requests/mine", headers=admin)).status_code == 200
        assert (await http.get("/api/v1/requests/mine")).status_code == 401


async def test_requests_that_neither_generated_nor_stopped_are_not_kept() -> None:
    upstream = FakeUpstream()
    async with asgi_client(settings_for(upstream, outcomes_kept=2)) as http:
        await http.get("/healthz", headers={"x-request-id": "health"})
        assert (await http.get("/api/v1/requests/health")).status_code == 404


async def test_the_memory_is_bounded_and_forgets_the_oldest_first() -> None:
    outcomes = Outcomes(kept=2)
    for name in ("a", "b", "c"):
        outcomes.record(Outcome(name))
    assert outcomes.get("a") is None
    assert outcomes.get("b") is not None
    assert outcomes.get("c") is not None
