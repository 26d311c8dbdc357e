"""Follow-up questions: does rewriting them into standalone queries help retrieval?

Builds the embedded default application (:class:`ragline.runtime.Runtime` from
``Settings(data_dir=TMP)``: all-MiniLM-L6-v2, Milvus Lite, the SQLite record store, hybrid
retrieval, the local SmolLM2-135M-Instruct on llama.cpp) over a temporary data directory,
ingests README.md and docs/ into the default collection through its job queue (as
`make serve` seeds docs/, with README.md added), then takes each pair of
bench/answers/followups.jsonl ({"first", "answer", "follow_up", "source", "contains"}:
a question, its answer, a follow-up that depends on them, the file that answers the
follow-up and a phrase of the passage that does) and retrieves for the follow-up through
the pipeline's own ``retrieve`` (top_k 4, as the principal ``local``) with the query
each variant makes of it:

- ``follow-up alone``: the follow-up as asked (``IdentityTransformer``,
  ``RAGLINE_QUERY_REWRITE=off``);
- ``LLM rewrite (local model)``: the application's own transformer, ``LLMRewriter``
  (``RAGLINE_QUERY_REWRITE=follow-ups``) over the local model, with the history
  [user: first, assistant: answer];
- ``concatenation``: no model, the previous user question and the follow-up joined with
  a space;
- ``LLM rewrite (UPSTREAM)``, with ``--upstream URL --model NAME``: ``LLMRewriter`` over an
  OpenAI-compatible server, with the same history.

The right passage is a hit from the ``source`` file whose text contains ``contains``
(both normalized as bench/answers.py does: case, whitespace, Markdown emphasis and
backticks aside). hit@1 and hit@4: the right passage is ranked first, or among the 4;
"right file in 4": a passage of the source file is among them. The rewrite's latency is
the transform alone (the local model answers one rewrite at a time, after a warm-up
rewrite that is not counted); retrieval latency is embed + dense + BM25 + fusion. Every
pair's ``contains`` is checked against the chunks first: a phrase that no chunk of its
source holds whole (cut by a chunk boundary) stops the run.

    .venv/bin/python bench/followups.py
    .venv/bin/python bench/followups.py --upstream http://127.0.0.1:11434/v1 --model qwen2.5:0.5b

Writes bench/results/followups.md (the table, for docs/BENCHMARKS.md) and followups.json
(every pair: each variant's query, rank and latencies).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import anyio
from answers import contains, quantile, same_file  # bench/answers.py, beside this file

from ragline.access import LOCAL
from ragline.documents import load_all
from ragline.factory import build_chunker, build_generator, open_parts
from ragline.jobs import SYSTEM, TERMINAL, JobInput
from ragline.lifetime import Lifetime
from ragline.models import Hit, Message
from ragline.providers import QueryTransformer
from ragline.providers.identity import IdentityTransformer
from ragline.providers.rewrite import LLMRewriter
from ragline.runtime import Runtime
from ragline.settings import Settings

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_QUESTIONS = HERE / "answers" / "followups.jsonl"
CORPUS = [ROOT / "README.md", ROOT / "docs"]
TOP_K = 4
FIELDS = ("first", "answer", "follow_up", "source", "contains")
ALONE = "follow-up alone (no rewrite)"
LOCAL_REWRITE = "LLM rewrite (local SmolLM2-135M)"
CONCAT = "concatenation: first question + follow-up"


@dataclass
class Pair:
    first: str
    answer: str
    follow_up: str
    source: str
    contains: str

    def history(self) -> list[Message]:
        return [
            Message(role="user", content=self.first),
            Message(role="assistant", content=self.answer),
        ]


@dataclass
class Outcome:
    """One variant's retrieval for one pair."""

    query: str
    rank: int | None  # 1-based rank of the right passage in the top 4, or None
    file_rank: int | None  # 1-based rank of the first passage of the source file
    rewrite_s: float
    retrieve_s: float
    hits: list[str] = field(default_factory=list)  # "source#chunk" of each hit


Rewrite = Callable[[Pair, Lifetime], Awaitable[str]]


