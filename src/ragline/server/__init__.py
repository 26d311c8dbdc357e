"""The HTTP boundary: ASGI app, routes and the uvicorn runner."""

from __future__ import annotations

from .app import create_app
from .serve import Server, build_server

__all__ = ["Server", "build_server", "create_app"]
