"""The answer eval: are ragline's answers worth reading?

Starts a real `ragline serve` on 127.0.0.1 over a fresh data directory, with the
project's own docs/ ingested into the collection `docs` and a corpus of short fictional
facts (bench/answers/facts) into `facts` (both with the `ragline ingest` CLI), then asks
each question of the question sets through the streaming route
(`GET /api/v1/inference/stream`) and measures, per question and per question set:

- degenerate answers (see `degenerate`): a line repeated three times, a low distinct
  word-trigram ratio, or a generation the degeneration guard had to cut (finish reason
  `repetition`), with the rule that fired;
- fact found: the answer contains one of the expected facts (see `grounded`);
- citations: every `[n]` in the answer points at a source from the expected file ("cites
  the right source"), and whether that file was among the sources at all ("retrieved");
- grounding, sentence by sentence: each sentence of the answer judged supported or not by
  the passages it came with (`ragline.grounding`, the measure the grounding guard uses),
  whose agreement with the hand-labelled sentences of bench/answers/grounding-labels.jsonl
  every run reports; and, on `unanswerable.jsonl`, whether the answer abstained;
- time to first token (p50, p90), tokens per second (completion tokens over the time from
  the first delta to the end, p50) and answer length in words (p50);
- on `lists.jsonl`, prompts whose answers legitimately repeat their shape (a numbered
  list, a table): whether the degeneration guard cut any of them (a false positive).

    make bench-answers                         # the embedded default (local SmolLM2)
    .venv/bin/python bench/answers.py --base-url http://127.0.0.1:11434/v1 --model qwen2.5:0.5b
    .venv/bin/python bench/answers.py --env RAGLINE_LLM_REPEAT_PENALTY=1.3 --label penalty-1.3
    .venv/bin/python bench/answers.py --questions hidden.jsonl --label hidden
    .venv/bin/python bench/answers.py --data-dir /tmp/answers-data ...   # ingest once, reuse

A question set is JSON lines: {"id", "question", "expect": [any of these substrings],
"source": "GUIDE.md" or "docs/GUIDE.md" (the file that holds the answer; "GUIDE.md|README.md"
for either; "" for none),
"collection"?}. Without "collection", a question asks the corpus that holds its source
file (`docs` when none does). `--corpus COLLECTION=DIR` ingests more files for a hidden
set. Results go to bench/results/answers-LABEL.json (every answer, with its sources) and
answers-LABEL.md (the table `bench/report.py` puts in docs/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from ragline.grounding import Grounding, Verdict, abstains

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DATA = HERE / "answers"
BIN = Path(sys.executable).parent
DEFAULT_SETS = [
    DATA / "docs.jsonl",
    DATA / "facts.jsonl",
    DATA / "unanswerable.jsonl",
    DATA / "lists.jsonl",
]
# What `make serve` seeds (README.md and docs/), and the fictional facts.
CORPORA = {"docs": [ROOT / "README.md", ROOT / "docs"], "facts": [DATA / "facts"]}
LABELS = DATA / "grounding-labels.jsonl"  # hand-labelled sentences: the measure's check
LISTS = "lists"  # the set where the guard must not fire
UNANSWERABLE = "unanswerable"  # questions no document answers: the answer must abstain
SOURCE_TEXT = 4000  # characters of each source's text kept in the JSON (whole chunks)


@dataclass
class Answer:
    """One question asked, and what came back."""

    id: str
    set: str
    question: str
    collection: str
    expected_source: str
    text: str = ""  # the answer to keep (the guard's cut text when it fired)
    streamed: str = ""  # what the reader saw streamed, repeats included
    finish_reason: str | None = None
    cause: str | None = None
    ttft: float | None = None  # seconds from the request to the first delta
    seconds: float = 0.0  # seconds from the request to the last event
    prompt_tokens: int = 0
    completion_tokens: int = 0
    sources: list[dict[str, Any]] = field(default_factory=list)
    citations: list[int] = field(default_factory=list)
    degenerate: str | None = None  # the rule that fired
    # Each sentence of the answer as the grounding measure judged it against the sources:
    # {"text", "verdict" (supported, unsupported, unjudged), "novel" (words no source has)}.
    sentences: list[dict[str, Any]] = field(default_factory=list)
    unsupported: int = 0
    judged: int = 0
    abstained: bool = False
    grounded: bool = False
    cites_right: bool = False
    retrieved: bool = False
    error: str | None = None


# -- the measures --------------------------------------------------------------------------
def degenerate(text: str, finish_reason: str | None) -> str | None:
    """Why an answer is degenerate, or None. The rules, in order:

    - ``guard``: the degeneration guard cut the generation (finish reason ``repetition``);
      an answer the guard had to cut counts, even though the text kept is clean;
    - ``repeated_line``: a line of 8 or more characters (stripped) appears 3 or more times;
    - ``trigrams``: the answer has 30 or more words and under half of its word trigrams
      are distinct.

    ``text`` is what the reader saw streamed, repeats included."""
    if finish_reason == "repetition":
        return "guard"
    lines = [line.strip() for line in text.splitlines() if len(line.strip()) >= 8]
    if any(count >= 3 for count in Counter(lines).values()):
        return "repeated_line"
    words = re.findall(r"\w+", text.lower())
    if len(words) >= 30:
        trigrams = list(zip(words, words[1:], words[2:], strict=False))
        if len(set(trigrams)) / len(trigrams) < 0.5:
            return "trigrams"
    return None


def normalized(text: str) -> str:
    """Lower case, whitespace collapsed, Markdown emphasis and backticks removed."""
    return " ".join(re.sub(r"[*_`]", "", text).lower().split())


def contains(text: str, fact: str) -> bool:
    """Whether the normalized ``text`` holds the normalized ``fact``; a fact that starts
    or ends with a digit matches whole numbers only ("8" is not found in "128")."""
    wanted = normalized(fact)
    if not wanted:
        return False
    pattern = re.escape(wanted)
    if wanted[0].isdigit():
        pattern = r"(?<!\d)" + pattern
    if wanted[-1].isdigit():
        pattern += r"(?!\d)"
    return re.search(pattern, normalized(text)) is not None


def evidence(question: str, expect: list[str]) -> list[str]:
    """The expected facts that can show grounding: those the question does not already
    say (echoing the question proves nothing), or all of them if it says every one."""
    return [fact for fact in expect if not contains(question, fact)] or list(expect)


def grounded(text: str, question: str, expect: list[str]) -> bool:
    """The answer contains one of the expected facts (any of, case-insensitive)."""
    return any(contains(text, fact) for fact in evidence(question, expect))


def same_file(source: str, expected: str) -> bool:
    """Whether a source's path is the expected file (or one of them: "GUIDE.md|README.md"),
    comparing as many trailing parts as the shorter path has: "GUIDE.md" and
    "docs/GUIDE.md" both name a source "GUIDE.md" (ingestion records paths relative to the
    folder ingested) or /x/docs/GUIDE.md."""
    if "|" in expected:
        return any(same_file(source, one) for one in expected.split("|"))
    want = PurePosixPath(expected.replace("\\", "/")).parts
    have = PurePosixPath(source.replace("\\", "/")).parts
    n = min(len(want), len(have))
    return n > 0 and have[-n:] == want[-n:]


def cited(text: str) -> list[int]:
    """The ``[n]`` markers in the answer, in order of appearance, without repeats."""
    return list(dict.fromkeys(int(n) for n in re.findall(r"\[(\d+)\]", text)))


def source_of(n: int, sources: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The source ``[n]`` names: the one ranked n, else the n-th."""
    for source in sources:
        if source.get("rank") == n:
            return source
    return sources[n - 1] if 0 < n <= len(sources) else None


