"""The Markdown section and the plots of bench/scale.py's results (bench/results/scale.json):
``section(results)`` for bench/report.py, ``plots(scale_json, docs)`` for bench/scale.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["ENGINES", "HANDOVER_LIMITS", "handover", "plots", "section"]

HEADING = "Retrieval from 10,000 to 1,000,000 chunks"
ENGINES = {
    "milvus-lite": "Milvus Lite (file, in-process)",
    "milvus-server": "Milvus 2.3 standalone (Strong reads, ragline's default)",
    "milvus-server-bounded": "Milvus 2.3 standalone (Bounded reads)",
    "sqlite-fts5": "SQLite FTS5 BM25 (embedded records)",
    "postgres-bm25": "PostgreSQL BM25 (server records)",
    "hybrid-embedded": "hybrid, embedded: Milvus Lite + FTS5, fused",
    "hybrid-server": "hybrid, server: Milvus standalone + PostgreSQL, fused",
}
PLOTTED = (
    "milvus-lite",
    "milvus-server",
    "milvus-server-bounded",
    "sqlite-fts5",
    "postgres-bm25",
    "hybrid-embedded",
    "hybrid-server",
)
PLOTS = ("bench-scale-latency.png", "bench-scale-rss.png", "bench-scale-ingest.png")
# When an embedded part should hand over to its server: the first measured size past one.
# p99 on a shared 2-core machine is noisy: the p50 limit is the tight one.
HANDOVER_LIMITS = {
    "p50_ms": 50.0,
    "p99_ms": 200.0,
    "rss_bytes": 2 * 1024**3,
    "ingest_s": 600.0,
    "index_build_s": 300.0,
}
LABELS = {
    "milvus-server": "Milvus standalone (Strong)",
    "milvus-server-bounded": "Milvus standalone (Bounded)",
    "hybrid-embedded": "hybrid, embedded",
    "hybrid-server": "hybrid, server",
}
AIM = 0.10  # the permission filter's cost, of retrieval latency
NOTES = {
    "milvus-lite": "RSS: what a fresh process gains opening the file and serving queries "
    "(anonymous memory; Lite runs in-process). Index build: flush, Lite's background index "
    "build drained, then until searches stop getting faster ('before the flush' is a search "
    "of rows written through the stores' calls, before the flush an ingestion job ends with).",
    "milvus-server": "RSS: the launcher and Milvus standalone (bench/procs.py). Strong reads "
    "wait for the server's time tick (200 ms). Index build: flush, no pending index rows, "
    "then until searches stop getting faster.",
    "milvus-server-bounded": "The same server and collection, read with Bounded consistency.",
    "sqlite-fts5": "RSS: what a fresh process gains opening the file and serving queries. "
    "Indexed in each ingestion transaction (searchable at commit); disk: the whole records "
    "file.",
    "postgres-bm25": "RSS: postmaster and backends (bench/procs.py; shared buffers counted "
    "in each). Indexed in each ingestion transaction; disk: pg_database_size growth.",
    "hybrid-embedded": "Dense and BM25 each asked for max(4·top_k, 20), fused (ragline.chat); "
    "RSS and disk: both parts; ingest: both stores' calls.",
    "hybrid-server": "As embedded hybrid, on Milvus standalone (Strong) and PostgreSQL.",
}


def _load(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))


def _sizes(data: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    return sorted((int(n), entry) for n, entry in data.get("sizes", {}).items())


def _gb(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value / 1024**3:.2f} GB" if value >= 1024**3 else f"{value / 1024**2:.0f} MB"


def _num(value: float | None, unit: str = "", digits: int = 1) -> str:
    return "–" if value is None else f"{value:,.{digits}f}{unit}"


def plots(scale_json: Path, docs: Path) -> list[str]:
    """Log-log plots of latency, RSS and ingest rate against chunks; the files made."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    sizes = _sizes(_load(scale_json))
    if len(sizes) < 1:
        return []
    made = []
    panels = [
        (PLOTS[0], "query latency at top_k 10 (ms): p50 solid, p99 dashed", None),
        (PLOTS[1], "engine RSS (GB)", "rss_bytes"),
        (PLOTS[2], "ingest rate (chunks/s, store's own calls, batch 64)", "ingest_chunks_per_s"),
    ]
    for name, title, field in panels:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for engine in PLOTTED:
            points = [(n, e["engines"][engine]) for n, e in sizes if engine in e["engines"]]
            if not points:
                continue
            xs = [n for n, _ in points]
            if field is None:
                line = ax.plot(
                    xs,
                    [r["latency_ms"]["10"]["p50"] for _, r in points],
                    "o-",
                    label=LABELS.get(engine, ENGINES[engine].split(" (")[0]),
                )
                ax.plot(
                    xs,
                    [r["latency_ms"]["10"]["p99"] for _, r in points],
                    "o--",
                    color=line[0].get_color(),
                    alpha=0.6,
                )
            else:
                ys = [r.get(field) for _, r in points]
                if not any(ys):
                    continue
                if field == "rss_bytes":
                    ys = [y / 1024**3 if y else None for y in ys]
                ax.plot(xs, ys, "o-", label=LABELS.get(engine, ENGINES[engine].split(" (")[0]))
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("chunks in the collection")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        docs.mkdir(parents=True, exist_ok=True)
        fig.savefig(docs / name, dpi=110)
        plt.close(fig)
        made.append(name)
    return made


