"""Writes docs/BENCHMARKS.md (and its plots) from what the benchmarks left in
bench/results: compare.json (bench/compare.py), local.md (bench/local.py),
retrieval.md and permissions.md (bench/retrieval.py), answers-*.md (bench/answers.py) and
followups.md (bench/followups.py), cancels.md (bench/cluster.py --responses-only).

    .venv/bin/python bench/report.py [--results bench/results] [--out docs/BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

ORDER = [
    "direct",
    "ragline",
    "ragline-base",
    "ragline-2w",
    "ragline-h11",
    "ragline-granian",
    "ragline-responses",
    "naive",
    "naive-ragline",
    "litellm",
    "litellm-cancel",
    "langserve",
]
LABEL = {
    "direct": "direct to the upstream",
    "ragline": "ragline",
    "ragline-2w": "ragline, 2 worker processes",
    "ragline-base": "ragline at the base commit",
    "ragline-h11": "ragline on uvicorn with h11 and asyncio",
    "ragline-granian": "ragline on Granian",
    "ragline-responses": "ragline, /v1/responses",
    "naive": "naive FastAPI + openai SDK",
    "naive-ragline": "the naive proxy + RaglineMiddleware",
    "litellm": "LiteLLM proxy (defaults)",
    "litellm-cancel": "LiteLLM proxy, cancel_on_disconnect",
    "langserve": "LangServe + langchain-openai",
}
WINDOWS = {
    "mid_stream": "mid-stream",
    "before_headers": "before the upstream's headers (3 s to first token)",
    "non_streaming": "non-streaming",
}


def spread(values: list[float], unit: str = "", digits: int = 1) -> str:
    """``median [min–max]``."""
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}{unit}"
    return (
        f"{statistics.median(values):.{digits}f}{unit} "
        f"[{min(values):.{digits}f}–{max(values):.{digits}f}]"
    )


def machine() -> str:
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    memory = int(Path("/proc/meminfo").read_text().split()[1]) / 2**20
    return (
        f"{cpu}, {os.cpu_count()} cores, {memory:.0f} GiB, Linux {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def versions() -> str:
    ours = ", ".join(
        f"{name} {metadata.version(name)}"
        for name in ("ragline", "uvicorn", "starlette", "aiohttp", "httpx", "anyio")
    )
    try:
        from peers import PEERS

        theirs = "; ".join(
            f"{name}: {', '.join(peer.requirements)}" for name, peer in PEERS.items()
        )
    except ImportError:
        theirs = "(peers not available)"
    return f"ragline side: {ours}. Peers, each in its own virtual environment: {theirs}."


def names(targets: dict[str, Any]) -> list[str]:
    return [n for n in ORDER if n in targets]


def disconnect_table(targets: dict[str, Any]) -> list[str]:
    lines = [
        "| | " + " | ".join(WINDOWS.values()) + " |",
        "|---|" + "---|" * len(WINDOWS),
    ]
    for name in names(targets):
        runs = targets[name].get("disconnect")
        if not runs:
            continue
        cells = []
        for window in WINDOWS:
            trials = runs[window]
            closes = [t["close_ms"] for t in trials if t["close_ms"] is not None]
            never = len(trials) - len(closes)
            after = max(t["tokens_after"] for t in trials)
            text = f"closed in {spread(closes, ' ms')}" if closes else "never closed"
            if never and closes:
                text += f"; never closed in {never}/{len(trials)}"
            cells.append(f"{text}; tokens after: ≤ {after}")
        lines.append(f"| {LABEL[name]} | " + " | ".join(cells) + " |")
    return lines


def shutdown_table(targets: dict[str, Any]) -> list[str]:
    lines = [
        "| | exit after SIGTERM | upstream tokens after SIGTERM | what the 20 clients got |",
        "|---|---|---|---|",
    ]
    for name in names(targets):
        result = targets[name].get("shutdown")
        if not result:
            continue
        exit_s = result["exit_s"]
        exited = f"{exit_s:.2f} s" if exit_s is not None else "not within 60 s (killed)"
        clients = ", ".join(f"{k}: {v}" for k, v in result["clients"].items() if v)
        lines.append(f"| {LABEL[name]} | {exited} | {result['tokens_after']} | {clients} |")
    return lines


def overhead_table(targets: dict[str, Any]) -> list[str]:
    direct = targets.get("direct", {}).get("overhead", {}).get("runs", [])
    direct_rate = statistics.median([r["tokens_per_s"] for r in direct]) if direct else None
    lines = [
        "| | tokens/s through it | vs direct | proxy CPU per token |",
        "|---|---|---|---|",
    ]
    for name in names(targets):
        runs = targets[name].get("overhead", {}).get("runs", [])
        if not runs:
            continue
        rates = [r["tokens_per_s"] for r in runs]
        cpu = [r["cpu_us_per_token"] for r in runs]
        ratio = f"{statistics.median(rates) / direct_rate:.2f}×" if direct_rate else "–"
        cpu_text = spread(cpu, " µs") if name != "direct" else "(the upstream itself)"
        lines.append(f"| {LABEL[name]} | {spread(rates, '', 0)} | {ratio} | {cpu_text} |")
    return lines


def requests_table(targets: dict[str, Any]) -> list[str]:
    """Per request: added latency over direct (sequential, keep-alive) and throughput at
    64 concurrent connections, whole and streamed 20-token completions."""
    direct = targets.get("direct", {}).get("requests")
    lines = [
        "| | whole: added p50 / p99 | streamed: added p50 / p99 | whole req/s at 64 "
        "(server + client cores) | streamed req/s at 64 |",
        "|---|---|---|---|---|",
    ]
    for name in names(targets):
        found = targets[name].get("requests")
        if not found:
            continue
        cells = []
        for kind in ("whole", "streamed"):
            if name == "direct" or direct is None:
                cells.append(f"{found[kind]['p50_ms']:.2f} / {found[kind]['p99_ms']:.2f} ms")
            else:
                p50 = found[kind]["p50_ms"] - direct[kind]["p50_ms"]
                p99 = found[kind]["p99_ms"] - direct[kind]["p99_ms"]
                cells.append(f"+{p50:.2f} / +{p99:.2f} ms")
        for kind in ("whole", "streamed"):
            rate = found[f"{kind}_throughput"]
            failed = f" ({rate['failed']} failed)" if rate["failed"] else ""
            cores = ""
            if "server_cores" in rate:  # what the server and the load generator used
                cores = f" ({rate['server_cores']:.1f} + {rate['client_cores']:.1f} cores)"
            cells.append(f"{rate['requests_per_s']:.0f}{failed}{cores}")
        lines.append(f"| {LABEL[name]} | " + " | ".join(cells) + " |")
    if len(lines) == 2:
        return ["Not part of this run."]
    return lines


def concurrency_table(targets: dict[str, Any]) -> list[str]:
    lines = [
        "| | streams | failures | RSS per held stream | CPU while holding | all upstream "
        "connections closed after a mass hang-up (p50) | upstream tokens after it |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in names(targets):
        for result in targets[name].get("concurrency", []):
            closed = result["all_closed_s"]
            close_text = (
                f"{closed:.2f} s"
                if closed is not None
                else (f"{result['not_closed']} never closed")
            )
            if result["closed_p50_s"] is not None:
                close_text += f" ({result['closed_p50_s']:.2f} s)"
            every = result.get("token_interval_s", 1.0)
            lines.append(
                f"| {LABEL[name]} | {result['streams']} (a token every {every:g} s) | "
                f"{result['failures']} | "
                f"{result['rss_per_stream_kib']:.1f} KiB | {result['cpu_percent']:.0f}% | "
                f"{close_text} | {result['tokens_after']} |"
            )
    return lines


LIMITS = {
    "close": "a lone hang-up closes the upstream in a few ms; the slowest trials wait behind "
    "other work on the event loop (2 shared cores)",
    "cpu": "what is left per token is decoding each upstream event's JSON, the repetition "
    "guard and the SSE write downstream (py-spy); one upstream read already becomes one "
    "downstream write",
    "rss": "what a held stream keeps is Python objects spread over every layer: the "
    "coroutine frames, tasks, events and cancel scopes of the request (anyio), uvicorn's "
    "connection and its flow control, the upstream connection and its parser, the "
    "parsed request; `bench/memory.py` counts each (section 4), no line above 4 KiB",
    "latency": "a third of the proxy's time is the three socket writes every proxy makes "
    "(to the upstream, the client's headers, its body), which on this VM include waking "
    "the reader; the rest is spread thin (py-spy, section 3): the upstream's 20 stream "
    "events parsed and guarded, the boundary's task group, lifetimes and access log, "
    "pydantic; no one part above 5%",
    "responses": "the Responses route builds its typed events and response object on top "
    "of the same pipeline",
    "hangup": "each hang-up is a cancellation delivered through the request's task group, "
    "lifetime and upstream close, one after another on one event loop, sharing 2 cores "
    "with the client that hangs up and the upstream that counts",
    "throughput": "the load generator shares the 2 cores with the server and the upstream, "
    "and the server is one process on one core",
    "workers": "2 workers, the client processes and the upstream share 2 cores",
}


def memory_table(results: Path) -> list[str]:
    """Where a held stream's memory goes, from `bench/memory.py` (tracemalloc)."""
    found = results / "memory.json"
    if not found.exists():
        return []
    memory = json.loads(found.read_text())
    lines = [
        f"Where a held stream's memory goes (`bench/memory.py`: tracemalloc in a ragline "
        f"holding {memory['streams']} streams; each allocation is counted against the "
        f"innermost library that asked for it). Python heap per stream: "
        f"{memory['heap_per_stream_kib']:.1f} KiB; the rest of the RSS is the allocator's "
        "slack and C buffers that tracemalloc does not see. In anyio, `_asyncio.py:1997` is "
        "`anyio.Event` (an asyncio event and its deque of waiters) and lines 403–419 and "
        "968 are cancel scopes and task-group tasks: one per lifetime and stage.",
        "",
        "| allocated by | KiB per held stream |",
        "|---|---|",
    ]
    for name, kib in memory["by_package_kib"].items():
        if kib >= 0.1:
            lines.append(f"| {name} | {kib:.1f} |")
    lines += ["", "The largest single places:", "", "| where | KiB per held stream |", "|---|---|"]
    for name, kib in list(memory["by_line_kib"].items())[:10]:
        lines.append(f"| `{name}` | {kib:.2f} |")
    return [*lines, ""]


