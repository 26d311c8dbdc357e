"""Someone else's FastAPI app: a proxy to an OpenAI-compatible upstream, written the plain
way, with ragline's middleware added in one line (or not, as the control).

    ADOPT_UPSTREAM=http://127.0.0.1:P/v1 ADOPT_MIDDLEWARE=1 uvicorn adopt_app:app
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Annotated, Any

import httpx
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.middleware.base import BaseHTTPMiddleware

from ragline import Lifetime, RaglineMiddleware, StageTimeout, request_lifetime

RequestLifetime = Annotated[Lifetime, Depends(request_lifetime)]


def make_app(upstream: str, *, middleware: bool) -> FastAPI:
    http = httpx.AsyncClient(base_url=upstream, timeout=httpx.Timeout(60.0))
    app = FastAPI()

    async def tagged(request: Request, call_next: Any) -> Any:
        # A BaseHTTPMiddleware of the app's own: the kind that hides http.disconnect.
        response = await call_next(request)
        response.headers["x-app"] = "adopt"
        return response

    app.add_middleware(BaseHTTPMiddleware, dispatch=tagged)

    @app.post("/whole")
    async def whole(request: Request) -> JSONResponse:
        body = await request.json()
        answer = await http.post("/chat/completions", json=body)
        return JSONResponse({"bytes": len(answer.content)})

    @app.post("/stream")
    async def stream(request: Request) -> StreamingResponse:
        body = await request.json()

        async def relay() -> AsyncIterator[bytes]:
            async with http.stream("POST", "/chat/completions", json=body) as answer:
                async for chunk in answer.aiter_raw():
                    yield chunk

        return StreamingResponse(relay(), media_type="text/event-stream")

    if middleware:

        @app.post("/staged")
        async def staged(request: Request, lifetime: RequestLifetime) -> Any:
            body = await request.json()
            try:
                with lifetime.child("upstream", timeout=float(body.pop("timeout"))):
                    answer = await http.post("/chat/completions", json=body)
            except StageTimeout as exc:
                return JSONResponse({"timeout": str(exc), "cancelled": lifetime.cancelled})
            return JSONResponse({"bytes": len(answer.content)})

        # The one line: added last, so that it is the outermost.
        app.add_middleware(RaglineMiddleware)
    return app


app = make_app(
    os.environ.get("ADOPT_UPSTREAM", "http://127.0.0.1:9/v1"),
    middleware=os.environ.get("ADOPT_MIDDLEWARE", "1") == "1",
)
