"""Fake embedding servers speaking OpenAI's ``/v1/embeddings`` and Cohere's ``/v2/embed``
wire formats, served by uvicorn on a real loopback socket.

Vectors are a deterministic bag of hashed words, so texts sharing words are close.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from conftest import serve_app
from ragline import Lifetime


def vector_for(text: str, dimensions: int) -> list[float]:
    """Hashed bag of words (not normalised: the client must normalise)."""
    out = [0.0] * dimensions
    for word in text.lower().split():
        digest = hashlib.sha256(word.encode()).digest()
        out[int.from_bytes(digest[:4], "big") % dimensions] += 2.0
    out[0] += 0.5  # never the zero vector
    return out


class WordEmbedder:
    """The same bag of hashed words as an in-process embedder: texts that share words
    are close (for tests that need retrieval, not an embedding server)."""

    model, dimensions = "words", 16

    async def embed(
        self, texts: Sequence[str], lifetime: Lifetime, *, kind: str = "document"
    ) -> list[list[float]]:
        return [vector_for(text, self.dimensions) for text in texts]


@dataclass
class FakeEmbeddings:
    """Both APIs at once; ``requests`` records every (path, headers, body)."""

    dimensions: int = 16
    key: str = "test-key"
    fail_with: int | None = None
    delay: float = 0.0  # seconds per request: a slow model, for jobs caught mid-way
    requests: list[tuple[str, dict[str, str], dict[str, Any]]] = field(default_factory=list)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _check(self, request: Request, body: dict[str, Any]) -> JSONResponse | None:
        self.requests.append((request.url.path, dict(request.headers), body))
        if request.headers.get("authorization") != f"Bearer {self.key}":
            return JSONResponse({"message": "invalid api token"}, status_code=401)
        if self.fail_with is not None:
            return JSONResponse({"message": "something broke"}, status_code=self.fail_with)
        return None

    async def openai(self, request: Request) -> JSONResponse:
        body = await request.json()
        if self.delay:
            await anyio.sleep(self.delay)
        if (denied := self._check(request, body)) is not None:
            if denied.status_code == 401:  # OpenAI's error shape
                return JSONResponse(
                    {
                        "error": {
                            "message": "Incorrect API key provided",
                            "type": "invalid_request_error",
                            "code": "invalid_api_key",
                            "param": None,
                        }
                    },
                    status_code=401,
                )
            return denied
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = [
            {"object": "embedding", "index": i, "embedding": vector_for(t, self.dimensions)}
            for i, t in enumerate(texts)
        ]
        data.reverse()  # the API does not promise order: clients must sort by index
        tokens = sum(len(t.split()) for t in texts)
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "model": body["model"],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    async def cohere(self, request: Request) -> JSONResponse:
        body = await request.json()
        if (denied := self._check(request, body)) is not None:
            return denied
        if body.get("input_type") not in {
            "search_query",
            "search_document",
            "classification",
            "clustering",
        }:
            return JSONResponse(
                {"message": "invalid request: input_type is required"}, status_code=400
            )
        if len(body["texts"]) > 96:
            return JSONResponse({"message": "too many texts: at most 96"}, status_code=400)
        vectors = [vector_for(t, self.dimensions) for t in body["texts"]]
        return JSONResponse(
            {
                "id": "3f6c2b0e-embed",
                "embeddings": {"float": vectors},
                "texts": body["texts"],
                "meta": {
                    "api_version": {"version": "2"},
                    "billed_units": {"input_tokens": sum(len(t.split()) for t in body["texts"])},
                },
                "response_type": "embeddings_by_type",
            }
        )

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/embeddings", self.openai, methods=["POST"]),
                Route("/v2/embed", self.cohere, methods=["POST"]),
            ]
        )


@asynccontextmanager
async def embeddings_server(fake: FakeEmbeddings) -> AsyncIterator[FakeEmbeddings]:
    async with serve_app(fake.app()) as base:
        fake.port = int(base.rsplit(":", 1)[1])
        yield fake