def request_aims(targets: dict[str, Any]) -> list[tuple[str, str, bool, str]]:
    """Per-request aims: added latency, throughput against the naive proxy, workers."""
    ours = targets["ragline"].get("requests")
    direct = targets.get("direct", {}).get("requests")
    if not ours or not direct:
        return []
    rows = []
    p50 = ours["whole"]["p50_ms"] - direct["whole"]["p50_ms"]
    p99 = ours["whole"]["p99_ms"] - direct["whole"]["p99_ms"]
    rows.append(
        (
            "added latency per whole request: p50 ≤ 0.5 ms, p99 ≤ 1.0 ms",
            f"p50 {p50:.2f} ms, p99 {p99:.2f} ms",
            p50 <= 0.5 and p99 <= 1.0,
            LIMITS["latency"],
        )
    )
    rate = ours["whole_throughput"]["requests_per_s"]
    naive = targets.get("naive", {}).get("requests")
    if naive:
        theirs = naive["whole_throughput"]["requests_per_s"]
        rows.append(
            (
                "whole requests/s at 64 connections ≥ 3× the naive proxy's",
                f"{rate:.0f} against {theirs:.0f} ({rate / theirs:.2f}×)",
                rate >= 3 * theirs,
                LIMITS["throughput"],
            )
        )
    if naive:
        for kind in ("whole", "streamed"):
            ours_added = ours[kind]["p50_ms"] - direct[kind]["p50_ms"]
            theirs_added = naive[kind]["p50_ms"] - direct[kind]["p50_ms"]
            ratio = ours_added / theirs_added if theirs_added > 0 else math.inf
            rows.append(
                (
                    f"{kind} requests: added p50 ≤ 0.4× the naive proxy's (same run)",
                    f"{ours_added:.2f} against {theirs_added:.2f} ms ({ratio:.2f}×)",
                    ratio <= 0.4,
                    LIMITS["latency"],
                )
            )
    responses = targets.get("ragline-responses", {}).get("requests")
    if responses:
        for kind in ("whole", "streamed"):
            chat = ours[kind]["p50_ms"] - direct[kind]["p50_ms"]
            theirs = responses[kind]["p50_ms"] - direct[kind]["p50_ms"]
            rows.append(
                (
                    f"/v1/responses {kind}: added p50 within 10% of /v1/chat/completions'",
                    f"{theirs:.2f} against {chat:.2f} ms ({theirs / chat:.2f}×)",
                    theirs <= 1.1 * chat,
                    LIMITS["responses"],
                )
            )
    two = targets.get("ragline-2w", {}).get("requests")
    if two:
        theirs = two["whole_throughput"]["requests_per_s"]
        rows.append(
            (
                "2 worker processes ≥ 1.7× the throughput of 1",
                f"{theirs:.0f} against {rate:.0f} ({theirs / rate:.2f}×)",
                theirs >= 1.7 * rate,
                LIMITS["workers"],
            )
        )
    return rows


