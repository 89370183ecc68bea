"""What a model call used, in one shape for every provider.

The token counts of :class:`UsageMetrics` are **disjoint**: every token is counted in
exactly one field, and each field has its own rate (docs/pricing.md):

- ``input_tokens``: input tokens read at the full input rate, *not* counting cached
  tokens read (``cached_input_tokens``) or written (``cache_creation_tokens``, and
  ``cache_creation_1h_tokens`` for writes kept an hour, which cost more);
- ``output_tokens``: visible output tokens, *not* counting ``reasoning_tokens``.

Providers report overlapping totals instead (OpenAI's ``prompt_tokens`` includes the
cached tokens; its ``completion_tokens`` includes the reasoning tokens), so build metrics
with :meth:`UsageMetrics.from_openai`, :meth:`UsageMetrics.from_anthropic` or
:meth:`UsageMetrics.from_gemini`, which subtract what overlaps: a cached token is never
charged twice, nor dropped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from ducto.errors import InvalidInputError

#: Model names: ASCII model-id characters (what every provider uses), 1 to 200 of them.
MODEL_NAME = re.compile(r"[A-Za-z0-9._:/@+-]{1,200}")
_MAX_COUNT = 2**53 - 1


@dataclass(frozen=True, slots=True)
class UsageMetrics:
    """Usage of one model call (or of ``requests`` calls), to be priced.

    Every count is a whole number from 0 to 2^53 - 1; the token kinds are disjoint (see
    the module docs). ``tool_calls`` counts priced tool invocations (a web search, a code
    run); ``requests`` the calls made, 1 by default.
    """

    model: str
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cache_creation_tokens: int = 0
    cache_creation_1h_tokens: int = 0
    reasoning_tokens: int = 0
    tool_calls: int = 0
    requests: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not MODEL_NAME.fullmatch(self.model):
            raise InvalidInputError(
                "usage metrics: model must be a model name (1 to 200 of A-Z a-z 0-9 . _ : / @"
                f" + -), got {self.model!r}",
                code="DC007",
            )
        for name, value in self.counts().items():
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidInputError(
                    f"usage metrics: {name} must be an int, got {type(value).__name__}",
                    code="DC007",
                )
            if not 0 <= value <= _MAX_COUNT:
                raise InvalidInputError(
                    f"usage metrics: {name} must be a whole number from 0 to 2^53 - 1, got {value}",
                    code="DC007",
                )

    def counts(self) -> dict[str, int]:
        """Every count by field name (all but ``model``)."""
        data = asdict(self)
        del data["model"]
        return data

    def to_json(self) -> dict[str, Any]:
        """The metrics as the ledger's RPCs take them (every field explicit)."""
        return asdict(self)

    @classmethod
    def from_openai(cls, usage: object, *, model: str, tool_calls: int = 0) -> UsageMetrics:
        """From OpenAI's ``usage``: Chat Completions or Responses, a dict or an SDK object.

        ``prompt_tokens``/``input_tokens`` include the cached tokens
        (``*_tokens_details.cached_tokens``) and ``completion_tokens``/``output_tokens``
        include the reasoning tokens, so both are split out. OpenAI does not report
        priced tool calls in ``usage``: pass ``tool_calls``.
        """
        prompt = _count(usage, "prompt_tokens", "input_tokens")
        completion = _count(usage, "completion_tokens", "output_tokens")
        input_details = _field(usage, "prompt_tokens_details", "input_tokens_details")
        output_details = _field(usage, "completion_tokens_details", "output_tokens_details")
        cached = _count(input_details, "cached_tokens")
        reasoning = _count(output_details, "reasoning_tokens")
        return cls(
            model=model,
            input_tokens=_part(prompt, cached, "cached_tokens", "prompt_tokens"),
            output_tokens=_part(completion, reasoning, "reasoning_tokens", "completion_tokens"),
            cached_input_tokens=cached,
            reasoning_tokens=reasoning,
            tool_calls=tool_calls,
        )

    @classmethod
    def from_anthropic(cls, usage: object, *, model: str) -> UsageMetrics:
        """From Anthropic's Messages ``usage``, a dict or an SDK object.

        Anthropic's ``input_tokens`` already excludes ``cache_read_input_tokens`` and
        ``cache_creation_input_tokens``; of the latter, ``cache_creation`` tells how many were
        written for 1 hour (priced higher) rather than 5 minutes. Thinking tokens are billed
        and reported within ``output_tokens``. Server tool uses (web search and fetch
        requests) are tool calls.
        """
        server_tools = _field(usage, "server_tool_use")
        written = _count(usage, "cache_creation_input_tokens")
        written_1h = _count(_field(usage, "cache_creation"), "ephemeral_1h_input_tokens")
        return cls(
            model=model,
            input_tokens=_count(usage, "input_tokens"),
            output_tokens=_count(usage, "output_tokens"),
            cached_input_tokens=_count(usage, "cache_read_input_tokens"),
            cache_creation_tokens=_part(
                written, written_1h, "ephemeral_1h_input_tokens", "cache_creation_input_tokens"
            ),
            cache_creation_1h_tokens=written_1h,
            tool_calls=_count(server_tools, "web_search_requests")
            + _count(server_tools, "web_fetch_requests"),
        )

    @classmethod
    def from_gemini(cls, usage_metadata: object, *, model: str) -> UsageMetrics:
        """From Gemini's ``usage_metadata`` (``usageMetadata`` in REST), dict or object.

        ``prompt_token_count`` includes ``cached_content_token_count``; thinking tokens
        (``thoughts_token_count``) are reported apart from ``candidates_token_count``.
        """
        prompt = _count(usage_metadata, "prompt_token_count", "promptTokenCount")
        cached = _count(usage_metadata, "cached_content_token_count", "cachedContentTokenCount")
        return cls(
            model=model,
            input_tokens=_part(prompt, cached, "cached_content_token_count", "prompt_token_count"),
            output_tokens=_count(usage_metadata, "candidates_token_count", "candidatesTokenCount"),
            cached_input_tokens=cached,
            reasoning_tokens=_count(usage_metadata, "thoughts_token_count", "thoughtsTokenCount"),
        )


def _field(source: object, *names: str) -> object:
    """The first of ``names`` present in a mapping or an object, else None."""
    for name in names:
        value = source.get(name) if isinstance(source, Mapping) else getattr(source, name, None)
        if value is not None:
            return value
    return None


def _count(source: object, *names: str) -> int:
    value = _field(source, *names)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInputError(
            f"usage payload: {names[0]} must be a whole number >= 0, got {value!r}", code="DC007"
        )
    return value


def _part(total: int, included: int, included_name: str, total_name: str) -> int:
    """``total`` minus a count it includes; a payload where it would be negative is wrong."""
    if included > total:
        raise InvalidInputError(
            f"usage payload: {included_name} ({included}) exceeds {total_name} ({total})",
            code="DC007",
        )
    return total - included
