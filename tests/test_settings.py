"""Settings from ``RAGLINE_*`` environment variables: limits that mean "none", lists,
switches, sampling, and the refusal to serve beyond this machine without auth."""

from __future__ import annotations

import pytest

from ragline import Settings
from ragline.models import Sampling

LIMITS = [
    "RAGLINE_REQUEST_DEADLINE",
    "RAGLINE_LLM_FIRST_TOKEN_TIMEOUT",
    "RAGLINE_LLM_TOTAL_TIMEOUT",
    "RAGLINE_RETRIEVE_TIMEOUT",
    "RAGLINE_BOT_PROCESS_ACTIVITY_TIMEOUT",
    "RAGLINE_AGENT_DEADLINE",
    "RAGLINE_AGENT_TOKEN_BUDGET",
    "RAGLINE_RUN_TIMEOUT",
]


@pytest.mark.parametrize("variable", LIMITS)
@pytest.mark.parametrize(
    "value", ["0", "0.0", " 0 ", "", "none", "None", "off", "infinite", " Infinite "]
)
def test_zero_none_off_and_infinite_mean_no_limit(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    field = variable.removeprefix("RAGLINE_").lower()
    assert getattr(Settings(), field) is None


@pytest.mark.parametrize("variable", LIMITS)
def test_a_number_is_a_limit(monkeypatch: pytest.MonkeyPatch, variable: str) -> None:
    monkeypatch.setenv(variable, "7")
    assert getattr(Settings(), variable.removeprefix("RAGLINE_").lower()) == 7


def test_a_negative_limit_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAGLINE_REQUEST_DEADLINE", "-1")
    with pytest.raises(ValueError, match="request_deadline"):
        Settings()


def test_lists_are_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAGLINE_API_KEYS", " a, b ,,")
    monkeypatch.setenv("RAGLINE_INGEST_ROOTS", "/srv/docs,/srv/more")
    monkeypatch.setenv("RAGLINE_LLM_STOP", "END,\nQ:")
    settings = Settings()
    assert [key.get_secret_value() for key in settings.api_keys] == ["a", "b"]
    assert settings.ingest_roots == ["/srv/docs", "/srv/more"]
    assert settings.llm_stop == ["END", "Q:"]


def test_secrets_stay_out_of_the_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAGLINE_API_KEYS", "s3cret-key")
    monkeypatch.setenv("RAGLINE_LLM_API_KEY", "upstream-s3cret")
    monkeypatch.setenv("RAGLINE_DATABASE_URL", "postgresql://ragline:db-s3cret@db/ragline")
    shown = repr(Settings())
    assert "s3cret" not in shown


@pytest.mark.parametrize(
    ("value", "expected"),
    [("true", "on"), ("1", "on"), ("on", "on"), ("false", "off"), ("0", "off"), ("OFF", "off")],
)
def test_bot_auth_takes_booleans(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: str
) -> None:
    monkeypatch.setenv("RAGLINE_BOT_AUTH", value)
    assert Settings().bot_auth == expected


@pytest.mark.parametrize(("value", "expected"), [("auto", None), ("", None), ("true", True)])
def test_bf16_is_automatic_unless_told(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: bool | None
) -> None:
    monkeypatch.setenv("RAGLINE_EMBEDDINGS_BF16", value)
    assert Settings().embeddings_bf16 is expected


def test_sampling_is_read_from_the_llm_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAGLINE_LLM_TEMPERATURE", "0.3")
    monkeypatch.setenv("RAGLINE_LLM_REPEAT_PENALTY", "1.1")
    monkeypatch.setenv("RAGLINE_LLM_SEED", "9")
    assert Settings().sampling == Sampling(temperature=0.3, repeat_penalty=1.1, seed=9)
    monkeypatch.setenv("RAGLINE_LLM_TOP_P", "1.5")
    with pytest.raises(ValueError, match="llm_top_p"):
        Settings()


def test_the_bot_turn_timeout_is_off_while_debugging() -> None:
    assert Settings(bot_process_activity_timeout=30).bot_turn_timeout == 30
    assert Settings(bot_process_activity_timeout=30, bot_debug=True).bot_turn_timeout is None


def test_serving_beyond_this_machine_needs_keys_or_a_clear_yes() -> None:
    Settings().require_safe_bind("127.0.0.1")
    Settings().require_safe_bind("::1")
    with pytest.raises(ValueError, match="RAGLINE_API_KEYS"):
        Settings().require_safe_bind("0.0.0.0")
    Settings(api_keys=["k"]).require_safe_bind("0.0.0.0")  # type: ignore[list-item]
    Settings(allow_public_without_auth=True).require_safe_bind("0.0.0.0")
    with pytest.raises(ValueError, match="BOT_AUTH=off"):
        Settings(bot_auth="off", api_keys=["k"]).require_safe_bind("0.0.0.0")  # type: ignore[list-item]