def judge(answer: Answer, expect: list[str]) -> None:
    answer.degenerate = degenerate(answer.streamed, answer.finish_reason)
    answer.grounded = grounded(answer.text, answer.question, expect)
    answer.abstained = abstains(answer.text)
    measure = Grounding([s.get("text", "") for s in answer.sources], answer.question)
    for sentence, judgement in measure.judge_all(answer.text):
        answer.sentences.append(
            {"text": sentence, "verdict": str(judgement.verdict), "novel": list(judgement.novel)}
        )
        if judgement.verdict is not Verdict.UNJUDGED:
            answer.judged += 1
            answer.unsupported += judgement.verdict is Verdict.UNSUPPORTED
    answer.citations = cited(answer.text)
    expected = answer.expected_source
    if not expected:
        return
    answer.retrieved = any(same_file(s.get("source", ""), expected) for s in answer.sources)
    resolved = [source_of(n, answer.sources) for n in answer.citations]
    answer.cites_right = bool(resolved) and all(
        s is not None and same_file(s.get("source", ""), expected) for s in resolved
    )


# -- the question sets ---------------------------------------------------------------------
def load(path: Path, corpora: dict[str, list[Path]]) -> list[dict[str, Any]]:
    """A question set; each row gets its set name and collection."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    files = {
        name: [str(f) for p in paths for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file()]
        for name, paths in corpora.items()
    }
    for row in rows:
        missing = {"id", "question", "expect"} - row.keys()
        if missing:
            raise SystemExit(f"{path}: {row.get('id', row)} lacks {', '.join(sorted(missing))}")
        row["set"] = path.stem
        row.setdefault("source", "")
        if not row.get("collection"):
            holders = [n for n, fs in files.items() if any(same_file(f, row["source"]) for f in fs)]
            row["collection"] = holders[0] if holders else "docs"
        if row["expect"] and all(contains(row["question"], fact) for fact in row["expect"]):
            print(f"warning: {path.name}/{row['id']}: every expected fact is in the question")
    return rows


# -- the server ----------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ingest(env: dict[str, str], corpora: dict[str, list[Path]]) -> None:
    for collection, paths in corpora.items():
        print(f"ingesting {', '.join(map(str, paths))} into {collection}")
        subprocess.run(
            [str(BIN / "ragline"), "ingest", *map(str, paths), "--collection", collection],
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


def stop(server: subprocess.Popen[bytes]) -> None:
    server.terminate()
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


# -- asking --------------------------------------------------------------------------------
def ask(http: httpx.Client, row: dict[str, Any], top_k: int) -> Answer:
    answer = Answer(
        id=row["id"],
        set=row["set"],
        question=row["question"],
        collection=row["collection"],
        expected_source=row["source"],
    )
    params = {"query": row["question"], "collection": row["collection"], "top_k": top_k}
    done: dict[str, Any] = {}
    error: dict[str, Any] = {}
    parts: list[str] = []
    start = time.perf_counter()
    try:
        with http.stream("GET", "/api/v1/inference/stream", params=params) as response:
            if response.status_code != 200:
                answer.error = f"{response.status_code}: {response.read().decode()[:200]}"
                return answer
            event = "message"
            for line in response.iter_lines():
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data = json.loads(line[5:])
                    if event == "message":
                        delta = data.get("delta", "")
                        if delta and answer.ttft is None:
                            answer.ttft = time.perf_counter() - start
                        parts.append(delta)
                    elif event == "done":
                        done = data
                    elif event == "error":
                        error = data
                elif not line:
                    event = "message"
    except (httpx.HTTPError, json.JSONDecodeError) as exc:
        answer.error = f"{type(exc).__name__}: {exc}"
    answer.seconds = time.perf_counter() - start
    final = done or error
    if error:
        answer.error = json.dumps(error.get("error", error))[:300]
    usage = final.get("usage") or {}
    answer.finish_reason = final.get("finish_reason") or usage.get("finish_reason")
    answer.cause = usage.get("cause")
    answer.prompt_tokens = int(usage.get("prompt_tokens") or 0)
    answer.completion_tokens = int(usage.get("completion_tokens") or 0)
    answer.streamed = "".join(parts)
    # A guard's cut: the text kept, even when it is empty (the first sentence was cut).
    answer.text = done.get("text", answer.streamed)
    answer.sources = [
        {**s, "text": str(s.get("text", ""))[:SOURCE_TEXT]} for s in done.get("sources") or []
    ]
    judge(answer, row["expect"])
    return answer


# -- the results ---------------------------------------------------------------------------
def quantile(values: list[float], q: float) -> float | None:
    """The q-quantile, interpolated between the values (never beyond them)."""
    if not values:
        return None
    ordered = sorted(values)
    at = q * (len(ordered) - 1)
    low = int(at)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (at - low)


def summary(answers: list[Answer]) -> dict[str, Any]:
    ttfts = [a.ttft for a in answers if a.ttft is not None]
    rates = [
        a.completion_tokens / (a.seconds - a.ttft)
        for a in answers
        if a.ttft is not None and a.seconds > a.ttft and a.completion_tokens > 1
    ]
    rules = Counter(a.degenerate for a in answers if a.degenerate)
    return {
        "questions": len(answers),
        "degenerate": sum(rules.values()),
        "degenerate_rules": dict(sorted(rules.items())),
        "guard_stops": dict(
            sorted(
                Counter(
                    a.finish_reason
                    for a in answers
                    if a.finish_reason in ("repetition", "ungrounded")
                ).items()
            )
        ),
        "grounded": sum(a.grounded for a in answers),
        "unsupported": sum(a.unsupported for a in answers),
        "judged": sum(a.judged for a in answers),
        "abstained": sum(a.abstained for a in answers),
        "with_source": sum(bool(a.expected_source) for a in answers),
        "cites_right": sum(a.cites_right for a in answers),
        "cited": sum(bool(a.citations) for a in answers),
        "retrieved": sum(a.retrieved for a in answers),
        "errors": sum(a.error is not None for a in answers),
        "ttft_p50": quantile(ttfts, 0.5),
        "ttft_p90": quantile(ttfts, 0.9),
        "tokens_per_second_p50": statistics.median(rates) if rates else None,
        "words_p50": statistics.median(len(a.text.split()) for a in answers) if answers else 0,
    }


def cells(s: dict[str, Any]) -> list[str]:
    """One question set's row: unsupported sentences, fact found, abstained, cites right,
    retrieved, degenerate, guard stops, first token, tokens/s, words."""
    n = s["questions"]
    rules = ", ".join(f"{rule} {count}" for rule, count in s["degenerate_rules"].items())
    sourced = s["with_source"]
    ttft = "–"
    if s["ttft_p50"] is not None and s["ttft_p90"] is not None:
        ttft = f"{s['ttft_p50']:.2f} / {s['ttft_p90']:.2f} s"
    rate = s["tokens_per_second_p50"]
    judged = s["judged"]
    share = f"{s['unsupported']}/{judged} ({s['unsupported'] / judged:.0%})" if judged else "0/0"
    return [
        share,
        f"{s['grounded']}/{n}",
        f"{s['abstained']}/{n}",
        f"{s['cites_right']}/{sourced}" if sourced else "–",
        f"{s['retrieved']}/{sourced}" if sourced else "–",
        f"{s['degenerate']}/{n}" + (f" ({rules})" if rules else ""),
        ", ".join(f"{k} {v}" for k, v in s["guard_stops"].items()) or "0",
        ttft,
        f"{rate:.0f}" if rate else "–",
        f"{s['words_p50']:.0f}",
    ]


HEADERS = [
    "question set",
    "unsupported sentences",
    "fact found",
    "abstained",
    "cites the right source",
    "source retrieved",
    "degenerate",
    "guard stops",
    "first token p50 / p90",
    "tokens/s p50",
    "words p50",
]


def agreement(path: Path = LABELS) -> dict[str, Any]:
    """The grounding measure against the hand-labelled sentences: accuracy, Cohen's kappa,
    and precision and recall of "unsupported" (an unjudged sentence counts as supported:
    the guard lets it through)."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    counts = Counter()
    for row in rows:
        verdict = Grounding(row["passages"], row["question"]).judge(row["sentence"]).verdict
        said = "unsupported" if verdict is Verdict.UNSUPPORTED else "supported"
        counts[(row["label"], said)] += 1
    n = len(rows)
    tp, fp = counts[("unsupported", "unsupported")], counts[("supported", "unsupported")]
    fn, tn = counts[("unsupported", "supported")], counts[("supported", "supported")]
    accuracy = (tp + tn) / n
    chance = ((tp + fp) * (tp + fn) + (tn + fn) * (tn + fp)) / (n * n)
    return {
        "sentences": n,
        "labelled_supported": tn + fp,
        "labelled_unsupported": tp + fn,
        "accuracy": accuracy,
        "kappa": (accuracy - chance) / (1 - chance),
        "precision_unsupported": tp / (tp + fp) if tp + fp else None,
        "recall_unsupported": tp / (tp + fn) if tp + fn else None,
        "false_positive_rate": fp / (tn + fp) if tn + fp else None,
    }


