"""The ``ragline`` command."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _serve(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from ..logs import configure_logging
    from ..server import build_server, create_app
    from ..settings import Settings

    try:
        settings = Settings()
    except ValidationError as exc:
        print(f"ragline: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    host = args.host or settings.host
    port = args.port if args.port is not None else settings.port
    try:
        settings.require_safe_bind(host)
    except ValueError as exc:
        print(f"ragline: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    from ..server.serve import raise_open_file_limit, tune_collector

    raise_open_file_limit()  # every held stream takes two descriptors
    tune_collector()
    import json
    import os
    import socket

    from ..server.processes import FD_VARIABLE, check_processes, run_processes
    from .ingest import server_file

    workers = args.workers if args.workers is not None else settings.workers
    inherited = os.environ.get(FD_VARIABLE)
    try:
        check_processes(settings, workers)
        if workers > 1 and settings.bot_enabled and settings.teams_mapping:
            from ..teams.members import MappingFile

            MappingFile.load(settings.teams_mapping)  # here once, not in a restart loop
        if workers > 1 and settings.principals_file:
            from ..principal_file import read_principals_file

            read_principals_file(settings.principals_file)  # the same: once, here
        app = None if workers > 1 and inherited is None else create_app(settings)
    except ValueError as exc:  # settings that do not fit together
        print(f"ragline: {exc}", file=sys.stderr)
        return 2
    if inherited is not None:  # one of --workers N: serve on the parent's socket
        assert app is not None
        listener = socket.socket(fileno=int(inherited))
        worker = build_server(app, host=host, port=port)
        worker.freeze_after_startup = True
        try:
            worker.run(sockets=[listener])
        except KeyboardInterrupt:
            return 130
        return 0
    # Tell `ragline ingest` who owns the data directory (Milvus Lite allows one process).
    marker = server_file(settings)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"url": f"http://{host}:{port}", "pid": os.getpid()}))
    if app is None:
        try:
            return run_processes(host, port, workers)
        finally:
            marker.unlink(missing_ok=True)
    server = build_server(app, host=host, port=port)
    server.freeze_after_startup = True
    # uvicorn re-raises the signal it handled once it has shut down; under the default
    # SIGTERM action that would end the process before the marker is removed.
    signal.signal(signal.SIGTERM, _terminated)
    try:
        server.run()
    except KeyboardInterrupt:
        # uvicorn re-raises the SIGINT it handled, once it has shut down cleanly.
        return 130
    except _Terminated:
        # The marker goes first (below), then the process ends as SIGTERM ends it, so
        # that a supervisor sees the status it expects.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        marker.unlink(missing_ok=True)
        signal.raise_signal(signal.SIGTERM)
    finally:
        marker.unlink(missing_ok=True)
    return 0


class _Terminated(BaseException):
    """SIGTERM, re-raised by uvicorn after its shutdown: a way out that runs cleanups."""


def _terminated(number: int, frame: object) -> None:
    raise _Terminated


def _ask(args: argparse.Namespace) -> int:
    import os

    import anyio

    from .ask import ask

    api_key = args.api_key or os.environ.get("RAGLINE_API_KEY")
    result: int = anyio.run(
        lambda: ask(args.question, url=args.url, top_k=args.top_k, api_key=api_key)
    )
    return result


def _ingest(args: argparse.Namespace) -> int:
    import os

    import anyio

    from .ingest import ingest

    api_key = args.api_key or os.environ.get("RAGLINE_API_KEY")
    result: int = anyio.run(
        lambda: ingest(
            [os.path.abspath(p) for p in args.paths],
            collection=args.collection,
            prune=args.prune,
            url=args.url,
            api_key=api_key,
        )
    )
    return result


def _ingest_worker(args: argparse.Namespace) -> int:
    import anyio
    from pydantic import ValidationError

    from ..errors import RagLineError
    from ..logs import configure_logging
    from ..settings import Settings
    from .ingest_worker import work

    try:
        settings = Settings()
    except ValidationError as exc:
        print(f"ragline: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    try:
        result: int = anyio.run(work, settings)
    except RagLineError as exc:  # an engine that is down at start
        print(f"ragline worker: {exc.message}", file=sys.stderr)
        return 1
    return result


def _cluster(args: argparse.Namespace) -> int:
    from pathlib import Path

    import anyio

    from .cluster import run_cluster

    try:
        result: int = anyio.run(
            run_cluster, Path(args.dir), args.replicas, args.workers, args.port, args.milvus
        )
    except ImportError:
        print("ragline cluster: needs the dev extra (pip install 'ragline[dev]')", file=sys.stderr)
        return 2
    return result


def _check(args: argparse.Namespace) -> int:
    from ..checker import main as check

    return check(args.paths)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ragline`` console script."""
    parser = argparse.ArgumentParser(prog="ragline", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the HTTP API")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1, RAGLINE_HOST)")
    serve.add_argument("--port", type=int, help="port to bind (default 8000, RAGLINE_PORT)")
    serve.add_argument(
        "--workers",
        type=int,
        help="server processes on one socket (default 1, RAGLINE_WORKERS); more than one "
        "needs the state they share outside them (docs/DEPLOY.md)",
    )
    serve.set_defaults(func=_serve)
    ask = commands.add_parser("ask", help="stream an answer in the terminal (Ctrl-C stops it)")
    ask.add_argument("question")
    ask.add_argument(
        "--url",
        help="a running ragline server (default: the one that owns the data directory, if "
        "any; else answer in-process)",
    )
    ask.add_argument("--top-k", type=int, default=4, help="chunks to retrieve (default 4)")
    ask.add_argument("--api-key", help="bearer key for --url (default: RAGLINE_API_KEY)")
    ask.set_defaults(func=_ask)
    ingest = commands.add_parser("ingest", help="index files (Ctrl-C stops at a batch boundary)")
    ingest.add_argument("paths", nargs="+", help="files or directories")
    ingest.add_argument("--collection", help="target collection (default: RAGLINE_COLLECTION)")
    ingest.add_argument(
        "--prune", action="store_true", help="remove documents that vanished from these sources"
    )
    ingest.add_argument(
        "--url",
        help="hand the job to this server (default: the one that owns the data directory, if any)",
    )
    ingest.add_argument("--api-key", help="bearer key for the server (default: RAGLINE_API_KEY)")
    ingest.set_defaults(func=_ingest)
    worker = commands.add_parser(
        "worker", help="run ingestion parts from the shared queue (needs RAGLINE_DATABASE_URL)"
    )
    worker.set_defaults(func=_ingest_worker)
    cluster = commands.add_parser(
        "cluster",
        help="try the cluster mode on this machine: PostgreSQL, a Milvus server, replicas, workers",
    )
    cluster.add_argument("--dir", default=".ragline-cluster", help="where everything lives")
    cluster.add_argument("--replicas", type=int, default=2, help="ragline serve processes (2)")
    cluster.add_argument("--workers", type=int, default=1, help="ragline worker processes (1)")
    cluster.add_argument("--port", type=int, default=8001, help="the first replica's port (8001)")
    cluster.add_argument(
        "--milvus",
        choices=("lite", "standalone"),
        default="lite",
        help="lite: `milvus-lite server`; standalone: the real Milvus 2.3 server of the "
        "`milvus` wheel (default: lite)",
    )
    cluster.set_defaults(func=_cluster)
    from .principals import add_arguments

    add_arguments(
        commands.add_parser(
            "principals",
            help="make, list, re-key and remove principals and their keys (docs/DEPLOY.md)",
        )
    )
    from . import teams

    teams.add_arguments(
        commands.add_parser(
            "teams", help="the Teams app package that installs the bot (docs/TEAMS.md)"
        )
    )
    check = commands.add_parser(
        "check", help="find dropped lifetimes and other lifecycle mistakes (docs/CHECK.md)"
    )
    check.add_argument("paths", nargs="*", help="files or directories (default: .)")
    check.set_defaults(func=_check)
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
