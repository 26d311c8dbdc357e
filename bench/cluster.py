"""The cluster mode on this machine (``ragline cluster``'s topology: PostgreSQL from its
wheel, a ``milvus-lite server``, replicas and workers as processes), measured:

- ingestion throughput of one corpus (Cranfield, 1,400 abstracts, MiniLM) with 1 and with
  2 worker processes, one torch thread each (the aim: 2 workers ≥ 1.7× one);
- cross-replica cancel of a run: ``DELETE`` on replica B of a run that replica A streams
  from the upstream, until the upstream sees A close its connection (p50/p99, aim p99
  ≤ 100 ms);
- cancel of a background response (``POST /v1/responses/{id}/cancel``), on the replica
  that runs it and on the other one, until the upstream sees its connection close (aim
  ≤ 100 ms);
- cross-replica cancel of a job: ``DELETE`` on B until the part running on a worker has
  stopped at its batch boundary (the job reads ``cancelled``);
- take-over after ``kill -9`` of the worker running a part: until another worker writes
  the part's next document (heartbeat 1 s, stalled after 5 s here).

    .venv/bin/python bench/cluster.py [--runs N] [--documents N] [--responses-only]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import psycopg
from client import Connection
from compare import raise_open_files
from retrieval import DEFAULT_DATA, load_cranfield

from ragline.cli.cluster import LocalCluster, local_cluster

HERE = Path(__file__).parent

ENV = {
    "RAGLINE_LLM_PROVIDER": "openai",
    "RAGLINE_LLM_MODEL": "fake-model",
    "RAGLINE_INGEST_BATCH_SIZE": "32",
    "RAGLINE_INGEST_PART_DOCUMENTS": "100",
    "RAGLINE_WORKER_HEARTBEAT": "1",
    "RAGLINE_WORKER_STALLED_AFTER": "5",
    "OMP_NUM_THREADS": "1",  # one torch thread per process: workers scale by processes
    "MKL_NUM_THREADS": "1",
    "RAGLINE_LOG_LEVEL": "warning",
}


@asynccontextmanager
async def upstream() -> AsyncIterator[str]:
    """The benchmarks' fake model server in its own process; its base URL."""
    process = await anyio.open_process(
        [sys.executable, str(HERE / "upstream.py"), "--port", "0"], stderr=subprocess.DEVNULL
    )
    assert process.stdout is not None
    line = b""
    async for chunk in process.stdout:
        line += chunk
        if b"\n" in line:
            break
    port = int(line.split()[1])
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        await process.wait()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def wait_state(http: httpx.AsyncClient, url: str, job_id: str, *states: str) -> Any:
    while True:
        status = (await http.get(f"{url}/api/v1/ingest/{job_id}")).json()
        if status["state"] in states:
            return status
        await anyio.sleep(0.05)


def documents(limit: int) -> list[dict[str, str]]:
    cranfield = load_cranfield(DEFAULT_DATA)
    return [{"id": d.id, "text": d.text} for d in cranfield.documents[:limit]]


async def ingestion(folder: Path, llm: str, workers: int, corpus: list[dict[str, str]]) -> float:
    """Seconds from submit to succeeded, the corpus on ``workers`` worker processes."""
    env = {**ENV, "RAGLINE_LLM_BASE_URL": f"{llm}/v1"}
    async with local_cluster(folder, env=env) as cluster:
        api = await cluster.replica(env={"RAGLINE_SERVE_JOBS": "false"})
        for _ in range(workers):
            await cluster.worker()
        async with httpx.AsyncClient(timeout=60) as http:
            # Warm: every worker has loaded its model before the clock starts.
            warm = await http.post(
                f"{api}/api/v1/ingest",
                json={"documents": [{"id": "w", "text": "warm up"}], "collection": "warm"},
            )
            await wait_state(http, api, warm.json()["job_id"], "succeeded")
            await anyio.sleep(10)  # every worker has loaded its model by now
            started = time.perf_counter()
            job = await http.post(f"{api}/api/v1/ingest", json={"documents": corpus})
            status = await wait_state(
                http, api, job.json()["job_id"], "succeeded", "failed", "cancelled"
            )
            seconds = time.perf_counter() - started
        assert status["state"] == "succeeded", status
        return seconds


async def response_cancels(
    http: httpx.AsyncClient, llm: str, a: str, b: str, count: int
) -> list[float]:
    """Background responses started on ``a`` and cancelled on ``b``: ms until the
    upstream saw ``a`` close its call."""
    latencies = []
    for i in range(count):
        tag = f"resp{i}-{a == b}"
        text = f"[bench tag={tag} tokens=100000 interval=0.01] talk"
        body = {"model": "m", "input": text, "background": True}
        made = (await http.post(f"{a}/v1/responses", json=body)).json()
        while not (await calls(http, llm, tag)):
            await anyio.sleep(0.01)
        await anyio.sleep(0.1)
        asked = time.monotonic()
        await http.post(f"{b}/v1/responses/{made['id']}/cancel")
        while (call := (await calls(http, llm, tag))[0])["closed_at"] is None:
            await anyio.sleep(0.005)
        latencies.append((call["closed_at"] - asked) * 1000)
    return latencies


