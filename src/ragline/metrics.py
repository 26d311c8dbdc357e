"""Prometheus metrics, one registry per application (no global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

__all__ = ["CONTENT_TYPE", "Metrics"]

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4


class Metrics:
    """Everything ragline counts."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "ragline_requests",
            "HTTP requests by route and outcome",
            ["route", "outcome"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "ragline_request_duration_seconds", "HTTP request duration", ["route"], registry=r
        )
        self.cancellations = Counter(
            "ragline_cancellations",
            "Work cancelled, by cause and kind of owner",
            ["cause", "owner"],
            registry=r,
        )
        self.access_denied = Counter(
            "ragline_access_denied",
            "Requests refused: a bad credential (401), or an object, collection or admin "
            "route the caller may not touch (403, 404)",
            ["route"],
            registry=r,
        )
        self.stage_timeouts = Counter(
            "ragline_stage_timeouts",
            "Stages that ran past their own deadline",
            ["stage"],
            registry=r,
        )
        self.tokens_after_cancel = Counter(
            "ragline_upstream_tokens_after_cancel",
            "Tokens received from an upstream after the owner of the work left",
            registry=r,
        )
        self.cancel_to_close_seconds = Histogram(
            "ragline_upstream_close_after_cancel_seconds",
            "Time from a cancellation (e.g. a client disconnect) to the upstream connection close",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=r,
        )
        self.upstream_responses = Counter(
            "ragline_upstream_responses",
            "Answers from the model server, by HTTP status (each retry counted)",
            ["code"],
            registry=r,
        )
        self.generation_stops = Counter(
            "ragline_generation_stops",
            "Generations cut short, by reason (repetition, ungrounded, cancelled, timeout)",
            ["reason"],
            registry=r,
        )
        self.answers = Counter(
            "ragline_answers",
            "Answers given without the model, by kind (extractive, abstained)",
            ["kind"],
            registry=r,
        )
        self.tokens = Counter(
            "ragline_tokens",
            "Model tokens by kind (prompt, completion) and model",
            ["kind", "model"],
            registry=r,
        )
        self.orphaned_threads = Counter(
            "ragline_orphaned_threads",
            "Worker threads still running after their grace period past cancellation",
            registry=r,
        )
        self.bot_turns = Counter(
            "ragline_bot_turns",
            "Bot turns by activity type and outcome (completed, timeout, cancelled, failed)",
            ["type", "outcome"],
            registry=r,
        )
        self.bot_duplicates = Counter(
            "ragline_bot_duplicate_activities",
            "Redelivered activities dropped as duplicates",
            registry=r,
        )
        self.bot_feedback = Counter(
            "ragline_bot_feedback",
            "Feedback stored on the bot's answers, by reaction (like, dislike)",
            ["reaction"],
            registry=r,
        )
        self.connector_requests = Counter(
            "ragline_connector_requests",
            "Bot Connector requests by operation and status (0: no answer)",
            ["operation", "status"],
            registry=r,
        )
        self.connector_uncertain = Counter(
            "ragline_connector_uncertain",
            "Connector requests that may have been applied but got no success answer;"
            " never repeated blindly",
            ["operation"],
            registry=r,
        )

        self.agent_loops = Counter(
            "ragline_agent_loops",
            "Agent loops by finish reason (stop, budget_exhausted, max_steps, deadline, ...)",
            ["finish_reason"],
            registry=r,
        )
        self.tool_calls = Counter(
            "ragline_tool_calls",
            "Tool calls by tool and status (ok, error, invalid_arguments, timeout, ...)",
            ["tool", "status"],
            registry=r,
        )
        self.orphaned_tools = Counter(
            "ragline_orphaned_tools",
            "Tool calls still running past their grace period after cancellation",
            ["tool"],
            registry=r,
        )

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
