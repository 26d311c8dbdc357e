"""Principals over HTTP: who am I (``GET /api/v1/me``), and for admins, making, listing,
revoking and re-keying principals (on any replica: they live in the shared store)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, StrictBool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .boundary import caller, request_context
from .routing import ADMIN, STR, ApiRoute, Doc, array, obj
from .validation import parse_json, validate

__all__ = ["routes"]


class PrincipalRequest(BaseModel):
    """``POST /api/v1/principals``: a new principal; the answer holds its key, once."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=128)
    groups: list[str] = Field(default_factory=list, max_length=100)
    admin: StrictBool = False  # not lax: "yes" or 1 must not make an administrator


async def me(request: Request) -> Response:
    """``GET /api/v1/me``: the caller's name, groups and role."""
    return JSONResponse(caller(request_context(request.scope)).public())


async def create(request: Request) -> Response:
    """``POST /api/v1/principals`` → 201 ``{name, key, groups, admin}``."""
    ctx = request_context(request.scope)
    body = validate(PrincipalRequest, parse_json(await request.body()))
    principals = ctx.runtime.principals
    key = await principals.create(body.name, body.groups, body.admin, ctx.lifetime)
    made = {"name": body.name, "key": key, "groups": sorted(set(body.groups)), "admin": body.admin}
    return JSONResponse(made, status_code=201, headers={"cache-control": "no-store"})


async def listing(request: Request) -> Response:
    """``GET /api/v1/principals``: every principal, stored or declared in the principals
    file (``declared``), without keys."""
    ctx = request_context(request.scope)
    return JSONResponse({"principals": await ctx.runtime.principals.listing(ctx.lifetime)})


async def revoke(request: Request) -> Response:
    """``DELETE /api/v1/principals/{name}``: its key is refused everywhere within 5 s."""
    ctx = request_context(request.scope)
    name = request.path_params["name"]
    await ctx.runtime.principals.revoke(name, ctx.lifetime)
    return JSONResponse({"name": name, "revoked": True})


async def rotate(request: Request) -> Response:
    """``POST /api/v1/principals/{name}/keys`` → 201 ``{name, key}``: the old key stops
    working."""
    ctx = request_context(request.scope)
    name = request.path_params["name"]
    key = await ctx.runtime.principals.rotate(name, ctx.lifetime)
    return JSONResponse(
        {"name": name, "key": key}, status_code=201, headers={"cache-control": "no-store"}
    )


_PRINCIPAL = obj(name=STR, groups=array(STR), admin={"type": "boolean"})
_LISTED = obj(name=STR, groups=array(STR), admin={"type": "boolean"}, declared={"type": "boolean"})
_KEYED = obj(name=STR, key=STR, groups=array(STR), admin={"type": "boolean"})
routes = [
    ApiRoute(
        "/api/v1/me",
        me,
        methods=["GET"],
        doc=Doc("Who the caller is", "principals", result=_PRINCIPAL, errors=(401,)),
    ),
    ApiRoute(
        "/api/v1/principals",
        create,
        methods=["POST"],
        policy=ADMIN,
        doc=Doc(
            "Make a principal (admins); its key is shown once",
            "principals",
            body=PrincipalRequest,
            ok=201,
            result=_KEYED,
            errors=(400, 401, 404, 409, 422),
        ),
    ),
    ApiRoute(
        "/api/v1/principals",
        listing,
        methods=["GET"],
        policy=ADMIN,
        doc=Doc(
            "Every principal, without keys (admins)",
            "principals",
            result=obj(principals=array(_LISTED)),
            errors=(401, 404),
        ),
    ),
    ApiRoute(
        "/api/v1/principals/{name}",
        revoke,
        methods=["DELETE"],
        policy=ADMIN,
        doc=Doc(
            "Revoke a principal and its key (admins)",
            "principals",
            result=obj(name=STR, revoked={"type": "boolean"}),
            errors=(401, 404, 409),
        ),
    ),
    ApiRoute(
        "/api/v1/principals/{name}/keys",
        rotate,
        methods=["POST"],
        policy=ADMIN,
        doc=Doc(
            "Give a principal a new key (admins); the old one stops working",
            "principals",
            ok=201,
            result=obj(name=STR, key=STR),
            errors=(401, 404, 409),
        ),
    ),
]
