"""The Python pricing engine on its own: the shared vectors, fixed jobs, bad configs.

The same vectors and bad configs go through the SQL cost function and every store in
tests/integration/test_pricing.py, so SQL and Python are held to the same answers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from pricing_vectors import BAD_CONFIGS, EXAMPLE, ROOT, VALID, VECTORS, vector_config, vector_id

from ducto import (
    DuctoError,
    PricingConfigData,
    PricingConfigError,
    PricingEngine,
    UnknownJobError,
    UsageMetrics,
)


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=vector_id)
def test_vectors_python(vector: Mapping[str, Any]) -> None:
    engine = PricingEngine(vector_config(vector["config"]))
    metrics = UsageMetrics(**vector["metrics"])
    if "error" in vector:
        with pytest.raises(DuctoError) as caught:
            engine.price(metrics)
        assert caught.value.code == vector["error"]
        return
    cost = engine.price(metrics)
    assert (cost.credits, cost.matched) == (vector["credits"], vector["matched"])
    assert engine.cost(metrics) == vector["credits"]


@pytest.mark.parametrize("job", VECTORS["fixed_jobs"], ids=lambda job: job["job_name"])
def test_fixed_job_vectors_python(job: Mapping[str, Any]) -> None:
    engine = PricingEngine(vector_config(job["config"]))
    if "error" in job:
        with pytest.raises(UnknownJobError) as caught:
            engine.fixed_cost(job["job_name"])
        assert caught.value.code == job["error"]
        return
    assert engine.fixed_cost(job["job_name"]) == job["credits"]


@pytest.mark.parametrize("name", list(VECTORS["configs"]))
def test_a_config_survives_its_own_json(name: str) -> None:
    # what publish_pricing sends is what parse reads back: the database gets the same config
    config = PricingConfigData.parse(vector_config(name))
    assert PricingConfigData.parse(config.to_json()) == config


def test_example_config_is_valid_and_documented() -> None:
    config = PricingConfigData.parse(EXAMPLE)
    names = [entry.model for entry in config.models]
    assert "claude-opus-4*" in names and config.default is not None
    docs = (ROOT / "docs" / "pricing.md").read_text()
    for field in ("credits_per_usd", "markup", "rounding", "min_balance", "fixed_jobs"):
        assert f"`{field}`" in docs


@pytest.mark.parametrize(("case", "config"), BAD_CONFIGS, ids=[c for c, _ in BAD_CONFIGS])
def test_bad_config_refused_by_python(case: str, config: dict[str, Any]) -> None:
    with pytest.raises(PricingConfigError) as caught:
        PricingConfigData.parse(config)
    assert caught.value.code == "DC060" and "invalid pricing config" in str(caught.value)


@pytest.mark.parametrize("rate", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_rates_are_refused(rate: float) -> None:
    config = {**VALID, "models": [{"model": "m", "input": rate, "output": 2}]}
    with pytest.raises(PricingConfigError, match="finite"):
        PricingConfigData.parse(config)


def test_duplicate_json_keys_are_refused() -> None:
    text = '{"default": null, "fixed_jobs": {"a": 1, "a": 2}}'
    with pytest.raises(PricingConfigError, match="given twice"):
        PricingConfigData.parse(text)
