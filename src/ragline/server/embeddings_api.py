"""An OpenAI-compatible ``POST /v1/embeddings`` over the configured embedder.

Compatible enough that the official ``openai`` SDK (``client.embeddings.create``) and
LangChain's ``OpenAIEmbeddings`` work unchanged: ``input`` is a string or a list of
strings, ``encoding_format`` is ``float`` or ``base64`` (the SDK asks for base64 unless
told otherwise), and ``dimensions`` may only repeat the embedder's own. Every invalid
request answers 400, as OpenAI's does, so SDKs raise their ``BadRequestError``.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Sequence
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError
from starlette.requests import Request
from starlette.responses import Response

from ..errors import InvalidRequest, NotFound
from ..providers import Embedder
from ..providers.prompt import rough_tokens
from .boundary import RequestContext, request_context
from .errors import error_body, status_for
from .routing import OBJECT, ApiRoute, Doc
from .validation import parse_json, validate

__all__ = ["MAX_INPUTS", "EmbeddingRequest", "routes"]

MAX_INPUTS = 2048
"""The most texts one request may embed (OpenAI's own bound)."""


class EmbeddingRequest(BaseModel):
    """The subset of OpenAI's embeddings request that ragline honours."""

    model_config = ConfigDict(extra="ignore")

    model: str
    input: str | list[str] = Field(
        description=f"A text, or a list of 1 to {MAX_INPUTS} texts, none of them empty "
        "(token arrays are not supported)"
    )
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None  # accepted and ignored, as the SDKs send it

    @field_validator("input", mode="before")
    @classmethod
    def _text_only(cls, value: Any) -> Any:
        # Said plainly here: the union's own errors would name every branch it tried.
        # LangChain sends tiktoken ids unless told not to: ids of OpenAI's tokenizer,
        # meaningless to any other model, so they cannot be decoded and embedded.
        texts = value if isinstance(value, list) else [value]
        if not all(isinstance(text, str) for text in texts):
            raise PydanticCustomError(
                "text_input",
                "must be a string or a list of strings (token arrays are not supported: "
                "send the text itself; LangChain's OpenAIEmbeddings does with "
                "check_embedding_ctx_length=False)",
            )
        return value

    @field_validator("input")
    @classmethod
    def _bounded(cls, value: str | list[str]) -> str | list[str]:
        texts = [value] if isinstance(value, str) else value
        if not texts:
            raise PydanticCustomError("empty_input", "needs at least one text")
        if len(texts) > MAX_INPUTS:
            raise PydanticCustomError(
                "too_many_inputs",
                "{count} texts, at most {limit} in one request",
                {"count": len(texts), "limit": MAX_INPUTS},
            )
        for index, text in enumerate(texts):
            if not text:
                raise PydanticCustomError("empty_text", "text {index} is empty", {"index": index})
        # The total size needs no check of its own: the boundary bounds the body
        # (RAGLINE_MAX_BODY_BYTES, 413), and a JSON string is never shorter than its text.
        return value

    def texts(self) -> list[str]:
        """The input as a list of texts."""
        return [self.input] if isinstance(self.input, str) else self.input


def _bad_request(exc: InvalidRequest) -> Response:
    """OpenAI's 400 for an invalid request (ragline's routes answer most with 422), but
    the 413 of a body too large stays a 413."""
    status = status_for(exc)
    status = 400 if status == 422 else status
    return _json(error_body(status, exc.code, exc.message, param=exc.param), status)


def _json(data: dict[str, Any], status: int = 200) -> Response:
    # orjson: thousands of vectors of a thousand floats each would hold the event loop
    # for a noticeable while in the standard library's encoder.
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def _embedder(ctx: RequestContext) -> Embedder:
    embedder = ctx.runtime.pipeline.embedder
    if embedder is None:
        raise NotFound(
            "this server serves no embedding model: retrieval is off (RAGLINE_RETRIEVAL)",
            code="no_retrieval",
        )
    return embedder


def _base64(vector: Sequence[float]) -> str:
    """Little-endian float32 bytes, base64-encoded: what OpenAI sends for ``base64``."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


async def embeddings(request: Request) -> Response:
    """``POST /v1/embeddings``: one vector per input text, in the order given."""
    ctx = request_context(request.scope)
    try:
        body = validate(EmbeddingRequest, parse_json(await request.body()))
    except InvalidRequest as exc:
        return _bad_request(exc)
    embedder = _embedder(ctx)
    if body.model != embedder.model:
        raise NotFound(
            f"model {body.model!r} does not exist; this server embeds with {embedder.model!r}",
            code="model_not_found",
        )
    if body.dimensions is not None and body.dimensions != embedder.dimensions:
        return _bad_request(
            InvalidRequest(
                f"dimensions {body.dimensions} is not supported: {embedder.model!r} "
                f"embeds in {embedder.dimensions} dimensions only",
                param="dimensions",
                code="invalid_request",
            )
        )
    texts = body.texts()
    # No embedder exposes its tokenizer (the Embedder protocol has no way to count), so
    # usage is the same estimate the prompt composer falls back on: about 4 chars a token.
    tokens = sum(rough_tokens(text) for text in texts)
    attributes: dict[str, str | int] = {
        "gen_ai.operation.name": "embeddings",
        "gen_ai.request.model": embedder.model,
        "gen_ai.embeddings.dimension.count": embedder.dimensions,
        "gen_ai.usage.input_tokens": tokens,
    }
    span = ctx.runtime.tracing.span(f"embeddings {embedder.model}", ctx.lifetime, attributes)
    # Under the request's lifetime: a client that hangs up cancels the embedding.
    with span, ctx.lifetime.child("embed") as stage:
        # "document": OpenAI has one kind of embedding, and its callers mostly index.
        vectors = await embedder.embed(texts, stage, kind="document")
    as_base64 = body.encoding_format == "base64"
    return _json(
        {
            "object": "list",
            "data": [
                {
                    "object": "embedding",
                    "index": i,
                    "embedding": _base64(vector) if as_base64 else vector,
                }
                for i, vector in enumerate(vectors)
            ],
            "model": embedder.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )


routes = [
    ApiRoute(
        "/v1/embeddings",
        embeddings,
        methods=["POST"],
        doc=Doc(
            "OpenAI-compatible embeddings with the configured embedder",
            "openai",
            body=EmbeddingRequest,
            result=OBJECT,
            errors=(400, 401, 404, 413, 502, 503, 504),
        ),
    ),
]
