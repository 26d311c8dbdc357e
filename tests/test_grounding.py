"""The grounding measure and the grounding guard: the measure on its own and against the
hand-labelled sentences of the answer eval, then the guard across modules — a real
`ragline serve` in front of a fake upstream that drifts after two supported sentences (its
connection closed within a few tokens, the kept text, finish reason, usage and metric),
and one whose answer is supported throughout (never cut)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from openai import AsyncOpenAI

from ragline.grounding import Grounding, GroundingGuard, Verdict, abstains, sentences
from test_web import Site, ingest, site
from upstream import Behavior, Call

pytestmark = pytest.mark.anyio

LABELS = Path(__file__).parent.parent / "bench" / "answers" / "grounding-labels.jsonl"
PASSAGE = (
    "The Varnell Bridge crosses the river Ostra in the town of Kelmoor. It was completed "
    "in 1912 by the engineer Ada Brisk. The bridge is made of red granite and has seven arches."
)
SUPPORTED = [
    "The Varnell Bridge crosses the river Ostra in Kelmoor [1]. ",
    "It was completed in 1912 by Ada Brisk [1]. ",
]
DRIFT = "It was later painted blue by the sculptor Tom Hale in 1950. "
MORE = "Thousands of tourists from Norway visit it every summer to watch the fireworks. "
ALSO_SUPPORTED = "The bridge is made of red granite, with seven arches [1]."


def grounding() -> Grounding:
    return Grounding([PASSAGE], "Who built the Varnell Bridge?")


# -- the measure ----------------------------------------------------------------------


def test_copies_and_paraphrases_of_the_passage_are_supported() -> None:
    g = grounding()
    for sentence in [*SUPPORTED, ALSO_SUPPORTED, "Ada Brisk, an engineer, built it in 1912."]:
        assert g.judge(sentence).verdict is Verdict.SUPPORTED, sentence


@pytest.mark.parametrize(
    "sentence",
    [
        "It was completed in 1913 by the engineer Ada Brisk.",  # a changed year
        "It was completed in 1912 by the engineer Tom Brisk.",  # a changed name
        "The bridge has eight arches.",  # a changed count, in words
        DRIFT,
        MORE,
        "This bridge is very useful for developers who want reliable software.",
    ],
)
def test_a_changed_figure_a_new_name_or_new_claims_are_unsupported(sentence: str) -> None:
    assert grounding().judge(sentence).verdict is Verdict.UNSUPPORTED


def test_abstentions_and_fragments_are_not_judged() -> None:
    g = grounding()
    assert g.judge("I do not know.").verdict is Verdict.UNJUDGED
    assert g.judge("The documents do not cover this.").verdict is Verdict.UNJUDGED
    assert g.judge("See [1].").verdict is Verdict.UNJUDGED
    assert abstains("The context does not mention it.")


def test_a_numbered_list_is_judged_by_its_items_not_its_numbers() -> None:
    # "1." on its own is layout; a numbered item is judged by what it says.
    guard = GroundingGuard(grounding())
    text = "1. The bridge crosses the river Ostra [1].\n2. It has seven arches of red granite [1]."
    for piece in text:
        assert guard.feed(piece) is None
    assert guard.finish() is None
    assert grounding().judge("2.").verdict is Verdict.UNJUDGED


def test_sentences_split_at_stops_and_line_breaks_not_inside_numbers() -> None:
    text = "Version 2.3 is out. It works!\n- a list item\nlast"
    assert [text[a:b] for a, b in sentences(text)] == [
        "Version 2.3 is out.",
        "It works!",
        "- a list item",
        "last",
    ]


def test_the_measure_agrees_with_the_hand_labelled_sentences() -> None:
    # The eval's validation set (bench/answers/grounding-labels.jsonl): the figures it
    # reports are only as good as this agreement, so a change that lowers it shows here.
    rows = [json.loads(line) for line in LABELS.read_text().splitlines() if line.strip()]
    assert len(rows) >= 100
    agree = false_alarms = supported = 0
    for row in rows:
        verdict = Grounding(row["passages"], row["question"]).judge(row["sentence"]).verdict
        said = "unsupported" if verdict is Verdict.UNSUPPORTED else "supported"
        agree += said == row["label"]
        supported += row["label"] == "supported"
        false_alarms += row["label"] == "supported" and said == "unsupported"
    assert agree / len(rows) >= 0.8
    assert false_alarms / supported <= 0.1, "the guard would cut supported answers"


def test_the_guard_judges_a_sentence_only_once_it_has_ended() -> None:
    guard = GroundingGuard(grounding())
    text = "".join(SUPPORTED) + DRIFT + MORE
    fed = ""
    for piece in text.split(" "):
        fed += piece + " "
        drift = guard.feed(piece + " ")
        if drift is not None:
            break
    assert drift is not None
    assert fed.rstrip().endswith("1950.")  # not before the sentence's full stop
    assert text[: drift.keep] == "".join(SUPPORTED)
    assert {"tom", "hale", "1950"} <= set(drift.novel)


def test_a_supported_answer_is_never_cut_and_its_last_sentence_is_judged_too() -> None:
    guard = GroundingGuard(grounding())
    for piece in "".join(SUPPORTED) + ALSO_SUPPORTED:
        assert guard.feed(piece) is None
    assert guard.finish() is None
    late = GroundingGuard(grounding())
    for piece in "".join(SUPPORTED) + DRIFT.strip():
        assert late.feed(piece) is None
    assert late.finish() is not None  # the unsupported last sentence, once it has ended


# -- the guard in front of a real upstream ----------------------------------------------

GUARD_ON = {"RAGLINE_GROUNDING_GUARD": "true"}
DOCUMENT = [{"id": "varnell", "text": PASSAGE}]


def words(text: str) -> list[str]:
    """The text as the upstream's tokens: a word and its space each."""
    return [w + " " for w in text.split()]


