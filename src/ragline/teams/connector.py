"""The Bot Connector client: the bot's token, and reply, send and update.

Throttling (429) and precondition failures (412) are rejections: nothing was applied, so
they are retried with exponential backoff and jitter, honouring ``Retry-After``. A 502 or
504, or a connection lost after the request was sent, may hide a request that *was*
applied; such a request is repeated only when repeating it cannot duplicate anything (an
update, a stream chunk carrying its sequence number). Otherwise the caller gets a
:class:`ConnectorError` with ``uncertain=True`` and chooses a safe way on: a stream's
final message becomes an update of the streamed message, a plain reply is not repeated.
"""

from __future__ import annotations

import logging
import time
from typing import Any
from urllib.parse import quote

import anyio
import httpx
import stamina

from ..errors import UpstreamError
from ..lifetime import Lifetime
from ..metrics import Metrics
from ._wire import error_of, retry_after

__all__ = ["ConnectorClient", "ConnectorError", "TokenSource"]

log = logging.getLogger("ragline.teams")

_REJECTED = frozenset({429, 412})  # not applied: always safe to repeat
_AMBIGUOUS = frozenset({502, 504})  # may have been applied


class ConnectorError(UpstreamError):
    """The Connector refused or failed a request."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None,
        code: str = "",
        retry_after: float | None = None,
        uncertain: bool = False,
        not_sent: bool = False,
    ) -> None:
        super().__init__(message, status=status)
        self.error_code = code
        self.retry_after = retry_after
        self.uncertain = uncertain  # the request may have been applied all the same
        self.not_sent = not_sent  # the request never left: nothing can have been applied

    @property
    def rejected(self) -> bool:
        """Certainly not applied: repeating the request is always safe."""
        return self.not_sent or self.status in _REJECTED


class TokenSource:
    """The bot's client-credentials token, cached until shortly before it expires.

    Concurrent callers share one refresh.
    """

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        token_url: str,
        app_id: str,
        password: str,
        scope: str,
        margin: float = 300.0,
    ) -> None:
        self._client = client
        self.token_url = token_url
        self._form = {
            "grant_type": "client_credentials",
            "client_id": app_id,
            "client_secret": password,
            "scope": scope,
        }
        self._margin = margin
        self._token: str | None = None
        self._good_until = 0.0
        self._lock = anyio.Lock()
        self.refreshes = 0

    async def token(self, lifetime: Lifetime) -> str:
        """A token valid for a while yet."""
        if self._token is not None and time.monotonic() < self._good_until:
            return self._token
        async with self._lock:
            if self._token is None or time.monotonic() >= self._good_until:
                await self._refresh(lifetime)
            assert self._token is not None
            return self._token

    def invalidate(self) -> None:
        """Forget the cached token (the Connector refused it)."""
        self._token = None

    async def _refresh(self, lifetime: Lifetime) -> None:
        await lifetime.checkpoint()
        asked = time.monotonic()
        try:
            response = await self._client.post(self.token_url, data=self._form)
        except httpx.HTTPError as exc:
            raise UpstreamError(f"bot token: {type(exc).__name__}: {exc}") from None
        if response.status_code != 200:
            raise UpstreamError(
                f"bot token: the token endpoint answered {response.status_code}",
                status=response.status_code,
            )
        try:
            payload = response.json()
            token = str(payload["access_token"])
            lifetime_s = float(payload.get("expires_in", 3600))
        except (ValueError, KeyError, TypeError):
            raise UpstreamError("bot token: malformed answer from the token endpoint") from None
        margin = min(self._margin, lifetime_s / 2)
        self._token = token
        self._good_until = asked + lifetime_s - margin
        self.refreshes += 1


class ConnectorClient:
    """Posts activities to a conversation's ``serviceUrl``. See the module docstring."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        tokens: TokenSource | None,
        metrics: Metrics,
        *,
        attempts: int = 5,
        retry_timeout: float = 30.0,
        wait_initial: float = 0.5,
        wait_max: float = 8.0,
    ) -> None:
        self._client = client
        self.tokens = tokens  # None: an unauthenticated connector (local playground)
        self._metrics = metrics
        self._retry = {
            "attempts": attempts,
            "timeout": retry_timeout,
            "wait_initial": wait_initial,
            "wait_max": wait_max,
            "wait_jitter": wait_initial,
        }

    async def reply(
        self,
        service_url: str,
        conversation_id: str,
        reply_to_id: str,
        activity: dict[str, Any],
        lifetime: Lifetime,
        *,
        repeatable: bool = False,
    ) -> str | None:
        """``POST …/activities/{replyToId}``: the new activity's id, if the Connector
        gave one. ``repeatable``: repeating the request cannot duplicate anything."""
        url = _url(service_url, conversation_id, reply_to_id)
        return await self._call("reply", "POST", url, activity, lifetime, repeatable)

    async def send(
        self,
        service_url: str,
        conversation_id: str,
        activity: dict[str, Any],
        lifetime: Lifetime,
        *,
        repeatable: bool = False,
    ) -> str | None:
        """``POST …/activities``: a new activity in the conversation."""
        url = _url(service_url, conversation_id)
        return await self._call("send", "POST", url, activity, lifetime, repeatable)

    async def update(
        self,
        service_url: str,
        conversation_id: str,
        activity_id: str,
        activity: dict[str, Any],
        lifetime: Lifetime,
    ) -> str | None:
        """``PUT …/activities/{id}``: replace an activity. Idempotent, so always retried."""
        url = _url(service_url, conversation_id, activity_id)
        body = {**activity, "id": activity_id}
        return await self._call("update", "PUT", url, body, lifetime, True)

    async def _call(
        self,
        operation: str,
        method: str,
        url: str,
        body: dict[str, Any],
        lifetime: Lifetime,
        repeatable: bool,
    ) -> str | None:
        def retry_on(exc: BaseException) -> bool | float:
            if isinstance(exc, ConnectorError):
                if exc.rejected:
                    return exc.retry_after if exc.retry_after is not None else True
                if exc.status == 401 and self.tokens is not None:
                    return True  # the token was refused: fetch a new one, once more
                return exc.uncertain and repeatable
            return False

        async for attempt in stamina.retry_context(on=retry_on, **self._retry):  # type: ignore[arg-type]
            with attempt:
                return await self._once(operation, method, url, body, lifetime)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _once(
        self, operation: str, method: str, url: str, body: dict[str, Any], lifetime: Lifetime
    ) -> str | None:
        await lifetime.checkpoint()
        headers = {}
        if self.tokens is not None:
            headers["authorization"] = f"Bearer {await self.tokens.token(lifetime)}"
        counter = self._metrics.connector_requests
        try:
            response = await self._client.request(method, url, json=body, headers=headers)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            counter.labels(operation, "0").inc()
            raise ConnectorError(
                f"connector {operation}: unreachable: {type(exc).__name__}",
                status=None,
                not_sent=True,
            ) from None
        except httpx.HTTPError as exc:
            counter.labels(operation, "0").inc()
            self._metrics.connector_uncertain.labels(operation).inc()
            raise ConnectorError(
                f"connector {operation}: no answer: {type(exc).__name__}",
                status=None,
                uncertain=True,
            ) from None
        status = response.status_code
        counter.labels(operation, str(status)).inc()
        if status >= 400:
            code, message = error_of(response)
            if status == 401 and self.tokens is not None:
                self.tokens.invalidate()
            uncertain = status in _AMBIGUOUS
            if uncertain:
                self._metrics.connector_uncertain.labels(operation).inc()
            log.info(
                "connector %s answered %d",
                operation,
                status,
                extra={"status": status, "code": code, "connector_message": message},
            )
            raise ConnectorError(
                f"connector {operation}: {status} {code}: {message}",
                status=status,
                code=code,
                retry_after=retry_after(response),
                uncertain=uncertain,
            )
        try:
            payload = response.json() if response.content else {}
        except ValueError:
            payload = {}
        found = payload.get("id") if isinstance(payload, dict) else None
        return str(found) if found else None


def _url(service_url: str, conversation_id: str, activity_id: str | None = None) -> str:
    url = f"{service_url.rstrip('/')}/v3/conversations/{quote(conversation_id, safe='')}/activities"
    if activity_id is not None:
        url += f"/{quote(activity_id, safe='')}"
    return url
