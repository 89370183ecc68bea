"""Pricing: the config schema and :class:`PricingEngine`, an exact mirror of the SQL cost.

The database prices every charge (``credit_private.cost`` in the migrations); the engine
computes the same credits in Python, for quotes and for estimates such as what to reserve
before a streaming call. Shared vectors (``tests/pricing_vectors.json``) and a property
test keep the two equal. The format, the matching and the rounding: docs/pricing.md.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import (
    ROUND_CEILING,
    ROUND_FLOOR,
    ROUND_HALF_UP,
    Context,
    Decimal,
    Inexact,
    InvalidOperation,
    localcontext,
)
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    model_validator,
)

from ducto.errors import (
    InvalidInputError,
    PricingConfigError,
    UnknownJobError,
    UnknownModelError,
)
from ducto.usage import UsageMetrics

MAX_CREDITS = 2**53 - 1
_PATTERN = re.compile(r"[A-Za-z0-9._:/@+*-]{1,200}")
_JOB_NAME = r"^[A-Za-z0-9._:-]{1,64}$"
_MILLION = Decimal("0.000001")
_ROUNDING = {"ceil": ROUND_CEILING, "half_up": ROUND_HALF_UP, "floor": ROUND_FLOOR}


def _number(value: object, maximum: int, places: int, positive: bool) -> Decimal:
    """A JSON number (int, float or Decimal; no text, no NaN) within the SQL bounds."""
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise ValueError(f"must be a number, got {type(value).__name__}")
    # repr: the shortest decimal that reads back as the same double, the one JSON has
    number = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    if not number.is_finite():
        raise ValueError("must be a finite number")
    if number < 0 or (positive and number == 0):
        raise ValueError("must be greater than 0" if positive else "must not be negative")
    if number > maximum:
        raise ValueError(f"must be at most {maximum}")
    exponent = number.normalize().as_tuple().exponent
    assert isinstance(exponent, int)
    if -exponent > places:
        raise ValueError(
            "must be a whole number"
            if places == 0
            else f"must have at most {places} decimal places"
        )
    return number


def _decimal(maximum: int, places: int, positive: bool = False) -> BeforeValidator:
    return BeforeValidator(lambda value: _number(value, maximum, places, positive))


def _whole(maximum: int, positive: bool = False) -> BeforeValidator:
    # 5.0 is the whole number 5, as in SQL; 5.5 is refused
    return BeforeValidator(lambda value: int(_number(value, maximum, 0, positive)))


def _json_number(value: Decimal) -> int | float:
    # at most 15 significant digits (the bounds above): a double holds it exactly
    return int(value) if value == value.to_integral_value() else float(value)


_JSON = PlainSerializer(_json_number, when_used="json")
#: A rate per 1M tokens, or per tool call / per request: 0 to 1e9, 6 decimal places.
Rate = Annotated[Decimal, _decimal(10**9, 6), _JSON]


class ModelRates(BaseModel):
    """Rates of one model: per 1M tokens of each kind, and per tool call and per request.

    ``cached_input`` and ``cache_creation`` default to ``input``, ``cache_creation_1h`` to
    ``cache_creation``, ``reasoning`` to ``output``, ``tool_call`` and ``request`` to 0: an
    omitted discount never undercharges.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    input: Rate
    output: Rate
    cached_input: Rate
    cache_creation: Rate
    cache_creation_1h: Rate
    reasoning: Rate
    tool_call: Rate
    request: Rate

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "input" in data and "output" in data:
            data = {
                "cached_input": data["input"],
                "cache_creation": data["input"],
                "cache_creation_1h": data.get("cache_creation", data["input"]),
                "reasoning": data["output"],
                "tool_call": 0,
                "request": 0,
                **data,
            }
        return data


