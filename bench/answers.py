"""The answer eval: are ragline's answers worth reading?

Starts a real `ragline serve` on 127.0.0.1 over a fresh data directory, with the
project's own docs/ ingested into the collection `docs` and a corpus of short fictional
facts (bench/answers/facts) into `facts`, then asks each question of the question sets
through the streaming route and measures:

- degenerate answers: a line repeated three times, a low distinct word-trigram ratio, or a
  generation the degeneration guard had to cut (finish reason `repetition`);
- grounding: the answer contains one of the expected facts;
- citations: every `[n]` in the answer points at a source from the expected file, and
  whether that file was retrieved at all;
- time to first token and tokens per second.

    make bench-answers                         # the embedded default (local SmolLM2)
    .venv/bin/python bench/answers.py --base-url http://127.0.0.1:11434/v1 --model qwen2.5:0.5b
    .venv/bin/python bench/answers.py --env RAGLINE_LLM_REPEAT_PENALTY=1.3 --label penalty-1.3
    .venv/bin/python bench/answers.py --questions my-hidden-set.jsonl

A question set is JSON lines: {"id", "question", "expect": [any of these substrings],
"source": "FILE.md" (the file that holds the answer, "" for none), "collection"?}. Without
"collection", `facts.jsonl` asks `facts` and every other set asks `docs`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DATA = HERE / "answers"
BIN = Path(sys.executable).parent
DEFAULT_SETS = [DATA / "docs.jsonl", DATA / "facts.jsonl", DATA / "lists.jsonl"]


@dataclass
class Answer:
    """One question asked, and what came back."""

    id: str
    set: str
    question: str
    text: str = ""
    finish_reason: str | None = None
    ttft: float | None = None
    seconds: float = 0.0
    completion_tokens: int = 0
    sources: list[str] = field(default_factory=list)
    degenerate: str | None = None  # the rule that fired
    grounded: bool = False
    cites_right: bool = False
    retrieved: bool = False
    error: str | None = None


def degenerate(text: str, finish_reason: str | None) -> str | None:
    """Why an answer is degenerate, or None: the guard cut it; a line of 8+ characters
    appears three times; or, over 30+ words, under half of its word trigrams are
    distinct."""
    if finish_reason == "repetition":
        return "guard"
    lines = [line.strip() for line in text.splitlines() if len(line.strip()) >= 8]
    if any(lines.count(line) >= 3 for line in set(lines)):
        return "repeated_line"
    words = re.findall(r"\w+", text.lower())
    if len(words) >= 30:
        trigrams = list(zip(words, words[1:], words[2:], strict=False))
        if len(set(trigrams)) / len(trigrams) < 0.5:
            return "trigrams"
    return None


def normalized(text: str) -> str:
    return " ".join(re.sub(r"[*_`]", "", text).lower().split())


def load(path: Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for row in rows:
        row.setdefault("collection", "facts" if path.name == "facts.jsonl" else "docs")
        row["set"] = path.stem
    return rows


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ingest(env: dict[str, str]) -> None:
    for path, collection in ((ROOT / "docs", "docs"), (DATA / "facts", "facts")):
        subprocess.run(
            [str(BIN / "ragline"), "ingest", str(path), "--collection", collection],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )


def wait_ready(url: str, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"ragline serve exited with {server.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit("ragline serve did not become ready in 180 s")


def ask(http: httpx.Client, row: dict[str, Any], top_k: int) -> Answer:
    answer = Answer(id=row["id"], set=row["set"], question=row["question"])
    params = {"query": row["question"], "collection": row["collection"], "top_k": top_k}
    start = time.perf_counter()
    event, done, error = "message", {}, None
    parts: list[str] = []
    with http.stream("GET", "/api/v1/inference/stream", params=params) as response:
        if response.status_code != 200:
            answer.error = f"{response.status_code}: {response.read().decode()[:200]}"
            return answer
        for line in response.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data = json.loads(line[6:])
                if event == "message":
                    if answer.ttft is None:
                        answer.ttft = time.perf_counter() - start
                    parts.append(data.get("delta", ""))
                elif event == "done":
                    done = data
                elif event == "error":
                    error = data
                event = "message"
    answer.seconds = time.perf_counter() - start
    if error:
        answer.error = str(error.get("error", error))
    answer.finish_reason = done.get("finish_reason")
    answer.text = done.get("text", "".join(parts)) if done else "".join(parts)
    answer.completion_tokens = int((done.get("usage") or {}).get("completion_tokens") or 0)
    answer.sources = [Path(s.get("source", "")).name for s in done.get("sources") or []]
    judge(answer, row, "".join(parts))
    return answer


def judge(answer: Answer, row: dict[str, Any], streamed: str) -> None:
    # The degeneration check reads what the reader saw streamed, repeats included.
    answer.degenerate = degenerate(streamed, answer.finish_reason)
    text = normalized(answer.text)
    answer.grounded = any(normalized(fact) in text for fact in row["expect"])
    expected = row.get("source") or ""
    cited = [int(n) for n in re.findall(r"\[(\d+)\]", answer.text)]
    answer.retrieved = bool(expected) and expected in answer.sources
    answer.cites_right = bool(cited) and all(
        0 < n <= len(answer.sources) and answer.sources[n - 1] == expected for n in cited
    )


def summary(answers: list[Answer]) -> dict[str, Any]:
    ttfts = [a.ttft for a in answers if a.ttft is not None]
    rates = [
        a.completion_tokens / (a.seconds - a.ttft)
        for a in answers
        if a.ttft is not None and a.seconds > a.ttft and a.completion_tokens > 1
    ]
    return {
        "questions": len(answers),
        "degenerate": sum(a.degenerate is not None for a in answers),
        "degenerate_rules": sorted({a.degenerate for a in answers if a.degenerate}),
        "guard_stops": sum(a.finish_reason == "repetition" for a in answers),
        "grounded": sum(a.grounded for a in answers),
        "cites_right": sum(a.cites_right for a in answers),
        "retrieved": sum(a.retrieved for a in answers),
        "errors": sum(a.error is not None for a in answers),
        "ttft_p50": statistics.median(ttfts) if ttfts else None,
        "ttft_p90": statistics.quantiles(ttfts, n=10)[-1] if len(ttfts) > 1 else None,
        "tokens_per_second_p50": statistics.median(rates) if rates else None,
        "words_p50": statistics.median(len(a.text.split()) for a in answers) if answers else 0,
    }


def markdown(label: str, results: dict[str, Any]) -> str:
    rows = [
        f"Run `{label}` ({results['generator']}, top_k {results['top_k']}"
        + (f", {' '.join(results['env'])}" if results["env"] else "")
        + f"), {time.strftime('%Y-%m-%d')}; `{results['command']}`.",
        "",
        "| question set | questions | degenerate | guard stops | grounded "
        "| cites the right source | source retrieved | first token p50 / p90 | tokens/s p50 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in results["sets"].items():
        ttft = (
            f"{s['ttft_p50']:.2f} / {s['ttft_p90']:.2f} s"
            if s["ttft_p50"] is not None and s["ttft_p90"] is not None
            else "–"
        )
        rate = f"{s['tokens_per_second_p50']:.0f}" if s["tokens_per_second_p50"] else "–"
        rules = f" ({', '.join(s['degenerate_rules'])})" if s["degenerate_rules"] else ""
        rows.append(
            f"| {name} | {s['questions']} | {s['degenerate']}{rules} | {s.get('guard_stops', 0)} "
            f"| {s['grounded']} "
            f"| {s['cites_right']} | {s['retrieved']} | {ttft} | {rate} |"
        )
    return "\n".join(rows)


def main(args: argparse.Namespace) -> None:
    sets = args.questions or DEFAULT_SETS
    rows = [row for path in sets for row in load(path)]
    extra = dict(item.split("=", 1) for item in args.env)
    generator = "local SmolLM2-135M-Instruct (llama.cpp)"
    if args.base_url:
        generator = f"{args.model} at {args.base_url}"
        extra |= {
            "RAGLINE_LLM_PROVIDER": "openai",
            "RAGLINE_LLM_BASE_URL": args.base_url,
            "RAGLINE_LLM_MODEL": args.model,
        }
        if args.api_key_env:
            extra["RAGLINE_LLM_API_KEY"] = os.environ[args.api_key_env]
    data_dir = Path(args.data_dir or tempfile.mkdtemp(prefix="ragline-answers-"))
    env = {**os.environ, "RAGLINE_DATA_DIR": str(data_dir), "RAGLINE_LOG_LEVEL": "WARNING"}
    env |= extra
    if not (data_dir / "records.sqlite").exists():
        ingest(env)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [str(BIN / "ragline"), "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stderr=subprocess.DEVNULL,
    )
    answers: list[Answer] = []
    try:
        wait_ready(url, server)
        with httpx.Client(base_url=url, timeout=httpx.Timeout(10, read=300)) as http:
            for row in rows:
                answer = ask(http, row, args.top_k)
                answers.append(answer)
                flag = answer.degenerate or ("grounded" if answer.grounded else "not grounded")
                print(f"[{answer.set}/{answer.id}] {flag}: {' '.join(answer.text.split())[:160]}")
    finally:
        server.terminate()
        server.wait(timeout=30)
    by_set: dict[str, list[Answer]] = {}
    for answer in answers:
        by_set.setdefault(answer.set, []).append(answer)
    shown_env = [f"{k}={v}" for k, v in extra.items() if "KEY" not in k]
    results = {
        "label": args.label,
        "generator": generator,
        "top_k": args.top_k,
        "env": shown_env,
        "command": "python bench/answers.py " + " ".join(sys.argv[1:]),
        "sets": {name: summary(group) for name, group in by_set.items()},
        "answers": [asdict(a) for a in answers],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"answers-{args.label}.json").write_text(json.dumps(results, indent=1))
    (args.out / f"answers-{args.label}.md").write_text(markdown(args.label, results) + "\n")
    print(markdown(args.label, results))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--questions", type=Path, action="append", metavar="FILE")
    parser.add_argument("--base-url", help="an OpenAI-compatible server instead of the local model")
    parser.add_argument("--model", default="", help="the upstream's model name")
    parser.add_argument("--api-key-env", help="the environment variable holding its API key")
    parser.add_argument("--env", action="append", default=[], metavar="RAGLINE_X=VALUE")
    parser.add_argument("--label", default="default")
    parser.add_argument("--top-k", type=int, default=4)
    parser.add_argument("--data-dir", help="reuse an ingested data directory")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    main(parser.parse_args())