def aims(targets: dict[str, Any]) -> list[str]:
    """ragline against the issue's aims, with what limits it where they are not met."""
    ours = targets.get("ragline")
    if not ours:
        return []
    rows: list[tuple[str, str, bool, str]] = []
    if ours.get("disconnect"):
        trials = [t for window in ours["disconnect"].values() for t in window]
        after = max(t["tokens_after"] for t in trials)
        rows.append(
            ("≤ 1 upstream token after a disconnect, every window", f"max {after}", after <= 1, "")
        )
        closes = sorted(t["close_ms"] if t["close_ms"] is not None else 1e9 for t in trials)
        worst = closes[min(len(closes) - 1, int(len(closes) * 0.99))]
        rows.append(
            (
                "upstream closed within 10 ms at p99",
                f"p99 {worst:.1f} ms (n={len(closes)})",
                worst <= 10,
                LIMITS["close"],
            )
        )
    if ours.get("shutdown"):
        result = ours["shutdown"]
        finals = result["clients"].get("final error event", 0)
        total = sum(result["clients"].values())
        exit_s = result["exit_s"] if result["exit_s"] is not None else 1e9
        rows.append(
            (
                "exit within 1 s of SIGTERM, a final event on every stream",
                f"{exit_s:.2f} s, {finals}/{total} final events",
                exit_s <= 1 and finals == total,
                "",
            )
        )
    runs = ours.get("overhead", {}).get("runs", [])
    if runs:
        cpu = statistics.median(r["cpu_us_per_token"] for r in runs)
        rows.append(
            ("≤ 25 µs proxy CPU per streamed token", f"{cpu:.1f} µs", cpu <= 25, LIMITS["cpu"])
        )
        base_runs = targets.get("ragline-base", {}).get("overhead", {}).get("runs", [])
        if base_runs:
            base = statistics.median(r["cpu_us_per_token"] for r in base_runs)
            rows.append(
                (
                    "CPU per streamed token at most half the base commit's (same run)",
                    f"{cpu:.1f} µs against {base:.1f} µs ({cpu / base:.2f}×)",
                    round(cpu, 1) <= round(base / 2, 1),  # CPU time comes in 0.5 µs steps
                    LIMITS["cpu"],
                )
            )
    rows += request_aims(targets)
    for result in ours.get("concurrency", []):
        rss = result["rss_per_stream_kib"]
        rows.append(
            (
                f"≤ 30 KiB RSS per held stream ({result['streams']} streams)",
                f"{rss:.1f} KiB",
                rss <= 30,
                LIMITS["rss"],
            )
        )
        if result["streams"] >= 2000:
            count = result["streams"]
            rows.append(
                (
                    f"{count:,} held streams, no failure",
                    f"{result['failures']} failures",
                    result["failures"] == 0,
                    "",
                )
            )
            closed = result["all_closed_s"]
            per_stream = result["tokens_after"] / max(count, 1)
            rows.append(
                (
                    f"mass hang-up of {count:,}: every upstream closed within 1 s, ≤ 1 "
                    "token per stream after it",
                    (f"{closed:.2f} s" if closed is not None else "not all closed")
                    + f", {per_stream:.2f} tokens per stream",
                    closed is not None and closed <= 1 and per_stream <= 1,
                    LIMITS["hangup"],
                )
            )
    lines = ["| aim | ragline | met? |", "|---|---|---|"]
    for aim, value, met, limit in rows:
        verdict = "yes" if met else f"**no**: {limit}" if limit else "**no**"
        lines.append(f"| {aim} | {value} | {verdict} |")
    return lines


