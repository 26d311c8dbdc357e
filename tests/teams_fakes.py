"""Fake Microsoft services for the Teams channel: one real HTTP server that plays Teams.

:class:`FakeTeams` serves, on a free loopback port,

* the Bot Framework OpenID metadata and JWKS the bot checks inbound tokens against,
* the Entra ID client-credentials token endpoint the bot gets outbound tokens from,
* the Bot Connector REST API (under ``service_url``, like ``https://smba.trafficmanager.net/amer/``)
  with Teams' streaming rules enforced,

and it plays Teams as the sender: it signs inbound JWTs (:meth:`FakeTeams.token_for`), builds
realistic activities (:meth:`FakeTeams.activity`) and posts them to the bot, redelivering an
activity whose webhook stays unanswered (:meth:`FakeTeams.deliver`).

Everything it sees is recorded (``calls``, ``streams``, ``violations``, ``token_requests``,
``redeliveries``) and :meth:`FakeTeams.wait_for` wakes on every recorded change.

Typical use::

    async with FakeTeams.running(min_interval=0.05) as teams:
        activity = teams.activity("What is ragline?")
        delivery = await teams.deliver(f"{bot.url}/api/messages", activity)
        await teams.wait_for(lambda: teams.messages(activity["conversation"]["id"]))
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import anyio
from starlette.applications import Starlette
from starlette.routing import Route

from conftest import serve_app
from teams_connector import (
    ALREADY_COMPLETED,
    CANCELLED_BY_USER,
    EXCEEDED_TIME,
    NOT_CUMULATIVE,
    NOT_IN_GROUP_CHATS,
    ConnectorCall,
    ConnectorMixin,
    ConversationKind,
    Stream,
    Violation,
    _Fault,
    _Posted,
)
from teams_identity import ISSUER, SCOPE, IdentityMixin, KeyName, _Key, _rsa_key
from teams_sender import VALID_TOKEN, Delivery, Redelivery, SenderMixin

T = TypeVar("T")

__all__ = [
    "ALREADY_COMPLETED",
    "CANCELLED_BY_USER",
    "EXCEEDED_TIME",
    "ISSUER",
    "NOT_CUMULATIVE",
    "NOT_IN_GROUP_CHATS",
    "SCOPE",
    "VALID_TOKEN",
    "ConnectorCall",
    "ConversationKind",
    "Delivery",
    "FakeTeams",
    "KeyName",
    "Redelivery",
    "Stream",
    "Violation",
    "serve_app",
]


class FakeTeams(IdentityMixin, ConnectorMixin, SenderMixin):
    """Teams, the Bot Connector, Entra ID and the Bot Framework key service in one server.

    Serve with ``async with FakeTeams.running(**options) as teams`` (or ``teams.run()``).
    """

    def __init__(
        self,
        *,
        app_id: str = "00000000-0000-0000-0000-00000000b07",
        app_password: str = "s3cret",
        min_interval: float = 1.0,
        stream_limit: float = 120.0,
        token_lifetime: int = 3599,
        token_delay: float = 0.0,
        require_token: bool = True,
        require_escaped_ids: bool = True,
    ) -> None:
        self.app_id = app_id
        self.app_password = app_password
        self.min_interval = min_interval
        self.stream_limit = stream_limit
        self.token_lifetime = token_lifetime
        self.token_delay = token_delay
        self.require_token = require_token
        self.require_escaped_ids = require_escaped_ids
        self.issuer = ISSUER
        self.tenant_id = str(uuid.uuid4())
        self.user_id = f"29:1{secrets.token_urlsafe(24)}"
        self.user_aad_id = str(uuid.uuid4())
        self.port = 0

        self.calls: list[ConnectorCall] = []
        self.streams: dict[str, Stream] = {}
        self.violations: list[Violation] = []
        self.token_requests: list[float] = []
        self.tokens_issued: list[str] = []
        self.redeliveries: list[Redelivery] = []
        self.metadata_requests = 0
        self.jwks_requests = 0
        self.user_stopped = anyio.Event()

        self._kinds: dict[str, ConversationKind] = {}
        self._default_conversations: dict[str, str] = {}
        self._tokens: dict[str, float] = {}  # token -> expiry (monotonic)
        self._posted: dict[str, _Posted] = {}
        self._last_arrival: dict[str, float] = {}
        self._faults: list[_Fault] = []
        self._stop_after: tuple[int, str | None] | None = None
        self._next_id = int(time.time() * 1000)
        self._changed = anyio.Event()

        endorsed = _Key(f"k{secrets.token_hex(6)}", _rsa_key(0), ["msteams", "skype"])
        unendorsed = _Key(f"k{secrets.token_hex(6)}", _rsa_key(1), ["webchat"])
        self._published: list[_Key] = [endorsed, unendorsed]
        self._signing: dict[str, _Key] = {"endorsed": endorsed, "unendorsed": unendorsed}
        self._rogue_private = _rsa_key(2)

        self.app = Starlette(
            routes=[
                Route("/v1/.well-known/openidconfiguration", self._openid, methods=["GET"]),
                Route("/v1/.well-known/keys", self._jwks, methods=["GET"]),
                Route("/{tenant}/oauth2/v2.0/token", self._token, methods=["POST"]),
                Route(
                    "/amer/{rest:path}",
                    self._connector,
                    methods=["GET", "POST", "PUT", "DELETE", "PATCH"],
                ),
            ]
        )

    # -- running ----------------------------------------------------------------------------

    @classmethod
    @asynccontextmanager
    async def running(cls, **options: Any) -> AsyncIterator[FakeTeams]:
        """Build a FakeTeams with ``options`` and serve it for the life of the block."""
        teams = cls(**options)
        async with teams.run():
            yield teams

    @asynccontextmanager
    async def run(self) -> AsyncIterator[FakeTeams]:
        """Serve this FakeTeams on a free loopback port for the life of the block."""
        async with serve_app(self.app) as base:
            self.port = int(base.rsplit(":", 1)[1])
            yield self

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def openid_url(self) -> str:
        return f"{self.base_url}/v1/.well-known/openidconfiguration"

    @property
    def jwks_url(self) -> str:
        return f"{self.base_url}/v1/.well-known/keys"

    @property
    def login_url(self) -> str:
        """The authority base: ``{login_url}/{tenant}/oauth2/v2.0/token``."""
        return self.base_url

    @property
    def token_url(self) -> str:
        return f"{self.base_url}/botframework.com/oauth2/v2.0/token"

    @property
    def service_url(self) -> str:
        return f"{self.base_url}/amer/"

    # -- steering ---------------------------------------------------------------------------

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_for(self, predicate: Callable[[], T], *, timeout: float | None = None) -> T:
        """Wait until ``predicate()`` is truthy (checked on every recorded change); return it."""
        with anyio.fail_after(timeout):
            while True:
                changed = self._changed
                value = predicate()
                if value:
                    return value
                await changed.wait()
