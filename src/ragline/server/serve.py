"""Running the application on uvicorn, with a shutdown that stops work at once.

uvicorn drains connections before the lifespan shutdown runs, which is too late to stop
in-flight work: on SIGTERM/SIGINT it waits for every stream to finish. Here the signal
also cancels the application's lifetime with cause ``shutdown`` the moment it arrives, so
responses end (503, or a final error event) and the process exits within the grace.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import socket
from types import FrameType

import uvicorn
from starlette.applications import Starlette

from ..runtime import Runtime

__all__ = ["Server", "build_server", "raise_open_file_limit", "tune_collector"]

log = logging.getLogger("ragline.server")

# Each held stream is two sockets (the client's, the upstream's): 10,000 streams need
# 20,000 descriptors and more. Below _LOW (4,000 streams), the start says so.
_WANTED_FILES = 65_536
_LOW = 8_192


class Server(uvicorn.Server):
    """A uvicorn server whose exit handler cancels the application's work."""

    def __init__(self, config: uvicorn.Config, runtime: Runtime) -> None:
        super().__init__(config)
        self.runtime = runtime
        self.freeze_after_startup = False  # `ragline serve`'s process: see tune_collector
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining = False

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.freeze_after_startup:
            # What the start made (modules, models, settings) lives as long as the
            # process: out of every later collection's walk.
            gc.freeze()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        loop = self._loop
        window = self.runtime.settings.drain_seconds
        if window and not self._draining and loop is not None and not loop.is_closed():
            # The first signal opens the drain window: not ready at once, but still
            # serving (a load balancer may send a few more requests), and work in flight
            # goes on. At its end, or at a second signal, the shutdown below runs.
            self._draining = True
            loop.call_soon_threadsafe(self._drain, sig, window)
            return
        super().handle_exit(sig, frame)
        if loop is not None and not loop.is_closed():
            # A signal handler runs between bytecodes; hand the cancellation to the loop.
            loop.call_soon_threadsafe(self.runtime.shutdown, f"signal {sig}")

    def _drain(self, sig: int, window: float) -> None:
        self.runtime.drain(f"signal {sig}, draining for {window:g}s")
        assert self._loop is not None
        self._loop.call_later(window, self.handle_exit, sig, None)

    def stop(self) -> None:
        """Begin a graceful shutdown from the event loop (tests, embedding)."""
        self.should_exit = True
        self.runtime.shutdown("stop requested")


def raise_open_file_limit() -> int:
    """Raise this process's open-file limit to its hard limit, as nginx and Go's runtime
    do (a shell's soft default is often 1,024: 500 held streams); the limit now."""
    try:
        import resource
    except ImportError:  # not on this platform
        return -1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    if soft != resource.RLIM_INFINITY and soft < _LOW:
        log.warning(
            "open-file limit is %d: about %d streams can be held at once; raise the hard "
            "limit (LimitNOFILE=%d under systemd, ulimit -Hn; docs/DEPLOY.md)",
            soft,
            soft // 2 - 50,
            _WANTED_FILES,
            extra={"open_files": soft},
        )
    return int(soft)


# Python's defaults (700, 10, 10) suit short scripts. A server holding thousands of streams
# keeps hundreds of thousands of objects alive (about 315 a stream), and a full collection
# walks them all, stopping every stream: 0.4 s at 2,000 held streams, about 2 s at 10,000,
# fourteen times while 10,000 opened (bench/compare.py's held streams, measured with
# gc.callbacks). A stream's objects are freed by reference counting when it ends (about 11
# of them in cycles), so collections can be far rarer: none ran while 10,000 opened.
_COLLECTOR_THRESHOLDS = (50_000, 10, 10)


def tune_collector() -> tuple[int, int, int]:
    """Set the garbage collector's thresholds for a server process (``ragline serve``;
    an application embedding ragline keeps its own); the thresholds before."""
    before = gc.get_threshold()
    gc.set_threshold(*_COLLECTOR_THRESHOLDS)
    return before


def build_server(app: Starlette, *, host: str, port: int) -> Server:
    """A :class:`Server` for ``app`` with ragline's shutdown and logging choices."""
    runtime: Runtime = app.state.runtime
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        access_log=False,  # the boundary writes the access log, with 499s and causes
        log_config=None,
        lifespan="on",
        timeout_graceful_shutdown=math.ceil(runtime.settings.shutdown_grace),
        timeout_keep_alive=5,
        # Thousands of streams opened at once wait in the kernel's accept queue instead of
        # being reset when it overflows (uvicorn's 2048 reset 11 of 10,000 here). Linux
        # caps it at net.core.somaxconn: 4096 by default since 5.4.
        backlog=4096,
        http=runtime.settings.http,
        loop=runtime.settings.loop,
    )
    return Server(config, runtime)
