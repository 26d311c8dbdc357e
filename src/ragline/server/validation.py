"""Turning request bodies and query strings into validated models, with clear 4xx errors."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from ..errors import InvalidRequest

__all__ = ["parse_json", "validate"]

M = TypeVar("M", bound=BaseModel)


def parse_json(body: bytes) -> Any:
    """Decode a JSON body or raise :class:`InvalidRequest` (400)."""
    if not body.strip():
        raise InvalidRequest("request body is empty; expected a JSON object", code="malformed_json")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(
            f"request body is not valid JSON: {exc}", code="malformed_json"
        ) from None
    except RecursionError:
        # The decoder's own guard against deep nesting (about a thousand levels).
        raise InvalidRequest(
            "request body is nested too deeply to be a request", code="malformed_json"
        ) from None


def validate(model: type[M], data: Any) -> M:
    """Validate ``data`` against ``model`` or raise :class:`InvalidRequest` (422) naming the
    first bad field."""
    if not isinstance(data, dict):
        raise InvalidRequest("expected a JSON object", code="invalid_request")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"]) or None
        message = f"{where}: {first['msg']}" if where else str(first["msg"])
        count = exc.error_count()
        if count > 1:
            message += f" (and {count - 1} more)"
        raise InvalidRequest(message, param=where, code="invalid_request") from None
