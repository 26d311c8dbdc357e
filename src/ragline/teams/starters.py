"""Prompt starters: the few questions Teams offers a user before they type anything.

They come from the collections a conversation answers from, so that they name what the
bot can actually answer about, and they end with one general starter. The same list
serves the app manifest's command list (``ragline teams package``) and a welcome
message's suggested actions, so both stay within the manifest's limits: a title of at
most :data:`MAX_TITLE` characters and at most :data:`MAX_STARTERS` starters (the
command limits of manifest 1.20, the strictest of the versions with custom engine
agents; later versions allow more), a prompt of at most :data:`MAX_TEXT` characters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["MAX_STARTERS", "MAX_TEXT", "MAX_TITLE", "Starter", "prompt_starters"]

MAX_TITLE = 32  # bots[].commandLists[].commands[].title
MAX_TEXT = 128  # the command description's limit up to manifest 1.20
MAX_STARTERS = 10  # commands in one command list

_GENERAL_TITLE = "What can you do?"
_GENERAL_TEXT = "What can you answer questions about?"


@dataclass(frozen=True)
class Starter:
    """One prompt starter: the short ``title`` shown on the button and the prompt
    ``text`` sent as the user's message when they pick it."""

    title: str
    text: str

    def __post_init__(self) -> None:
        if not 0 < len(self.title) <= MAX_TITLE:
            raise ValueError(f"a starter's title has 1 to {MAX_TITLE} characters")
        if not 0 < len(self.text) <= MAX_TEXT:
            raise ValueError(f"a starter's text has 1 to {MAX_TEXT} characters")


def prompt_starters(
    collections: Sequence[str], *, limit: int = 3, default_collection: str = "default"
) -> list[Starter]:
    """At most ``limit`` starters (1 to :data:`MAX_STARTERS`) for a conversation that
    answers from ``collections``, in their order: one per collection, the
    ``default_collection`` (``RAGLINE_COLLECTION``) phrased as "the documents", then
    always the general "What can you do?". The same collections give the same list;
    collections that would read the same are offered once."""
    if not 1 <= limit <= MAX_STARTERS:
        raise ValueError(f"limit must be between 1 and {MAX_STARTERS}")
    general = Starter(_GENERAL_TITLE, _GENERAL_TEXT)
    starters: list[Starter] = []
    seen = {general.title.casefold(), general.text.casefold()}
    for name in collections:
        if len(starters) == limit - 1:
            break
        starter = _for_collection(name, default_collection)
        if starter is None:
            continue
        keys = {starter.title.casefold(), starter.text.casefold()}
        if keys & seen:
            continue
        seen |= keys
        starters.append(starter)
    starters.append(general)
    return starters


def _for_collection(name: str, default_collection: str) -> Starter | None:
    """The starter for one collection; ``None`` for a name with nothing to show."""
    if name == default_collection:
        return Starter("What is in the documents?", "What is in the documents?")
    label = " ".join(name.replace("_", " ").split())
    if not label:
        return None
    title_prefix, text_prefix, text_suffix = "Ask the ", "What do the ", " documents cover?"
    return Starter(
        title_prefix + _shortened(label, MAX_TITLE - len(title_prefix)),
        text_prefix
        + _shortened(label, MAX_TEXT - len(text_prefix) - len(text_suffix))
        + text_suffix,
    )


def _shortened(label: str, room: int) -> str:
    """``label`` cut to ``room`` characters, an ellipsis marking the cut."""
    if len(label) <= room:
        return label
    return label[: room - 1].rstrip() + "…"
