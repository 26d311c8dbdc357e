"""The page's chat as a thread, in a real browser (as test_web.py: Debian's Chromium
through Playwright, a real ``ragline serve``, the fake model): Enter sends and Shift+Enter
makes a new line, each follow-up continues the server's conversation (its turns are the
model's history), New chat starts another one, and Stop on a later turn still closes the
model's connection at once.

The site has retrieval on, so a follow-up costs one more model call before its answer:
the query rewrite (``RAGLINE_QUERY_REWRITE=follow-ups``). The fake model tells those calls
by their system prompt and answers them with a short query.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import pytest
from playwright.async_api import Locator, Page, expect

from test_web import DOCS, KEY, Site, browser, ingest, shot, sign_in, sign_out, site
from upstream import Behavior, Call

pytestmark = pytest.mark.anyio

FIRST = "Which star system is closest?"
FIRST_ANSWER = "Alpha Centauri is closest [1]."
FOLLOW_UP = "How far away\nis it?"
FOLLOW_UP_ANSWER = "About 4.37 light-years."
THIRD = "And its brightest star?"
FRESH = "Which star is red?"


def rewriting(body: dict[str, Any]) -> bool:
    """A query rewrite's request (retrieval's transform stage), not an answer's."""
    return any(
        m.get("role") == "system" and "Rewrite the user's" in str(m.get("content"))
        for m in body["messages"]
    )


def answers(s: Site) -> list[Call]:
    return [c for c in s.upstream.calls if not rewriting(c.body)]


def rewrites(s: Site) -> list[Call]:
    return [c for c in s.upstream.calls if rewriting(c.body)]


def said(call: Call) -> list[tuple[str, str]]:
    """The history a generation request carried: its user and assistant messages, all but
    the last (the question itself, with the retrieved context)."""
    return [(m["role"], m["content"]) for m in call.body["messages"][:-1] if m["role"] != "system"]


def turn(page: Page, n: int) -> Locator:
    return page.locator(f"#thread .turn[data-turn='{n}']")


async def answered(page: Page, n: int) -> None:
    """Turn ``n`` has its final event (the usage line), and Send is back."""
    await expect(turn(page, n).locator(".usage")).to_be_visible(timeout=15_000)
    await expect(page.locator("#ask")).to_be_enabled()


async def stream_urls(page: Page, into: list[str]) -> None:
    page.on("request", lambda r: into.append(r.url) if "/inference/stream" in r.url else None)


def conversation_of(url: str) -> str | None:
    found = parse_qs(urlsplit(url).query).get("conversation_id")
    return found[0] if found else None


async def kept_thread(page: Page) -> dict[str, Any] | None:
    text = await page.evaluate("() => sessionStorage.getItem('ragline-chat')")
    return json.loads(text) if text else None


def words(text: str) -> list[str]:
    return [w + " " for w in text.split(" ")[:-1]] + [text.split(" ")[-1]]


def chatting(body: dict[str, Any]) -> Behavior:
    if rewriting(body):
        return Behavior(texts=["closest star system distance"], interval=0.01)
    last = json.dumps(body["messages"][-1])
    # By words of the question only: the retrieved passages are in the same message.
    for question, answer in [
        ("brightest star?", "Rigil Kentaurus."),
        ("How far away", FOLLOW_UP_ANSWER),
        ("is closest?", FIRST_ANSWER),
        ("is red?", "Betelgeuse."),
    ]:
        if question in last:
            return Behavior(texts=words(answer), interval=0.05)
    return Behavior(texts=["Pardon?"])