async def hold(replica: str, count: int) -> list[Connection]:
    """``count`` streams held open on ``replica`` (one token a second each), each past
    its first token: the load a cancel from another replica has to cut through."""
    port = int(replica.rsplit(":", 1)[1])
    conns: list[Connection] = []
    for i in range(count):
        body = {
            "model": "fake-model",
            "stream": True,
            "messages": [{"role": "user", "content": f"[bench tag=h{i} tokens=3600 interval=1]"}],
        }
        conns.append(await Connection.request(port, "/v1/chat/completions", body))
        if i % 100 == 99:
            await anyio.sleep(0.05)  # a batch at a time, as clients arrive
    with anyio.fail_after(120):
        for conn in conns:
            await conn.wait_tokens(1)
    return conns


async def cancels(
    folder: Path, llm: str, runs: int, only_responses: bool = False, held: int = 0
) -> dict[str, Any]:
    """Run cancels across replicas, a job cancel, and a take-over after kill -9."""
    env = {**ENV, "RAGLINE_LLM_BASE_URL": f"{llm}/v1"}
    out: dict[str, Any] = {}
    async with (
        local_cluster(folder, env=env) as cluster,
        httpx.AsyncClient(timeout=60) as http,
    ):
        # Room for the held streams: the default pool of 32 would queue them.
        wide = {"RAGLINE_SERVE_JOBS": "false", "RAGLINE_LLM_MAX_CONNECTIONS": "16384"}
        a = await cluster.replica(env=wide)
        b = await cluster.replica(env={"RAGLINE_SERVE_JOBS": "false"})
        held_streams = await hold(a, held)
        out["held_streams"] = len(held_streams)
        latencies = []
        for i in range(runs):
            tag = f"run{i}"
            query = f"[bench tag={tag} tokens=100000 interval=0.01] talk"
            run_id = (await http.post(f"{a}/api/v1/runs", json={"query": query})).json()["run_id"]
            while not (await calls(http, llm, tag)):
                await anyio.sleep(0.01)
            await anyio.sleep(0.1)
            asked = time.monotonic()
            await http.delete(f"{b}/api/v1/runs/{run_id}")
            while (call := (await calls(http, llm, tag))[0])["closed_at"] is None:
                await anyio.sleep(0.005)
            latencies.append((call["closed_at"] - asked) * 1000)
        out["run_cancel_ms"] = latencies
        for conn in held_streams:
            conn.hang_up()
        out["response_cancel_ms"] = {
            "same": await response_cancels(http, llm, a, a, runs),
            "other": await response_cancels(http, llm, a, b, runs),
        }
        if only_responses:
            return out
        out["job"] = await job_cancel(cluster, http, a, b)
        out["takeover_s"] = await takeover(cluster, http, a)
    return out


async def calls(http: httpx.AsyncClient, llm: str, tag: str) -> list[dict[str, Any]]:
    answer = await http.get(f"{llm}/_calls", params={"tag": tag, "brief": "1"})
    return list(answer.json()["calls"])


async def job_cancel(cluster: LocalCluster, http: httpx.AsyncClient, a: str, b: str) -> float:
    worker = await cluster.worker()
    corpus = documents(300)
    answer = await http.post(f"{a}/api/v1/ingest", json={"documents": corpus[:100]})
    job_id = answer.json()["job_id"]
    while True:
        progress = (await http.get(f"{b}/api/v1/ingest/{job_id}")).json()["progress"]
        if progress and progress["chunks"]["done"] >= 32:
            break
        await anyio.sleep(0.05)
    asked = time.perf_counter()
    await http.delete(f"{b}/api/v1/ingest/{job_id}")
    await wait_state(http, b, job_id, "cancelled", "succeeded", "failed")
    seconds = time.perf_counter() - asked
    worker.terminate()
    await worker.wait()
    return seconds


async def takeover(cluster: LocalCluster, http: httpx.AsyncClient, api: str) -> float:
    """One long part on a first worker; a second worker, idle, takes it over after the
    first is killed. Seconds from the kill to the next document the second one writes."""
    first = await cluster.worker()
    texts = [d["text"] for d in documents(500)]
    corpus = [{"id": f"k{i}", "text": "\n\n".join(texts[i * 5 : i * 5 + 5])} for i in range(100)]
    await http.post(f"{api}/api/v1/ingest", json={"documents": corpus, "collection": "k"})

    def switched() -> int:
        with psycopg.connect(cluster.database_url) as conn:
            row = conn.execute("SELECT count(*) FROM documents WHERE collection = 'k'")
            return int(row.fetchone()[0])  # type: ignore[index]

    while switched() < 3:
        await anyio.sleep(0.05)
    await cluster.worker()
    await anyio.sleep(15)  # the second worker has loaded its model, and waits for work
    first.send_signal(signal.SIGKILL)
    killed = time.perf_counter()
    await first.wait()
    before = switched()
    assert before < len(corpus), "the part ended before the kill: make it longer"
    while switched() <= before:
        await anyio.sleep(0.05)
    return time.perf_counter() - killed