def agreement_text(a: dict[str, Any]) -> str:
    return (
        f"The grounding measure agrees with the {a['sentences']} hand-labelled sentences "
        f"(`bench/answers/grounding-labels.jsonl`: {a['labelled_supported']} supported, "
        f"{a['labelled_unsupported']} unsupported) on {a['accuracy']:.0%} (Cohen's kappa "
        f"{a['kappa']:.2f}); of the sentences it calls unsupported, "
        f"{a['precision_unsupported']:.0%} are; it finds {a['recall_unsupported']:.0%} of the "
        f"unsupported ones, so the unsupported share it reports is a floor; it calls "
        f"{a['false_positive_rate']:.0%} of the supported sentences unsupported (the grounding "
        "guard's false positives, per sentence)."
    )


def markdown(label: str, results: dict[str, Any]) -> str:
    settings = f", {' '.join(results['env'])}" if results["env"] else ""
    rows = [
        f"Run `{label}` ({results['generator']}, top_k {results['top_k']}{settings}), "
        f"{results['date']}; `{results['command']}`.",
        "",
        "| " + " | ".join(HEADERS) + " |",
        "|---" * len(HEADERS) + "|",
    ]
    for name, s in results["sets"].items():
        rows.append(f"| {name} | " + " | ".join(cells(s)) + " |")
    errors = sum(s["errors"] for s in results["sets"].values())
    notes = []
    if LISTS in results["sets"]:
        s = results["sets"][LISTS]
        notes.append(
            f"The guards cut {sum(s['guard_stops'].values())} of the {s['questions']} answers "
            "that legitimately repeat their shape (`lists`)."
        )
    if "agreement" in results:
        notes.append(agreement_text(results["agreement"]))
    if errors:
        notes.append(f"{errors} questions ended in an error.")
    if notes:
        rows += ["", " ".join(notes)]
    return "\n".join(rows)