async def test_a_conversation_continues_across_turns_and_new_chat_starts_another(
    tmp_path: Path,
) -> None:
    async with site(tmp_path, chatting, api_keys=[KEY]) as s, browser() as b:
        await ingest(s, DOCS)
        page = await b.new_page()
        urls: list[str] = []
        await stream_urls(page, urls)
        await page.goto(s.url)
        await sign_in(page, KEY)
        await expect(page.locator("#who")).to_contain_text("Signed in", timeout=10_000)
        question = page.locator("#question")
        await expect(page.locator("#question-hint")).to_have_text(
            "Enter sends · Shift+Enter for a new line"
        )
        await expect(page.locator("#thread-empty")).to_be_visible()
        # A screen reader hears each turn as it is added to the log.
        await expect(page.locator("#thread")).to_have_attribute("role", "log")
        await expect(page.locator("#thread")).to_have_attribute("aria-live", "polite")

        # Turn 1, sent with Enter: the question bubble, the answer, its own sources.
        await question.fill(FIRST)
        await question.press("Enter")
        await expect(turn(page, 1).locator(".question")).to_contain_text(FIRST)
        await expect(turn(page, 1).locator(".answer")).to_have_text(FIRST_ANSWER, timeout=15_000)
        await answered(page, 1)
        await expect(turn(page, 1).locator(".source-card").first).to_be_visible()
        await expect(turn(page, 1).locator("a.cite")).to_have_attribute("href", "#t1-source-1")
        await expect(page.locator("#t1-source-1")).to_contain_text("Alpha centauri")
        await expect(question).to_have_value("")
        await expect(question).to_be_focused()  # ready for the follow-up
        await expect(page.locator("#thread-empty")).to_be_hidden()
        assert len(answers(s)) == 1
        assert said(answers(s)[0]) == []  # the first question has no history
        first_id = conversation_of(urls[0])
        assert first_id is None  # the first turn names no conversation: the server makes one
        kept = await kept_thread(page)
        assert kept is not None
        conversation = kept["conversationId"]
        assert conversation.startswith("conv_")

        # Shift+Enter makes a new line and sends nothing; neither does Enter mid-composition.
        await question.type("How far away")
        await question.press("Shift+Enter")
        await question.type("is it?")
        await expect(question).to_have_value(FOLLOW_UP)
        composing = await page.evaluate(
            "() => { const e = new KeyboardEvent('keydown', {key: 'Enter', isComposing: true,"
            " bubbles: true, cancelable: true});"
            " document.querySelector('#question').dispatchEvent(e); return e.defaultPrevented; }"
        )
        assert composing is False
        await anyio.sleep(0.5)
        await expect(page.locator("#thread .turn")).to_have_count(1)
        assert len(s.upstream.calls) == 1  # the first answer (a first question is not rewritten)
        assert len(urls) == 1

        # Turn 2 continues the conversation: the model sees the first question and answer.
        await question.press("Enter")
        await expect(turn(page, 2).locator(".question")).to_have_text(f"You asked: {FOLLOW_UP}")
        await expect(turn(page, 2).locator(".answer")).to_have_text(
            FOLLOW_UP_ANSWER, timeout=15_000
        )
        await answered(page, 2)
        assert conversation_of(urls[1]) == conversation
        second = answers(s)[1]
        assert said(second) == [("user", FIRST), ("assistant", FIRST_ANSWER)]
        assert len(rewrites(s)) == 1  # the follow-up was rewritten for the search
        assert FIRST in json.dumps(rewrites(s)[0].body)
        # Turn 1 keeps its own answer and sources; each turn's cards have their own ids.
        await expect(turn(page, 1).locator(".answer")).to_have_text(FIRST_ANSWER)
        await expect(turn(page, 1).locator(".source-card").first).to_be_visible()
        await shot(page, "chat-thread")

        # A reload continues the same thread: its turns come back, the next one follows them.
        await page.reload()
        await expect(turn(page, 2).locator(".answer")).to_have_text(
            FOLLOW_UP_ANSWER, timeout=10_000
        )
        await expect(turn(page, 1).locator(".answer")).to_have_text(FIRST_ANSWER)
        await expect(page.locator("#t1-source-1")).to_be_attached()
        await question.fill(THIRD)
        await question.press("Enter")
        await answered(page, 3)
        await expect(turn(page, 3).locator(".answer")).to_have_text("Rigil Kentaurus.")
        assert conversation_of(urls[2]) == conversation
        assert said(answers(s)[2]) == [
            ("user", FIRST),
            ("assistant", FIRST_ANSWER),
            ("user", FOLLOW_UP),
            ("assistant", FOLLOW_UP_ANSWER),
        ]

        # New chat: the thread is empty, and the next question starts a new conversation.
        await page.click("#new-chat")
        await expect(page.locator("#thread .turn")).to_have_count(0)
        await expect(page.locator("#thread-empty")).to_be_visible()
        await expect(question).to_be_focused()
        assert await kept_thread(page) is None
        rewritten = len(rewrites(s))
        await question.fill(FRESH)
        await question.press("Enter")
        await expect(turn(page, 1).locator(".answer")).to_have_text("Betelgeuse.", timeout=15_000)
        await answered(page, 1)
        await expect(page.locator("#thread .turn")).to_have_count(1)
        assert conversation_of(urls[3]) is None
        assert said(answers(s)[3]) == []  # no history
        assert len(rewrites(s)) == rewritten  # a first question is not rewritten
        kept = await kept_thread(page)
        assert kept is not None
        assert kept["conversationId"].startswith("conv_")
        assert kept["conversationId"] != conversation

        # Signing out wipes the thread, on the page and in the tab.
        await sign_out(page)
        await expect(page.locator("#thread .turn")).to_have_count(0)
        assert await kept_thread(page) is None


