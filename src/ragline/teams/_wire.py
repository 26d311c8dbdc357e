"""Small readers of the Connector's answers."""

from __future__ import annotations

import email.utils
import time

import httpx

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
    """Seconds to wait from a ``Retry-After`` header (seconds or an HTTP date)."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return min(max(seconds, 0.0), cap)
