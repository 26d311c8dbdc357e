"""Hostile bodies on every JSON route: no 5xx, no traceback, no hang (hypothesis), plus the
defects fuzzing found, each kept as a regression test."""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import LogCapture, settings_for, upstream_running
from fake_embeddings import WordEmbedder
from ragline.providers.memory import MemoryStore
from ragline.server import create_app
from upstream import FakeUpstream

pytestmark = pytest.mark.anyio

ROUTES = [
    "/api/v1/inference/chat",
    "/api/v1/retrieve",
    "/v1/chat/completions",
    "/api/v1/runs",
    "/api/v1/ingest",
    "/api/messages",
]
# Any JSON at all, nested deep enough to matter, and a few hostile shapes.
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
FIELDS = st.sampled_from(
    [
        "query",
        "messages",
        "model",
        "documents",
        "paths",
        "top_k",
        "max_tokens",
        "stream",
        "collection",
        "type",
        "text",
        "history",
        "tools",
        "metadata",
        "id",
    ]
)
BODIES = st.one_of(
    JSON.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(FIELDS, JSON, max_size=5).map(lambda v: json.dumps(v).encode()),
    st.integers(1, 5000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(1, 5000).map(lambda n: b'{"query":' + b"[" * n + b"]" * n + b"}"),
    st.binary(max_size=64),
    st.text(max_size=12).map(lambda p: json.dumps({"paths": [p]}).encode()),
)


@asynccontextmanager
async def client() -> AsyncIterator[httpx.AsyncClient]:
    upstream = FakeUpstream()
    with tempfile.TemporaryDirectory() as data:
        settings = settings_for(
            upstream, retrieval=True, data_dir=data, ingest_roots=[data], bot_auth="off"
        )
        async with upstream_running(upstream):
            app = create_app(settings, embedder=WordEmbedder(), store=MemoryStore())
            async with app.router.lifespan_context(app):
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(
                    transport=transport, base_url="http://ragline"
                ) as http:
                    yield http


async def post(http: httpx.AsyncClient, route: str, body: bytes) -> httpx.Response:
    with anyio.fail_after(10):  # no hang
        return await http.post(route, content=body, headers={"content-type": "application/json"})


def test_hostile_bodies_on_every_json_route_never_answer_5xx(logs: LogCapture) -> None:
    with anyio.from_thread.start_blocking_portal() as portal:
        with portal.wrap_async_context_manager(client()) as http:

            @given(route=st.sampled_from(ROUTES), body=BODIES)
            @settings(
                max_examples=300,
                deadline=None,
                derandomize=True,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def check(route: str, body: bytes) -> None:
                answer = portal.call(post, http, route, body)
                assert answer.status_code < 500, (route, body[:200], answer.text[:300])
                assert "Traceback" not in answer.text
                if answer.status_code >= 400:
                    error: Any = answer.json()["error"]
                    assert error["message"]

            check()
    # No traceback in the server's log either: every one of them was a clear 4xx.
    assert [r.getMessage() for r in logs.at_least(logging.ERROR)] == []


@pytest.mark.anyio
@pytest.mark.parametrize("route", ROUTES)
async def test_deeply_nested_json_is_a_400_on_every_route(route: str) -> None:
    async with client() as http:
        answer = await post(http, route, b"[" * 1000 + b"]" * 1000)
    assert answer.status_code in (400, 401), answer.text  # /api/messages: its JWT first
    assert answer.json()["error"]["code"] in ("malformed_json", "unauthorized")


@pytest.mark.anyio
async def test_a_nul_byte_in_an_ingest_path_is_a_422() -> None:
    async with client() as http:
        answer = await post(http, "/api/v1/ingest", json.dumps({"paths": ["a\x00b"]}).encode())
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["param"] == "paths"
