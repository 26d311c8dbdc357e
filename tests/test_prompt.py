"""The prompt composer: passages as prose, within a token budget, focused for a small
model, numbered as the sources are."""

from __future__ import annotations

import pytest

from ragline import ChatRequest, Hit, Lifetime
from ragline.providers.prompt import ContextPromptComposer

pytestmark = pytest.mark.anyio

GUIDE = """## Adding documents

`ragline ingest docs/` indexes text, Markdown, HTML, PDF and JSONL files. Ctrl-C stops
after the current batch. The [job API](https://example.org/api) answers 202 with a job id.
`DELETE /api/v1/ingest/{id}` stops the job at a batch boundary.

| setting | default |
|---|---|
| `RAGLINE_INGEST_BATCH_SIZE` | 64 |
"""
WEATHER = "Rain is expected in the northern valleys on Sunday. Skies clear by noon."


def hits() -> list[Hit]:
    return [
        Hit("guide", 0, GUIDE, "/srv/docs/GUIDE.md", 0.03),
        Hit("weather", 0, WEATHER, "weather.txt", 0.02),
    ]


def words(text: str) -> int:
    """A tokenizer stand-in: one token per word."""
    return len(text.split())


async def compose(composer: ContextPromptComposer, query: str = "How do I stop a job?") -> str:
    with Lifetime.root() as root:
        prompt = await composer.compose(ChatRequest(query=query), hits(), root)
    return prompt.messages[-1].content


async def test_passages_are_prose_numbered_with_their_titles() -> None:
    user = await compose(ContextPromptComposer())
    assert user.startswith("Context:\n[1] GUIDE.md: Adding documents\n")
    assert "[2] weather.txt\nRain is expected" in user
    assert user.endswith("\n\nQuestion: How do I stop a job?")
    assert "`" not in user
    assert "](https://example.org/api)" not in user
    assert "setting: RAGLINE_INGEST_BATCH_SIZE; default: 64." in user
    # A hard-wrapped paragraph is one line again.
    assert "Ctrl-C stops after the current batch." in user


async def test_the_budget_counts_tokens_and_cuts_at_a_sentence() -> None:
    composer = ContextPromptComposer(context_tokens=30, count_tokens=words)
    with Lifetime.root() as root:
        prompt = await composer.compose(ChatRequest(query="q"), hits(), root)
    user = prompt.messages[-1].content
    context = user.split("\n\nQuestion:")[0]
    assert words(context) <= 31  # the budget, and the "Context:" label
    assert context.rstrip().endswith(".")
    assert prompt.passages == 1, "the second passage did not fit"


async def test_focus_keeps_the_sentences_closest_to_the_question() -> None:
    composer = ContextPromptComposer(context_tokens=40, count_tokens=words, focus=True)
    user = await compose(composer, "How do I stop the job with DELETE?")
    assert "DELETE /api/v1/ingest/{id} stops the job at a batch boundary." in user
    assert "indexes text, Markdown" not in user


async def test_passages_can_go_with_the_instructions() -> None:
    composer = ContextPromptComposer(placement="system", instructions="Be brief.")
    with Lifetime.root() as root:
        prompt = await composer.compose(ChatRequest(query="Why?"), hits(), root)
    system, user = prompt.messages
    assert system.content.startswith("Be brief.\n\nContext:\n[1] GUIDE.md")
    assert user.content == "Why?"


async def test_a_request_without_hits_is_the_question_alone() -> None:
    with Lifetime.root() as root:
        prompt = await ContextPromptComposer().compose(ChatRequest(query="Hi"), [], root)
    assert prompt.messages[-1].content == "Hi"
    assert prompt.passages == 0