class ModelPrice(ModelRates):
    """A ``models`` entry: an exact model name, or a pattern where ``*`` matches any run
    of characters (``claude-opus-4*``). Names compare without case."""

    model: str

    @model_validator(mode="after")
    def _pattern(self) -> ModelPrice:
        name = self.model
        if not _PATTERN.fullmatch(name) or "**" in name or not name.strip("*"):
            raise ValueError(
                f"{name!r} is not a valid model name or pattern (1 to 200 of A-Z a-z 0-9 . _ :"
                " / @ + -, with single * wildcards, not only *)"
            )
        return self


class PricingConfigData(BaseModel):
    """A pricing config: what the database stores as one version (docs/pricing.md).

    ``default`` is required: rates for models no entry matches, or None to refuse them.
    With ``unit="usd"`` rates are in USD and a cost is converted at ``credits_per_usd``,
    then marked up by ``markup`` (0.2 = +20%); with ``unit="credits"`` rates are credits.
    A fractional cost is rounded by ``rounding``; ``min_balance`` is the floor usage
    deductions (and reservations by default) keep.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    unit: Literal["credits", "usd"] = "credits"
    credits_per_usd: Annotated[Decimal, _decimal(10**9, 6, positive=True), _JSON] | None = None
    markup: Annotated[Decimal, _decimal(100, 6), _JSON] | None = None
    rounding: Literal["ceil", "half_up", "floor"] = "ceil"
    min_balance: Annotated[int, _whole(MAX_CREDITS)] = 0
    models: tuple[ModelPrice, ...] = ()
    default: ModelRates | None
    fixed_jobs: dict[
        Annotated[str, Field(pattern=_JOB_NAME)],
        Annotated[int, _whole(MAX_CREDITS, positive=True)],
    ] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _markup_default(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and data.get("unit") == "usd" and "markup" not in data:
            data = {**data, "markup": 0}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> PricingConfigData:
        if self.unit == "usd" and (self.credits_per_usd is None or self.markup is None):
            raise ValueError(
                "credits_per_usd (and markup, 0 if omitted) must be numbers when unit is usd"
            )
        if self.unit == "credits" and (self.credits_per_usd, self.markup) != (None, None):
            raise ValueError("credits_per_usd and markup are only allowed when unit is usd")
        seen: set[str] = set()
        for index, entry in enumerate(self.models):
            name = entry.model.lower()
            if name in seen:
                raise ValueError(
                    f"models[{index}].model {entry.model!r} is listed twice"
                    " (names compare without case)"
                )
            seen.add(name)
        if not self.models and self.default is None and not self.fixed_jobs:
            raise ValueError("the config prices nothing: give models, a default or fixed_jobs")
        return self

    def to_json(self) -> dict[str, Any]:
        """The config as JSON-ready data, every field explicit (as the database stores it)."""
        data: dict[str, Any] = self.model_dump(mode="json")
        return data

    @classmethod
    def parse(cls, data: PricingConfigData | Mapping[str, Any] | str | bytes) -> PricingConfigData:
        """Validate a config given as a model, a mapping or JSON text.

        JSON text is read with exact decimals, and a key given twice is refused.

        Raises:
            PricingConfigError: what is wrong, field by field.
        """
        if isinstance(data, PricingConfigData):
            return data
        try:
            if isinstance(data, str | bytes):
                data = json.loads(data, parse_float=Decimal, object_pairs_hook=_unique_keys)
            return cls.model_validate(data)
        except ValidationError as exc:
            problems = [
                f"{'.'.join(str(part) for part in error['loc']) or 'config'}: {error['msg']}"
                for error in exc.errors()
            ]
            raise PricingConfigError(
                "invalid pricing config: " + "; ".join(problems),
                code="DC060",
                detail=json.dumps({"problems": problems}),
            ) from exc
        except ValueError as exc:  # JSON syntax, or a key given twice
            raise PricingConfigError(f"invalid pricing config: {exc}", code="DC060") from exc

    @classmethod
    def from_litellm(
        cls,
        prices: Mapping[str, Any],
        models: Iterable[str],
        *,
        credits_per_usd: Decimal | int,
        markup: Decimal | int | float = 0,
        default: str | None = None,
        min_balance: int = 0,
        fixed_jobs: Mapping[str, int] | None = None,
    ) -> PricingConfigData:
        """Build a USD config from a price list in LiteLLM's model-price JSON format.

        ``prices`` maps model names to entries with ``input_cost_per_token``,
        ``output_cost_per_token`` and optionally ``cache_read_input_token_cost``,
        ``cache_creation_input_token_cost``, ``cache_creation_input_token_cost_above_1hr``
        and ``output_cost_per_reasoning_token`` (USD
        per token). ``models`` picks the entries to price (exact names); ``default`` names
        one of them whose rates price unknown models (None refuses unknown models).
        Per-token costs become per-1M rates, rounded up to 6 decimal places.

        Raises:
            PricingConfigError: a model is missing from ``prices`` or has no token costs.
        """
        chosen = list(models)
        rates = {name: _litellm_rates(prices, name) for name in {*chosen, *filter(None, [default])}}
        return cls.parse(
            {
                "unit": "usd",
                "credits_per_usd": credits_per_usd,
                "markup": markup,
                "min_balance": min_balance,
                "models": [{"model": name, **rates[name]} for name in chosen],
                "default": None if default is None else rates[default],
                "fixed_jobs": dict(fixed_jobs or {}),
            }
        )


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    duplicates = sorted({key for key in keys if keys.count(key) > 1})
    if duplicates:
        raise ValueError(f"key {duplicates[0]!r} is given twice")
    return dict(pairs)


_LITELLM_FIELDS = {
    "input": "input_cost_per_token",
    "output": "output_cost_per_token",
    "cached_input": "cache_read_input_token_cost",
    "cache_creation": "cache_creation_input_token_cost",
    "cache_creation_1h": "cache_creation_input_token_cost_above_1hr",
    "reasoning": "output_cost_per_reasoning_token",
}


def _litellm_rates(prices: Mapping[str, Any], name: str) -> dict[str, Decimal]:
    entry = prices.get(name)
    if not isinstance(entry, Mapping) or not {"input_cost_per_token", "output_cost_per_token"} <= (
        entry.keys()
    ):
        raise PricingConfigError(
            f"invalid pricing config: {name!r} has no input and output token costs in the"
            " price list",
            code="DC060",
        )
    rates = {}
    for field, key in _LITELLM_FIELDS.items():
        value = entry.get(key)
        if value is not None:
            per_token = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
            rates[field] = (per_token * 1_000_000).quantize(Decimal("0.000001"), ROUND_CEILING)
    return rates


@dataclass(frozen=True, slots=True)
class CostResult:
    """The price of a usage event (``credit_cost_result``).

    ``matched`` is the ``models`` entry that priced it (None when the default did);
    ``exact_cost`` the cost before rounding; ``credits`` what is charged;
    ``min_balance`` the floor of that pricing version; ``pricing_version`` None for an
    engine built from a config that was never published.
    """

    pricing_version: int | None
    model: str | None
    matched: str | None
    exact_cost: Decimal
    credits: int
    min_balance: int


@dataclass(frozen=True, slots=True)
class PricingVersion:
    """One published pricing config (``credit_pricing_version``); the newest is active."""

    version: int
    label: str | None
    config: PricingConfigData
    is_active: bool
    created_at: datetime


class PricingEngine:
    """Prices usage exactly as the database does, for quotes and estimates.

    Args:
        config: The pricing config (validated when given as a mapping or JSON text).
        version: The published version it is, when it came from the store.
    """

    def __init__(
        self,
        config: PricingConfigData | Mapping[str, Any] | str | bytes,
        version: int | None = None,
    ) -> None:
        self.config = PricingConfigData.parse(config)
        self.version = version
        self._exact = {e.model.lower(): e for e in self.config.models if "*" not in e.model}
        # (entry, compiled pattern, literal characters), in list order
        self._patterns = [
            (e, _glob(e.model), len(e.model.replace("*", "")))
            for e in self.config.models
            if "*" in e.model
        ]

    @classmethod
    def from_version(cls, pricing: PricingVersion) -> PricingEngine:
        """The engine of a published version."""
        return cls(pricing.config, pricing.version)

    @property
    def min_balance(self) -> int:
        """The floor of this pricing: usage deductions keep it, reservations by default."""
        return self.config.min_balance

    def match(self, model: str) -> ModelPrice | None:
        """The ``models`` entry that prices ``model``, or None when only the default does.

        An exact name wins; else the matching pattern with the most literal characters;
        else the first of those in the list.
        """
        name = model.lower()
        exact = self._exact.get(name)
        if exact is not None:
            return exact
        best: ModelPrice | None = None
        best_literal = -1
        for entry, pattern, literal in self._patterns:
            if literal > best_literal and pattern.fullmatch(name):
                best, best_literal = entry, literal
        return best

    def price(self, metrics: UsageMetrics) -> CostResult:
        """What ``metrics`` cost under this pricing, exactly as ``credit_calculate_cost``.

        Raises:
            UnknownModelError: no entry matches the model and there is no default.
        """
        entry = self.match(metrics.model)
        rates = entry or self.config.default
        if rates is None:
            raise UnknownModelError(
                f"no price for model {metrics.model!r}: no models entry matches and the"
                " pricing has no default",
                code="DC061",
            )
        config = self.config
        # exact: enough digits for any bounded input, and an inexact step would raise
        with localcontext(Context(prec=200, traps=[Inexact, InvalidOperation])):
            exact = (
                metrics.input_tokens * rates.input
                + metrics.output_tokens * rates.output
                + metrics.cached_input_tokens * rates.cached_input
                + metrics.cache_creation_tokens * rates.cache_creation
                + metrics.cache_creation_1h_tokens * rates.cache_creation_1h
                + metrics.reasoning_tokens * rates.reasoning
            ) * _MILLION
            exact += metrics.tool_calls * rates.tool_call + metrics.requests * rates.request
            if config.unit == "usd":
                assert config.credits_per_usd is not None and config.markup is not None
                exact = exact * config.credits_per_usd * (1 + config.markup)
            credits = int(exact.to_integral_value(rounding=_ROUNDING[config.rounding]))
            exact = _trimmed(exact)
        if credits > MAX_CREDITS:
            raise InvalidInputError(
                f"the usage costs {credits} credits, more than one operation can charge",
                code="DC001",
            )
        return CostResult(
            pricing_version=self.version,
            model=metrics.model,
            matched=None if entry is None else entry.model,
            exact_cost=exact,
            credits=credits,
            min_balance=config.min_balance,
        )

    def cost(self, metrics: UsageMetrics) -> int:
        """The credits ``metrics`` cost (``price(metrics).credits``)."""
        return self.price(metrics).credits

    def fixed_cost(self, job_name: str) -> int:
        """The credits of a fixed-cost job.

        Raises:
            UnknownJobError: the pricing has no such job.
        """
        credits = self.config.fixed_jobs.get(job_name)
        if credits is None:
            raise UnknownJobError(f"no fixed-cost job {job_name!r} in this pricing", code="DC062")
        return credits


def _trimmed(value: Decimal) -> Decimal:
    """``value`` without trailing zeros (SQL's trim_scale), never in exponent form."""
    if value == value.to_integral_value():
        return value.quantize(Decimal(1))
    return value.normalize()


def _glob(pattern: str) -> re.Pattern[str]:
    """``*`` matches any run of characters (SQL LIKE's ``%``); the rest is literal."""
    return re.compile(".*".join(re.escape(part) for part in pattern.lower().split("*")), re.DOTALL)
