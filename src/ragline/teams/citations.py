"""What marks a bot answer as AI-generated in Teams, with its citations: the
``https://schema.org/Message`` entity (``additionalType: ["AIGeneratedContent"]``, the AI
label) and one ``Claim`` per source the answer cites as ``[n]``, numbered as the model saw
the sources. Sources the answer never cites are not listed.

Teams' limits are kept by cutting, never by failing: at most :data:`MAX_CITATIONS`
citations, a name of at most 80 characters, an abstract of at most 160 and at most three
keywords of 28 (the limits of the Teams SDKs' citation types). Text from documents is
escaped, so that markup in a passage is shown, not rendered.
"""

from __future__ import annotations

import html
import re
from typing import Any

from ..models import ChatResult, Source
from ..prose import plain

__all__ = ["FEEDBACK", "MAX_CITATIONS", "ai_entity", "cited"]

MAX_CITATIONS = 20
_NAME, _ABSTRACT, _KEYWORDS, _KEYWORD = 80, 160, 3, 28
_CITE = re.compile(r"\[(\d{1,3})\]")

FEEDBACK = {"feedbackLoopEnabled": True}
"""The ``channelData`` that gives an answer its feedback buttons."""


def cited(text: str, sources: list[Source]) -> list[Source]:
    """The sources ``text`` cites as ``[n]``, in the order it first cites them."""
    by_rank = {source.rank: source for source in sources}
    seen: dict[int, Source] = {}
    for match in _CITE.finditer(text):
        source = by_rank.get(int(match.group(1)))
        if source is not None and source.rank not in seen:
            seen[source.rank] = source
    return list(seen.values())[:MAX_CITATIONS]


def ai_entity(result: ChatResult) -> dict[str, Any]:
    """The AI label, with a citation for each source the answer cites."""
    entity: dict[str, Any] = {
        "type": "https://schema.org/Message",
        "@type": "Message",
        "@context": "https://schema.org",
        "@id": "",
        "additionalType": ["AIGeneratedContent"],
    }
    claims = [_claim(source) for source in cited(result.text, result.sources)]
    if claims:
        entity["citation"] = claims
    return entity


def _claim(source: Source) -> dict[str, Any]:
    name = source.title or source.source or source.document_id
    appearance: dict[str, Any] = {
        "@type": "DigitalDocument",
        "name": _cut(name, _NAME),
        "abstract": _cut(plain(source.text), _ABSTRACT),
    }
    if source.source.startswith(("https://", "http://")):
        appearance["url"] = source.source
    else:
        # No link to follow: where it came from says what it is.
        where = [source.source or source.document_id, source.relevance()]
        appearance["keywords"] = [_cut(k, _KEYWORD) for k in where if k][:_KEYWORDS]
    return {"@type": "Claim", "position": source.rank, "appearance": appearance}


def _cut(text: str, limit: int) -> str:
    """``text`` on one line, escaped, within ``limit`` characters (cut at a word)."""
    text = html.escape(" ".join(text.split()), quote=False)
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    if " " in cut[limit // 2 :]:
        cut = cut.rsplit(" ", 1)[0]
    cut = re.sub(r"&[a-z#0-9]*$", "", cut)  # never half an escape
    return cut.rstrip() + "…"
