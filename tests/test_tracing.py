"""Spans that tell a cancellation from a failure (docs/ARCHITECTURE.md, contract rule 9).

Every test runs on asyncio and on trio against an SDK tracer provider exporting to
memory through a simple (synchronous) span processor.
"""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from ragline import Cause, Lifetime, StageTimeout, UpstreamError
from ragline.tracing import Tracing

pytestmark = [pytest.mark.anyio, pytest.mark.both_backends]

BOUND = 5.0  # generous wall-clock bound: only hit when a test would otherwise hang


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracing(exporter: InMemorySpanExporter) -> Iterator[Tracing]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield Tracing(provider)
    provider.shutdown()


def only_span(exporter: InMemorySpanExporter) -> ReadableSpan:
    spans = exporter.get_finished_spans()
    assert len(spans) == 1, [s.name for s in spans]
    return spans[0]


def event_names(span: ReadableSpan) -> list[str]:
    return [event.name for event in span.events]


async def test_cancelled_block_leaves_status_unset_and_records_the_cause(
    tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    """A cancellation is not an error: status unset, cause and origin as attributes + event."""
    request = Lifetime.root("app").child("request")
    with anyio.fail_after(BOUND), request:
        with tracing.span("retrieve", request):
            request.cancel(Cause.CLIENT_DISCONNECTED)
            await anyio.sleep_forever()
    span = only_span(exporter)
    assert span.status.status_code is StatusCode.UNSET
    assert span.attributes is not None
    assert span.attributes["ragline.cancel.reason"] == "client_disconnected"
    assert span.attributes["ragline.cancel.origin"] == "app/request"
    assert "error.type" not in span.attributes
    assert event_names(span) == ["ragline.cancelled"]
    (event,) = span.events
    assert event.attributes is not None
    assert event.attributes["ragline.cancel.reason"] == "client_disconnected"
    assert event.attributes["ragline.cancel.origin"] == "app/request"


async def test_cancelled_span_reports_the_ancestors_cause_and_origin(
    tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    """A stage's span cancelled by shutdown names shutdown and the root as origin."""
    root = Lifetime.root("app")
    request = root.child("request")
    with anyio.fail_after(BOUND), request:
        with request.child("generate") as stage, tracing.span("generate", stage):
            root.cancel(Cause.SHUTDOWN)
            await anyio.sleep_forever()
    span = only_span(exporter)
    assert span.status.status_code is StatusCode.UNSET
    assert span.attributes is not None
    assert span.attributes["ragline.cancel.reason"] == "shutdown"
    assert span.attributes["ragline.cancel.origin"] == "app"


async def test_stage_timeout_sets_error_status_with_error_type_timeout(
    tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    """A stage's own timeout is an error of type timeout, not a cancellation."""
    request = Lifetime.root("app").child("request")
    stage = request.child("retrieve", timeout=0.01)
    with anyio.fail_after(BOUND), request:
        with pytest.raises(StageTimeout), tracing.span("retrieve", stage), stage:
            await anyio.sleep_forever()
    span = only_span(exporter)
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None
    assert span.attributes["error.type"] == "timeout"
    assert "ragline.cancel.reason" not in span.attributes
    assert "ragline.cancelled" not in event_names(span)


async def test_builtin_timeout_error_is_reported_as_timeout(
    tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    """Any TimeoutError (here anyio's fail_after) is reported with error.type timeout."""
    request = Lifetime.root("app").child("request")
    with request, pytest.raises(TimeoutError), tracing.span("call", request):
        with anyio.fail_after(0.01):
            await anyio.sleep_forever()
    span = only_span(exporter)
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None
    assert span.attributes["error.type"] == "timeout"


async def test_plain_exception_sets_error_status_with_the_class_name(
    tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    """A failure sets status error, error.type the exception's class, and records it."""
    request = Lifetime.root("app").child("request")
    with request, pytest.raises(ValueError, match="bad vector"), tracing.span("embed", request):
        raise ValueError("bad vector")
    span = only_span(exporter)
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "bad vector"
    assert span.attributes is not None
    assert span.attributes["error.type"] == "ValueError"
    assert "ragline.cancel.reason" not in span.attributes
    assert "exception" in event_names(span)
    assert "ragline.cancelled" not in event_names(span)


async def test_ragline_error_uses_its_code_as_error_type(
    tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    """A ragline error is typed by its stable code."""
    request = Lifetime.root("app").child("request")
    with request, pytest.raises(UpstreamError), tracing.span("generate", request):
        raise UpstreamError("model server answered 502", status=502)
    span = only_span(exporter)
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None
    assert span.attributes["error.type"] == "upstream_error"


async def test_successful_block_leaves_a_plain_span(
    tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    """Normal completion: status unset, attributes kept, nothing about errors or cancels."""
    request = Lifetime.root("app").child("request")
    with request, tracing.span("compose", request, attributes={"ragline.k": 4}) as span_in:
        span_in.set_attribute("ragline.sources", 2)
    span = only_span(exporter)
    assert span.name == "compose"
    assert span.status.status_code is StatusCode.UNSET
    assert dict(span.attributes or {}) == {"ragline.k": 4, "ragline.sources": 2}
    assert event_names(span) == []
