"""``ragline serve --workers N``: N server processes on one listening socket, so that a
proxy on an N-core machine uses N cores.

The parent binds the socket and starts N children (``python -m ragline serve`` with the
socket's file descriptor passed down); the kernel spreads connections over the
processes accepting on it. Each child is a whole ragline with its own lifetime: a
SIGTERM or SIGINT to the parent is passed on to every child, which cancels its own work
with cause ``shutdown`` (or drains first, with ``RAGLINE_DRAIN_SECONDS``). A child that
dies unexpectedly is started again.

State shared between processes must live outside them: with retrieval, the vectors on a
Milvus server and the records in PostgreSQL (Milvus Lite and the SQLite job queue are
one process's); with the Teams bot, its de-duplication in PostgreSQL too.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from types import FrameType

from ..settings import Settings

__all__ = ["FD_VARIABLE", "check_processes", "run_processes"]

log = logging.getLogger("ragline.serve")

FD_VARIABLE = "RAGLINE_LISTEN_FD"  # set in a child: serve on this inherited socket
_RESTART_DELAY = 1.0


def check_processes(settings: Settings, workers: int) -> None:
    """Raise ``ValueError`` naming what must move out of the process for ``workers``."""
    if workers <= 1:
        return
    missing = []
    if settings.retrieval and not settings.vector_uri:
        missing.append(
            "RAGLINE_VECTOR_URI (a Milvus server: Milvus Lite allows one process per data "
            "directory)"
        )
    if (settings.retrieval or settings.bot_enabled) and not settings.database_url:
        missing.append(
            "RAGLINE_DATABASE_URL (PostgreSQL: the records, the job queue and the Teams "
            "de-duplication are one process's in SQLite and memory)"
        )
    if missing:
        raise ValueError(
            f"--workers {workers} needs state that every process shares: set "
            + " and ".join(missing)
            + "; or turn retrieval off (RAGLINE_RETRIEVAL=false) for a plain proxy"
        )


def run_processes(host: str, port: int, workers: int) -> int:
    """Bind, start ``workers`` children, pass signals on, restart what dies; the exit
    status once every child has ended after a signal."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(2048)
    listener.set_inheritable(True)
    children: list[subprocess.Popen[bytes]] = []
    stopping: list[int] = []

    def start() -> subprocess.Popen[bytes]:
        env = {**os.environ, FD_VARIABLE: str(listener.fileno())}
        return subprocess.Popen(
            [sys.executable, "-m", "ragline", "serve", "--host", host, "--port", str(port)],
            env=env,
            pass_fds=(listener.fileno(),),
        )

    def on_signal(sig: int, frame: FrameType | None) -> None:
        stopping.append(sig)
        for child in children:
            if child.poll() is None:
                child.send_signal(sig)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        children.extend(start() for _ in range(workers))
        log.info("serving with %d worker processes", workers, extra={"port": port})
        while True:
            if stopping:
                for child in children:
                    child.wait()
                return 0
            for index, child in enumerate(children):
                if child.poll() is not None and not stopping:
                    log.warning(
                        "worker process %d exited (%s); starting another",
                        child.pid,
                        child.returncode,
                    )
                    time.sleep(_RESTART_DELAY)
                    if not stopping:
                        children[index] = start()
            time.sleep(0.2)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        listener.close()
