"""Microsoft Teams: a bot channel whose turns are acked at once, run detached from the
webhook request under their own timeout, and stream their answers through the Bot
Connector. Vendor-free: it speaks the Bot Framework's wire format with httpx and PyJWT."""

from __future__ import annotations

from .activity import Activity, InvokeResponse
from .bot import BotApplication, Handler, Middleware, TurnContext
from .channel import TeamsChannel
from .connector import ConnectorClient, ConnectorError, TokenSource

__all__ = [
    "Activity",
    "BotApplication",
    "ConnectorClient",
    "ConnectorError",
    "Handler",
    "InvokeResponse",
    "Middleware",
    "TeamsChannel",
    "TokenSource",
    "TurnContext",
]