SHORT = ["set", "unsupported", "fact", "abstained", "cites right", "retrieved", "degenerate"]
SHORT += ["guard", "TTFT p50/p90", "tok/s", "words"]


def show(label: str, results: dict[str, Any]) -> None:
    table = Table(title=f"answers: {label} ({results['generator']})")
    for header in SHORT:
        table.add_column(header, justify="left" if header == "set" else "right", no_wrap=True)
    for name, s in results["sets"].items():
        table.add_row(name, *cells(s))
    console = Console(width=max(Console().width, 110))
    console.print(table)
    if LISTS in results["sets"]:
        s = results["sets"][LISTS]
        stops = sum(s["guard_stops"].values())
        console.print(f"guard stops on {LISTS}: {stops}/{s['questions']}")
    if "agreement" in results:
        console.print(agreement_text(results["agreement"]))
    timing = results["timing"]
    console.print(
        f"ingestion {timing['ingest_s']:.0f} s, server ready {timing['ready_s']:.0f} s, "
        f"questions {timing['questions_s']:.0f} s, total {timing['total_s']:.0f} s"
    )


# -- the run -------------------------------------------------------------------------------
def pairs(items: list[str], what: str) -> dict[str, str]:
    found = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"{what} takes KEY=VALUE, not {item!r}")
        found[key] = value
    return found