def _cost(engine: str, p: dict[str, Any], embed: float | None) -> float:
    """The member's extra p50 over the retrieval's: the search, and for an engine that
    searches vectors the query's embedding too."""
    extra = p["member"]["p50"] - p["everything"]["p50"]
    vectors = engine.startswith(("milvus", "hybrid")) and embed is not None
    return extra / (p["everything"]["p50"] + (embed if vectors and embed else 0.0))


def handover(data: dict[str, Any], engine: str) -> tuple[int | None, list[str]]:
    """The first measured size at which ``engine`` passes a hand-over limit, and why."""
    for n, entry in _sizes(data):
        row = entry["engines"].get(engine)
        if row is None:
            continue
        why, latency = [], row["latency_ms"]["10"]
        if latency["p50"] > HANDOVER_LIMITS["p50_ms"]:
            why.append(f"p50 at top_k 10 {latency['p50']:.0f} ms > 50 ms")
        if latency["p99"] > HANDOVER_LIMITS["p99_ms"]:
            why.append(f"p99 at top_k 10 {latency['p99']:.0f} ms > 200 ms")
        if (row.get("rss_bytes") or 0) > HANDOVER_LIMITS["rss_bytes"]:
            why.append(f"RSS {_gb(row['rss_bytes'])} > 2 GB")
        if (row.get("ingest_s") or 0) > HANDOVER_LIMITS["ingest_s"]:
            why.append(f"ingestion {row['ingest_s'] / 60:.0f} min > 10 min")
        build = max(row.get("index_build_s") or 0, row.get("reopen_s") or 0)
        if build > HANDOVER_LIMITS["index_build_s"]:
            why.append(f"index build or reopen {build / 60:.0f} min > 5 min")
        if why:
            return n, why
    return None, []


