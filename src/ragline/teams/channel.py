"""The Teams channel as one application part: auth, connector, bot and dispatcher."""

from __future__ import annotations

import logging
from typing import Any

import httpx

from ..access import Principal
from ..agent import Agent
from ..chat import ChatPipeline
from ..errors import Unauthorized
from ..grants import Grants
from ..history import History
from ..lifetime import Lifetime
from ..metrics import Metrics
from ..notices import Notices
from ..providers.coordination import ActivityLog
from ..providers.feedback import FeedbackStore
from ..settings import Settings
from ..supervisor import Supervisor
from ..tracing import Tracing
from .activity import Activity, InvokeResponse
from .auth import BotAuthenticator, Token
from .bot import BotApplication
from .connector import ConnectorClient, TokenSource
from .dispatch import Dispatcher
from .feedback import FeedbackHandler
from .members import members_from, tenant_of

__all__ = ["TeamsChannel"]

log = logging.getLogger("ragline.teams")


class TeamsChannel:
    """Receives activities from ``POST /api/messages`` and runs their turns.

    Its turns run as tasks of ``supervisor``, the application's.
    """

    def __init__(
        self,
        settings: Settings,
        pipeline: ChatPipeline,
        supervisor: Supervisor,
        metrics: Metrics,
        tracing: Tracing,
        activities: ActivityLog,
        notices: Notices,
        *,
        agent: Agent | None = None,
        grants: Grants,
        history: History | None = None,
        feedback: FeedbackStore | None = None,
    ) -> None:
        self.settings = settings
        self.grants = grants  # what each Teams user may read (they act as principals)
        # First: a mapping file with an error refuses to start, naming its file and line.
        members = members_from(settings)
        for principal in members.declared():  # so that grants may name them and their groups
            grants.principals.configured.setdefault(principal.name, principal)
        self._metrics = metrics
        self._tracing = tracing
        self.http = httpx.AsyncClient(
            timeout=httpx.Timeout(settings.bot_connector_timeout, connect=5.0),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
            follow_redirects=False,
        )
        self.authenticator: BotAuthenticator | None = None
        tokens: TokenSource | None = None
        if settings.bot_auth == "on":
            if settings.bot_app_id is None:
                raise ValueError("the Teams channel needs RAGLINE_BOT_APP_ID")
            if settings.bot_app_password is None:
                raise ValueError("RAGLINE_BOT_APP_ID is set: set RAGLINE_BOT_APP_PASSWORD too")
            self.authenticator = BotAuthenticator(
                self.http,
                app_id=settings.bot_app_id,
                metadata_url=settings.bot_openid_metadata_url,
                issuer=settings.bot_issuer,
                clock_skew=settings.bot_clock_skew,
            )
            tenant = settings.bot_tenant_id or "botframework.com"
            tokens = TokenSource(
                self.http,
                token_url=settings.bot_token_url
                or f"https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token",
                app_id=settings.bot_app_id,
                password=settings.bot_app_password.get_secret_value(),
                scope=settings.bot_token_scope,
            )
        # With auth off (local development) the bot's credentials are never sent: the
        # serviceUrl of an unauthenticated activity is not to be trusted with them.
        self.connector = ConnectorClient(self.http, tokens, metrics)
        self.bot = BotApplication(
            settings,
            pipeline,
            self.connector,
            agent=agent,
            members=members,
            grants=grants,
            history=history,
            feedback=feedback,
        )
        if feedback is not None:  # the thumbs up or down on an answer
            self.bot.invokes["message/submitAction"] = FeedbackHandler(feedback, metrics)
        s = settings
        self.dispatcher = Dispatcher(
            self.bot,
            supervisor,
            self._metrics,
            self._tracing,
            activities,
            notices,
            dedup_window=s.bot_dedup_window,
            max_concurrent=s.bot_max_concurrent_turns,
            max_pending=s.bot_max_pending_turns,
            turn_timeout=s.bot_turn_timeout,
            pace=s.bot_stream_interval,
            identify=self.identify,
        )
        if s.bot_auth == "off":
            log.warning("Teams channel without authentication (RAGLINE_BOT_AUTH=off)")

    async def identify(self, activity: Activity, lifetime: Lifetime) -> Principal | None:
        """The principal a Teams user asks as (by the bot's :class:`Members`); ``None``
        for a user nobody mapped, whom the bot answers with a polite refusal."""
        principal = await self.bot.members.principal(activity, lifetime)
        if principal is None:
            account = activity.from_
            log.info(
                "Teams user without a principal",
                extra={
                    "activity_id": activity.id,
                    "tenant_id": tenant_of(activity),
                    "aad_object_id": account.aad_object_id if account is not None else None,
                },
            )
        return principal

    async def aclose(self) -> None:
        """Close the HTTP connections."""
        await self.http.aclose()

    async def authenticate(self, authorization: str | None, lifetime: Lifetime) -> Token | None:
        """The request's verified token (``None`` with auth off), or
        :class:`Unauthorized`: checked before the body is read as an activity."""
        if self.authenticator is None:
            return None
        try:
            return await self.authenticator.verify_token(authorization, lifetime)
        except Unauthorized as exc:
            log.warning("bot activity refused: %s", exc.message, extra={"reason": exc.message})
            raise Unauthorized("invalid or missing bot token") from None

    def bind(self, token: Token | None, activity: Activity) -> None:
        """Raise :class:`Unauthorized` unless ``token`` covers ``activity``."""
        if self.authenticator is None or token is None:
            return
        try:
            self.authenticator.bind(token, activity)
        except Unauthorized as exc:
            log.warning(
                "bot activity refused: %s",
                exc.message,
                extra={"activity_id": activity.id, "reason": exc.message},
            )
            raise Unauthorized("invalid or missing bot token") from None

    async def receive(self, activity: Activity, lifetime: Lifetime) -> InvokeResponse | None:
        """Accept an authenticated activity. Invokes run now and return their response;
        everything else is queued and ``None`` is returned at once."""
        if activity.delivery_mode == "expectReplies" and activity.type != "invoke":
            # The sender waits for the replies in this response: the turn is the
            # request's, bounded by the processing timeout, and nothing is streamed.
            replies: list[dict[str, Any]] = []
            await self.dispatcher.invoke(activity, lifetime, replies=replies)
            return InvokeResponse(status=200, body={"activities": replies})
        if activity.type != "invoke":
            await self.dispatcher.accept(activity, lifetime)
            return None
        response = await self.dispatcher.invoke(activity, lifetime)
        return response or InvokeResponse(status=200, body=None)
