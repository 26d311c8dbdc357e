"""The ``ragline`` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _serve(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from .logs import configure_logging
    from .server import build_server, create_app
    from .settings import Settings

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
    server = build_server(create_app(settings), host=host, port=port)
    try:
        server.run()
    except KeyboardInterrupt:
        # uvicorn re-raises the SIGINT it handled, once it has shut down cleanly.
        return 130
    return 0


def _ask(args: argparse.Namespace) -> int:
    import os

    import anyio

    from .ask import ask

    api_key = args.api_key or os.environ.get("RAGLINE_API_KEY")
    result: int = anyio.run(
        lambda: ask(args.question, url=args.url, top_k=args.top_k, api_key=api_key)
    )
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ragline`` console script."""
    parser = argparse.ArgumentParser(prog="ragline", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the HTTP API")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1, RAGLINE_HOST)")
    serve.add_argument("--port", type=int, help="port to bind (default 8000, RAGLINE_PORT)")
    serve.set_defaults(func=_serve)
    ask = commands.add_parser("ask", help="stream an answer in the terminal (Ctrl-C stops it)")
    ask.add_argument("question")
    ask.add_argument("--url", help="a running ragline server (default: answer in-process)")
    ask.add_argument("--top-k", type=int, default=4, help="chunks to retrieve (default 4)")
    ask.add_argument("--api-key", help="bearer key for --url (default: RAGLINE_API_KEY)")
    ask.set_defaults(func=_ask)
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