def drifting(body: dict[str, Any]) -> Behavior:
    # Two supported sentences, then one no passage supports, then more of it; a token
    # every 10 ms, as a fast model server would.
    texts = words("".join(SUPPORTED) + DRIFT + MORE * 20)
    return Behavior(texts=texts, tokens=len(texts), interval=0.01)


def supported(body: dict[str, Any]) -> Behavior:
    texts = words("".join(SUPPORTED) + ALSO_SUPPORTED)
    return Behavior(texts=texts, tokens=len(texts), interval=0.005)


def tokens_to_detect() -> int:
    """How many upstream tokens the guard needs to see the drift."""
    guard = GroundingGuard(Grounding([PASSAGE], "Who built the Varnell Bridge?"))
    for n, piece in enumerate(words("".join(SUPPORTED) + DRIFT + MORE), start=1):
        if guard.feed(piece) is not None:
            return n
    raise AssertionError("the drift is never detected")


async def closed_soon(call: Call) -> None:
    with anyio.fail_after(10):
        await call.closed.wait()
    assert not call.finished
    # The upstream stopped producing within a few tokens of the one that ended the drift.
    assert len(call.token_times) <= tokens_to_detect() + 3


async def metric(s: Site, name: str, **labels: str) -> float:
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"{s.url}/metrics")).text
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{{wanted}}}"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_a_drifting_upstream_is_closed_and_the_supported_sentences_kept(
    tmp_path: Path,
) -> None:
    async with site(tmp_path, drifting, env=GUARD_ON) as s:
        await ingest(s, DOCUMENT)
        async with httpx.AsyncClient(base_url=s.url, timeout=30) as http:
            params = {"query": "Who built the Varnell Bridge?"}
            response = await http.get("/api/v1/inference/stream", params=params)
        (call,) = s.upstream.calls
        await closed_soon(call)
        lines = response.text.split("\n")
        done = json.loads(lines[lines.index("event: done") + 1][6:])
        assert done["finish_reason"] == "ungrounded"
        assert done["usage"]["cause"] == "ungrounded"
        assert done["text"] == "".join(SUPPORTED).strip()
        assert 0 < done["usage"]["completion_tokens"] <= len(call.token_times)
        assert await metric(s, "ragline_generation_stops_total", reason="ungrounded") == 1


