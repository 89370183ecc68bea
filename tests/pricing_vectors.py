"""The pricing cases every implementation must agree on, for the unit and the integration
tests alike (pytest puts ``tests/`` on the path: ``pythonpath`` in pyproject.toml).

- ``VECTORS``: ``tests/pricing_vectors.json``, shared with the supabase-js test: configs,
  usage and the credits each costs, fixed jobs;
- ``BAD_CONFIGS``: configs that Python and SQL both refuse.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
VECTORS = json.loads((ROOT / "tests" / "pricing_vectors.json").read_text())
EXAMPLE = json.loads((ROOT / "examples" / "pricing.json").read_text())


def vector_config(name: str) -> dict[str, Any]:
    """A named config of the vectors file (an object, or a path from the repo root)."""
    config = VECTORS["configs"][name]
    if isinstance(config, str):
        loaded: dict[str, Any] = json.loads((ROOT / config).read_text())
        return loaded
    assert isinstance(config, dict)
    return config


def vector_id(vector: Mapping[str, Any]) -> str:
    return f"{vector['config']}:{vector['metrics']['model']}:{vector.get('credits', 'error')}"


VALID: dict[str, Any] = {"models": [{"model": "m", "input": 1, "output": 2}], "default": None}

BAD_CONFIGS: list[tuple[str, dict[str, Any]]] = [
    ("negative rate", {**VALID, "models": [{"model": "m", "input": -1, "output": 2}]}),
    ("rate as text", {**VALID, "models": [{"model": "m", "input": "1", "output": 2}]}),
    ("too many decimals", {**VALID, "models": [{"model": "m", "input": 0.0000001, "output": 2}]}),
    ("rate too large", {**VALID, "models": [{"model": "m", "input": 1e10, "output": 2}]}),
    ("missing output", {**VALID, "models": [{"model": "m", "input": 1}]}),
    ("unknown top-level field", {**VALID, "currency": "eur"}),
    ("unknown rate field", {**VALID, "models": [{"model": "m", "input": 1, "output": 2, "x": 1}]}),
    ("no default", {"models": VALID["models"]}),
    ("bad pattern characters", {**VALID, "models": [{"model": "gpt 4", "input": 1, "output": 1}]}),
    ("double star", {**VALID, "models": [{"model": "gpt**", "input": 1, "output": 1}]}),
    ("only a star", {**VALID, "models": [{"model": "*", "input": 1, "output": 1}]}),
    (
        "duplicate pattern",
        {
            **VALID,
            "models": [
                {"model": "claude-*", "input": 1, "output": 1},
                {"model": "Claude-*", "input": 2, "output": 2},
            ],
        },
    ),
    ("usd without credits_per_usd", {**VALID, "unit": "usd"}),
    ("credits_per_usd zero", {**VALID, "unit": "usd", "credits_per_usd": 0}),
    ("markup with credits", {**VALID, "markup": 0.1}),
    ("unknown unit", {**VALID, "unit": "eur"}),
    ("unknown rounding", {**VALID, "rounding": "bankers"}),
    ("fractional min_balance", {**VALID, "min_balance": 1.5}),
    ("negative min_balance", {**VALID, "min_balance": -1}),
    ("job of 0 credits", {**VALID, "fixed_jobs": {"job": 0}}),
    ("bad job name", {**VALID, "fixed_jobs": {"a job": 1}}),
    ("models not a list", {**VALID, "models": {"model": "m"}}),
    ("prices nothing", {"default": None}),
]
