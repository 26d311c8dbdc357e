"""OpenTelemetry spans that know the difference between a cancellation and a failure.

A stock span records a cancelled block as a normal one. Here an intentional cancellation
leaves the status unset and adds ``ragline.cancel.reason`` / ``ragline.cancel.origin`` and
an event; a timeout sets status error with ``error.type=timeout``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import anyio
from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode, TracerProvider
from opentelemetry.util.types import AttributeValue

from .errors import RagLineError
from .lifetime import CancelReason, Lifetime

__all__ = ["Tracing", "build_tracer_provider", "mark_cancelled", "mark_failed"]


def build_tracer_provider(exporter: str) -> TracerProvider:
    """``none`` costs nothing (the API's no-op provider); ``console`` and ``otlp``
    load the SDK. The OTLP exporter reads the standard ``OTEL_EXPORTER_OTLP_*`` variables."""
    if exporter == "none":
        return trace.NoOpTracerProvider()
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

    provider = SdkTracerProvider(resource=Resource.create({"service.name": "ragline"}))
    span_exporter: SpanExporter
    if exporter == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        span_exporter = ConsoleSpanExporter()
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        span_exporter = OTLPSpanExporter()
    provider.add_span_processor(BatchSpanProcessor(span_exporter))
    return provider


def mark_cancelled(span: Span, reason: CancelReason | None) -> None:
    """Record an intentional cancellation: attributes and an event, status unset."""
    cause = str(reason.cause) if reason else "unknown"
    origin = reason.origin if reason else "unknown"
    attributes = {"ragline.cancel.reason": cause, "ragline.cancel.origin": origin}
    span.set_attributes(attributes)
    span.add_event("ragline.cancelled", attributes)


def mark_failed(span: Span, exc: BaseException) -> None:
    """Record a failure; a timeout gets ``error.type=timeout``."""
    if isinstance(exc, RagLineError):
        error_type = exc.code
    elif isinstance(exc, TimeoutError):
        error_type = "timeout"
    else:
        error_type = type(exc).__qualname__
        span.record_exception(exc)
    span.set_attribute("error.type", error_type)
    span.set_status(Status(StatusCode.ERROR, str(exc) or error_type))


class Tracing:
    """The application's tracer and its span helper."""

    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer("ragline")
        # With no exporter there is nothing to record: no span, no context to attach
        # (measured: 3 KiB per held stream and a few µs per request).
        self._recording = not isinstance(provider, trace.NoOpTracerProvider)

    def span(
        self,
        name: str,
        lifetime: Lifetime,
        attributes: Mapping[str, AttributeValue] | None = None,
        kind: trace.SpanKind = trace.SpanKind.INTERNAL,
    ) -> AbstractContextManager[Span]:
        """A span around a block of work owned by ``lifetime``."""
        if not self._recording:
            return _NOT_RECORDED
        return self._span(name, lifetime, attributes, kind)

    @contextmanager
    def _span(
        self,
        name: str,
        lifetime: Lifetime,
        attributes: Mapping[str, AttributeValue] | None,
        kind: trace.SpanKind,
    ) -> Iterator[Span]:
        with self.tracer.start_as_current_span(
            name,
            kind=kind,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                yield span
            except anyio.get_cancelled_exc_class():
                mark_cancelled(span, lifetime.reason)
                raise
            except BaseExceptionGroup as group:
                if group.subgroup(anyio.get_cancelled_exc_class()) is not None:
                    mark_cancelled(span, lifetime.reason)
                else:
                    mark_failed(span, group)
                raise
            except Exception as exc:
                mark_failed(span, exc)
                raise


_NOT_RECORDED = nullcontext(trace.INVALID_SPAN)


def set_attributes(span: Span, values: Mapping[str, Any]) -> None:
    """Set the attributes whose values are not ``None``."""
    span.set_attributes({k: v for k, v in values.items() if v is not None})
