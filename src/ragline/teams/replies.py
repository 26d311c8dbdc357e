"""What the bot says besides the model's answers: greetings, refusals, and the notes
that end an answer cut short."""

from __future__ import annotations

from ..lifetime import CancelReason, Cause
from ..models import ChatResult
from .citations import cited

__all__ = [
    "BOUND_NOTES",
    "EMPTY",
    "FAILED",
    "INFORMATIVE",
    "NEW_CHAT",
    "NO_ACCESS",
    "WELCOME",
    "interrupted",
    "reply_text",
    "with_sources",
]

WELCOME = (
    "Hi! Ask me anything about the indexed documents. I remember this conversation: "
    'say "new chat" to start over.'
)
NEW_CHAT = "Starting over: I have forgotten this conversation's earlier questions."
EMPTY = "Send me a question and I will answer from the indexed documents."
INFORMATIVE = "Searching the documents…"
FAILED = "Sorry, I could not answer that: the model failed."
NO_ACCESS = (
    "Sorry, I can't answer you here: you don't have access to this bot's documents. "
    "Ask your ragline admin for access."
)

BOUND_NOTES = {
    "budget_exhausted": "I stopped here: this answer reached its token budget.",
    "max_steps": "I stopped here: this answer took too many steps.",
    "max_tool_calls": "I stopped here: this answer called too many tools.",
    "repeated_tool_call": "I stopped here: I was repeating the same search.",
    "deadline": "I stopped here: this answer reached its time limit.",
}


def interrupted(reason: CancelReason | None) -> str:
    """The note a user gets when their answer is cut short."""
    if reason is not None and reason.cause is Cause.DEADLINE:
        return "Stopped: this answer took longer than the bot's time limit."
    return "Interrupted: the service is restarting. Please ask again in a moment."


def with_sources(result: ChatResult) -> str:
    """The answer followed by its sources, numbered as the answer cites them ``[n]``."""
    if not result.sources:
        return result.text
    lines = "\n".join(
        f"{source.rank or n}. {source.title or source.source or source.document_id} "
        f"({source.relevance()})"
        for n, source in enumerate(result.sources, start=1)
    )
    return f"{result.text}\n\n**Sources**\n{lines}"


def reply_text(result: ChatResult) -> str:
    """The answer as sent: Teams shows the sources it cites as citations; an answer
    that cites none is followed by its sources as text."""
    return result.text if cited(result.text, result.sources) else with_sources(result)
