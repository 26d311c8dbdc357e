"""Ingestion jobs and collections over HTTP."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..errors import InvalidRequest, NotFound
from ..jobs import JobInput, Jobs
from ..models import CollectionName
from .boundary import request_context
from .routing import OBJECT, STR, ApiRoute, Doc, Policy, array, obj
from .validation import parse_json, validate

__all__ = ["routes"]


class _Document(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: Annotated[str, StringConstraints(min_length=1, max_length=512)]
    text: str
    metadata: dict[str, Any] = Field(default_factory=dict)


class IngestRequest(BaseModel):
    """JSON documents and/or server-side paths (under the configured roots)."""

    model_config = ConfigDict(extra="forbid")

    documents: list[_Document] = Field(default_factory=list, max_length=100_000)
    paths: list[str] = Field(default_factory=list, max_length=1_000)
    collection: CollectionName | None = None
    prune: bool = False


def _jobs(request: Request) -> Jobs:
    jobs = request_context(request.scope).runtime.jobs
    if jobs is None:
        raise InvalidRequest(
            "ingestion needs retrieval to be on (RAGLINE_RETRIEVAL)", code="no_retrieval"
        )
    return jobs


async def submit(request: Request) -> Response:
    """``POST /api/v1/ingest`` (JSON or multipart upload) → 202 ``{job_id}``."""
    ctx = request_context(request.scope)
    jobs = _jobs(request)
    content_type = request.headers.get("content-type", "")
    uploads: list[tuple[str, bytes]] = []
    if content_type.startswith("multipart/form-data"):
        async with request.form(max_files=10_000, max_fields=100) as form:
            for value in form.getlist("files"):
                if isinstance(value, UploadFile):
                    uploads.append((value.filename or "upload", await value.read()))
            fields = {k: v for k, v in form.items() if isinstance(v, str)}
        body = validate(
            IngestRequest,
            {
                "collection": fields.get("collection") or None,
                "prune": fields.get("prune", "false").lower() in {"1", "true", "yes"},
            },
        )
        if not uploads:
            raise InvalidRequest("no files in the upload (field name: files)", param="files")
    else:
        body = validate(IngestRequest, parse_json(await request.body()))
        if not body.documents and not body.paths:
            raise InvalidRequest("nothing to ingest: give documents or paths", param="documents")
    paths = [jobs.allowed_path(p) for p in body.paths]
    job = JobInput(
        body.collection,
        body.prune,
        paths=paths,
        documents=[d.model_dump() for d in body.documents],
        uploads=uploads,
    )
    job_id = await jobs.submit(ctx.lifetime, job)
    return JSONResponse({"job_id": job_id}, status_code=202)


async def status(request: Request) -> Response:
    """``GET /api/v1/ingest/{job_id}``."""
    ctx = request_context(request.scope)
    return JSONResponse(await _jobs(request).status(ctx.lifetime, request.path_params["job_id"]))


async def cancel(request: Request) -> Response:
    """``DELETE /api/v1/ingest/{job_id}``: stop at the next batch boundary."""
    ctx = request_context(request.scope)
    found = await _jobs(request).cancel(ctx.lifetime, request.path_params["job_id"])
    return JSONResponse(found, status_code=202)


async def collections(request: Request) -> Response:
    """``GET /api/v1/collections``."""
    runtime = request_context(request.scope).runtime
    if runtime.jobs is None:
        return JSONResponse({"collections": []})
    found = await runtime.records.collections(request_context(request.scope).lifetime)
    return JSONResponse({"collections": found})


async def collection(request: Request) -> Response:
    """``GET /api/v1/collections/{name}``."""
    name = request.path_params["name"]
    runtime = request_context(request.scope).runtime
    found: list[dict[str, Any]] = []
    if runtime.jobs is not None:
        found = await runtime.records.collections(request_context(request.scope).lifetime)
    for item in found:
        if item["name"] == name:
            return JSONResponse(item)
    raise NotFound(f"no collection {name!r}", code="collection_not_found")


_NULLABLE = {"type": ["string", "null"]}
_JOB = obj(
    job_id=STR,
    state={"enum": ["queued", "running", "succeeded", "failed", "cancelled"]},
    collection=STR,
    progress={"type": ["object", "null"]},
    error=_NULLABLE,
    cause=_NULLABLE,
)
_FILE = {"type": "string", "contentMediaType": "application/octet-stream"}
routes = [
    ApiRoute(
        "/api/v1/ingest",
        submit,
        methods=["POST"],
        policy=Policy(upload=True),
        doc=Doc(
            "Start an ingestion job (JSON or multipart upload)",
            "documents",
            body=IngestRequest,
            form=obj(files=array(_FILE), collection=STR, prune=STR),
            ok=202,
            result=obj(job_id=STR),
            errors=(400, 401, 413, 422, 503),
        ),
    ),
    ApiRoute(
        "/api/v1/ingest/{job_id}",
        status,
        methods=["GET"],
        doc=Doc("A job's state and progress", "documents", result=_JOB, errors=(401, 404, 422)),
    ),
    ApiRoute(
        "/api/v1/ingest/{job_id}",
        cancel,
        methods=["DELETE"],
        doc=Doc(
            "Stop a job at its next batch boundary",
            "documents",
            ok=202,
            result=_JOB,
            errors=(401, 404, 422),
        ),
    ),
    ApiRoute(
        "/api/v1/collections",
        collections,
        methods=["GET"],
        doc=Doc(
            "Every collection with its counts",
            "documents",
            result=obj(collections=array(OBJECT)),
            errors=(401,),
        ),
    ),
    ApiRoute(
        "/api/v1/collections/{name}",
        collection,
        methods=["GET"],
        doc=Doc("One collection", "documents", result=OBJECT, errors=(401, 404)),
    ),
]