async def test_stop_on_a_follow_up_closes_the_model_at_once_and_the_turn_stays(
    tmp_path: Path,
) -> None:
    def behave(body: dict[str, Any]) -> Behavior:
        if rewriting(body):
            return Behavior(texts=["long talk"], interval=0.01)
        if any(m["role"] == "assistant" for m in body["messages"]):  # the follow-up
            return Behavior(texts=[f"w{i} " for i in range(2000)], interval=0.02)
        return Behavior(texts=["Sure, ", "ask ", "away."], interval=0.05)

    async with site(tmp_path, behave) as s, browser() as b:
        page = await b.new_page()
        await page.goto(s.url)
        question = page.locator("#question")
        await question.fill("May I ask you something long?")
        await question.press("Enter")
        await answered(page, 1)
        await question.fill("Talk for a long time")
        await question.press("Enter")
        answer = turn(page, 2).locator(".answer")
        await expect(answer).to_contain_text("w5 ", timeout=15_000)
        call = answers(s)[-1]
        assert said(call) == [
            ("user", "May I ask you something long?"),
            ("assistant", "Sure, ask away."),
        ]
        clicked = time.monotonic()
        await page.click("#stop")
        with anyio.fail_after(5):
            await call.closed.wait()
        assert call.closed_at is not None
        # Generous (shared, noisy machines): a click closes the upstream in ms (BENCHMARKS).
        assert call.closed_at - clicked < 1.0, f"closed {call.closed_at - clicked:.3f} s after"
        produced = len(call.token_times)
        outcome = turn(page, 2).locator(".outcome")
        await expect(outcome.locator("[data-field=cause]")).to_have_text(
            "client_disconnected", timeout=10_000
        )
        shown = int(await outcome.locator("[data-field=tokens]").inner_text())
        assert produced - 1 <= shown <= produced
        after = int(await outcome.locator("[data-field=tokens-after]").inner_text())
        assert after <= 1
        # The stopped turn stays with what it showed; the turn before it is untouched.
        await expect(answer).to_contain_text("w0 w1 w2 w3 w4 w5 ")
        await expect(answer).to_have_attribute("data-state", "stopped")
        await expect(turn(page, 1).locator(".answer")).to_have_text("Sure, ask away.")
        await expect(turn(page, 1).locator(".outcome")).to_have_count(0)
        await expect(page.locator("#ask")).to_be_enabled()
        await expect(page.locator("#stop")).to_be_disabled()
        await expect(page.locator("#saved [data-metric=disconnect]")).to_have_text(
            "1", timeout=10_000
        )
        await shot(page, "chat-thread-stopped")
