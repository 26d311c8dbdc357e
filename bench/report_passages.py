"""The Markdown subsection "Where a question's passages wait", from what bench/retrieval.py
wrote to bench/results/retrieval.json: ``section(results)`` for bench/report.py.

``results`` is the results folder or the JSON file itself. When the folder also holds
``retrieval-before.json`` (the same bench run on an earlier commit, saved under that name),
its figures stand beside the current ones. Every figure and verdict comes from the JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["HEADING", "section"]

HEADING = "Where a question's passages wait"
BEFORE = "retrieval-before.json"


def _read(path: Path) -> dict[str, Any] | None:
    return dict(json.loads(path.read_text())) if path.exists() else None


def _states(data: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    return {state["name"]: state for state in (data or {}).get("passages", {}).get("states", [])}


def _cases(state: dict[str, Any] | None) -> dict[int, dict[str, Any]]:
    return {int(c["top_k"]): c for c in (state or {}).get("breakdown", [])}


def _ms(case: dict[str, Any] | None, stage: str) -> str:
    figures = (case or {}).get("stages", {}).get(stage)
    if figures is None:
        return "–"
    return f"{figures['p50_ms']:.1f} / {figures['p99_ms']:.1f}"


def _load(values: list[float]) -> str:
    return " then ".join(f"{x:.1f}" for x in values) or "?"


def _verdict(met: bool, quick: bool = False) -> str:
    if quick:
        return "not judged (a quick smoke run)"
    return "**met**" if met else "**not met**"


def _table(
    passages: dict[str, Any], state: dict[str, Any], old: dict[str, Any] | None
) -> list[str]:
    """Stages down, top_ks across (each as before | after when there is a before)."""
    default_k = int(passages["default_top_k"])
    cases, earlier = _cases(state), _cases(old)
    header, rule = "| stage |", "|---|"
    for k in sorted(cases):
        label = f"top_k {k}" + (" (default)" if k == default_k else "")
        label += f", pool {cases[k]['pool']}"
        if k in earlier:
            header += f" {label}: before | after |"
            rule += "---|---|"
        else:
            header += f" {label} |"
            rule += "---|"
    lines = [header, rule]
    for stage in passages["stages"]:
        row = f"| **{stage}** |" if stage == passages["whole"] else f"| {stage} |"
        for k in sorted(cases):
            if k in earlier:
                row += f" {_ms(earlier[k], stage)} |"
            row += f" {_ms(cases[k], stage)} |"
        lines.append(row)
    return lines


def _aims(data: dict[str, Any], state: dict[str, Any]) -> list[str]:
    """The latency aims at the default top_k, judged on ``state``."""
    aims, passages = data.get("aims", {}), data["passages"]
    default_k = int(passages["default_top_k"])
    whole = _cases(state).get(default_k, {}).get("stages", {}).get(passages["whole"])
    if whole is None:
        return []
    lines = []
    for key, what in (("p50_ms", "p50"), ("p99_ms", "p99")):
        if key in aims:
            met = whole[key] <= aims[key]
            lines.append(
                f"- Aim, {state['name']}: a question's passages (top_k {default_k}) in "
                f"≤ {aims[key]:g} ms {what}: {whole[key]:.1f} ms, "
                f"{_verdict(met, bool(data.get('quick')))}."
            )
    return lines


def section(results: Path) -> str:
    """The subsection, from ``results``/retrieval.json (``results``: bench/results)."""
    path = results / "retrieval.json" if results.is_dir() else results
    data = _read(path)
    if data is None or "passages" not in data:
        return (
            f"### {HEADING}\n\nNo breakdown: run `.venv/bin/python bench/retrieval.py` "
            f"(`{path.name}` is missing or has none).\n"
        )
    before = _read(path.parent / BEFORE)
    passages, aims = data["passages"], data.get("aims", {})
    earlier = _states(before)
    lines = [
        f"### {HEADING}",
        "",
        f"`{data.get('command', 'bench/retrieval.py')}` ({data.get('date', '?')}; "
        f"{data.get('documents')} documents, {data.get('chunks')} chunks, "
        f"{data.get('queries')} queries; {data.get('cpus')} CPUs"
        + ("; **quick smoke run: not the figures**" if data.get("quick") else "")
        + f"). {passages['how']}. Each stage is timed from inside the run; the thread hops "
        "are the time from handing a call to the thread bridge to its worker starting, and "
        "from the worker's end to the awaiting task running again; BM25 runs beside the "
        "embedding and dense search, so its row is its whole call (hops included) and is "
        "not taken from the whole; the rest is the whole less every other stage named "
        "(event loop, lifetimes, spans). p50 / p99 in ms per "
        "question; the p99s of the stages need not come from one question, so they do not "
        "add up to the whole's."
        + (
            f" Before: `{BEFORE}`, the same bench on the code before ({before.get('date', '?')})."
            if before
            else ""
        ),
        "",
    ]
    for state in passages["states"]:
        old = earlier.get(state["name"])
        lines += [
            f"**{state['name'].capitalize()}**: {state['note']}. {state['rounds']} round(s); "
            f"1-minute load average {_load(state['load_average_1min'])}"
            + (f" (before: {_load(old['load_average_1min'])})" if old else "")
            + (
                f"; sealed in {passages['seal_seconds']:.1f} s"
                if state["name"] == "sealed" and "seal_seconds" in passages
                else ""
            )
            + ".",
            "",
            *_table(passages, state, old),
            "",
        ]
    for state in passages["states"]:
        lines += _aims(data, state)
    hybrid = data["scores"]["hybrid"]["ndcg10"]
    if "hybrid_ndcg10" in aims:
        target, within = aims["hybrid_ndcg10"], aims["ndcg10_within"]
        lines.append(
            f"- Aim: Cranfield hybrid nDCG@10 within {within:g} of {target:.3f}: {hybrid:.3f}, "
            f"{_verdict(abs(hybrid - target) <= within, bool(data.get('quick')))}"
            + (f" (before: {before['scores']['hybrid']['ndcg10']:.3f})." if before else ".")
        )
    for label, scores in (("as ingested", "scores"), ("sealed", "scores_sealed")):
        if scores not in data:
            continue
        figures = data[scores]
        old = (before or {}).get(scores)
        line = (
            f"- nDCG@10 {label}: dense (top 100 chunks) {figures['dense']['ndcg10']:.3f}, "
            f"hybrid {figures['hybrid']['ndcg10']:.3f}"
        )
        if old:
            lower = figures["dense"]["ndcg10"] < old["dense"]["ndcg10"] - 1e-9
            line += f" (before: {old['dense']['ndcg10']:.3f}, {old['hybrid']['ndcg10']:.3f}; " + (
                "dense **lower**)" if lower else "dense not lower)"
            )
        lines.append(line + ".")
    latency = data.get("query_latency_embed_search_top100")
    if latency:
        old = (before or {}).get("query_latency_embed_search_top100")
        lines.append(
            "- The figure this bench printed before, embed + dense search of the top 100 "
            f"chunks as ingested: p50 {latency['p50_ms']:.1f} ms, p95 {latency['p95_ms']:.1f} ms"
            + (
                f" (before: p50 {old['p50_ms']:.1f} ms, p95 {old['p95_ms']:.1f} ms)."
                if old
                else "."
            )
        )
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    print(section(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "results"))
