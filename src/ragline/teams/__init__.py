"""Microsoft Teams: a bot channel whose turns are acked at once, run detached from the
webhook request under their own timeout, and stream their answers through the Bot
Connector. Vendor-free: it speaks the Bot Framework's wire format with httpx and PyJWT."""

from __future__ import annotations

from .activity import Activity, InvokeResponse
from .bot import BotApplication, Handler, Middleware, TurnContext
from .channel import TeamsChannel
from .connector import ConnectorClient, ConnectorError, TokenSource
from .members import Everyone, MappingFile, Members

__all__ = [
    "Activity",
    "BotApplication",
    "ConnectorClient",
    "ConnectorError",
    "Everyone",
    "Handler",
    "InvokeResponse",
    "MappingFile",
    "Members",
    "Middleware",
    "TeamsChannel",
    "TokenSource",
    "TurnContext",
]