def load(path: Path) -> list[Pair]:
    pairs = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        row = json.loads(line)
        missing = [f for f in FIELDS if not str(row.get(f, "")).strip()]
        if missing:
            raise SystemExit(f"{path}:{number}: lacks {', '.join(missing)}")
        pairs.append(Pair(**{f: row[f] for f in FIELDS}))
    return pairs


def right(hit: Hit, pair: Pair) -> bool:
    return same_file(hit.source, pair.source) and contains(hit.text, pair.contains)


def check_targets(pairs: Sequence[Pair], settings: Settings) -> int:
    """Every pair's phrase is held whole by some chunk of its source, as ingestion cuts
    them (the same loader and chunker); how many chunks the corpus has."""
    documents, _ = load_all(CORPUS)
    chunker = build_chunker(settings)
    chunks = {d.source: [c.text for c in chunker.split(d.text)] for d in documents}
    unreachable = []
    for pair in pairs:
        texts = [t for s, ts in chunks.items() if same_file(s, pair.source) for t in ts]
        if not any(contains(t, pair.contains) for t in texts):
            unreachable.append(f"{pair.source}: {pair.contains!r}")
    if unreachable:
        raise SystemExit("no chunk holds these phrases whole:\n  " + "\n  ".join(unreachable))
    return sum(len(ts) for ts in chunks.values())


def transformer_rewrite(transformer: QueryTransformer) -> Rewrite:
    async def rewrite(pair: Pair, lifetime: Lifetime) -> str:
        return await transformer.transform(pair.follow_up, pair.history(), lifetime)

    return rewrite


async def concatenation(pair: Pair, lifetime: Lifetime) -> str:
    await lifetime.checkpoint()
    return f"{pair.first} {pair.follow_up}"


async def ingest(runtime: Runtime, lifetime: Lifetime) -> dict[str, Any]:
    """README.md and docs/ into the default collection, as the seed job is run."""
    assert runtime.jobs is not None
    job_id = await runtime.jobs.submit(lifetime, JobInput(None, paths=CORPUS, owner=SYSTEM))
    while True:
        status = await runtime.jobs.status(lifetime, job_id)
        if status["state"] in TERMINAL:
            break
        await anyio.sleep(0.5)
    if status["state"] != "succeeded":
        raise SystemExit(f"ingestion {status['state']}: {status.get('error')}")
    return status


async def measure(
    runtime: Runtime, lifetime: Lifetime, rewrite: Rewrite, pair: Pair, top_k: int
) -> Outcome:
    started = time.perf_counter()
    with lifetime.child("transform") as stage:
        query = await rewrite(pair, stage)
    rewritten = time.perf_counter()
    hits = await runtime.pipeline.retrieve(query, top_k, lifetime)
    done = time.perf_counter()
    rank = next((i for i, h in enumerate(hits, start=1) if right(h, pair)), None)
    file_rank = next(
        (i for i, h in enumerate(hits, start=1) if same_file(h.source, pair.source)), None
    )
    return Outcome(
        query=query,
        rank=rank,
        file_rank=file_rank,
        rewrite_s=rewritten - started,
        retrieve_s=done - rewritten,
        hits=[f"{h.source}#{h.chunk_index}" for h in hits],
    )


def summary(outcomes: Sequence[Outcome], pairs: Sequence[Pair]) -> dict[str, Any]:
    rewrites = [o.rewrite_s for o in outcomes]
    return {
        "pairs": len(outcomes),
        "hit1": sum(o.rank == 1 for o in outcomes),
        "hit4": sum(o.rank is not None for o in outcomes),
        "file4": sum(o.file_rank is not None for o in outcomes),
        "rewrite_p50": quantile(rewrites, 0.5),
        "rewrite_p95": quantile(rewrites, 0.95),
        "retrieve_p50": quantile([o.retrieve_s for o in outcomes], 0.5),
        "unchanged": sum(
            o.query.casefold() == p.follow_up.casefold()
            for o, p in zip(outcomes, pairs, strict=True)
        ),
    }


