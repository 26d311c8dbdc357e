"""``GET /api/v1/feedback``: what users said about the Teams bot's answers, for admins
(anyone else gets the 404 of a route that does not exist), newest first, a page at a
time: ``?limit=`` 1 to 200 (default 50) and ``?before=`` the ``next_before`` of the page
before. Each record carries the answer it rates: the question, the text as sent, the
sources as the model saw them."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..providers.feedback import FeedbackRecord
from .boundary import request_context
from .routing import ADMIN, OBJECT, STR, ApiRoute, Doc, array, obj
from .validation import validate

__all__ = ["FeedbackPage", "routes"]


class FeedbackPage(BaseModel):
    """``GET /api/v1/feedback``'s query: which page."""

    model_config = ConfigDict(allow_inf_nan=False)

    limit: int = Field(50, ge=1, le=200, description="records on the page")
    before: float | None = Field(
        None, description="only feedback given before this time (seconds since the epoch)"
    )


async def listing(request: Request) -> Response:
    """``GET /api/v1/feedback`` → ``{feedback: [...], next_before}``; ``next_before`` is
    null on the last page."""
    ctx = request_context(request.scope)
    page = validate(FeedbackPage, dict(request.query_params))
    found = await ctx.runtime.feedback.feedback(ctx.lifetime, limit=page.limit, before=page.before)
    # A full page may have more after it; a short one is the last.
    more = len(found) == page.limit
    return JSONResponse(
        {
            "feedback": [_public(record) for record in found],
            "next_before": found[-1].at if found and more else None,
        }
    )


def _public(record: FeedbackRecord) -> dict[str, Any]:
    a = record.answer
    return {
        "reaction": record.reaction,
        "text": record.text,
        "user_id": record.user_id,
        "at": record.at,
        "conversation_id": a.conversation_id,
        "activity_id": a.activity_id,
        "answer": {
            "question": a.question,
            "text": a.text,
            "sources": a.sources,
            "model": a.model,
            "cause": a.cause,
            "at": a.at,
        },
    }


_NUMBER = {"type": "number"}
_ANSWER = obj(
    question=STR,
    text=STR,
    sources=array(OBJECT),
    model=STR,
    cause={"type": ["string", "null"]},
    at=_NUMBER,
)
_RECORD = obj(
    reaction={"type": "string", "enum": ["like", "dislike"]},
    text=STR,
    user_id=STR,
    at=_NUMBER,
    conversation_id=STR,
    activity_id=STR,
    answer=_ANSWER,
)
routes = [
    ApiRoute(
        "/api/v1/feedback",
        listing,
        methods=["GET"],
        policy=ADMIN,
        doc=Doc(
            "Feedback on the Teams bot's answers, newest first (admins)",
            "teams",
            query=FeedbackPage,
            result=obj(feedback=array(_RECORD), next_before={"type": ["number", "null"]}),
            errors=(401, 404, 422, 502, 503),
        ),
    ),
]