def plots(targets: dict[str, Any], folder: Path) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    made = []
    shown = [n for n in names(targets) if targets[n].get("disconnect")]
    if shown:
        fig, ax = plt.subplots(figsize=(9, 4))
        width = 0.8 / len(WINDOWS)
        for i, window in enumerate(WINDOWS):
            values = []
            for name in shown:
                trials = targets[name]["disconnect"][window]
                closes = [t["close_ms"] for t in trials if t["close_ms"] is not None]
                values.append(statistics.median(closes) if closes else 6000.0)
            xs = [j + i * width for j in range(len(shown))]
            ax.bar(xs, values, width, label=WINDOWS[window])
        ax.set_yscale("log")
        ax.set_ylabel("hang-up → upstream closed (ms, log)")
        ax.set_xticks([j + width for j in range(len(shown))], [LABEL[n] for n in shown])
        ax.tick_params(axis="x", labelrotation=15, labelsize=7)
        ax.axhline(10, color="grey", linestyle="--", linewidth=0.8)
        ax.set_title("Client hang-up: how soon the upstream stops (6,000 = never)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(folder / "disconnect.png", dpi=110)
        plt.close(fig)
        made.append("disconnect.png")
    direct = targets.get("direct", {}).get("requests")
    shown = [n for n in names(targets) if n != "direct" and targets[n].get("requests")]
    if shown and direct:
        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
        width = 0.4
        for i, kind in enumerate(("whole", "streamed")):
            xs = [j + i * width for j in range(len(shown))]
            added = [targets[n]["requests"][kind]["p50_ms"] - direct[kind]["p50_ms"] for n in shown]
            rates = [targets[n]["requests"][f"{kind}_throughput"]["requests_per_s"] for n in shown]
            left.bar(xs, added, width, label=kind)
            right.bar(xs, rates, width, label=kind)
        titles = ("added latency per request, p50 (ms)", "requests/s at 64 connections")
        _finish_pair(fig, (left, right), titles, shown, width, aim=0.5)
        made.append(_save(fig, folder, "requests.png"))
    shown = [n for n in names(targets) if n != "direct" and targets[n].get("overhead")]
    if shown:
        fig, ax = plt.subplots(figsize=(8, 3.5))
        cpu = [
            statistics.median(r["cpu_us_per_token"] for r in targets[n]["overhead"]["runs"])
            for n in shown
        ]
        ax.bar([LABEL[n] for n in shown], cpu, color="tab:orange")
        ax.axhline(25, color="grey", linestyle="--", linewidth=0.8)
        ax.set_ylabel("proxy CPU per token (µs)")
        ax.set_title("Streaming 20,000 tokens from an unthrottled upstream")
        ax.tick_params(axis="x", labelrotation=15, labelsize=7)
        fig.tight_layout()
        fig.savefig(folder / "overhead.png", dpi=110)
        plt.close(fig)
        made.append("overhead.png")
    shown = [n for n in names(targets) if targets[n].get("concurrency")]
    if shown:
        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
        sizes = sorted({r["streams"] for n in shown for r in targets[n]["concurrency"]})
        width = 0.8 / len(sizes)
        for i, size in enumerate(sizes):
            rss, cpu = [], []
            for name in shown:
                found = [r for r in targets[name]["concurrency"] if r["streams"] == size]
                rss.append(found[0]["rss_per_stream_kib"] if found else 0)
                cpu.append(found[0]["cpu_percent"] if found else 0)
            xs = [j + i * width for j in range(len(shown))]
            left.bar(xs, rss, width, label=f"{size} streams")
            right.bar(xs, cpu, width, label=f"{size} streams")
        titles = ("RSS per held stream (KiB)", "CPU while holding (%)")
        _finish_pair(fig, (left, right), titles, shown, width, aim=30)
        made.append(_save(fig, folder, "concurrency.png"))
    return made


def _finish_pair(
    fig: Any,
    axes: tuple[Any, Any],
    titles: tuple[str, str],
    shown: list[str],
    width: float,
    *,
    aim: float,
) -> None:
    """Two bar charts side by side: target labels, titles, legends, the aim on the left."""
    for ax, title in zip(axes, titles, strict=True):
        ax.set_xticks([j + width / 2 for j in range(len(shown))], [LABEL[n] for n in shown])
        ax.tick_params(axis="x", labelrotation=20, labelsize=6)
        ax.set_title(title)
        ax.legend(fontsize=7)
    axes[0].axhline(aim, color="grey", linestyle="--", linewidth=0.8)
    fig.tight_layout()


def _save(fig: Any, folder: Path, name: str) -> str:
    fig.savefig(folder / name, dpi=110)
    plt.close(fig)
    return name


ANSWERS_HEADING = "## 7. Answers"
CLUSTER_HEADING = "## 8. Cluster"


def cluster(results: Path) -> list[str]:
    """`make bench-cluster`: retrieval on the cluster path, and bench/cluster.py."""
    lines = [
        "`make bench-cluster`: the cluster mode's topology on this machine "
        "(`ragline cluster`: PostgreSQL from its wheel, a `milvus-lite server` process, "
        "replicas and workers as processes). Retrieval first: the same Cranfield run as "
        "section 6, with the records and BM25 in PostgreSQL and the vectors on the Milvus "
        "server (`bench/retrieval.py --cluster`); the aim is hybrid nDCG@10 within 0.01 of "
        "section 6's. Then `bench/cluster.py`.",
        "",
    ]
    for name in ("retrieval-cluster.md", "cluster.md"):
        found = results / name
        table = (
            found.read_text().rstrip()
            if found.exists()
            else f"Not part of this run (`{name}` missing)."
        )
        lines += [table, ""]
    return lines


def answers(results: Path) -> list[str]:
    """The answer eval's runs, the embedded default's first, with the aims it is held to."""
    runs = sorted(results.glob("answers-*.md"), key=lambda p: (p.stem != "answers-default", p))
    if not runs:
        return ["Not part of this run (no `answers-*.md`)."]
    lines = [
        "`make bench-answers` (`bench/answers.py`): a real `ragline serve` over what "
        "`make serve` seeds (README.md and docs/: 12 questions a newcomer asks), ten short "
        "fictional facts (one question each), 12 questions no document answers "
        "(`unanswerable`: 8 near the docs' topics, 4 off them), and three prompts whose "
        "answers legitimately repeat their shape (`lists`), where no guard may fire. Every "
        "sentence of every answer is judged supported or unsupported by the passages it came "
        "with (`ragline.grounding`, validated against hand-labelled sentences: the agreement "
        "is under each run). Fact found: the answer contains the expected fact. Abstained: "
        "the answer says the documents do not cover it. Each run below says its settings.",
        "",
        "The first run is the embedded default: the local model's answers are extractive "
        "(`RAGLINE_ANSWER_SHAPE=extractive`: the passages' sentences that answer, cited; "
        "no model call), with abstention under a similarity of 0.3 or when the question "
        "names what no passage mentions. `local-generate` is the same model writing (the "
        "shape of 2026-11-28), `-guard` with the grounding guard on; `upstream` is an "
        "OpenAI-compatible server (the same SmolLM2 behind a second `ragline serve` with "
        "retrieval off, the passages up to 1,000 tokens), free generation as the settings' "
        "default for an upstream.",
        "",
    ]
    overview = answers_overview(results)
    if overview:
        lines += [
            "All runs side by side (unsupported sentences and first token over `docs` and "
            "`facts`; abstained over `unanswerable`; guard stops over every answer but "
            "`lists`, then on `lists`). Reproduce the first with `make bench-answers`, the "
            "others with the command under each run's table.",
            "",
            *overview,
            "",
            *answers_aims(results),
            "",
            *answers_guard(results),
        ]
    for run in runs:
        lines += [run.read_text().rstrip(), ""]
    return lines


ANSWERED = ("docs", "facts")


def _answered(run: dict[str, Any]) -> list[dict[str, Any]]:
    return [a for a in run["answers"] if a["set"] in ANSWERED]


def answers_aims(results: Path) -> list[str]:
    """The aims of the answer eval against the embedded default's run."""
    path = results / "answers-default.json"
    if not path.exists():
        return ["The aims need the embedded default's run (`answers-default.json`)."]
    run = json.loads(path.read_text())
    answered = _answered(run)
    judged = sum(a["judged"] for a in answered)
    unsupported = sum(a["unsupported"] for a in answered)
    share = unsupported / judged if judged else 0.0
    unanswerable = [a for a in run["answers"] if a["set"] == "unanswerable"]
    abstained = sum(a["abstained"] for a in unanswerable)
    ttfts = [a["ttft"] for a in answered if a["ttft"] is not None]
    ttft = statistics.median(ttfts) if ttfts else None
    rate = abstained / len(unanswerable) if unanswerable else 0.0

    def met(ok: bool) -> str:
        return "met" if ok else "**not met**"

    return [
        "| aim (embedded default) | measured | |",
        "|---|---|---|",
        f"| at most 10% unsupported sentences on `docs` and `facts` | {unsupported}/{judged} "
        f"({share:.0%}) | {met(share <= 0.10)} |",
        f"| abstains on at least 8 in 10 unanswerable questions | {abstained}/"
        f"{len(unanswerable)} ({rate:.0%}) | {met(rate >= 0.8)} |",
        f"| first token within about 2 s | p50 {ttft:.2f} s | {met(ttft <= 2.0)} |"
        if ttft is not None
        else "| first token within about 2 s | – | **not met** |",
    ]


def answers_guard(results: Path) -> list[str]:
    """What the grounding guard did, from the runs with it off and on (same model)."""
    lines = []
    for off, on in (("local-generate", "local-generate-guard"), ("upstream", "upstream-guard")):
        a, b = results / f"answers-{off}.json", results / f"answers-{on}.json"
        if not (a.exists() and b.exists()):
            continue
        runs = [json.loads(a.read_text()), json.loads(b.read_text())]
        shares, facts, cut = [], [], 0
        for run in runs:
            answered = _answered(run)
            judged = sum(x["judged"] for x in answered)
            shares.append(sum(x["unsupported"] for x in answered) / judged if judged else 0.0)
            facts.append(sum(x["grounded"] for x in answered))
        cut = sum(x["finish_reason"] == "ungrounded" for x in _answered(runs[1]))
        lines.append(
            f"- `{off}` → `{on}`: unsupported sentences {shares[0]:.0%} → {shares[1]:.0%} of "
            f"what the reader keeps; facts found {facts[0]} → {facts[1]} of "
            f"{len(_answered(runs[1]))}; the guard cut {cut} of them."
        )
    agreement = results / "answers-default.json"
    if lines and agreement.exists():
        rate = json.loads(agreement.read_text())["agreement"]["false_positive_rate"]
        lines = [
            "The grounding guard, off and on, over the same questions:",
            "",
            *lines,
            "",
            f"Its false positives: {rate:.0%} of the hand-labelled supported sentences are "
            "called unsupported (under each run), so an answer of n supported sentences is "
            f"cut with a chance of about 1 − (1 − {rate:.2f})^n. With the local model the "
            "guard is on by default: most of what it writes is invented, and a cut answer "
            "says less but nothing false (the facts it lost on `facts`, read by hand, were "
            "stated inside sentences that also invented). With an upstream it is off by "
            "default: a large model could not be "
            "measured on this machine (the upstream runs are the same SmolLM2 served over "
            "HTTP), and its longer, paraphrased answers would be cut more often; "
            "`RAGLINE_GROUNDING_GUARD=true` turns it on.",
            "",
        ]
    return lines


def answers_overview(results: Path) -> list[str]:
    """One row per answer-eval run, from its answers-LABEL.json."""
    files = sorted(results.glob("answers-*.json"), key=lambda p: (p.stem != "answers-default", p))
    if not files:
        return []
    lines = [
        "| run | unsupported sentences | fact found | abstained | cites the right source "
        "| source retrieved | degenerate | first token p50 | guard stops | on `lists` |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for path in files:
        run = json.loads(path.read_text())
        answered = _answered(run)
        others = [a for a in run["answers"] if a["set"] != "lists"]
        lists = [a for a in run["answers"] if a["set"] == "lists"]
        unanswerable = [a for a in run["answers"] if a["set"] == "unanswerable"]
        sourced = [a for a in answered if a.get("expected_source")]
        judged = sum(a.get("judged", 0) for a in answered)
        unsupported = sum(a.get("unsupported", 0) for a in answered)
        grounded = ", ".join(
            f"{name} {sum(a['grounded'] for a in answered if a['set'] == name)}"
            f"/{sum(a['set'] == name for a in answered)}"
            for name in ANSWERED
        )
        ttfts = [a["ttft"] for a in answered if a["ttft"] is not None]
        stops = ("repetition", "ungrounded")
        cut = sum(a["finish_reason"] in stops for a in others)
        cut_lists = sum(a["finish_reason"] in stops for a in lists)
        share = f" ({unsupported / judged:.0%})" if judged else ""
        lines.append(
            f"| `{run['label']}` | {unsupported}/{judged}{share} | {grounded} "
            f"| {sum(a.get('abstained', False) for a in unanswerable)}/{len(unanswerable)} "
            f"| {sum(a['cites_right'] for a in sourced)}/{len(sourced)} "
            f"| {sum(a['retrieved'] for a in sourced)}/{len(sourced)} "
            f"| {sum(a['degenerate'] is not None for a in others)}/{len(others)} "
            f"| {f'{statistics.median(ttfts):.2f} s' if ttfts else '–'} "
            f"| {cut}/{len(others)} | {f'{cut_lists}/{len(lists)}' if lists else '–'} |"
        )
    return lines


def main(results: Path, out: Path) -> None:
    compare_file = results / "compare.json"
    compare = json.loads(compare_file.read_text()) if compare_file.exists() else {"targets": {}}
    targets = compare["targets"]
    images = out.parent / "bench"
    made = plots(targets, images)
    quick = " (quick smoke mode: not representative)" if compare.get("quick") else ""
    doc = [
        "# Benchmarks",
        "",
        f"Generated by `bench/report.py` (the last step of `make bench`) on "
        f"{datetime.now(UTC):%Y-%m-%d}{quick} from what the benchmark scripts wrote to "
        "`bench/results`; no number below is typed in by hand. Medians with [min–max] over "
        "repeated trials.",
        "",
        f"- Machine: {machine()}.",
        f"- Versions: {versions()}",
        "- Commands: `make bench` runs `bench/compare.py` (ragline and its peers side by "
        "side), `bench/local.py`, `bench/retrieval.py`, `bench/answers.py`, then "
        "`bench/report.py`. "
        "`make bench-quick` is the smoke mode CI runs.",
        "- Every proxy runs in its own process on 127.0.0.1 in front of the same fake "
        "OpenAI-compatible upstream (`bench/upstream.py`, its own process), which records "
        "when every token was produced and when its connection closed, and stops generating "
        "when its client leaves (as vLLM does). Clients are raw HTTP/1.1 sockets "
        "(`bench/client.py`). CPU and memory are read from /proc for the proxy's process tree.",
        "- ragline runs with its defaults except: the fake upstream as its model server, "
        "retrieval off, `RAGLINE_LLM_MAX_CONNECTIONS=16384` (the default 32 would queue the "
        "held streams), `RAGLINE_LLM_MAX_TOKENS=100000`, `RAGLINE_REQUEST_DEADLINE` and "
        "`RAGLINE_LLM_TOTAL_TIMEOUT` of an hour (opening 10,000 streams takes minutes). "
        "Peers run with their defaults.",
        "",
        "## Aims",
        "",
        *aims(targets),
        "",
        "## 1. Disconnects",
        "",
        "The client hangs up; the upstream records when the proxy closed its connection and "
        "how many tokens it produced after the hang-up (throttled upstream, 100 tokens/s; "
        "watched for 6 s). Aim: at most one token, closed within 10 ms.",
        "",
        *disconnect_table(targets),
        "",
    ]
    if "disconnect.png" in made:
        doc += ["![disconnect latency](bench/disconnect.png)", ""]
    doc += [
        "## 2. Shutdown",
        "",
        "SIGTERM to the proxy while 20 streams are live (20 tokens/s each, 20 s long). Aim: "
        "exit within 1 s, a final event on every stream.",
        "",
        *shutdown_table(targets),
        "",
        "## 3. Overhead",
        "",
        "One stream of 20,000 tokens from an unthrottled upstream. Aim: at most 25 µs of "
        "proxy CPU per token.",
        "",
        *overhead_table(targets),
        "",
    ]
    if "overhead.png" in made:
        doc += ["![CPU per token](bench/overhead.png)", ""]
    doc += [
        "Per request: 20-token completions. Latency is each request's time one after "
        "another on one keep-alive connection, less the same through no proxy (the direct "
        "row: the upstream's own); throughput is completed requests per second with 64 "
        "keep-alive connections from 2 client processes (`bench/load.py`), which share "
        "this machine's 2 cores with the server: a floor, the same for every target. "
        "Aims: added p50 ≤ 0.5 ms and p99 ≤ 1.0 ms whole; ≥ 3× the naive proxy's "
        "throughput; 2 workers ≥ 1.7× one.",
        "",
        *requests_table(targets),
        "",
    ]
    if "requests.png" in made:
        doc += ["![per request](bench/requests.png)", ""]
    profile = results / "profile.md"
    if profile.exists():  # bench/flame.py: where the plain request's time goes
        doc += [profile.read_text().rstrip(), ""]
    doc += [
        "## 4. Concurrency",
        "",
        "Streams held open (a token a second each; past 3,000 streams a token every 5 s); "
        "memory is the proxy's RSS growth over its idle size, divided by the streams; then "
        "every client hangs up at once. The proxy, the fake upstream and the client that "
        "holds the streams share this machine's 2 cores, and every process's open-file "
        "limit is lifted (docs/DEPLOY.md, Open files). Aims: at most 30 KiB per held "
        "stream and no failure with 10,000 in one process; after the mass hang-up every "
        "upstream connection closed within 1 s, at most one token per stream after it.",
        "",
        *concurrency_table(targets),
        "",
    ]
    if "concurrency.png" in made:
        doc += ["![held streams](bench/concurrency.png)", ""]
    doc += memory_table(results)
    for number, (title, name) in enumerate(
        (("Local model and embeddings", "local.md"), ("Retrieval and ingestion", "retrieval.md")),
        start=5,
    ):
        doc += [f"## {number}. {title}", ""]
        section = results / name
        if section.exists():
            doc += [section.read_text().rstrip(), ""]
        else:
            doc += [f"Not part of this run (`{name}` missing).", ""]
        if name == "retrieval.md":  # where a question's passages wait (retrieval.json)
            import report_passages

            doc += [report_passages.section(results).rstrip(), ""]
    doc += ["## 7. Answers", "", *answers(results), ""]
    doc += [CLUSTER_HEADING, "", *cluster(results), ""]
    doc += ["## 9. Permission filter", ""]
    permissions = results / "permissions.md"
    if permissions.exists():
        doc += [permissions.read_text().rstrip(), ""]
    else:
        doc += ["Not part of this run (`permissions.md` missing).", ""]
    doc += ["## 10. Follow-up questions: retrieval with and without the rewrite", ""]
    followups = results / "followups.md"
    if followups.exists():
        doc += [followups.read_text().rstrip(), ""]
    else:
        doc += ["Not part of this run (`followups.md` missing).", ""]
    doc += ["## 11. Conversations: cancelling a background response", ""]
    cancels = results / "cancels.md"
    if cancels.exists():
        doc += [cancels.read_text().rstrip(), ""]
    else:
        doc += ["Not part of this run (`cancels.md` missing).", ""]
    import report_scale  # bench/scale.py: retrieval from 10,000 to 1,000,000 chunks

    if (results / "scale.json").exists():
        report_scale.plots(results / "scale.json", out.parent)
    scale = report_scale.section(results).rstrip()
    doc += [scale.replace("## ", "## 12. ", 1), ""]
    out.write_text("\n".join(doc) + "\n")
    print(f"wrote {out} and {len(made)} plots in {images}")


def update_answers(results: Path, out: Path) -> None:
    """Rewrite only the answers section of an existing report (`make bench-answers`)."""
    _replace_section(out, ANSWERS_HEADING, answers(results))
    print(f"updated the answers section of {out}")


def update_cluster(results: Path, out: Path) -> None:
    """Rewrite only the cluster section of an existing report (`make bench-cluster`)."""
    _replace_section(out, CLUSTER_HEADING, cluster(results))
    print(f"updated the cluster section of {out}")


def _replace_section(out: Path, heading: str, lines: list[str]) -> None:
    """``heading``'s section of ``out`` becomes ``lines``; the others stay as they are."""
    text = out.read_text()
    head, found, rest = text.partition(heading)
    if not found:
        head, rest = text.rstrip() + "\n\n", ""
    _, next_heading, tail = rest.partition("\n## ")
    section = "\n".join([heading, "", *lines]).rstrip() + "\n"
    if next_heading:
        section += "\n## " + tail
    out.write_text(head + section)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--results", type=Path, default=HERE / "results")
    parser.add_argument("--out", type=Path, default=HERE.parent / "docs" / "BENCHMARKS.md")
    parser.add_argument(
        "--answers-only", action="store_true", help="rewrite only the answers section"
    )
    parser.add_argument(
        "--cluster-only", action="store_true", help="rewrite only the cluster section"
    )
    arguments = parser.parse_args()
    if arguments.answers_only:
        update_answers(arguments.results, arguments.out)
    elif arguments.cluster_only:
        update_cluster(arguments.results, arguments.out)
    else:
        main(arguments.results, arguments.out)