def paired(outcomes: dict[str, list[Outcome]]) -> list[tuple[str, str, int, int]]:
    """Each variant against the follow-up alone, and each LLM rewrite against the
    concatenation: (variant, other, pairs only the variant gets right at hit@4, pairs only
    the other does)."""
    comparisons = [(name, ALONE) for name in outcomes if name != ALONE]
    comparisons += [(name, CONCAT) for name in outcomes if name.startswith("LLM rewrite")]
    found = []
    for a, b in comparisons:
        hits = [
            (x.rank is not None, y.rank is not None)
            for x, y in zip(outcomes[a], outcomes[b], strict=True)
        ]
        found.append((a, b, sum(x and not y for x, y in hits), sum(y and not x for x, y in hits)))
    return found


def seconds(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"


def share(count: int, total: int) -> str:
    return f"{count}/{total} ({100 * count / total:.0f}%)"


HEADERS = [
    "variant (query retrieved with)",
    "hit@1",
    "hit@4",
    "right file in 4",
    "rewrite p50 / p95",
    "retrieve p50",
]


def markdown(results: dict[str, Any]) -> str:
    corpus = results["corpus"]
    rows = [
        f"`{results['command']}` ({results['date']}, {results['machine']}): "
        f"{results['pairs']} follow-up pairs (`{results['questions']}`) over "
        f"README.md and docs/ ({corpus['documents']} documents, {corpus['chunks']} chunks), "
        f"the embedded default pipeline (MiniLM, Milvus Lite, SQLite, hybrid retrieval), "
        f"top_k {results['top_k']}. The right passage: a hit from the pair's source file "
        "that contains its phrase; right file: any passage of that file.",
        "",
        "| " + " | ".join(HEADERS) + " |",
        "|---" * len(HEADERS) + "|",
    ]
    for name, s in results["variants"].items():
        n = s["pairs"]
        latency = f"{seconds(s['rewrite_p50'])} / {seconds(s['rewrite_p95'])}"
        rows.append(
            f"| {name} | {share(s['hit1'], n)} | {share(s['hit4'], n)} | "
            f"{share(s['file4'], n)} | {latency} | {seconds(s['retrieve_p50'])} |"
        )
    notes = []
    for name, s in results["variants"].items():
        if name.startswith("LLM rewrite"):
            notes.append(
                f"{name}: {s['unchanged']} of {s['pairs']} queries came back as asked (case aside)."
            )
    notes.append(
        f"Ingestion {results['timing']['ingest_s']:.0f} s; the application opened (models "
        f"loaded) in {results['timing']['open_s']:.0f} s."
    )
    rows += [
        "",
        "Pair by pair, at hit@4: the pairs one variant gets right and the other does not.",
        "",
        "| variant | against | right only with the variant | right only with the other |",
        "|---|---|---|---|",
    ]
    rows += [f"| {a} | {b} | {won} | {lost} |" for a, b, won, lost in results["paired"]]
    rows += ["", " ".join(notes)]
    return "\n".join(rows)


def shown(path: Path) -> str:
    """``path`` relative to the checkout when it is inside it."""
    resolved = path.resolve()
    return str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) else str(path)


def machine() -> str:
    cores = os.cpu_count() or 0
    return f"{platform.machine()}, {cores} cores"


