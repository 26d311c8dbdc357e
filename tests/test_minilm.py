"""The local embedder for real: all-MiniLM-L6-v2 on the CPU through the thread bridge.

The model takes seconds to load, so one embedder serves the module; each test restores the
attributes it changes. The bf16 test embeds the first 200 Cranfield abstracts when the
shared data sits beside the checkout (``../shared/data/cranfield``), else built-in
sentences. Threads are observed through events, never sleeps; waits have generous bounds.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from ragline import CancelToken, Cause, Lifetime, ThreadBridge, ThreadCancelled
from ragline.providers import Embedder, EmbedKind
from ragline.providers.minilm import MiniLMEmbedder

pytestmark = pytest.mark.anyio

BOUND = 60.0  # generous wall-clock bound: only hit when a test would otherwise hang
CRANFIELD = Path(__file__).resolve().parents[2] / "shared" / "data" / "cranfield"
TEST_SET_SIZE = 64

FALLBACK_SENTENCES = [
    "The wing stalls when the angle of attack exceeds about fifteen degrees.",
    "Boundary layer separation increases drag on blunt bodies.",
    "Supersonic flow over a wedge produces an oblique shock wave.",
    "The heat transfer rate rises sharply near the stagnation point.",
    "A propeller slipstream changes the spanwise lift distribution.",
    "Turbulent mixing layers spread faster than laminar ones.",
    "The Reynolds number compares inertial and viscous forces.",
    "Panel flutter can occur on thin skins at high dynamic pressure.",
    "Hypersonic vehicles need thermal protection on their leading edges.",
    "The pressure coefficient was measured along the chord of the airfoil.",
    "Bake the bread at two hundred degrees until the crust is golden.",
    "A sourdough starter needs flour and water every day.",
    "Slice the onions thinly and fry them in butter until soft.",
    "The soup tastes better with fresh basil and a pinch of salt.",
    "Whisk the eggs with sugar until the mixture turns pale.",
    "The central bank raised interest rates by half a percentage point.",
    "Inflation slowed for the third month in a row.",
    "The company reported record profits in the last quarter.",
    "Bond yields fell after the employment figures were published.",
    "The merger needs approval from the competition authority.",
    "The striker scored twice in the second half.",
    "The marathon runner collapsed a few metres before the finish line.",
    "Rain delayed the final set of the tennis match.",
    "The team won the championship after a penalty shoot-out.",
    "She swam the channel in under ten hours.",
    "Heavy rain is expected in the northern valleys on Sunday.",
    "A cold front will bring snow to the mountains overnight.",
    "The drought has left the reservoirs at their lowest level in decades.",
    "Strong winds knocked down power lines across the coast.",
    "The heatwave is forecast to last until the end of the week.",
    "The patient was given antibiotics for a bacterial infection.",
    "Regular exercise lowers the risk of heart disease.",
    "The vaccine trial enrolled thirty thousand volunteers.",
    "A broken wrist usually heals in six to eight weeks.",
    "Sleep deprivation impairs memory and concentration.",
    "The function returns an empty list when no documents match.",
    "Compile the project with optimisations enabled before profiling it.",
    "The database index speeds up lookups by primary key.",
    "A race condition appears when two threads write the same variable.",
    "Cancel the request when the client disconnects.",
    "The museum reopened after a two-year renovation.",
    "The novel follows three generations of a fishing family.",
    "The orchestra played a symphony by Sibelius.",
    "The painting was sold at auction for a record price.",
    "The film won the award for best screenplay.",
    "Le chat dort sur le canapé près de la fenêtre.",
    "Der Zug nach Berlin hat zwanzig Minuten Verspätung.",
    "東京は日本の首都です。",
    "naïve café résumé façade coöperate",
    "ok",
]

# (query, a close paraphrase, an unrelated sentence)
TRIPLES = [
    (
        "A man is playing a guitar.",
        "Someone strums an acoustic guitar on stage.",
        "The central bank raised interest rates by half a point.",
    ),
    (
        "How do I reset my password?",
        "I forgot my login credentials and need to change them.",
        "Penguins live in the southern hemisphere.",
    ),
    (
        "The airfoil stalls at high angles of attack.",
        "Flow separation over the wing causes a loss of lift at steep incidence.",
        "She baked a chocolate cake for the birthday party.",
    ),
    (
        "Heavy rain is expected tomorrow.",
        "The forecast calls for storms and downpours.",
        "The new phone has a faster processor.",
    ),
    (
        "The patient was treated with antibiotics.",
        "Doctors gave her medicine to fight the bacterial infection.",
        "The train to Berlin is twenty minutes late.",
    ),
]


def cranfield_abstracts(path: Path, count: int) -> list[str]:
    """The first ``count`` non-empty ``.W`` sections of ``cran.all.1400``.

    Records run ``.I n``, ``.T``, ``.A``, ``.B``, ``.W``; the abstract is everything from
    ``.W`` to the next ``.I``. The file has CRLF line ends and a few stray field markers
    inside abstracts, which are dropped.
    """
    abstracts: list[str] = []
    words: list[str] | None = None
    for line in path.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if stripped.startswith(".I "):
            if words:
                abstracts.append(" ".join(words))
            words = None
        elif stripped == ".W" and words is None:
            words = []
        elif words is not None and stripped not in (".T", ".A", ".B", ".W"):
            words.extend(stripped.split())
        if len(abstracts) == count:
            return abstracts
    if words:
        abstracts.append(" ".join(words))
    return abstracts[:count]


def dot(a: Sequence[float], b: Sequence[float]) -> float:
    return math.fsum(x * y for x, y in zip(a, b, strict=True))


def norm(a: Sequence[float]) -> float:
    return math.sqrt(dot(a, a))


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    return dot(a, b) / (norm(a) * norm(b))


class Gate:
    """Instruments the encode loop through the token it polls between batches.

    The loop checks the token once before each batch, so the second check means the
    first batch is done. There the worker waits (bounded) for the real token to be
    cancelled, then lets the loop check it: the check must stop the work.
    """

    def __init__(self) -> None:
        self.first_batch_done = threading.Event()
        self.finished = threading.Event()
        self.checks = 0
        self.batches_started = 0
        self.raised: BaseException | None = None

    def wrap(self, token: CancelToken) -> GatedToken:
        return GatedToken(token, self)


class GatedToken:
    """A :class:`CancelToken` seen through a :class:`Gate`."""

    def __init__(self, token: CancelToken, gate: Gate) -> None:
        self._token = token
        self._gate = gate

    def raise_if_cancelled(self) -> None:
        gate = self._gate
        gate.checks += 1
        if gate.checks == 2:
            gate.first_batch_done.set()
            self._token.wait(BOUND)
        self._token.raise_if_cancelled()
        gate.batches_started += 1

    def __getattr__(self, name: str) -> object:
        return getattr(self._token, name)


class ObservedMiniLM(MiniLMEmbedder):
    """MiniLMEmbedder whose encode loop can run under a :class:`Gate`; unchanged otherwise."""

    gate: Gate | None = None

    def _encode(self, token: CancelToken, texts: list[str]) -> list[list[float]]:
        gate = self.gate
        if gate is None:
            return super()._encode(token, texts)
        try:
            return super()._encode(gate.wrap(token), texts)  # type: ignore[arg-type]
        except BaseException as exc:
            gate.raised = exc
            raise
        finally:
            gate.finished.set()


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def loaded() -> ObservedMiniLM:
    # One worker thread for the model, as a CPU-bound embedder would be deployed.
    embedder = ObservedMiniLM(ThreadBridge(max_threads=1))
    with anyio.fail_after(300), Lifetime.root("test") as lifetime:
        await embedder.open(lifetime)
    assert not lifetime.cancelled
    return embedder


@pytest.fixture
def embedder(loaded: ObservedMiniLM) -> Iterator[ObservedMiniLM]:
    """The module's embedder, with the attributes a test changes put back after it."""
    saved = (loaded.batch_size, loaded.bf16)
    try:
        yield loaded
    finally:
        loaded.batch_size, loaded.bf16 = saved
        loaded.gate = None


