"""UsageMetrics from the providers' own usage payloads, and configs from a LiteLLM price list.

The payloads are shaped as the providers' APIs return them (as dicts, and as the SDKs'
attribute objects). The rule under test: the token counts of UsageMetrics are disjoint,
so a cached token is charged once at the cached rate, never twice and never dropped.
"""

from __future__ import annotations

from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest

from ducto import InvalidInputError, PricingConfigData, PricingConfigError, PricingEngine
from ducto.usage import UsageMetrics

OPENAI_CHAT: dict[str, Any] = {
    "prompt_tokens": 2006,
    "completion_tokens": 300,
    "total_tokens": 2306,
    "prompt_tokens_details": {"cached_tokens": 1920, "audio_tokens": 0},
    "completion_tokens_details": {
        "reasoning_tokens": 192,
        "audio_tokens": 0,
        "accepted_prediction_tokens": 0,
        "rejected_prediction_tokens": 0,
    },
}

OPENAI_RESPONSES: dict[str, Any] = {
    "input_tokens": 5000,
    "input_tokens_details": {"cached_tokens": 4096},
    "output_tokens": 1200,
    "output_tokens_details": {"reasoning_tokens": 1024},
    "total_tokens": 6200,
}

ANTHROPIC: dict[str, Any] = {
    "input_tokens": 21,
    "cache_creation_input_tokens": 188086,
    "cache_read_input_tokens": 0,
    "output_tokens": 393,
    "cache_creation": {"ephemeral_5m_input_tokens": 188086, "ephemeral_1h_input_tokens": 0},
    "server_tool_use": {"web_search_requests": 2},
    "service_tier": "standard",
}

GEMINI: dict[str, Any] = {
    "promptTokenCount": 12000,
    "cachedContentTokenCount": 8000,
    "candidatesTokenCount": 450,
    "thoughtsTokenCount": 900,
    "totalTokenCount": 13350,
}


def _objects(payload: Any) -> Any:
    """The payload as an SDK returns it: attributes instead of keys."""
    if isinstance(payload, dict):
        return SimpleNamespace(**{key: _objects(value) for key, value in payload.items()})
    return payload


@pytest.mark.parametrize("shape", [dict, _objects])
def test_openai_chat_splits_cached_and_reasoning_tokens(shape: Any) -> None:
    metrics = UsageMetrics.from_openai(shape(OPENAI_CHAT), model="o3")
    assert metrics == UsageMetrics(
        model="o3",
        input_tokens=86,
        cached_input_tokens=1920,
        output_tokens=108,
        reasoning_tokens=192,
    )
    # every reported token is counted exactly once
    counted = sum(metrics.counts().values()) - metrics.requests
    assert counted == OPENAI_CHAT["total_tokens"]


@pytest.mark.parametrize("shape", [dict, _objects])
def test_openai_responses(shape: Any) -> None:
    metrics = UsageMetrics.from_openai(shape(OPENAI_RESPONSES), model="gpt-4.1", tool_calls=1)
    assert (metrics.input_tokens, metrics.cached_input_tokens) == (904, 4096)
    assert (metrics.output_tokens, metrics.reasoning_tokens, metrics.tool_calls) == (176, 1024, 1)


def test_openai_without_details() -> None:
    metrics = UsageMetrics.from_openai(
        {"prompt_tokens": 10, "completion_tokens": 5, "prompt_tokens_details": None},
        model="gpt-4o",
    )
    assert metrics == UsageMetrics(model="gpt-4o", input_tokens=10, output_tokens=5)


@pytest.mark.parametrize("shape", [dict, _objects])
def test_anthropic_input_already_excludes_the_cache(shape: Any) -> None:
    metrics = UsageMetrics.from_anthropic(shape(ANTHROPIC), model="claude-opus-4")
    assert metrics == UsageMetrics(
        model="claude-opus-4",
        input_tokens=21,
        cache_creation_tokens=188086,
        cached_input_tokens=0,
        output_tokens=393,
        tool_calls=2,
    )


