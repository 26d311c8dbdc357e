"""``POST /api/messages``: the Teams webhook.

The bearer token is checked before anything else happens (401, nothing processed). An
authenticated activity is answered 202 at once and its turn runs afterwards, detached
from this request; an ``invoke`` is answered with its handler's response.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..errors import NotFound, Unauthorized
from ..teams.activity import Activity
from .boundary import request_context
from .routing import OBJECT, ApiRoute, Doc, Policy
from .validation import parse_json, validate

__all__ = ["routes"]


async def messages(request: Request) -> Response:
    """Receive one activity from the Bot Connector (or a local playground)."""
    ctx = request_context(request.scope)
    channel = ctx.runtime.teams
    if channel is None:
        raise NotFound(
            "the Teams channel is not configured: set RAGLINE_BOT_APP_ID and "
            "RAGLINE_BOT_APP_PASSWORD (or RAGLINE_BOT_AUTH=off for local development)",
            code="bot_not_configured",
        )
    authorization = request.headers.get("authorization")
    if channel.authenticator is not None and not authorization:
        raise Unauthorized("missing bot token")
    # The token first: a caller without one learns nothing of what the body should be.
    token = await channel.authenticate(authorization, ctx.lifetime)
    activity = validate(Activity, parse_json(await request.body()))
    channel.bind(token, activity)
    response = await channel.receive(activity, ctx.lifetime)
    if response is None:
        return Response(status_code=202)
    if response.body is None:
        return Response(status_code=response.status)
    return JSONResponse(response.body, status_code=response.status)


# The Bot Framework's JWT is this route's credential, checked in the handler.
routes = [
    ApiRoute(
        "/api/messages",
        messages,
        methods=["POST"],
        policy=Policy(auth="own"),
        doc=Doc(
            "The Microsoft Teams bot webhook (JWT from the Bot Framework)",
            "teams",
            body=OBJECT,
            ok=202,
            result=OBJECT,
            errors=(400, 401, 404, 413, 422, 503),
        ),
    )
]