@pytest.fixture(scope="module")
def test_set() -> list[str]:
    """The first 200 Cranfield abstracts if the shared data is there, else 50 sentences."""
    corpus = CRANFIELD / "cran.all.1400"
    if corpus.is_file():
        abstracts = cranfield_abstracts(corpus, TEST_SET_SIZE)
        assert len(abstracts) == TEST_SET_SIZE
        return abstracts
    return list(FALLBACK_SENTENCES)


async def embed(
    embedder: MiniLMEmbedder, texts: Sequence[str], *, kind: EmbedKind = "document"
) -> list[list[float]]:
    vectors: list[list[float]] | None = None
    with Lifetime.root("test") as lifetime:
        vectors = await embedder.embed(texts, lifetime, kind=kind)
    assert vectors is not None, "embed did not return"
    return vectors


def test_cranfield_parser_reads_abstracts_only(tmp_path: Path) -> None:
    """The parser keeps .W text, drops other fields and stray markers, handles CRLF."""
    sample = (
        ".I 1\r\n.T\r\ntitle one\r\n.A\r\nauthor\r\n.B\r\nref\r\n.W\r\nfirst  abstract\r\n"
        "second line\r\n.I 2\r\n.T\r\nempty\r\n.A\r\n.B\r\n.W\r\n"
        ".I 3\r\n.T\r\nt\r\n.W\r\nthird\r\n.A\r\nstill third\r\n"
    )
    path = tmp_path / "cran.all.1400"
    path.write_bytes(sample.encode())
    assert cranfield_abstracts(path, 10) == ["first abstract second line", "third still third"]
    assert cranfield_abstracts(path, 1) == ["first abstract second line"]