def _cancel_row(what: str, latencies: list[float]) -> str:
    return (
        f"| {what} (n={len(latencies)}) | p50 {statistics.median(latencies):.1f} ms, "
        f"p99 {percentile(latencies, 0.99):.1f} ms (aim ≤ 100 ms) |"
    )


async def responses_only(runs: int, out: Path, held: int = 0) -> None:
    """Only the cancels of runs and background responses (no ingestion, no take-over),
    with ``held`` streams open on the replica that runs them."""
    with tempfile.TemporaryDirectory(prefix="ragline-cluster-") as tmp:
        async with upstream() as llm:
            results = await cancels(Path(tmp) / "cancel", llm, runs, only_responses=True, held=held)
    response_ms = results["response_cancel_ms"]
    run_ms = results["run_cancel_ms"]
    lines = [
        "| cancel on one machine (2 cores) | result |",
        "|---|---|",
        _cancel_row("run cancel across replicas, DELETE on B", run_ms),
        _cancel_row("background response cancel on its replica", response_ms["same"]),
        _cancel_row("background response cancel on the other replica", response_ms["other"]),
    ]
    if held:
        p99 = percentile(run_ms, 0.99)
        lines.append(
            f"| the same with {results['held_streams']:,} streams held on the replica "
            f"that runs it (aim p99 ≤ 10 ms) | p99 {p99:.1f} ms: "
            f"{'met' if p99 <= 10 else '**not met**'} |"
        )
    print("\n".join(lines))
    out.mkdir(parents=True, exist_ok=True)
    name = f"cancels-held{held}" if held else "cancels"
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    (out / f"{name}.json").write_text(json.dumps(results, indent=1))


async def main(runs: int, limit: int, out: Path) -> None:
    corpus = documents(limit)
    results: dict[str, Any] = {"documents": len(corpus)}
    with tempfile.TemporaryDirectory(prefix="ragline-cluster-") as tmp:
        async with upstream() as llm:
            for workers in (1, 2):
                seconds = await ingestion(Path(tmp) / f"ingest{workers}", llm, workers, corpus)
                results[f"ingest_{workers}_s"] = seconds
                print(f"ingestion, {workers} worker(s): {seconds:.1f} s", flush=True)
            results.update(await cancels(Path(tmp) / "cancel", llm, runs))
    run_ms = results["run_cancel_ms"]
    speedup = results["ingest_1_s"] / results["ingest_2_s"]
    lines = [
        "| cluster on one machine (2 cores) | result |",
        "|---|---|",
        f"| ingestion, {len(corpus)} Cranfield documents, 1 worker | "
        f"{results['ingest_1_s']:.1f} s |",
        f"| ingestion, same corpus, 2 workers | {results['ingest_2_s']:.1f} s ({speedup:.2f}×; "
        "aim ≥ 1.7×) |",
        f"| run cancel across replicas, DELETE on B → upstream closed by A (n={len(run_ms)}) | "
        f"p50 {statistics.median(run_ms):.1f} ms, p99 {percentile(run_ms, 0.99):.1f} ms "
        "(aim p99 ≤ 100 ms) |",
        _cancel_row(
            "background response cancel on its replica", results["response_cancel_ms"]["same"]
        ),
        _cancel_row(
            "background response cancel on the other replica",
            results["response_cancel_ms"]["other"],
        ),
        f"| job cancel across replicas, DELETE on B → cancelled at a batch boundary | "
        f"{results['job'] * 1000:.0f} ms |",
        f"| take-over after kill -9 (heartbeat 1 s, stalled after 5 s) | "
        f"{results['takeover_s']:.1f} s |",
    ]
    print("\n".join(lines))
    out.mkdir(parents=True, exist_ok=True)
    (out / "cluster.md").write_text("\n".join(lines) + "\n")
    (out / "cluster.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=50, help="run cancels to time (50)")
    parser.add_argument("--documents", type=int, default=1400, help="corpus size (1400)")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument(
        "--responses-only", action="store_true", help="only the cancels (cancels.md)"
    )
    parser.add_argument(
        "--held", type=int, default=0, help="streams held on the replica that runs the runs"
    )
    arguments = parser.parse_args()
    os.environ.setdefault("RAGLINE_LOG_LEVEL", "warning")
    raise_open_files()
    if arguments.responses_only or arguments.held:
        anyio.run(responses_only, arguments.runs, arguments.out, arguments.held)
    else:
        anyio.run(main, arguments.runs, arguments.documents, arguments.out)