async def run(args: argparse.Namespace) -> dict[str, Any]:
    pairs = load(args.questions)
    data_dir = Path(tempfile.mkdtemp(prefix="ragline-followups-"))
    # The embedded default, whatever the environment says: the local model, local
    # embeddings, Milvus Lite and SQLite in the data directory, hybrid retrieval.
    settings = Settings(
        data_dir=str(data_dir),
        llm_provider="local",
        embeddings="local",
        vector_uri=None,
        database_url=None,
        retrieval=True,
        retrieval_mode="hybrid",
        query_rewrite="follow-ups",
        seed_docs=None,
    )
    chunk_count = check_targets(pairs, settings)
    timing: dict[str, float] = {}
    began = time.perf_counter()
    runtime = Runtime(settings)
    transformer = runtime.pipeline.transformer
    if not isinstance(transformer, LLMRewriter) or not transformer.follow_ups_only:
        raise SystemExit(f"the default transformer is {transformer!r}, not LLMRewriter(follow-ups)")
    variants: dict[str, Rewrite] = {
        ALONE: transformer_rewrite(IdentityTransformer()),
        LOCAL_REWRITE: transformer_rewrite(transformer),
        CONCAT: concatenation,
    }
    try:
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(runtime.running())
            timing["open_s"] = time.perf_counter() - began
            if not runtime.ready:
                raise SystemExit(f"the application is not ready: {runtime.unavailable}")
            with runtime.lifetime.child("followups") as lifetime:
                lifetime.bind("principal", LOCAL)
                started = time.perf_counter()
                status = await ingest(runtime, lifetime)
                timing["ingest_s"] = time.perf_counter() - started
                if args.upstream:
                    upstream = build_generator(
                        Settings(
                            llm_provider="openai",
                            llm_base_url=args.upstream,
                            llm_model=args.model,
                            llm_api_key=os.environ[args.api_key_env] if args.api_key_env else None,
                        ),
                        runtime.threads,
                    )
                    await open_parts(stack, lifetime, [upstream], grace=settings.shutdown_grace)
                    rewriter = LLMRewriter(upstream, follow_ups_only=True)
                    variants[f"LLM rewrite ({args.model} upstream)"] = transformer_rewrite(rewriter)
                # Warm-up: the first generation and the first search pay one-off costs.
                for rewrite in variants.values():
                    await measure(runtime, lifetime, rewrite, pairs[0], args.top_k)
                outcomes: dict[str, list[Outcome]] = {name: [] for name in variants}
                for number, pair in enumerate(pairs, start=1):
                    print(f"[{number}/{len(pairs)}] {pair.first} → {pair.follow_up}")
                    for name, rewrite in variants.items():  # interleaved: drift weighs alike
                        outcome = await measure(runtime, lifetime, rewrite, pair, args.top_k)
                        outcomes[name].append(outcome)
                        mark = f"hit@{outcome.rank}" if outcome.rank else "miss"
                        print(
                            f"    {mark:6} {seconds(outcome.rewrite_s):>9}  {name}: {outcome.query}"
                        )
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    progress = status.get("progress") or {}
    documents, chunks = progress.get("documents", {}), progress.get("chunks", {})
    return {
        "command": " ".join(["python bench/followups.py", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "pairs": len(pairs),
        "questions": shown(args.questions),
        "top_k": args.top_k,
        "corpus": {
            "documents": documents.get("done", "?"),
            "chunks": chunks.get("done", "?"),
            "chunks_expected": chunk_count,
            "errors": progress.get("errors"),
        },
        "timing": timing,
        "variants": {name: summary(found, pairs) for name, found in outcomes.items()},
        "paired": paired(outcomes),
        "pairs_detail": [
            {**asdict(pair), "variants": {name: asdict(outcomes[name][i]) for name in outcomes}}
            for i, pair in enumerate(pairs)
        ],
    }


def main(args: argparse.Namespace) -> None:
    if args.upstream and not args.model:
        raise SystemExit("--upstream needs --model")
    if args.api_key_env and args.api_key_env not in os.environ:
        raise SystemExit(f"--api-key-env: {args.api_key_env} is not set")
    results = anyio.run(run, args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "followups.json").write_text(json.dumps(results, indent=1) + "\n")
    table = markdown(results)
    (args.out / "followups.md").write_text(table + "\n")
    print()
    print(table)
    print(f"\nwrote {args.out / 'followups.md'} and followups.json")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--questions", type=Path, default=DEFAULT_QUESTIONS)
    parser.add_argument("--upstream", metavar="URL", help="an OpenAI-compatible server's /v1 URL")
    parser.add_argument("--model", default="", help="the upstream's model name")
    parser.add_argument("--api-key-env", help="the environment variable holding its API key")
    parser.add_argument("--top-k", type=int, default=TOP_K)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    main(parser.parse_args())