async def test_vectors_have_384_dimensions_and_unit_length(embedder: ObservedMiniLM) -> None:
    """Every text, short or past the 256-token limit, becomes a 384-d unit vector."""
    texts = [*FALLBACK_SENTENCES, "", "word " * 1000]
    # The overlong text alone: in a batch it would pad every other text to 256 tokens.
    vectors = await embed(embedder, texts[:-1]) + await embed(embedder, texts[-1:])
    assert isinstance(embedder, Embedder)
    assert (embedder.model, embedder.dimensions) == ("all-MiniLM-L6-v2", 384)
    assert len(vectors) == len(texts)
    for text, vector in zip(texts, vectors, strict=True):
        assert len(vector) == 384, text[:40]
        assert all(isinstance(x, float) and math.isfinite(x) for x in vector)
        assert norm(vector) == pytest.approx(1.0, abs=1e-4), text[:40]
    assert await embed(embedder, []) == []


async def test_close_sentences_score_higher_than_unrelated_ones(
    embedder: ObservedMiniLM,
) -> None:
    """A paraphrase is nearer its query than an unrelated sentence, and nearest of all."""
    queries = await embed(embedder, [q for q, _, _ in TRIPLES], kind="query")
    documents = await embed(embedder, [t for _, c, u in TRIPLES for t in (c, u)])
    for i, (query, (text, close, unrelated)) in enumerate(zip(queries, TRIPLES, strict=True)):
        near, far = dot(query, documents[2 * i]), dot(query, documents[2 * i + 1])
        assert near > far + 0.2, (text, close, near, unrelated, far)
        best = max(range(len(documents)), key=lambda j: dot(query, documents[j]))
        assert best == 2 * i, (
            text,
            "nearest was",
            [t for _, c, u in TRIPLES for t in (c, u)][best],
        )


async def test_bf16_autocast_keeps_quality(embedder: ObservedMiniLM, test_set: list[str]) -> None:
    """bf16 autocast and fp32 embed the test set to vectors with cosine >= 0.999."""
    texts = sorted(test_set, key=len)  # batches of like lengths: less padding, same vectors
    embedder.bf16 = True
    fast = await embed(embedder, texts)
    embedder.bf16 = False
    exact = await embed(embedder, texts)
    assert fast != exact, "bf16 autocast changed nothing: the comparison would be vacuous"
    cosines = [cosine(a, b) for a, b in zip(fast, exact, strict=True)]
    worst = min(range(len(cosines)), key=cosines.__getitem__)
    assert cosines[worst] >= 0.999, (
        f"minimum cosine bf16 vs fp32 is {cosines[worst]:.6f} over {len(texts)} texts "
        f"({texts[worst][:80]!r})"
    )


