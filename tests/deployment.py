"""Real ``ragline serve`` processes for end-to-end tests, on either backend: ``embedded``
(one replica, Milvus Lite and SQLite in its data dir) or ``cluster`` (two replicas
sharing a real PostgreSQL and the real Milvus standalone server). Models are fakes on
loopback sockets: embeddings that are a bag of hashed words, a scripted upstream."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from anyio.abc import Process

from conftest import free_port, upstream_running
from fake_embeddings import FakeEmbeddings, embeddings_server
from upstream import FakeUpstream

ADMIN = {"authorization": "Bearer admin-key"}


@dataclass
class Deployment:
    """The replicas of one deployment (one, or two sharing the engines)."""

    kind: str
    root: Path
    env: dict[str, str]
    urls: list[str] = field(default_factory=list)
    processes: list[Process] = field(default_factory=list)
    embeddings: FakeEmbeddings | None = None  # the fake embedder every replica asks

    async def start(self, *, retrieval_mode: str = "hybrid") -> str:
        """One more ``ragline serve`` replica, once ready: its URL."""
        name = f"replica{len(self.processes)}"
        port = free_port()
        env = {
            **self.env,
            "RAGLINE_RETRIEVAL_MODE": retrieval_mode,
            "RAGLINE_DATA_DIR": str(self.root / (name if self.kind == "cluster" else "data")),
        }
        process = await launch(["serve", "--port", str(port)], env, self.root / f"{name}.log")
        self.processes.append(process)
        url = f"http://127.0.0.1:{port}"
        await until_ready(url, process)
        self.urls.append(url)
        return url

    def log(self, index: int) -> str:
        """What a replica wrote to stderr (its JSON log lines)."""
        return (self.root / f"replica{index}.log").read_text(errors="replace")

    @property
    def other(self) -> str:
        """The replica that did not take a request: the second one in a cluster."""
        return self.urls[-1]


async def launch(argv: list[str], env: dict[str, str], log: Path) -> Process:
    """A ``ragline`` process with ``env`` over this one's; its stderr (the JSON log) to
    ``log``, for assertions and post-mortems."""
    out = os.open(log, os.O_WRONLY | os.O_CREAT)
    try:
        return await anyio.open_process(
            [sys.executable, "-m", "ragline", *argv],
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=out,
        )
    finally:
        os.close(out)


async def kill_all(processes: list[Process]) -> None:
    """Kill whichever of ``processes`` still run, and reap them (callers in a
    ``finally`` shield it with a deadline)."""
    for process in processes:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def until_ready(url: str, process: Process) -> None:
    """Wait until the server at ``url`` answers ``/readyz`` with 200 (it must not exit)."""
    async with httpx.AsyncClient() as http:
        with anyio.fail_after(120):
            while True:
                assert process.returncode is None, f"the server at {url} exited"
                try:
                    if (await http.get(f"{url}/readyz")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await anyio.sleep(0.1)


def backend_env(kind: str, request: pytest.FixtureRequest) -> dict[str, str]:
    """What a backend adds to a replica's environment (its engines, started on demand)."""
    if kind == "embedded":
        return {}
    return {
        "RAGLINE_DATABASE_URL": request.getfixturevalue("database_url"),
        "RAGLINE_VECTOR_URI": request.getfixturevalue("milvus_database"),
    }


@asynccontextmanager
async def deployment(
    kind: str,
    root: Path,
    engines: dict[str, str],
    upstream: FakeUpstream,
    *,
    retrieval_mode: str = "hybrid",
    **env: str,
) -> AsyncIterator[Deployment]:
    """A deployment of ``kind`` whose admin key is ``admin-key``: one replica when
    embedded, two in a cluster."""
    embeddings = FakeEmbeddings()
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(embeddings_server(embeddings))
        await stack.enter_async_context(upstream_running(upstream))
        made = Deployment(
            kind,
            root,
            {
                **engines,
                "RAGLINE_API_KEYS": "admin-key",
                "RAGLINE_EMBEDDINGS": "openai",
                "RAGLINE_EMBEDDINGS_BASE_URL": f"{embeddings.url}/v1",
                "RAGLINE_EMBEDDINGS_API_KEY": embeddings.key,
                "RAGLINE_EMBEDDINGS_MODEL": "fake-embedding",
                "RAGLINE_EMBEDDINGS_DIMENSIONS": str(embeddings.dimensions),
                "RAGLINE_LLM_PROVIDER": "openai",
                "RAGLINE_LLM_BASE_URL": upstream.base_url,
                "RAGLINE_LLM_MODEL": "fake-model",
                "RAGLINE_SEED_DOCS": "",
                "RAGLINE_TOOLS": "search",
                "RAGLINE_CHUNK_TOKENS": "48",
                "RAGLINE_CHUNK_OVERLAP": "4",
                "RAGLINE_SHUTDOWN_GRACE": "3",
                **env,
            },
            embeddings=embeddings,
        )
        try:
            for _ in range(2 if kind == "cluster" else 1):
                await made.start(retrieval_mode=retrieval_mode)
            yield made
        finally:
            with anyio.move_on_after(30, shield=True):
                await kill_all(made.processes)


async def make_member(http: httpx.AsyncClient, url: str, name: str, *groups: str) -> dict[str, str]:
    """A member principal made by the admin: the headers that carry its key."""
    made = await http.post(
        f"{url}/api/v1/principals", json={"name": name, "groups": list(groups)}, headers=ADMIN
    )
    assert made.status_code == 201, made.text
    return {"authorization": f"Bearer {made.json()['key']}"}


async def ingest(
    http: httpx.AsyncClient,
    url: str,
    headers: dict[str, str],
    documents: list[dict[str, Any]],
    collection: str | None = None,
) -> str:
    """Ingest and wait until the job succeeded: its id."""
    body: dict[str, Any] = {"documents": documents}
    if collection is not None:
        body["collection"] = collection
    answer = await http.post(f"{url}/api/v1/ingest", json=body, headers=headers)
    assert answer.status_code == 202, answer.text
    job_id = str(answer.json()["job_id"])
    with anyio.fail_after(120):
        while True:
            status = (await http.get(f"{url}/api/v1/ingest/{job_id}", headers=headers)).json()
            if status["state"] in ("succeeded", "failed", "cancelled"):
                assert status["state"] == "succeeded", status
                return job_id
            await anyio.sleep(0.05)