async def test_the_openai_route_says_why_in_its_ragline_field(tmp_path: Path) -> None:
    async with site(tmp_path, drifting, env=GUARD_ON) as s:
        await ingest(s, DOCUMENT)
        client = AsyncOpenAI(base_url=f"{s.url}/v1", api_key="unused", max_retries=0)
        reply = await client.chat.completions.create(
            model="fake-model",
            messages=[{"role": "user", "content": "Who built the Varnell Bridge?"}],
        )
        await client.close()
        await closed_soon(s.upstream.calls[0])
    assert reply.choices[0].finish_reason == "stop"  # a value the SDK knows
    assert (reply.model_extra or {})["ragline"]["finish_reason"] == "ungrounded"
    assert reply.choices[0].message.content == "".join(SUPPORTED).strip()
    assert reply.usage is not None
    assert reply.usage.completion_tokens > 0


async def test_a_supported_answer_runs_to_its_end(tmp_path: Path) -> None:
    async with site(tmp_path, supported, env=GUARD_ON) as s:
        await ingest(s, DOCUMENT)
        async with httpx.AsyncClient(base_url=s.url, timeout=30) as http:
            response = await http.post(
                "/api/v1/inference/chat", json={"query": "Who built the Varnell Bridge?"}
            )
        body = response.json()
        assert body["usage"]["finish_reason"] == "stop", body
        assert body["text"] == "".join(words("".join(SUPPORTED) + ALSO_SUPPORTED))
        assert s.upstream.calls[0].finished
        assert await metric(s, "ragline_generation_stops_total", reason="ungrounded") == 0


# -- the local model ----------------------------------------------------------------------


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_the_guard_stops_the_local_model_within_a_token_of_the_drift() -> None:
    """SmolLM2 asked for a story its passage knows nothing of: its first finished sentence
    is unsupported, and the model stops within a token or two of it."""
    from opentelemetry.sdk.trace import TracerProvider

    from ragline import ChatPipeline, ChatResult, Lifetime, Message, Prompt
    from ragline.metrics import Metrics
    from ragline.models import Sampling
    from ragline.providers.identity import IdentityTransformer
    from ragline.providers.llamacpp import LlamaCppGenerator
    from ragline.providers.prompt import ContextPromptComposer
    from ragline.threads import ThreadBridge
    from ragline.tracing import Tracing

    greedy = Sampling(temperature=0.0, top_p=1.0, min_p=0.0)
    local = LlamaCppGenerator(ThreadBridge(), max_tokens=200, sampling=greedy)
    question = "Write a long story about a dragon who guards a castle."
    prompt = Prompt((Message(role="user", content=question),), query=question, evidence=(PASSAGE,))
    metrics = Metrics()
    chat = ChatPipeline(
        transformer=IdentityTransformer(),
        composer=ContextPromptComposer(),
        generator=local,
        tracing=Tracing(TracerProvider()),
        metrics=metrics,
        grounding_guard=True,
    )
    result = ChatResult()
    with Lifetime.root() as root:
        await local.open(root)
        await chat.generate(prompt, root, result)
    assert result.usage.finish_reason == "ungrounded"
    assert result.usage.cause == "ungrounded"
    assert result.usage.completion_tokens < 200
    assert metrics.generation_stops.labels("ungrounded")._value.get() == 1
    with anyio.fail_after(10):  # the model's thread records its counters as it unwinds
        while not local.history:
            await anyio.sleep(0.01)
    counters = local.history[-1]
    assert counters.decoded_at_stop is not None
    assert counters.decoded_after_stop <= 2