def main(args: argparse.Namespace) -> None:
    began = time.perf_counter()
    corpora = dict(CORPORA)
    corpora |= {name: [Path(folder)] for name, folder in pairs(args.corpus, "--corpus").items()}
    rows = [row for path in args.questions or DEFAULT_SETS for row in load(path, corpora)]
    extra = pairs(args.env, "--env")
    generator = "local SmolLM2-135M-Instruct (llama.cpp)"
    if args.base_url:
        if not args.model:
            raise SystemExit("--base-url needs --model")
        generator = f"{args.model} at {args.base_url}"
        extra |= {
            "RAGLINE_LLM_PROVIDER": "openai",
            "RAGLINE_LLM_BASE_URL": args.base_url,
            "RAGLINE_LLM_MODEL": args.model,
        }
        if args.api_key_env:
            if args.api_key_env not in os.environ:
                raise SystemExit(f"--api-key-env: {args.api_key_env} is not set")
            extra["RAGLINE_LLM_API_KEY"] = os.environ[args.api_key_env]
    data_dir = Path(args.data_dir or tempfile.mkdtemp(prefix="ragline-answers-"))
    env = {**os.environ, "RAGLINE_DATA_DIR": str(data_dir), "RAGLINE_LOG_LEVEL": "WARNING"}
    env |= extra
    timing = {"ingest_s": 0.0, "ready_s": 0.0, "questions_s": 0.0}
    if (data_dir / "records.sqlite").exists():
        print(f"reusing the collections in {data_dir}")
    else:
        ingest(env, corpora)
        timing["ingest_s"] = time.perf_counter() - began
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    server = subprocess.Popen(
        [str(BIN / "ragline"), "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stderr=subprocess.DEVNULL,
    )
    answers: list[Answer] = []
    try:
        wait_ready(url, server)
        timing["ready_s"] = time.perf_counter() - started
        started = time.perf_counter()
        with httpx.Client(base_url=url, timeout=httpx.Timeout(10, read=300)) as http:
            for row in rows:
                answer = ask(http, row, args.top_k)
                answers.append(answer)
                flag = (
                    answer.error
                    or answer.degenerate
                    or (
                        (
                            "abstained"
                            if answer.abstained
                            else "fact"
                            if answer.grounded
                            else "no fact"
                        )
                        + f", {answer.unsupported}/{answer.judged} unsupported"
                    )
                )
                print(f"[{answer.set}/{answer.id}] {flag}: {' '.join(answer.text.split())[:160]}")
        timing["questions_s"] = time.perf_counter() - started
    finally:
        stop(server)
        if not args.data_dir:
            shutil.rmtree(data_dir, ignore_errors=True)
    timing["total_s"] = time.perf_counter() - began
    by_set: dict[str, list[Answer]] = {}
    for answer in answers:
        by_set.setdefault(answer.set, []).append(answer)
    results = {
        "label": args.label,
        "generator": generator,
        "top_k": args.top_k,
        "env": [f"{k}={v}" for k, v in extra.items() if "KEY" not in k],
        "command": "python bench/answers.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "timing": timing,
        "sets": {name: summary(group) for name, group in by_set.items()},
        "agreement": agreement(),
        "answers": [asdict(a) for a in answers],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"answers-{args.label}.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out / f"answers-{args.label}.md").write_text(markdown(args.label, results) + "\n")
    show(args.label, results)
    print(f"wrote {args.out / f'answers-{args.label}.json'} and .md")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--questions", type=Path, action="append", metavar="FILE", help="a question set"
    )
    parser.add_argument("--base-url", help="an OpenAI-compatible server instead of the local model")
    parser.add_argument("--model", default="", help="the upstream's model name")
    parser.add_argument("--api-key-env", help="the environment variable holding its API key")
    parser.add_argument(
        "--env", action="append", default=[], metavar="RAGLINE_X=VALUE", help="a server setting"
    )
    parser.add_argument(
        "--corpus", action="append", default=[], metavar="COLLECTION=DIR", help="more to ingest"
    )
    parser.add_argument("--label", default="default", help="names the run and its result files")
    parser.add_argument("--top-k", type=int, default=4)
    parser.add_argument(
        "--data-dir", help="ingest here once and keep it (else a temporary one, removed)"
    )
    parser.add_argument("--out", type=Path, default=HERE / "results")
    main(parser.parse_args())