async def test_cancellation_stops_at_the_next_batch(embedder: ObservedMiniLM) -> None:
    """Cancelled during the first of 400 batches, embed returns at once and the worker
    stops before the second batch, unwinding with ThreadCancelled."""
    texts = [f"Sentence number {i} about wings, shocks and boundary layers." for i in range(400)]
    embedder.batch_size = 1
    gate = embedder.gate = Gate()
    request = Lifetime.root("app").child("request")

    async def cancel_after_first_batch() -> None:
        assert await anyio.to_thread.run_sync(
            gate.first_batch_done.wait, BOUND, abandon_on_cancel=True
        )
        request.cancel(Cause.CLIENT_DISCONNECTED, "client went away")

    with anyio.fail_after(BOUND):
        async with anyio.create_task_group() as tg:
            tg.start_soon(cancel_after_first_batch)
            with request:
                await embedder.embed(texts, request)
                pytest.fail("embed returned from a cancelled call")
    cancelled = time.monotonic()
    assert await anyio.to_thread.run_sync(gate.finished.wait, BOUND), "the worker never stopped"
    stopped_after = time.monotonic() - cancelled

    assert gate.batches_started == 1, f"{gate.batches_started} of 400 batches ran"
    assert gate.checks == 2
    assert isinstance(gate.raised, ThreadCancelled), repr(gate.raised)
    assert gate.raised.reason == request.reason
    assert gate.raised.reason.cause is Cause.CLIENT_DISCONNECTED
    assert stopped_after < 5.0, f"the worker took {stopped_after:.2f}s to stop"

    embedder.gate = None
    again = await embed(embedder, texts[:3])
    assert [len(v) for v in again] == [384, 384, 384], "the embedder broke after a cancel"


def encoded(embedder: MiniLMEmbedder, texts: list[str], *, bf16: bool) -> list[list[float]]:
    """``texts`` through sentence-transformers' ``encode()``, one batch, as the embedder
    called it before it ran the model's modules itself."""
    import torch

    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
        out = embedder._model.encode(
            texts,
            batch_size=len(texts),
            normalize_embeddings=True,
            convert_to_tensor=True,
            show_progress_bar=False,
        )
    vectors: list[list[float]] = out.float().tolist()
    return vectors


@pytest.mark.parametrize("bf16", [True, False])
async def test_vectors_are_encodes_own(
    embedder: ObservedMiniLM, test_set: list[str], bf16: bool
) -> None:
    """Queries one at a time (one thread, oneDNN's prepacked weights under bf16) and a
    batch of documents embed as ``encode()`` embeds them: cosine >= 0.9999 each."""
    embedder.bf16 = bf16
    queries = [q for q, _, _ in TRIPLES] + FALLBACK_SENTENCES[:10]
    pairs = [
        (cosine(a, b), text)
        for text in queries
        for a, b in zip(
            await embed(embedder, [text], kind="query"),
            encoded(embedder, [text], bf16=bf16),
            strict=True,
        )
    ]
    documents = test_set[:TEST_SET_SIZE]
    mine = await embed(embedder, documents)
    theirs = encoded(embedder, documents, bf16=bf16)
    pairs += [(cosine(a, b), text) for a, b, text in zip(mine, theirs, documents, strict=True)]
    worst, text = min(pairs)
    assert worst >= 0.9999, f"cosine {worst:.6f} to encode() for {text[:80]!r}"


async def test_a_query_runs_on_one_thread_and_a_batch_on_all(
    embedder: ObservedMiniLM, test_set: list[str]
) -> None:
    """One short text runs on one intra-op thread, a 64-text batch on as many as torch
    had at load; the count is back to that after either, for threads started later."""
    import torch

    seen: list[int] = []
    model = embedder._bf16_weights() if embedder.bf16 else embedder._model
    hook = model.register_forward_pre_hook(lambda *_: seen.append(torch.get_num_threads()))
    try:
        await embed(embedder, ["how do wings stall?"], kind="query")
        await embed(embedder, test_set[:TEST_SET_SIZE])
    finally:
        hook.remove()
    assert seen == [1, embedder._threads]

    later: list[int] = []
    thread = threading.Thread(target=lambda: later.append(torch.get_num_threads()))
    thread.start()
    thread.join(BOUND)
    assert later == [embedder._threads]