def _engine_table(engine: str, sizes: list[tuple[int, dict[str, Any]]]) -> list[str]:
    rows = [(n, e["engines"][engine]) for n, e in sizes if engine in e["engines"]]
    if not rows:
        return []
    lines = [
        f"**{ENGINES[engine]}**",
        "",
        "| chunks | top_k 10 p50 / p99 | top_k 100 p50 / p99 | n | RSS | disk | ingest "
        "| index build |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for n, r in rows:
        lat = r["latency_ms"]
        ingest = r.get("ingest_chunks_per_s")
        lines.append(
            f"| {n:,} | {lat['10']['p50']:.1f} / {lat['10']['p99']:.1f} ms "
            f"| {lat['100']['p50']:.1f} / {lat['100']['p99']:.1f} ms "
            f"| {lat['10']['n']}, {lat['100']['n']} | {_gb(r.get('rss_bytes'))} "
            f"| {_gb(r.get('disk_bytes'))} | {_num(ingest, '/s', 0)} "
            f"| {_num(r.get('index_build_s'), ' s')} |"
        )
    extra = [
        f"Before the flush p50 {r['before_flush_ms']['p50']:,.0f} ms at {n:,}"
        for n, r in rows
        if r.get("before_flush_ms")
    ]
    extra += [
        f"reopened and serving in {r['reopen_s']:.1f} s at {n:,}"
        for n, r in rows
        if r.get("reopen_s") is not None
    ]
    tail = " ".join([NOTES.get(engine, ""), "; ".join(extra).capitalize() + "." if extra else ""])
    return [*lines, "", tail, ""]


def section(results: Path) -> str:
    """The Markdown section, from ``results``/scale.json (``results``: bench/results)."""
    path = results / "scale.json" if results.is_dir() else results
    if not path.exists():
        return f"## {HEADING}\n\nNo results: run `.venv/bin/python bench/scale.py`.\n"
    data = _load(path)
    sizes = _sizes(data)
    embed = data.get("query_embed_ms")
    lines = [
        f"## {HEADING}",
        "",
        "`bench/scale.py` ("
        + ", ".join(f"{n:,}" for n, _ in sizes)
        + " chunks; "
        + ", ".join(sorted({e.get("date", "?") for _, e in sizes}))
        + f"; {data.get('machine')}). "
        f"Vectors: {data.get('vectors')}. {data.get('data')} Writes through the stores' own "
        f"calls at batch {data.get('batch')}; each engine's ingest rate counts only the "
        "seconds in its own calls. Latencies are the search alone"
        + (f" (embedding a query costs p50 {embed:.1f} ms more)" if embed else "")
        + "; n: timed queries (up to 200; fewer when a case passed its time budget).",
        "",
    ]
    for name in PLOTS:
        lines.append(f"![{name}]({name})")
    lines.append("")
    for engine in ENGINES:
        lines += _engine_table(engine, sizes)
    lines += [
        "**Permission filter** (top_k 10; a member who may read "
        f"{0.30 + 0.70 / 20:.1%} of the documents, against `Readable.everything()`; "
        "interleaved; Milvus standalone's Strong reads wait for a 200 ms time tick, so "
        "their p50 jumps between about 200 and 400 ms and their ratio is that tick's noise):",
        "",
        "| chunks | engine | everything p50 | member p50 | member / everything | leaks |",
        "|---|---|---|---|---|---|",
    ]
    for n, entry in sizes:
        for engine, p in entry.get("permission", {}).items():
            lines.append(
                f"| {n:,} | {engine} | {p['everything']['p50']:.2f} ms | "
                f"{p['member']['p50']:.2f} ms | {p['ratio_p50']:.2f} | {p['leaks']} |"
            )
    lines.append("")
    for n, entry in sizes:
        if n not in (10_000, 1_000_000) or not entry.get("permission"):
            continue
        costs = {e: _cost(e, p, embed) for e, p in entry["permission"].items()}
        over = [f"{e} ({c:+.1%})" for e, c in costs.items() if c > AIM]
        alone = [
            f"{e} ({p['ratio_p50'] - 1:+.1%})"
            for e, p in entry["permission"].items()
            if p["ratio_p50"] - 1 > AIM
        ]
        verdict = "met" if not over else "not met: " + ", ".join(over)
        lines.append(
            f"- Aim: the permission filter costs under 10% of retrieval latency (the search, "
            f"plus the query's embedding for dense and hybrid) at {n:,} chunks: **{verdict}**. "
            "Of the search alone: "
            + ("under 10% everywhere." if not alone else "above 10% for " + ", ".join(alone) + ".")
        )
    for engine in ("milvus-lite", "sqlite-fts5"):
        at, why = handover(data, engine)
        text = (
            f"first passed at {at:,} chunks ({'; '.join(why)})"
            if at
            else "no limit passed at the sizes measured"
        )
        lines.append(
            f"- Hand-over of {ENGINES[engine]} (the first size with p50 > 50 ms or p99 > "
            "200 ms at top_k 10, RSS > 2 GB, ingestion > 10 min, or index build or reopen "
            f"> 5 min): {text}."
        )
    for n, entry in sizes:
        if entry.get("concurrent"):
            lines.append(f"- At {n:,} chunks {entry['concurrent']}.")
    digests = {e.get(f"{p}_source") for _, e in sizes for p in ("embedded", "server")} - {None}
    if len(digests) > 1:
        lines.append(
            "- The search and store code changed between parts (source digests "
            + ", ".join(sorted(str(d) for d in digests))
            + "): others were making searches faster meanwhile."
        )
    for item in data.get("not_measured", []):
        lines.append(f"- Not measured: {item['part']} at {item['chunks']:,}: {item['why']}.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import sys

    print(section(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "results"))