def test_anthropic_one_hour_cache_writes() -> None:
    usage = {
        **ANTHROPIC,
        "cache_creation_input_tokens": 3000,
        "cache_creation": {"ephemeral_5m_input_tokens": 1000, "ephemeral_1h_input_tokens": 2000},
        "cache_read_input_tokens": 500,
    }
    metrics = UsageMetrics.from_anthropic(usage, model="claude-sonnet-4")
    assert (metrics.cache_creation_tokens, metrics.cache_creation_1h_tokens) == (1000, 2000)
    assert metrics.cached_input_tokens == 500
    broken = {**usage, "cache_creation_input_tokens": 1999}
    with pytest.raises(InvalidInputError, match="ephemeral_1h_input_tokens"):
        UsageMetrics.from_anthropic(broken, model="claude-sonnet-4")


@pytest.mark.parametrize("shape", [dict, _objects])
def test_gemini(shape: Any) -> None:
    metrics = UsageMetrics.from_gemini(shape(GEMINI), model="gemini-2.5-pro")
    assert metrics == UsageMetrics(
        model="gemini-2.5-pro",
        input_tokens=4000,
        cached_input_tokens=8000,
        output_tokens=450,
        reasoning_tokens=900,
    )


def test_cached_tokens_are_charged_once_at_their_rate() -> None:
    engine = PricingEngine(
        {
            "models": [{"model": "o3", "input": 2000, "output": 8000, "cached_input": 500}],
            "default": None,
        }
    )
    metrics = UsageMetrics.from_openai(OPENAI_CHAT, model="o3")
    # 86 full-price input, 1920 cached, 300 output (108 visible + 192 reasoning at output)
    expected = (86 * 2000 + 1920 * 500 + 300 * 8000) / Decimal(10**6)
    assert engine.price(metrics).exact_cost == expected


@pytest.mark.parametrize(
    "payload",
    [
        {"prompt_tokens": 10, "prompt_tokens_details": {"cached_tokens": 11}},
        {"completion_tokens": 1, "completion_tokens_details": {"reasoning_tokens": 2}},
        {"prompt_tokens": -1},
        {"prompt_tokens": 1.5},
        {"prompt_tokens": True},
    ],
)
def test_inconsistent_payloads_are_refused(payload: dict[str, Any]) -> None:
    with pytest.raises(InvalidInputError) as caught:
        UsageMetrics.from_openai(payload, model="gpt-4o")
    assert caught.value.code == "DC007"


# A few entries as LiteLLM's model_prices_and_context_window.json has them.
LITELLM: dict[str, Any] = {
    "sample_spec": {"max_tokens": "set to max_output_tokens if provider specifies it"},
    "gpt-4o": {
        "input_cost_per_token": 2.5e-06,
        "output_cost_per_token": 1e-05,
        "cache_read_input_token_cost": 1.25e-06,
        "litellm_provider": "openai",
        "mode": "chat",
    },
    "claude-opus-4-20250514": {
        "input_cost_per_token": 1.5e-05,
        "output_cost_per_token": 7.5e-05,
        "cache_creation_input_token_cost": 1.875e-05,
        "cache_read_input_token_cost": 1.5e-06,
        "litellm_provider": "anthropic",
        "mode": "chat",
    },
    "gemini-2.5-flash": {
        "input_cost_per_token": 3e-07,
        "output_cost_per_token": 2.5e-06,
        "output_cost_per_reasoning_token": 2.5e-06,
        "cache_read_input_token_cost": 7.5e-08,
        "litellm_provider": "gemini",
    },
}


def test_config_from_litellm() -> None:
    config = PricingConfigData.from_litellm(
        LITELLM,
        ["gpt-4o", "claude-opus-4-20250514", "gemini-2.5-flash"],
        credits_per_usd=1000,
        markup=0.2,
        default="claude-opus-4-20250514",
        fixed_jobs={"report": 40},
    )
    opus = config.models[1]
    assert (opus.input, opus.output, opus.cached_input, opus.cache_creation) == (
        Decimal(15),
        Decimal(75),
        Decimal("1.5"),
        Decimal("18.75"),
    )
    flash = config.models[2]
    assert (flash.input, flash.cached_input, flash.reasoning) == (
        Decimal("0.3"),
        Decimal("0.075"),
        Decimal("2.5"),
    )
    assert config.default is not None and config.default.output == Decimal(75)
    engine = PricingEngine(config)
    metrics = UsageMetrics(model="claude-opus-4-20250514", input_tokens=500, output_tokens=200)
    assert engine.cost(metrics) == 27


def test_litellm_entry_without_costs_is_refused() -> None:
    with pytest.raises(PricingConfigError, match="sample_spec"):
        PricingConfigData.from_litellm(LITELLM, ["sample_spec"], credits_per_usd=1000)
