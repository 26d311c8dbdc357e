"""``ragline ingest PATH…``: index files into a collection, with a progress bar.

In-process by default. Milvus Lite lets one process own a data directory, so when a
running server owns it (it leaves ``server.json`` there) the job is handed to that server
and its progress followed. Ctrl-C stops at the next batch boundary; a second Ctrl-C
abandons the batch in flight. Either way nothing is half-visible, and running the same
command again resumes (unchanged documents are skipped).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import uuid
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, TextIO

import anyio
import httpx
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

from ..errors import RagLineError
from ..ingestion import IngestProgress, Stop
from ..lifetime import Cause, Lifetime
from ..settings import Settings

__all__ = ["ingest", "server_file"]


def server_file(settings: Settings) -> Path:
    """Where a running server says who it is."""
    return Path(settings.data_dir) / "server.json"


class _Display:
    """A rich progress bar on a terminal; elsewhere (pipes, CI logs) a plain line at most
    twice a second, so progress is still visible."""

    def __init__(self, console: Console, title: str) -> None:
        self.console = console
        self.title = title
        self._bar: Progress | None = None
        self._task: Any = None
        self._last = 0.0

    def __enter__(self) -> _Display:
        if self.console.is_terminal:
            self._bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                TaskProgressColumn(),
                TextColumn("{task.fields[detail]}"),
                console=self.console,
            )
            self._bar.__enter__()
            self._task = self._bar.add_task(self.title, total=None, detail="starting")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)

    def show(self, p: dict[str, Any]) -> None:
        if self._bar is not None:
            total = max(p["chunks"]["total"], 1)
            self._bar.update(
                self._task, total=total, completed=p["chunks"]["done"], detail=_detail(p)
            )
            return
        now = time.monotonic()
        if now - self._last >= 0.5:
            self._last = now
            self.console.print(f"{self.title}: {_detail(p)}")


def _detail(p: dict[str, Any]) -> str:
    docs, chunks = p["documents"], p["chunks"]
    eta = p.get("eta_seconds")
    return (
        f"docs {docs['done']}/{docs['total']} (skipped {docs['skipped']})  "
        f"chunks {chunks['done']}/{chunks['total']}  {p['rate']:.1f} chunks/s"
        + (f"  ETA {eta:.0f}s" if eta is not None else "")
    )


async def ingest(
    paths: list[str],
    *,
    collection: str | None,
    prune: bool,
    url: str | None = None,
    api_key: str | None = None,
    err: TextIO = sys.stderr,
) -> int:
    """Run the command; returns the exit code."""
    settings = Settings()
    console = Console(file=err, soft_wrap=True)  # no hard wraps in logs and pipes
    if url is None:
        url = await running_server(settings)
    if url is not None:
        return await _remote(url, paths, collection, prune, api_key, console)
    return await _local(settings, paths, collection, prune, console)


async def running_server(settings: Settings) -> str | None:
    """The server that owns the data directory, if one does. A marker left behind (its
    process gone, or its pid reused by another program) is ignored: the process must be
    alive and its URL must answer as ragline."""
    try:
        info = json.loads(await anyio.Path(server_file(settings)).read_text())
        os.kill(int(info["pid"]), 0)
        url = str(info["url"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        async with httpx.AsyncClient(timeout=2.0) as http:
            answer = await http.get(f"{url}/healthz")
        if answer.json() != {"status": "ok"}:
            return None
    except (httpx.HTTPError, ValueError):
        return None
    return url


async def _local(
    settings: Settings, paths: list[str], collection: str | None, prune: bool, console: Console
) -> int:
    from ..backend import build_backend
    from ..documents import load_all
    from ..factory import build_ingestion, open_parts
    from ..threads import ThreadBridge

    bridge = ThreadBridge()
    backend = build_backend(settings, bridge)
    ingestion = build_ingestion(settings, bridge, backend.records)
    root = Lifetime.root("cli")
    stop = Stop()
    progress = IngestProgress()
    name = collection or settings.collection
    with _Display(console, f"ingest → {name}") as display:

        def show(p: IngestProgress) -> None:
            display.show(p.as_dict())

        async with AsyncExitStack() as stack, anyio.create_task_group() as tg:
            tg.start_soon(_ctrl_c, stop, root, console)
            try:
                with root:
                    await open_parts(stack, root, [*backend.built, *ingestion.built], grace=5)
                    documents, problems = await bridge.call(
                        root,
                        load_all,
                        [Path(p) for p in paths],
                        max_bytes=settings.max_document_bytes,
                    )
                    await ingestion.ingestor.run(
                        documents,
                        root,
                        collection=name,
                        # Its own name: beside workers, only what this run leaves
                        # half-written is its to collect.
                        owner=f"cli:{uuid.uuid4().hex}",
                        prune=prune,
                        problems=problems,
                        stop=stop,
                        progress=progress,
                        on_progress=show,
                    )
            except RagLineError as exc:
                console.print(f"[red]ragline: {exc.message}[/red]")
                return 1
            finally:
                tg.cancel_scope.cancel()
    return _report(progress.as_dict(), progress.stopped or root.reason, console)


async def _ctrl_c(stop: Stop, root: Lifetime, console: Console) -> None:
    with anyio.open_signal_receiver(signal.SIGINT) as signals:
        async for _ in signals:
            if stop.reason is None:
                stop.request(Cause.EXPLICIT, "Ctrl-C")
                console.print("stopping after the current batch (Ctrl-C again to abandon it)")
            else:
                root.cancel(Cause.EXPLICIT, "second Ctrl-C")
                return


def _report(p: dict[str, Any], stopped: Any, console: Console) -> int:
    for error in p["errors"]:
        console.print(f"[yellow]skipped {error['source']}: {error['reason']}[/yellow]")
    if stopped is not None:
        console.print(
            f"stopped ({stopped.detail or stopped.cause}): every document is fully "
            "old or fully new. Run the same command again to resume."
        )
        return 130
    console.print(f"done: {_detail(p)}")
    return 0


async def _remote(
    url: str,
    paths: list[str],
    collection: str | None,
    prune: bool,
    api_key: str | None,
    console: Console,
) -> int:
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    body = {
        "paths": paths,  # absolute: the server's working directory is not ours
        "prune": prune,
        "collection": collection,
    }
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as http:
        try:
            answer = await http.post("/api/v1/ingest", json=body)
        except httpx.HTTPError as exc:
            console.print(f"[red]ragline: cannot reach the server at {url}: {exc}[/red]")
            return 1
        if answer.status_code != 202:
            message = answer.json().get("error", {}).get("message", answer.text)
            console.print(f"[red]ragline: the server at {url} refused the job: {message}[/red]")
            return 1
        job_id = answer.json()["job_id"]
        console.print(f"handed to the server at {url} as job {job_id}")
        stop = Stop()
        with _Display(console, "ingest (server)") as display:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_ctrl_c_remote, http, job_id, stop, console)
                while True:
                    status = (await http.get(f"/api/v1/ingest/{job_id}")).json()
                    p = status.get("progress")
                    if p:
                        display.show(p)
                    if status["state"] in ("succeeded", "failed", "cancelled"):
                        break
                    await anyio.sleep(0.5)
                tg.cancel_scope.cancel()
    if status["state"] == "failed":
        console.print(f"[red]ragline: job failed: {status.get('error')}[/red]")
        return 1
    stopped = status["state"] == "cancelled"
    reason = Stop()
    if stopped:
        reason.request(Cause.EXPLICIT, status.get("cause") or "cancelled")
    return _report(
        status.get("progress") or {"errors": [], "documents": {}, "chunks": {}},
        reason.reason,
        console,
    )


async def _ctrl_c_remote(
    http: httpx.AsyncClient, job_id: str, stop: Stop, console: Console
) -> None:
    with anyio.open_signal_receiver(signal.SIGINT) as signals:
        async for _ in signals:
            stop.request(Cause.EXPLICIT, "Ctrl-C")
            await http.delete(f"/api/v1/ingest/{job_id}")
            console.print("asked the server to stop the job after the current batch")
