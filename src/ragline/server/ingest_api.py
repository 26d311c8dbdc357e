"""Ingestion jobs and collections over HTTP."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..access import admin_cancel, owned
from ..documents import read_acl
from ..errors import Forbidden, InvalidRequest, NotFound
from ..jobs import JobInput, Jobs, missing_job
from ..models import CollectionName
from .boundary import caller, request_context
from .routing import OBJECT, STR, ApiRoute, Doc, Policy, array, obj
from .validation import parse_json, validate

__all__ = ["routes"]


class Acl(BaseModel):
    """Who may read a document: ``user:NAME``, ``group:NAME`` (``*``: every reader of
    its collection). It narrows the collection's grant, never widens it."""

    model_config = ConfigDict(extra="forbid")

    read: list[str] = Field(max_length=1_000)


class _Document(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: Annotated[str, StringConstraints(min_length=1, max_length=512)]
    text: str
    metadata: dict[str, Any] = Field(default_factory=dict)
    acl: Acl | None = None


class IngestRequest(BaseModel):
    """JSON documents and/or server-side paths (under the configured roots)."""

    model_config = ConfigDict(extra="forbid")

    documents: list[_Document] = Field(default_factory=list, max_length=100_000)
    paths: list[str] = Field(default_factory=list, max_length=1_000)
    collection: CollectionName | None = None
    prune: bool = False
    acl: Acl | None = None  # for the job's paths, and documents without an ACL of their own


class AccessRequest(BaseModel):
    """``PUT /api/v1/collections/{name}/access``: who may read and who may write."""

    model_config = ConfigDict(extra="forbid")

    read: list[str] = Field(default_factory=list, max_length=1_000)
    write: list[str] = Field(default_factory=list, max_length=1_000)


def _acl(acl: Acl | None) -> list[str]:
    return list(read_acl(acl.model_dump() if acl is not None else None))


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
                "acl": parse_json(fields["acl"].encode()) if fields.get("acl") else None,
            },
        )
        if not uploads:
            raise InvalidRequest("no files in the upload (field name: files)", param="files")
    else:
        body = validate(IngestRequest, parse_json(await request.body()))
        if not body.documents and not body.paths:
            raise InvalidRequest("nothing to ingest: give documents or paths", param="documents")
    principal = caller(ctx)
    if body.paths and not principal.admin:
        # Files on the server are the server's: only an admin may hand them to a job.
        raise Forbidden("ingesting server-side paths needs an admin", code="paths_need_admin")
    paths = [jobs.allowed_path(p) for p in body.paths]
    documents = [
        {**d.model_dump(exclude={"acl"}), "acl": {"read": _acl(d.acl)} if d.acl else None}
        for d in body.documents
    ]
    name = await ctx.runtime.grants.check_write(principal, body.collection, ctx.lifetime)
    job = JobInput(
        name,
        body.prune,
        paths=paths,
        documents=documents,
        uploads=uploads,
        owner=principal.name,
        acl=_acl(body.acl),
    )
    job_id = await jobs.submit(ctx.lifetime, job)
    return JSONResponse({"job_id": job_id}, status_code=202)


async def _owned_job(request: Request) -> dict[str, Any]:
    ctx = request_context(request.scope)
    job_id = request.path_params["job_id"]
    found = await _jobs(request).status(ctx.lifetime, job_id)
    owned(caller(ctx), found.get("owner"), missing_job(job_id))
    return found


async def status(request: Request) -> Response:
    """``GET /api/v1/ingest/{job_id}``: the caller's own job (admins: any)."""
    return JSONResponse(await _owned_job(request))


async def cancel(request: Request) -> Response:
    """``DELETE /api/v1/ingest/{job_id}``: stop at the next batch boundary."""
    ctx = request_context(request.scope)
    job_id = request.path_params["job_id"]
    admin_cancel(caller(ctx), (await _owned_job(request)).get("owner"), "job", job_id)
    found = await _jobs(request).cancel(ctx.lifetime, job_id)
    return JSONResponse(found, status_code=202)


async def _readable_collections(request: Request) -> list[dict[str, Any]]:
    ctx = request_context(request.scope)
    runtime = ctx.runtime
    if runtime.jobs is None:
        return []
    found = await runtime.records.collections(ctx.lifetime)
    return await runtime.grants.visible(caller(ctx), found, ctx.lifetime)


async def collections(request: Request) -> Response:
    """``GET /api/v1/collections``: the ones the caller may read."""
    return JSONResponse({"collections": await _readable_collections(request)})


async def collection(request: Request) -> Response:
    """``GET /api/v1/collections/{name}``."""
    name = request.path_params["name"]
    for item in await _readable_collections(request):
        if item["name"] == name:
            return JSONResponse(item)
    raise NotFound(f"no collection {name!r}", code="collection_not_found")


async def set_access(request: Request) -> Response:
    """``PUT /api/v1/collections/{name}/access``: its owner or an admin says who may
    read and write it."""
    ctx = request_context(request.scope)
    name = validate(_Name, {"name": request.path_params["name"]}).name
    body = validate(AccessRequest, parse_json(await request.body()))
    grant = await ctx.runtime.grants.set_access(
        caller(ctx), name, body.read, body.write, ctx.lifetime
    )
    return JSONResponse({"collection": name, **grant.public()})


async def get_access(request: Request) -> Response:
    """``GET /api/v1/collections/{name}/access``: for whoever may read it."""
    ctx = request_context(request.scope)
    name = request.path_params["name"]
    grant = await ctx.runtime.grants.grant(name, ctx.lifetime)
    grant.check(caller(ctx), "read", name)
    return JSONResponse({"collection": name, **grant.public()})


class _Name(BaseModel):
    name: CollectionName


_NULLABLE = {"type": ["string", "null"]}
_JOB = obj(
    job_id=STR,
    state={"enum": ["queued", "running", "succeeded", "failed", "cancelled"]},
    collection=STR,
    progress={"type": ["object", "null"]},
    error=_NULLABLE,
    cause=_NULLABLE,
)
_ACCESS = obj(collection=STR, read=array(STR), write=array(STR), creator=_NULLABLE)
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
            form=obj(files=array(_FILE), collection=STR, prune=STR, acl=STR),
            ok=202,
            result=obj(job_id=STR),
            errors=(400, 401, 403, 404, 413, 422, 503),
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
    ApiRoute(
        "/api/v1/collections/{name}/access",
        set_access,
        methods=["PUT"],
        doc=Doc(
            "Set who may read and write a collection",
            "documents",
            body=AccessRequest,
            result=_ACCESS,
            errors=(400, 401, 403, 404, 422),
        ),
    ),
    ApiRoute(
        "/api/v1/collections/{name}/access",
        get_access,
        methods=["GET"],
        doc=Doc(
            "Who may read and write a collection", "documents", result=_ACCESS, errors=(401, 404)
        ),
    ),
]
