"""Small readers of the Connector's answers."""

from __future__ import annotations

import httpx

from ..providers._transport import retry_after_seconds

__all__ = ["error_of", "retry_after"]


def error_of(response: httpx.Response) -> tuple[str, str]:
    """``(code, message)`` of a ``{"error": {"code", "message"}}`` answer."""
    try:
        payload = response.json()
    except ValueError:
        return "", response.text[:200]
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict):
        return str(error.get("code") or ""), str(error.get("message") or "")
    return "", str(payload)[:200]


def retry_after(response: httpx.Response, *, cap: float = 60.0) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds or an HTTP date), at most
    ``cap``."""
    seconds = retry_after_seconds(response.headers.get("retry-after"))
    return None if seconds is None else min(seconds, cap)
